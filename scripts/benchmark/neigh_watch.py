"""The real host's kernel as the cluster-scale section watches it: neighbour and FDB notifications from a
netlink socket inside its namespace (each entry the plugin writes is seen as it lands, without dumping tables of
tens of thousands of entries while measuring), and raw dumps to count what is there."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tests.multihost.cluster import netns_socket

from .cluster_hosts import OVERLAY, SIM_MAC_PREFIX

# netlink (linux/rtnetlink.h, linux/neighbour.h)
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTNLGRP_NEIGH = 3
NDA_DST, NDA_LLADDR = 1, 2
NTF_SELF = 0x02
AF_BRIDGE = 7
SOL_NETLINK = 270
NLMSGHDR = struct.Struct("=IHHII")
NDMSG = struct.Struct("=BxxxiHBB")


@dataclass(frozen=True)
class NeighEvent:
    """One neighbour or FDB message: kind is 'neigh' (IP -> MAC on the bridge), 'vxlan' (MAC -> VTEP on the
    VXLAN device, NTF_SELF) or 'bridge' (the bridge's static entry for a MAC)."""

    added: bool
    kind: str
    key: str  # the IP for neigh, the MAC for vxlan/bridge
    ifindex: int


def parse_neigh(data: bytes) -> Iterator[tuple[int, int, NeighEvent | None]]:
    """(message type, sequence, event or None) for each netlink message in `data`."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, msg_type, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            break
        event = None
        body = offset + NLMSGHDR.size
        if msg_type in (RTM_NEWNEIGH, RTM_DELNEIGH) and length >= NLMSGHDR.size + NDMSG.size:
            family, ifindex, _state, flags, _ = NDMSG.unpack_from(data, body)
            attrs, dst, lladdr = body + NDMSG.size, b"", b""
            while attrs + 4 <= offset + length:
                alen, atype = struct.unpack_from("=HH", data, attrs)
                if alen < 4:
                    break
                value = data[attrs + 4 : attrs + alen]
                if atype == NDA_DST:
                    dst = value
                elif atype == NDA_LLADDR:
                    lladdr = value
                attrs += (alen + 3) & ~3
            mac = ":".join(f"{byte:02x}" for byte in lladdr)
            if family == AF_BRIDGE and len(lladdr) == 6:
                # The VXLAN device's own entries carry NTF_SELF; the bridge's are told by NDA_MASTER instead.
                kind = "vxlan" if flags & NTF_SELF else "bridge"
                event = NeighEvent(msg_type == RTM_NEWNEIGH, kind, mac, ifindex)
            elif family in (socket.AF_INET, socket.AF_INET6) and dst:
                event = NeighEvent(msg_type == RTM_NEWNEIGH, "neigh", str(ipaddress.ip_address(dst)), ifindex)
        yield msg_type, seq, event
        offset += (length + 3) & ~3


class KernelWatch:
    """Neighbour and FDB notifications inside the real host's namespace, on a thread of their own.

    `counts` holds how many of each kind are present (adds minus deletes since the watch began, the kernel
    being empty of remote entries then); `waiters` are called with each event and its arrival time."""

    def __init__(self, netns: str) -> None:
        self.sock = netns_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: bursts of 10^5 messages
        self.sock.bind((0, 1 << (RTNLGRP_NEIGH - 1)))
        self.sock.settimeout(0.2)
        self.lock = threading.Lock()
        self.present: dict[str, set[str]] = {"neigh": set(), "vxlan": set(), "bridge": set()}
        self.events = 0
        self.last_event = 0.0
        self.overflowed = False
        self.waiters: list[Callable[[NeighEvent, float], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kernel-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:  # ENOBUFS: the kernel dropped notifications; the counts are no longer exact
                self.overflowed = True
                continue
            now = time.perf_counter()
            for _, _, event in parse_neigh(data):
                if event is None:
                    continue
                if event.kind != "neigh" and not event.key.startswith(SIM_MAC_PREFIX):
                    continue  # the bridge's own entries, multicast, the flood entries
                with self.lock:
                    self.events += 1
                    self.last_event = now
                    keys = self.present[event.kind]
                    if event.added:
                        keys.add(event.key)
                    else:
                        keys.discard(event.key)
                    waiters = list(self.waiters)
                for waiter in waiters:
                    waiter(event, now)

    def count(self, kind: str) -> int:
        with self.lock:
            return len(self.present[kind])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def dump_counts(netns: str) -> dict[str, int]:
    """One FDB dump and one neighbour dump of the namespace, counted raw (no decoding beyond the header)."""
    counts = {"neigh": 0, "vxlan": 0, "bridge": 0}
    sock = netns_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        for seq, family in ((1, AF_BRIDGE), (2, socket.AF_INET)):
            request = NDMSG.pack(family, 0, 0, 0, 0)
            sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(request), RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                      + request)  # fmt: skip
            done = False
            while not done:
                for msg_type, msg_seq, event in parse_neigh(sock.recv(1 << 20)):
                    if msg_seq != seq:
                        continue
                    if msg_type in (NLMSG_DONE, NLMSG_ERROR):
                        done = True
                    elif event is not None and event.key.startswith(SIM_MAC_PREFIX if event.kind != "neigh" else ""):
                        counts[event.kind] += event.kind != "neigh" or ipaddress.ip_address(event.key) in OVERLAY
    finally:
        sock.close()
    return counts
