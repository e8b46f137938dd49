"""Hand-made packets (VXLAN, ARP, ICMP echo) and raw captures inside a namespace, for the data-plane tests."""

from __future__ import annotations

import secrets
import socket
import struct
import threading
import time

from .netns import netns_socket

IP_MTU_DISCOVER = 10  # <linux/in.h>: the path-MTU discovery mode of a socket
IP_PMTUDISC_DO = 2  # always Don't Fragment: a packet over the MTU is refused (EMSGSIZE) rather than fragmented


def vxlan_packet(vni: int, inner_frame: bytes) -> bytes:
    """A VXLAN payload (RFC 7348): flags with the I bit, 24-bit VNI, then the inner Ethernet frame."""
    return struct.pack("!II", 0x08000000, vni << 8) + inner_frame


ETHERTYPE_EXPERIMENTAL = 0x88B5  # IEEE 802 "local experimental": a frame nobody will act on


def marked_frame(src_mac: str, marker: bytes, dst_mac: str = "ff:ff:ff:ff:ff:ff") -> bytes:
    """An Ethernet frame (broadcast unless `dst_mac`) from `src_mac` carrying `marker` and nothing else."""
    header = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    return header + struct.pack("!H", ETHERTYPE_EXPERIMENTAL) + marker.ljust(46, b"\x00")


def send_udp(
    netns: str, source: str, target: str, port: int, payload: bytes, count: int = 20, spoof: bool = False
) -> None:
    """`count` datagrams from `source` to `target`:`port`, 5 ms apart, sent from inside `netns`.  `source` is an
    address of `netns`, or with `spoof` any address at all (IP_TRANSPARENT lets a socket send from an address
    its namespace does not hold, as a forged packet on the wire would come)."""
    with netns_socket(netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if spoof:
            sock.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
        sock.bind((source, 0))
        for _ in range(count):
            sock.sendto(payload, (target, port))
            time.sleep(0.005)


def broadcast_arp_frame(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    """An Ethernet broadcast frame carrying an ARP request 'who has target_ip, tell src_ip'."""
    mac = bytes.fromhex(src_mac.replace(":", ""))
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        1,  # Ethernet
        0x0800,  # IPv4
        6,
        4,
        1,  # request
        mac,
        socket.inet_aton(src_ip),
        b"\x00" * 6,
        socket.inet_aton(target_ip),
    )
    return b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp + b"\x00" * 18


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(ident: int, seq: int, payload: bytes = b"vxlanpy-convergence") -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    checksum = _icmp_checksum(header + payload)
    return struct.pack("!BBHHH", 8, 0, checksum, ident, seq) + payload


def echo_reply_seq(packet: bytes, ident: int) -> int | None:
    """The sequence number of an ICMP echo reply with `ident` (a raw socket's packet, IPv4 header first), else None."""
    header_len = (packet[0] & 0x0F) * 4
    if len(packet) < header_len + 8:
        return None
    kind, _, _, reply_ident, seq = struct.unpack_from("!BBHHH", packet, header_len)
    return seq if kind == 0 and reply_ident == ident else None


def first_echo_reply(netns: str, target: str, timeout: float, interval: float = 0.01) -> float | None:
    """Ping `target` from inside `netns` (e.g. /proc/PID/ns/net) every `interval` s; the monotonic time of
    the first echo reply from it, or None after `timeout` s."""
    sock = netns_socket(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = secrets.randbelow(0xFFFF)
    deadline = time.monotonic() + timeout
    seq = 0
    try:
        sock.setblocking(False)
        while time.monotonic() < deadline:
            seq = (seq + 1) & 0xFFFF
            try:
                sock.sendto(icmp_echo(ident, seq), (target, 0))
            except OSError:
                pass  # e.g. EHOSTUNREACH while ARP fails: keep trying
            until = time.monotonic() + interval
            while True:
                try:
                    packet, (source, _) = sock.recvfrom(2048)
                except BlockingIOError:
                    packet, source = b"", ""
                except OSError:
                    packet, source = b"", ""
                if packet and source == target and echo_reply_seq(packet, ident) is not None:
                    return time.monotonic()
                if not packet:
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    time.sleep(min(remaining, 0.002))
    finally:
        sock.close()
    return None


def ping_df(netns: str, target: str, payload_size: int, timeout: float = 3.0) -> bool:
    """One echo request with `payload_size` bytes and Don't Fragment set, from inside `netns`; whether its reply
    came within `timeout` s.  OSError EMSGSIZE when the packet does not fit the route's MTU (refused locally)."""
    sock = netns_socket(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = secrets.randbelow(0xFFFF)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        sock.settimeout(timeout)
        sock.sendto(icmp_echo(ident, 1, b"\xa5" * payload_size), (target, 0))
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                packet, (source, _) = sock.recvfrom(65535)
            except TimeoutError:
                return False
            if source == target and echo_reply_seq(packet, ident) == 1:
                return True
        return False
    finally:
        sock.close()


class Pinger:
    """Echo requests from inside `netns` to `target` every `interval` s, in a thread, from start() to stop();
    `replies` holds the monotonic time of each reply (by sequence number)."""

    def __init__(self, netns: str, target: str, interval: float = 0.1) -> None:
        self.target = target
        self.interval = interval
        self.sock = netns_socket(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.settimeout(0.01)
        self.ident = secrets.randbelow(0xFFFF)
        self.sent: dict[int, float] = {}
        self.replies: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pinger-{target}", daemon=True)

    def _run(self) -> None:
        seq, next_send = 0, time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                seq = (seq + 1) & 0xFFFF
                try:
                    self.sock.sendto(icmp_echo(self.ident, seq), (self.target, 0))
                    self.sent[seq] = now
                except OSError:
                    pass  # e.g. no route for a moment: that is a gap, measured by the replies
                next_send += self.interval
            try:
                packet, (source, _) = self.sock.recvfrom(2048)
            except (TimeoutError, BlockingIOError):
                continue
            replied = echo_reply_seq(packet, self.ident) if source == self.target else None
            if replied is not None and replied in self.sent:
                self.replies.setdefault(replied, time.monotonic())

    def start(self) -> Pinger:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def largest_gap(self, since: float, until: float) -> float:
        """The longest time without a reply between `since` and `until` (monotonic), ends included."""
        times = sorted(t for t in self.replies.values() if since <= t <= until)
        edges = [since, *times, until]
        return max(b - a for a, b in zip(edges, edges[1:], strict=False))


# --------------------------------------------------------------------------------------------- capture

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class Sniffer:
    """Frames received on device `dev` inside `netns` (an AF_PACKET socket, like tcpdump), from opening to
    `frames()`; outgoing frames are left out.  Each frame is (source MAC, destination MAC, raw bytes)."""

    def __init__(self, netns: str, dev: str) -> None:
        self.netns = netns
        self.dev = dev
        self.sock = netns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((dev, ETH_P_ALL))  # the name is resolved in the socket's own namespace
        self.sock.setblocking(False)
        self._frames: list[tuple[str, str, bytes]] = []

    @staticmethod
    def _mac(raw: bytes) -> str:
        return ":".join(f"{byte:02x}" for byte in raw)

    def frames(self) -> list[tuple[str, str, bytes]]:
        while True:
            try:
                data, address = self.sock.recvfrom(65535)
            except BlockingIOError:
                break
            if address[2] == PACKET_OUTGOING or len(data) < 14:
                continue
            self._frames.append((self._mac(data[6:12]), self._mac(data[0:6]), data))
        return list(self._frames)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Sniffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
