"""Hand-made packets (VXLAN, ARP, ICMP echo) and raw captures inside a namespace, for the data-plane tests."""

from __future__ import annotations

import secrets
import socket
import struct
import time

from .netns import netns_socket


def vxlan_packet(vni: int, inner_frame: bytes) -> bytes:
    """A VXLAN payload (RFC 7348): flags with the I bit, 24-bit VNI, then the inner Ethernet frame."""
    return struct.pack("!II", 0x08000000, vni << 8) + inner_frame


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
                if packet and source == target:
                    header_len = (packet[0] & 0x0F) * 4
                    kind, _, _, reply_ident, _ = struct.unpack_from("!BBHHH", packet, header_len)
                    if kind == 0 and reply_ident == ident:
                        return time.monotonic()
                if not packet:
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    time.sleep(min(remaining, 0.002))
    finally:
        sock.close()
    return None


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
