"""tcpdump on the underlay, parsed here: pcap, then Ethernet (or Linux cooked capture) / IPv4 / UDP or TCP.

The hosts reach each other through the underlay namespace's bridge (cluster.py): each host's eth0 is a veth whose
other end, p-<host>, is a port of that bridge.  `Capture(cluster.underlay, "any")` therefore sees every frame
between any two hosts (twice: on the sender's port and on the receiver's) and every frame to etcd.

tcpdump writes the pcap to its standard output, a file this process opened: it never opens a file itself, so
neither its drop of privileges nor an AppArmor profile can get in the way.
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113  # `-i any`: a 16-byte cooked header, the protocol in its last two bytes
LINKTYPE_LINUX_SLL2 = 276  # `-i any` with newer libpcap: a 20-byte cooked header, the protocol first
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_VLAN = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17


@dataclass(frozen=True)
class Packet:
    """One captured frame; the IPv4 and transport fields are empty for what is not IPv4 UDP/TCP."""

    raw: bytes  # the whole frame as captured
    ethertype: int
    source: str = ""
    destination: str = ""
    protocol: int = 0
    source_port: int = 0
    destination_port: int = 0
    payload: bytes = b""  # after the UDP or TCP header

    @property
    def ports(self) -> tuple[int, int]:
        return self.source_port, self.destination_port

    def vxlan_vni(self) -> int | None:
        """The VNI of a VXLAN header (I flag set) at the start of a UDP payload, else None."""
        if self.protocol != IPPROTO_UDP or len(self.payload) < 8 or not self.payload[0] & 0x08:
            return None
        return int.from_bytes(self.payload[4:7], "big")

    def __str__(self) -> str:
        name = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}.get(self.protocol, f"proto {self.protocol}")
        if not self.source:
            return f"ethertype {self.ethertype:#06x}, {len(self.raw)} bytes"
        return f"{self.source}:{self.source_port} > {self.destination}:{self.destination_port} {name} {len(self.raw)}B"


def parse_frame(linktype: int, frame: bytes) -> Packet:
    if linktype == LINKTYPE_ETHERNET:
        offset, ethertype = 14, struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
        if ethertype == ETHERTYPE_VLAN and len(frame) >= 18:
            offset, ethertype = 18, struct.unpack_from("!H", frame, 16)[0]
    elif linktype == LINKTYPE_LINUX_SLL:
        offset, ethertype = 16, struct.unpack_from("!H", frame, 14)[0] if len(frame) >= 16 else 0
    elif linktype == LINKTYPE_LINUX_SLL2:
        offset, ethertype = 20, struct.unpack_from("!H", frame, 0)[0] if len(frame) >= 20 else 0
    else:
        raise ValueError(f"pcap link type {linktype} is not parsed here")
    ip = frame[offset:]
    if ethertype != ETHERTYPE_IPV4 or len(ip) < 20 or ip[0] >> 4 != 4:
        return Packet(frame, ethertype)
    header_len = (ip[0] & 0x0F) * 4
    total_len = struct.unpack_from("!H", ip, 2)[0]
    protocol = ip[9]
    source, destination = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    fragment_offset = struct.unpack_from("!H", ip, 6)[0] & 0x1FFF
    body = ip[header_len:total_len] if total_len >= header_len else ip[header_len:]
    if fragment_offset or protocol not in (IPPROTO_UDP, IPPROTO_TCP) or len(body) < 8:
        return Packet(frame, ethertype, source, destination, protocol, payload=body)
    source_port, destination_port = struct.unpack_from("!HH", body, 0)
    if protocol == IPPROTO_UDP:
        payload = body[8:]
    else:
        payload = body[(body[12] >> 4) * 4 :] if len(body) >= 20 else b""
    return Packet(frame, ethertype, source, destination, protocol, source_port, destination_port, payload)


def parse_pcap(data: bytes) -> list[Packet]:
    """The frames of a pcap file (microsecond or nanosecond timestamps, either byte order)."""
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise ValueError(f"not a pcap file (magic {magic.hex()}): pcapng is not parsed here")
    linktype = struct.unpack_from(f"{order}I", data, 20)[0] & 0x0FFFFFFF
    packets = []
    offset = 24
    while offset + 16 <= len(data):
        captured = struct.unpack_from(f"{order}I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + captured]
        if len(frame) < captured:
            break  # the last record, cut short when tcpdump was stopped
        packets.append(parse_frame(linktype, frame))
        offset += 16 + captured
    return packets


class Capture:
    """tcpdump on `interface` inside `netns`, from start() (which returns once tcpdump listens) to stop()."""

    def __init__(self, netns: str, interface: str, path: Path, bpf_filter: tuple[str, ...] = ()) -> None:
        self.netns = netns
        self.interface = interface
        self.path = path
        self.errors = path.with_suffix(".stderr")
        self.bpf_filter = bpf_filter
        self.process: subprocess.Popen[bytes] | None = None
        self.packets: list[Packet] = []

    def start(self, timeout: float = 10.0) -> None:
        # --immediate-mode: each packet handed over at once (else libpcap's ring holds it up to its 1 s timeout,
        # and what is still held when tcpdump is stopped is lost); -U: each one written out at once
        argv = ["ip", "netns", "exec", self.netns, "tcpdump", "-i", self.interface, "--immediate-mode", "-U", "-n"]
        argv += ["-s", "0", "-w", "-"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("wb") as out, self.errors.open("wb") as err:
            self.process = subprocess.Popen(
                [*argv, *self.bpf_filter], stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while "listening on" not in self.errors.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tcpdump on {self.interface} in {self.netns} did not start: {self._stderr()}")
            time.sleep(0.02)

    def wait_until(self, predicate: Callable[[list[Packet]], Any], timeout: float = 5.0) -> Any:
        """While tcpdump runs: read what it wrote so far until `predicate(packets)` is truthy (returned) or `timeout`
        passes (the last answer).  tcpdump handles packets in order: once the last one sent is there, all are."""
        deadline = time.monotonic() + timeout
        while True:
            answer = predicate(parse_pcap(self.path.read_bytes()))
            if answer or time.monotonic() >= deadline:
                return answer
            time.sleep(0.05)

    def _stderr(self) -> str:
        return self.errors.read_text(errors="replace").strip() if self.errors.exists() else ""

    def stop(self, settle: float = 0.3) -> list[Packet]:
        """Stop tcpdump (after `settle` seconds for what is still on its way) and parse what it wrote."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                time.sleep(settle)
                process.send_signal(signal.SIGINT)  # tcpdump flushes and exits
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            self.packets = parse_pcap(self.path.read_bytes()) if self.path.exists() else []
        return self.packets

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # -- what tests ask of the packets

    def containing(self, needle: bytes) -> list[Packet]:
        return [packet for packet in self.packets if needle in packet.raw]

    def between(self, addresses: set[str]) -> list[Packet]:
        """The IPv4 packets whose source and destination are both in `addresses`."""
        return [p for p in self.packets if p.source in addresses and p.destination in addresses]

    def vxlan(self, ports: tuple[int, ...], vni: int) -> list[Packet]:
        """UDP packets to one of `ports` carrying a VXLAN header with `vni`."""
        return [p for p in self.packets if p.destination_port in ports and p.vxlan_vni() == vni]
