"""`Links` realised with rtnetlink through pyroute2: bridges, VXLAN devices, veth pairs and FDB entries.

Every public method converges the kernel to the given object, so the driver and reconciliation can call
them again and again.  Nothing here runs `ip` or any other program.

Remote endpoints (multi-host mode) are three kinds of kernel entries per network, all owned by vxlanpy:

    vxlan-N FDB (self)     MAC -> VTEP            bridge fdb replace MAC dev vxlan-N dst VTEP self permanent
                           00:..:00 -> VTEP       bridge fdb append 00:00:00:00:00:00 dev vxlan-N dst VTEP
    vxbr-N FDB (master)    MAC -> port vxlan-N    bridge fdb replace MAC dev vxlan-N master static
    vxbr-N neighbours      IP -> MAC              ip neigh replace IP lladdr MAC dev vxbr-N nud permanent

The static bridge entry keeps the bridge from flooding unicast to the VXLAN port, and together with the
neighbour entry it is what the bridge's neigh_suppress needs to answer ARP and ND for the remote locally.
Entries vxlanpy does not make are left alone: the bridge's own (local) entries, dynamic (learned) ones,
and the default destination the kernel keeps for `remote`/`group`.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETNEIGH
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import (
    NTF_EXT_LEARNED,
    NTF_MASTER,
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    NUD_REACHABLE,
    ndmsg,
)

from ..errors import Conflict, DataplaneError, InvalidOption
from ..models import LINK_ALIAS_PREFIX, Endpoint, IPAddress, Network, NetworkConfig
from .base import RemoteEndpoint, Underlay

# pyroute2 messages are untyped; this alias only documents what a value is.
Msg = Any
T = TypeVar("T")

ALL_ZEROS_MAC = "00:00:00:00:00:00"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# `bridge fdb ... self permanent` and `bridge fdb ... master static`, as iproute2 encodes them.
_VXLAN_ENTRY_STATE = NUD_PERMANENT | NUD_NOARP
_BRIDGE_STATIC_STATE = NUD_NOARP | NUD_REACHABLE
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
IPV6_LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")

# What the user can do about the errors the kernel commonly returns; a call site can give a better one.
_REMEDIES: dict[int, str] = {
    errno.EPERM: "; vxlanpy needs CAP_NET_ADMIN: run the plugin as root",
    errno.EACCES: "; vxlanpy needs CAP_NET_ADMIN: run the plugin as root",
    errno.EEXIST: "; remove the existing object or choose another vni",
    errno.EINVAL: "; check the network options (mtu, ttl, local, remote, group) against the underlay",
    errno.ENODEV: "; an interface disappeared meanwhile: retry the request",
    errno.EOPNOTSUPP: "; the kernel lacks the feature: load the module (vxlan, bridge, veth) and retry",
    errno.ENOENT: "; the object disappeared meanwhile: retry the request",
}
_DEFAULT_REMEDY = "; check the host's network configuration and retry"
_VNI_REMEDY = "remove it or choose another vni"
_VETH_REMEDY = "remove it (vxlanpy derives veth names from the endpoint id)"


def _errno_of(error: Exception) -> int:
    if isinstance(error, NetlinkError):
        return int(error.code)
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno
    return 0


def _dataplane_error(action: str, error: Exception, remedies: Mapping[int, str]) -> DataplaneError:
    code = _errno_of(error)
    reason = os.strerror(code) if code else str(error) or type(error).__name__
    remedy = remedies.get(code) or _REMEDIES.get(code, _DEFAULT_REMEDY)
    return DataplaneError(f"{action}: {reason}{remedy}")


@contextmanager
def _netlink(action: str, remedies: Mapping[int, str] | None = None) -> Iterator[None]:
    """Turn a netlink failure inside the block into a DataplaneError saying `action` failed and why."""
    try:
        yield
    except (NetlinkError, OSError) as error:
        raise _dataplane_error(action, error, remedies or {}) from error


_FAMILY_REMEDY = {
    errno.EAFNOSUPPORT: " (the VTEP's address family differs from the network's underlay); "
    "use VTEP addresses of the family of -o local",
}


def _alias(link: Msg) -> str:
    return str(link.get("ifalias") or "")


def _is_owned(link: Msg) -> bool:
    return _alias(link).startswith(LINK_ALIAS_PREFIX)


def _created_unlabelled(link: Msg, network: Network) -> bool:
    """A device of `network` that a create made but did not label: the plugin was killed between the two requests
    (the kernel ignores the alias in a create).  Known by what the create set: the bridge's anycast gateway MAC,
    the VXLAN device's VNI.  Without this a killed create left a bridge no one would remove and whose name blocked
    the VNI for good."""
    if _alias(link):
        return False  # labelled: vxlanpy's (then owned) or someone else's
    kind = _kind(link)
    if kind == "bridge":
        return str(link.get("address") or "").lower() == network.gateway_mac
    return kind == "vxlan" and _info(link, "vxlan_id") == network.vni


def _kind(link: Msg) -> str | None:
    kind = link.get(("linkinfo", "kind"))
    return str(kind) if kind is not None else None


def _info(link: Msg, key: str) -> Any:
    return link.get(("linkinfo", "data", key))


def _is_up(link: Msg) -> bool:
    return bool(link["flags"] & IFF_UP)


def _address_or_none(value: str | None) -> IPAddress | None:
    """Kernel dumps report an unset address as absent or as the all-zero address."""
    if not value:
        return None
    address = ipaddress.ip_address(value)
    return None if address.is_unspecified else address


def _ip_key(address: IPAddress, v4: str, v6: str) -> str:
    return v6 if address.version == 6 else v4


# Remote endpoints come from other hosts (through the cluster store): a bad one is refused with a
# DataplaneError, the error the callers of sync_remotes already handle, before anything is changed.


def _unicast_mac(value: str) -> str:
    """A remote endpoint's MAC in the kernel's spelling; refuses what cannot be one endpoint's address."""
    mac = str(value).lower()
    if not _MAC.fullmatch(mac) or mac == ALL_ZEROS_MAC or int(mac[:2], 16) & 1:
        raise DataplaneError(
            f"refusing {value!r} as a remote endpoint's MAC: not a unicast MAC address; "
            "check what the other hosts publish"
        )
    return mac


def _checked_address(value: object, what: str) -> IPAddress:
    if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address) or value.is_unspecified:
        raise DataplaneError(f"refusing {value!r} as {what}: not an IP address; check what the other hosts publish")
    return value


def _order(address: IPAddress) -> tuple[int, IPAddress]:
    return address.version, address


def _addresses_sorted(addresses: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(sorted(addresses, key=lambda address: (address.version, address)))


def _default_destinations(config: NetworkConfig) -> set[IPAddress]:
    """The all-zero entry the kernel itself keeps for `remote`/`group`: never vxlanpy's to add or remove."""
    return {address for address in (config.remote, config.group) if address is not None}


# -- raw dumps for the request path -------------------------------------------------------------------------
#
# pyroute2 decodes every attribute of every message of a dump (tens of microseconds each).  The routing table
# and the address list grow with every network (a connected route and a gateway per bridge), so a dump decoded
# that way made each CreateNetwork O(networks): 38 ms with 10 networks, 357 ms with 300.  These dumps go
# through a socket of their own instead, ask the kernel to filter (NETLINK_GET_STRICT_CHK: addresses of one
# interface, routes of the main table) and read only the few fields needed, skipping the rest unparsed.

_SOL_NETLINK = 270
_NETLINK_GET_STRICT_CHK = 12
_RTM_GETADDR, _RTM_NEWROUTE, _RTM_DELROUTE, _RTM_GETROUTE = 22, 24, 25, 26
_RTMGRP_IPV4_ROUTE, _RTMGRP_IPV6_ROUTE = 0x40, 0x400
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_RTM_SETLINK = 19
_IFINFOMSG = struct.Struct("=BxHiII")
_IFLA_IFNAME, _IFLA_IFALIAS, _IFLA_AF_SPEC = 3, 20, 26
_IFLA_INET6_ADDR_GEN_MODE, _IN6_ADDR_GEN_MODE_NONE = 8, 1
_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_IFA_ADDRESS = 1
_RTA_OIF, _RTA_PRIORITY, _RTA_MULTIPATH, _RTA_TABLE = 4, 6, 9, 15
_RTA_GATEWAY = 5
_RTNEXTHOP = struct.Struct("=HBBi")
_CLONE_NEWNET = 0x40000000


def _attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """The top-level attributes from `offset` on (type -> payload; nested flags masked off)."""
    found: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence number, payload) of each netlink message in one buffer read from a socket."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            return  # malformed: nothing after it can be trusted
        yield msg_type, seq, data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3


def _nlattr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _label_request(seq: int, name: str, alias: str, no_ipv6: bool) -> bytes:
    """RTM_SETLINK of the link called `name`: its alias and, with `no_ipv6`, `addrgenmode none`."""
    attrs = _nlattr(_IFLA_IFNAME, name.encode() + b"\0") + _nlattr(_IFLA_IFALIAS, alias.encode())
    if no_ipv6:
        mode = _nlattr(_IFLA_INET6_ADDR_GEN_MODE, bytes([_IN6_ADDR_GEN_MODE_NONE]))
        attrs += _nlattr(_IFLA_AF_SPEC, _nlattr(socket.AF_INET6, mode))
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), _RTM_SETLINK, _NLM_F_REQUEST | _NLM_F_ACK, seq, 0) + body


_RTM_NEWNEIGH, _RTM_DELNEIGH = 28, 29
_NDMSG = struct.Struct("=BxxxiHBB")
_NDA_DST, _NDA_LLADDR = 1, 2
_NLM_F_REPLACE, _NLM_F_CREATE, _NLM_F_APPEND = 0x100, 0x400, 0x800
_NEIGH_BATCH = 256  # writes per send(): their acknowledgements fit in the socket's receive buffer


@dataclass(frozen=True)
class _NeighWrite:
    """One neighbour or FDB write (what `ip neigh replace/del` and `bridge fdb replace/append/del` send), with
    what to say if the kernel refuses it."""

    action: str  # "cannot add ...", for the error
    family: int
    ifindex: int
    lladdr: str | None = None
    dst: IPAddress | None = None
    state: int = 0
    flags: int = 0  # NTF_SELF / NTF_MASTER
    mode: int | None = _NLM_F_CREATE | _NLM_F_REPLACE  # None: a removal (an entry already gone is fine)
    remedies: Mapping[int, str] = field(default_factory=dict)

    def request(self, seq: int) -> bytes:
        attrs = b""
        if self.dst is not None:
            attrs += _nlattr(_NDA_DST, self.dst.packed)
        if self.lladdr is not None:
            attrs += _nlattr(_NDA_LLADDR, bytes.fromhex(self.lladdr.replace(":", "")))
        body = _NDMSG.pack(self.family, self.ifindex, self.state, self.flags, 0) + attrs
        kind, flags = (_RTM_DELNEIGH, 0) if self.mode is None else (_RTM_NEWNEIGH, self.mode)
        return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, _NLM_F_REQUEST | _NLM_F_ACK | flags, seq, 0) + body


def _open_raw_socket(netns: str | None, groups: int = 0) -> socket.socket:
    """A NETLINK_ROUTE socket in `netns` (a name under /run/netns) or in this process's namespace.

    A socket belongs to the namespace it was created in, so for another namespace a throwaway thread enters it
    first (setns changes the calling thread only)."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        if groups:
            sock.bind((0, groups))  # a listener: the kernel sends it these notifications
            sock.setblocking(False)
            return sock
        try:
            sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        except OSError:
            pass  # before Linux 4.20: the kernel does not filter, the readers below still do
        sock.settimeout(30)
        return sock

    if netns is None:
        return make()
    outcome: dict[str, Any] = {}

    def enter_and_make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, os.strerror(code))
            finally:
                os.close(fd)
            outcome["socket"] = make()
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=enter_and_make, name=f"vxlanpy-setns-{netns}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["socket"]  # type: ignore[no-any-return]


class _DefaultRouteWatch:
    """Whether a default route changed since the last look, from the kernel's route notifications.

    Finding the default route means dumping the whole main table, which holds the connected route of every
    network: its cost grows with the networks.  So the answer is kept, and dumped again only after a default
    route (or anything, if notifications were lost) changed.  Worker thread only."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def close(self) -> None:
        self._sock.close()

    def changed(self) -> bool:
        """Read every pending notification; True when one is about a default route, or some were lost."""
        changed = False
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return changed
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
                changed = True  # the queue overflowed: assume the worst
                continue
            for msg_type, _, payload in _messages(data):
                if msg_type in (_RTM_NEWROUTE, _RTM_DELROUTE) and len(payload) >= _RTMSG.size:
                    changed = changed or _RTMSG.unpack_from(payload)[1] == 0  # rtm_dst_len 0: a default route


class _RawDumps:
    """Filtered dumps, and batched labels, on a socket of their own; used from the netlink worker thread only."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def label(self, links: list[tuple[str, str, bool]]) -> dict[str, int]:
        """Label each (name, alias, no_ipv6) link (`_label_request`): all requests in one send, then every
        answer read.  Returns the errno of each link whose request failed."""
        seqs = {}
        batch = b""
        for name, alias, no_ipv6 in links:
            self._seq += 1
            seqs[self._seq] = name
            batch += _label_request(self._seq, name, alias, no_ipv6)
        self._sock.send(batch)
        failed = {}
        while seqs:
            for msg_type, msg_seq, payload in _messages(self._sock.recv(1 << 16)):
                if msg_type == _NLMSG_ERROR and msg_seq in seqs:
                    code = -struct.unpack_from("=i", payload)[0]
                    name = seqs.pop(msg_seq)
                    if code:
                        failed[name] = code
        return failed

    def write_neighbours(self, writes: list[_NeighWrite]) -> None:
        """Send `writes` in order, `_NEIGH_BATCH` per send() instead of one request and one answer each (a full
        resync of 10^4 remote endpoints is 3 * 10^4 writes); raises the first refusal as a DataplaneError once
        its batch is answered, the writes before it being done (as with one call each, nothing after it is)."""
        for start in range(0, len(writes), _NEIGH_BATCH):
            seqs: dict[int, _NeighWrite] = {}
            batch = b""
            for write in writes[start : start + _NEIGH_BATCH]:
                self._seq += 1
                seqs[self._seq] = write
                batch += write.request(self._seq)
            self._sock.send(batch)
            refused: tuple[int, _NeighWrite, int] | None = None
            while seqs:
                for msg_type, msg_seq, payload in _messages(self._sock.recv(1 << 20)):
                    if msg_type != _NLMSG_ERROR or msg_seq not in seqs:
                        continue
                    write = seqs.pop(msg_seq)
                    code = -struct.unpack_from("=i", payload)[0]
                    if code and not (write.mode is None and code == errno.ENOENT):
                        if refused is None or msg_seq < refused[0]:
                            refused = (msg_seq, write, code)
            if refused is not None:
                _, write, code = refused
                raise _dataplane_error(write.action, OSError(code, os.strerror(code)), write.remedies)

    def _dump(self, kind: int, header: bytes, attrs: bytes = b"") -> Iterator[bytes]:
        """The payload of each message of one dump."""
        self._seq += 1
        seq = self._seq
        body = header + attrs
        self._sock.send(_NLMSGHDR.pack(16 + len(body), kind, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body)
        while True:
            for msg_type, msg_seq, payload in _messages(self._sock.recv(1 << 20)):
                if msg_seq != seq:
                    continue  # a late answer to an earlier, abandoned request
                if msg_type == _NLMSG_DONE:
                    return
                if msg_type == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                yield payload

    def addresses(self, index: int) -> list[tuple[IPAddress, int, int]]:
        """(address, prefix length, scope) of each address of interface `index` (IFA_ADDRESS, as `ip addr`)."""
        found = []
        for payload in self._dump(_RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, index)):
            family, prefixlen, _, scope, ifindex = _IFADDRMSG.unpack_from(payload)
            if ifindex != index:
                continue  # a kernel without strict checking dumps every interface
            raw = _attributes(payload, _IFADDRMSG.size).get(_IFA_ADDRESS)
            if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            found.append((ipaddress.ip_address(raw), prefixlen, scope))
        return found

    def default_route_oifs(self, family: int) -> list[int]:
        """Output interfaces of the unicast default routes of the main table, lowest metric first."""
        header = _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, 0, 0, RTN_UNICAST, 0)
        routes = []
        for payload in self._dump(_RTM_GETROUTE, header):
            _, dst_len, _, _, table, _, _, kind, _ = _RTMSG.unpack_from(payload)
            if dst_len != 0 or kind != RTN_UNICAST:
                continue  # the connected route of every bridge ends here, unparsed
            attrs = _attributes(payload, _RTMSG.size)
            if RT_TABLE_MAIN != (struct.unpack("=I", attrs[_RTA_TABLE])[0] if _RTA_TABLE in attrs else table):
                continue
            priority = struct.unpack("=I", attrs[_RTA_PRIORITY])[0] if _RTA_PRIORITY in attrs else 0
            oif = struct.unpack("=i", attrs[_RTA_OIF])[0] if _RTA_OIF in attrs else 0
            if not oif and _RTA_MULTIPATH in attrs and len(attrs[_RTA_MULTIPATH]) >= _RTNEXTHOP.size:
                oif = _RTNEXTHOP.unpack_from(attrs[_RTA_MULTIPATH])[3]
            if oif:
                routes.append((priority, oif))
        return [oif for _, oif in sorted(routes, key=lambda route: route[0])]

    def default_route_gateways(self, family: int, oif: int) -> list[IPAddress]:
        """Gateways of the main table's unicast default routes that leave by interface `oif` (multipath too)."""
        header = _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, 0, 0, RTN_UNICAST, 0)
        gateways: list[IPAddress] = []
        for payload in self._dump(_RTM_GETROUTE, header):
            _, dst_len, _, _, table, _, _, kind, _ = _RTMSG.unpack_from(payload)
            if dst_len != 0 or kind != RTN_UNICAST:
                continue
            attrs = _attributes(payload, _RTMSG.size)
            if RT_TABLE_MAIN != (struct.unpack("=I", attrs[_RTA_TABLE])[0] if _RTA_TABLE in attrs else table):
                continue
            hops: list[tuple[int, dict[int, bytes]]] = []
            if _RTA_OIF in attrs:
                hops.append((struct.unpack("=i", attrs[_RTA_OIF])[0], attrs))
            multipath, offset = attrs.get(_RTA_MULTIPATH, b""), 0
            while offset + _RTNEXTHOP.size <= len(multipath):
                length, _, _, hop_oif = _RTNEXTHOP.unpack_from(multipath, offset)
                if length < _RTNEXTHOP.size:
                    break
                hops.append((hop_oif, _attributes(multipath[offset : offset + length], _RTNEXTHOP.size)))
                offset += (length + 3) & ~3
            for hop_oif, hop in hops:
                raw = hop.get(_RTA_GATEWAY)
                if hop_oif == oif and raw is not None and len(raw) in (4, 16):
                    gateways.append(ipaddress.ip_address(raw))
        return gateways


@dataclass
class _RemoteState:
    """The remote-endpoint entries of one network as the kernel holds them now (see the module docstring)."""

    flood: set[IPAddress] = field(default_factory=set)
    # MAC -> VTEPs of the permanent unicast entries of the VXLAN device (more than one only if appended).
    vxlan: dict[str, set[IPAddress]] = field(default_factory=dict)
    # MACs with a static bridge entry on the VXLAN port (not the port's own local entry, not learned ones).
    static: set[str] = field(default_factory=set)
    # IP -> MAC of the permanent neighbour entries on the bridge.
    neigh: dict[IPAddress, str] = field(default_factory=dict)


class NetlinkLinks:
    """The `Links` protocol on one network namespace.

    pyroute2 0.9 binds a netlink socket (and an asyncio loop) to the thread that uses it and quietly opens
    a new socket for every other thread.  The plugin serves requests from many threads, so all netlink
    work runs on one worker thread that owns the single socket; the lock makes each public operation,
    which is several netlink requests, atomic with respect to the others and keeps `close()` from racing them.
    """

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._lock = threading.Lock()
        self._closed = False
        self._bridges: dict[str, int] = {}  # bridge name -> index, see _bridge_index (worker thread only)
        self._raw: _RawDumps
        self._routes: _DefaultRouteWatch
        self._default_oif: int | None = None  # the default route's interface, while `_routes` sees no change
        self._gateways: dict[int, tuple[IPAddress, ...]] = {}  # link index -> its default gateways, likewise
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vxlanpy-netlink")
        try:
            self._ipr: Any = self._worker.submit(self._open).result()
        except BaseException:
            self._worker.shutdown(wait=False)
            raise

    def _open(self) -> Any:
        where = f"network namespace {self._netns!r}" if self._netns else "the host network namespace"
        remedies = {errno.ENOENT: f" ({where} does not exist); create it or fix the netns name"}
        with _netlink(f"cannot open a netlink socket in {where}", remedies):
            if self._netns is None:
                ipr = IPRoute()
            else:
                # flags=0: pyroute2 would otherwise silently create a missing namespace.
                ipr = NetNS(self._netns, flags=0)
            try:
                self._raw = _RawDumps(_open_raw_socket(self._netns))
            except BaseException:
                ipr.close()
                raise
            try:
                # Listening before the first dump: no change between the two is missed.
                self._routes = _DefaultRouteWatch(
                    _open_raw_socket(self._netns, _RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_ROUTE)
                )
            except BaseException:
                self._raw.close()
                ipr.close()
                raise
            return ipr

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._worker.submit(self._ipr.close).result()
            finally:
                self._raw.close()
                self._routes.close()
                self._worker.shutdown(wait=True)

    def __enter__(self) -> NetlinkLinks:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self, operation: str, func: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._closed:
                raise DataplaneError(f"cannot {operation}: the netlink connection is closed; restart the plugin")
            with _netlink(f"cannot {operation}"):
                return self._worker.submit(func, *args).result()

    # -- the Links protocol -----------------------------------------------------------------------------

    def underlay(self, dev: str | None) -> Underlay:
        return self._run("inspect the underlay interface", self._underlay, dev)

    def ensure_network(self, network: Network) -> None:
        self._run(f"set up network {network.bridge}", self._ensure_network, network)

    def remove_network(self, network: Network) -> None:
        self._run(f"remove network {network.bridge}", self._remove_network, network)

    def ensure_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        self._run(f"set up endpoint {endpoint.host_veth}", self._ensure_endpoint, network, endpoint)

    def remove_endpoint(self, endpoint: Endpoint) -> None:
        self._run(f"remove endpoint {endpoint.host_veth}", self._remove_endpoint, endpoint)

    def sync_remotes(self, network: Network, flood: set[IPAddress], remotes: list[RemoteEndpoint]) -> None:
        wanted_flood = {_checked_address(vtep, "a flood VTEP") for vtep in flood}
        wanted: dict[str, RemoteEndpoint] = {}
        for remote in remotes:  # a MAC listed twice: the last one wins, as a later event would
            wanted[_unicast_mac(remote.mac)] = remote
            _checked_address(remote.vtep, f"the VTEP of {remote.mac}")
            for address in remote.addresses:
                _checked_address(address, f"an address of {remote.mac}")
        self._run(f"program the remote endpoints of {network.vxlan}", self._sync_remotes, network, wanted_flood, wanted)

    def update_remotes(
        self, network: Network, gone_macs: set[str], gone_addresses: set[IPAddress], remotes: list[RemoteEndpoint]
    ) -> None:
        macs = {_unicast_mac(mac) for mac in gone_macs}
        addresses = {_checked_address(address, "a former neighbour") for address in gone_addresses}
        wanted: dict[str, RemoteEndpoint] = {}
        for remote in remotes:
            wanted[_unicast_mac(remote.mac)] = remote
            _checked_address(remote.vtep, f"the VTEP of {remote.mac}")
            for address in remote.addresses:
                _checked_address(address, f"an address of {remote.mac}")
        self._run(
            f"update the remote endpoints of {network.vxlan}", self._update_remotes, network, macs, addresses, wanted
        )

    def remote_entries(self, network: Network) -> tuple[set[IPAddress], list[RemoteEndpoint]]:
        return self._run(f"read the remote endpoints of {network.vxlan}", self._remote_entries, network)

    def remove_link(self, name: str) -> None:
        self._run(f"remove interface {name}", self._remove_link, name)

    def owned_links(self) -> dict[str, str]:
        return self._run("list vxlanpy's interfaces", self._owned_links)

    # -- implementations: these run on the worker thread only -------------------------------------------

    def _underlay(self, dev: str | None) -> Underlay:
        link = self._default_route_link() if dev is None else self._link(dev)
        if link is None:
            raise InvalidOption(f"underlay interface {dev!r} does not exist: set -o dev=<interface>")
        dev = str(link.get("ifname"))
        with _netlink(f"cannot read the addresses of {dev}"):
            addresses = self._raw.addresses(int(link["index"]))
        universe = [address for address, _, scope in addresses if scope == RT_SCOPE_UNIVERSE]
        ordered = sorted(universe, key=lambda address: address.version)
        return Underlay(
            dev=dev, mtu=int(link.get("mtu")), addresses=tuple(ordered), gateways=self._default_gateways(link)
        )

    def _note_route_changes(self) -> None:
        """Forget what was read of the default routes when one changed since (see `_DefaultRouteWatch`)."""
        with _netlink("cannot read the routing table"):
            if self._routes.changed():
                self._default_oif = None
                self._gateways.clear()

    def _default_gateways(self, link: Msg) -> tuple[IPAddress, ...]:
        """The gateways of the default routes that leave by `link`, dumped again only after a default route changed."""
        self._note_route_changes()
        index = int(link["index"])
        if index not in self._gateways:
            gateways: list[IPAddress] = []
            for family in (socket.AF_INET, socket.AF_INET6):
                with _netlink("cannot read the routing table"):
                    gateways += self._raw.default_route_gateways(family, index)
            self._gateways[index] = tuple(dict.fromkeys(gateways))
        return self._gateways[index]

    def _default_route_link(self) -> Msg:
        """The link of the default route: IPv4 first, lowest metric first (see `_DefaultRouteWatch`)."""
        self._note_route_changes()
        if self._default_oif is not None:
            link = self._link_at(self._default_oif)
            if link is not None:
                return link
        for family in (socket.AF_INET, socket.AF_INET6):
            with _netlink("cannot read the routing table"):
                oifs = self._raw.default_route_oifs(family)
            for oif in oifs:
                link = self._link_at(oif)
                if link is not None:
                    self._default_oif = oif
                    return link
        self._default_oif = None
        raise InvalidOption("no default route to pick the underlay interface from: set -o dev=<interface>")

    def _ensure_network(self, network: Network) -> None:
        dev_index = self._dev_index(network.config.dev)
        bridge = self._ensure_bridge(network)
        if self._netns is None:  # the first CreateEndpoint on it (`docker run` right after) skips a lookup
            self._bridges[network.bridge] = int(bridge["index"])
        self._ensure_gateways(network, bridge)
        vxlan = self._ensure_vxlan(network, bridge, dev_index)
        self._ensure_neigh_suppress(network, vxlan)
        self._ensure_peers(network, vxlan)

    def _remove_network(self, network: Network) -> None:
        self._bridges.pop(network.bridge, None)
        for name in (network.vxlan, network.bridge):
            link = self._link(name)
            if link is not None and (_is_owned(link) or _created_unlabelled(link, network)):
                self._delete(link)

    def _bridge_index(self, network: Network) -> int | None:
        """The index of the network's bridge, None when it does not exist.

        In the plugin's own namespace a bridge already checked (ours, a bridge) is remembered by index and
        re-validated with if_nametoindex (an ioctl, no netlink decode): the same name at the same index is the
        same device, since the kernel hands out interface indexes cyclically and does not reuse them soon."""
        cached = self._bridges.get(network.bridge) if self._netns is None else None
        if cached is not None:
            try:
                if socket.if_nametoindex(network.bridge) == cached:
                    return cached
            except OSError:
                pass
            self._bridges.pop(network.bridge, None)
        bridge = self._owned_link(network.bridge, _VNI_REMEDY)
        if bridge is None:
            return None
        index = int(bridge["index"])
        if _kind(bridge) == "bridge":
            self._bridges[network.bridge] = index
        return index

    def _ensure_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        bridge_index = self._bridge_index(network)
        if bridge_index is None:
            raise DataplaneError(
                f"cannot attach endpoint {endpoint.host_veth}: bridge {network.bridge} does not exist; "
                "recreate the network or restart the plugin so that it reconciles"
            )
        if self._add_veth_fast(network, endpoint, bridge_index):
            return
        bridge = {"index": bridge_index}
        host = self._owned_link(endpoint.host_veth, _VETH_REMEDY)
        if host is None:
            host = self._create_veth(network, endpoint, bridge)
        self._converge(host, mtu=network.config.mtu, master=bridge["index"], alias=endpoint.alias, up=True)
        container = self._owned_link(endpoint.container_veth, _VETH_REMEDY)
        if container is not None:
            self._converge(container, mtu=network.config.mtu, address=endpoint.mac, alias=endpoint.alias)

    def _remove_endpoint(self, endpoint: Endpoint) -> None:
        # Deleting one end of a veth removes both, so the container end is usually gone by then.  By name, without
        # reading the link first: a missing one answers ENODEV at once.
        for name in (endpoint.host_veth, endpoint.container_veth):
            self._delete_name(name)

    def _remove_link(self, name: str) -> None:
        link = self._link(name)
        if link is not None and _is_owned(link):
            self._delete(link)

    def _owned_links(self) -> dict[str, str]:
        with _netlink("cannot list the interfaces"):
            links = self._ipr.link("dump")
        return {str(link.get("ifname")): _alias(link) for link in links if _is_owned(link)}

    # -- bridge ------------------------------------------------------------------------------------------

    def _ensure_bridge(self, network: Network) -> Msg:
        bridge = self._owned_link(network.bridge, _VNI_REMEDY)
        if bridge is not None and _kind(bridge) != "bridge":
            self._delete(bridge)
            bridge = None
        if bridge is None:
            bridge = self._create(
                f"cannot create bridge {network.bridge}",
                network.alias,
                no_ipv6=not network.ipv6,
                ifname=network.bridge,
                kind="bridge",
                mtu=network.config.mtu,
                address=network.gateway_mac,
                br_stp_state=0,
                br_forward_delay=0,
            )
        if _info(bridge, "br_stp_state") != 0 or _info(bridge, "br_forward_delay") != 0:
            with _netlink(f"cannot turn STP off on bridge {network.bridge}"):
                self._ipr.link("set", index=bridge["index"], kind="bridge", br_stp_state=0, br_forward_delay=0)
        return self._converge(bridge, mtu=network.config.mtu, address=network.gateway_mac, alias=network.alias, up=True)

    def _ensure_gateways(self, network: Network, bridge: Msg) -> None:
        wanted = {(gateway.ip, gateway.network.prefixlen) for gateway in network.gateways}
        with _netlink(f"cannot read the addresses of bridge {network.bridge}"):
            present = {(address, prefixlen) for address, prefixlen, _ in self._raw.addresses(int(bridge["index"]))}
        for ip, prefixlen in present - wanted:
            if ip in IPV6_LINK_LOCAL:
                continue
            with _netlink(f"cannot remove stale address {ip}/{prefixlen} from bridge {network.bridge}"):
                self._ipr.addr("del", index=bridge["index"], address=str(ip), prefixlen=prefixlen)
        for ip, prefixlen in sorted(wanted - present, key=str):
            # The gateway is the same address on every host; suppressed ND makes DAD pointless, skip its delay.
            flags = IFA_F_NODAD if ip.version == 6 else 0
            remedies = {errno.EEXIST: f" ({ip} is already assigned elsewhere on this host); choose another subnet"}
            with _netlink(f"cannot add gateway {ip}/{prefixlen} to bridge {network.bridge}", remedies):
                self._ipr.addr("add", index=bridge["index"], address=str(ip), prefixlen=prefixlen, flags=flags)

    # -- vxlan -------------------------------------------------------------------------------------------

    def _ensure_vxlan(self, network: Network, bridge: Msg, dev_index: int | None) -> Msg:
        config = network.config
        vxlan = self._owned_link(network.vxlan, _VNI_REMEDY)
        if vxlan is not None and not self._vxlan_matches(vxlan, config, dev_index):
            self._delete(vxlan)
            vxlan = None
        if vxlan is None:
            on_dev = f" on dev {config.dev}" if config.dev else ""
            in_use = f" (another VXLAN device already uses VNI {config.vni} and port {config.dstport})"
            remedies = {
                errno.EEXIST: f"{in_use}; remove it or choose another vni",
                errno.EADDRINUSE: f"{in_use}; remove it or choose another vni or dstport",
                errno.EINVAL: f" (mtu {config.mtu} or an address does not fit the underlay{on_dev}); "
                "lower -o mtu or check -o local/remote/group",
            }
            vxlan = self._create(
                f"cannot create VXLAN device {network.vxlan}{on_dev}",
                network.alias,
                remedies,
                no_ipv6=True,
                ifname=network.vxlan,
                kind="vxlan",
                mtu=config.mtu,
                master=bridge["index"],
                **self._vxlan_spec(config, dev_index),
            )
        return self._converge(vxlan, mtu=config.mtu, master=bridge["index"], alias=network.alias, up=True)

    @staticmethod
    def _vxlan_spec(config: NetworkConfig, dev_index: int | None) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "vxlan_id": config.vni,
            "vxlan_port": config.dstport,
            "vxlan_learning": int(config.learning),
        }
        if dev_index is not None:
            spec["vxlan_link"] = dev_index
        if config.local is not None:
            spec[_ip_key(config.local, "vxlan_local", "vxlan_local6")] = str(config.local)
        if config.ttl is not None:
            spec["vxlan_ttl"] = config.ttl
        destination = config.remote or config.group
        if destination is not None:
            spec[_ip_key(destination, "vxlan_group", "vxlan_group6")] = str(destination)
        return spec

    @staticmethod
    def _vxlan_matches(vxlan: Msg, config: NetworkConfig, dev_index: int | None) -> bool:
        """Whether the existing device already has the parameters that only a re-creation can change."""
        local = _address_or_none(_info(vxlan, "vxlan_local") or _info(vxlan, "vxlan_local6"))
        group = _address_or_none(_info(vxlan, "vxlan_group") or _info(vxlan, "vxlan_group6"))
        return (
            _kind(vxlan) == "vxlan"
            and _info(vxlan, "vxlan_id") == config.vni
            and _info(vxlan, "vxlan_port") == config.dstport
            and (_info(vxlan, "vxlan_link") or None) == dev_index
            and local == config.local
            and group == (config.remote or config.group)
            and (_info(vxlan, "vxlan_ttl") or 0) == (config.ttl or 0)
            and bool(_info(vxlan, "vxlan_learning")) == config.learning
        )

    def _ensure_neigh_suppress(self, network: Network, vxlan: Msg) -> None:
        # Set every time: reading it back (`brport show`) dumps every bridge port of the host, O(endpoints),
        # while setting the value it already has is one request that changes nothing.
        action = f"cannot turn on neigh_suppress on bridge port {network.vxlan}"
        with _netlink(action, {errno.EINVAL: "; the kernel is too old for neigh_suppress (needs 4.15 or later)"}):
            self._ipr.brport("set", index=vxlan["index"], neigh_suppress=1)

    def _ensure_peers(self, network: Network, vxlan: Msg) -> None:
        """Add the all-zero entries of the static peers that are missing.

        Nothing is removed here: in multi-host mode `sync_remotes` owns the flood list, and reconciliation
        calls this again; a peer dropped from the options goes with the next `sync_remotes`."""
        if not network.config.peers:  # multi-host mode: no dump of a table that may hold 10^5 remote entries
            return
        present = self._read_remotes(network, vxlan, None).flood
        for peer in sorted(set(network.config.peers) - present, key=str):
            self._add_flood(network, vxlan, peer)

    # -- remote endpoints (multi-host mode) ---------------------------------------------------------------

    def _network_links(self, network: Network) -> tuple[Msg, Msg] | None:
        """The network's VXLAN device and bridge, None if either is gone; the VXLAN device must be a port."""
        vxlan = self._owned_link(network.vxlan, _VNI_REMEDY)
        bridge = self._owned_link(network.bridge, _VNI_REMEDY)
        if vxlan is None or bridge is None:
            return None
        if vxlan.get("master") != bridge["index"]:
            raise DataplaneError(
                f"{network.vxlan} is not a port of bridge {network.bridge}; "
                "restart the plugin so that it reconciles the network"
            )
        return vxlan, bridge

    def _remote_links(self, network: Network) -> tuple[Msg, Msg]:
        """The network's VXLAN device and bridge, on which remote endpoints are programmed."""
        found = self._network_links(network)
        if found is None:
            raise DataplaneError(
                f"cannot program remote endpoints: {network.vxlan} or {network.bridge} does not exist; "
                "recreate the network or restart the plugin so that it reconciles"
            )
        return found

    def _sync_remotes(self, network: Network, flood: set[IPAddress], wanted: dict[str, RemoteEndpoint]) -> None:
        vxlan, bridge = self._remote_links(network)
        present = self._read_remotes(network, vxlan, bridge)
        neigh = {address: mac for mac, remote in wanted.items() for address in remote.addresses}

        # Retire first what is no longer wanted, in the order that never leaves an answer without a path:
        # neighbour entries, then the bridge's static entries, then the VXLAN entries and flood VTEPs.
        writes = [
            self._neigh_removal(network, bridge, a) for a in sorted(present.neigh.keys() - neigh.keys(), key=_order)
        ]
        writes += [self._bridge_static_removal(network, vxlan, mac) for mac in sorted(present.static - wanted.keys())]
        writes += [
            self._vxlan_entry_removal(network, vxlan, mac) for mac in sorted(present.vxlan.keys() - wanted.keys())
        ]
        for vtep in sorted(present.flood - flood - _default_destinations(network.config), key=str):
            writes.append(self._flood_removal(network, vxlan, vtep))

        # Then add or correct what is missing, the forwarding path before the neighbour entry it serves.
        writes += [self._flood(network, vxlan, vtep) for vtep in sorted(flood - present.flood, key=str)]
        for mac, remote in sorted(wanted.items()):
            vteps = present.vxlan.get(mac, set())
            if vteps == {remote.vtep}:
                continue
            if len(vteps) > 1:  # a replace only changes the first destination: start over
                writes.append(self._vxlan_entry_removal(network, vxlan, mac))
            writes.append(self._vxlan_entry(network, vxlan, mac, remote.vtep))
        writes += [self._bridge_static(network, vxlan, mac) for mac in sorted(wanted.keys() - present.static)]
        for address, mac in sorted(neigh.items(), key=lambda item: _order(item[0])):
            if present.neigh.get(address) != mac:
                writes.append(self._neigh(network, bridge, address, mac))
        self._raw.write_neighbours(writes)

    def _update_remotes(
        self, network: Network, gone_macs: set[str], gone_addresses: set[IPAddress], wanted: dict[str, RemoteEndpoint]
    ) -> None:
        """One change's worth of `_sync_remotes`, in its order, without reading the tables: a replace is
        idempotent and a removal of what is gone is fine, so nothing needs to be known of what is there."""
        vxlan, bridge = self._remote_links(network)
        writes = [self._neigh_removal(network, bridge, address) for address in sorted(gone_addresses, key=_order)]
        writes += [self._bridge_static_removal(network, vxlan, mac) for mac in sorted(gone_macs)]
        writes += [self._vxlan_entry_removal(network, vxlan, mac) for mac in sorted(gone_macs)]
        writes += [self._vxlan_entry(network, vxlan, mac, remote.vtep) for mac, remote in sorted(wanted.items())]
        writes += [self._bridge_static(network, vxlan, mac) for mac in sorted(wanted)]
        for mac, remote in sorted(wanted.items()):
            writes += [self._neigh(network, bridge, address, mac) for address in _addresses_sorted(remote.addresses)]
        self._raw.write_neighbours(writes)

    def _remote_entries(self, network: Network) -> tuple[set[IPAddress], list[RemoteEndpoint]]:
        found = self._network_links(network)
        if found is None:
            return set(), []
        vxlan, bridge = found
        present = self._read_remotes(network, vxlan, bridge)
        flood = present.flood - _default_destinations(network.config)
        by_mac: dict[str, list[IPAddress]] = {}
        for address, mac in present.neigh.items():
            by_mac.setdefault(mac, []).append(address)
        remotes = [
            RemoteEndpoint(
                mac=mac, vtep=min(vteps, key=lambda a: (a.version, a)), addresses=_addresses_sorted(by_mac.get(mac, ()))
            )
            for mac, vteps in sorted(present.vxlan.items())
        ]
        return flood, remotes

    def _read_remotes(self, network: Network, vxlan: Msg, bridge: Msg | None) -> _RemoteState:
        """One FDB dump of the VXLAN port (its own entries and the bridge's for it), one neighbour dump of
        the bridge (skipped when `bridge` is None): both filtered by the kernel, as `bridge fdb show dev`."""
        state = _RemoteState()
        index = vxlan["index"]
        request = ifinfmsg()  # an ifinfomsg header is how the kernel takes a port filter for an FDB dump
        request["family"] = socket.AF_BRIDGE
        request["index"] = index
        with _netlink(f"cannot read the forwarding database of {network.vxlan}"):
            entries = self._dump(request)
        for entry in entries:
            mac = str(entry.get("lladdr") or "").lower()
            if entry["ifindex"] != index or not mac:
                continue
            if entry["flags"] & NTF_SELF:
                dst = _address_or_none(entry.get("dst"))
                if dst is None or entry.get("vni") not in (None, network.vni):
                    continue
                if mac == ALL_ZEROS_MAC:
                    state.flood.add(dst)
                elif entry["state"] & NUD_PERMANENT:
                    state.vxlan.setdefault(mac, set()).add(dst)
            elif entry.get("master") is not None and entry.get("vlan") is None:
                # Permanent is the bridge's own (local) entry for the port's MAC; without NOARP it is learned.
                static = entry["state"] & (NUD_PERMANENT | NUD_NOARP) == NUD_NOARP
                if static and not entry["flags"] & NTF_EXT_LEARNED:
                    state.static.add(mac)
        if bridge is None:
            return state
        request = ndmsg()
        request["family"] = socket.AF_UNSPEC  # IPv4 and IPv6 in one dump
        request["attrs"] = [("NDA_IFINDEX", bridge["index"])]
        with _netlink(f"cannot read the neighbour table of {network.bridge}"):
            entries = self._dump(request)
        for entry in entries:
            dst, mac = entry.get("dst"), entry.get("lladdr")
            if entry["ifindex"] != bridge["index"] or not dst or not mac:
                continue
            if entry["state"] & NUD_PERMANENT:
                state.neigh[ipaddress.ip_address(dst)] = str(mac).lower()
        return state

    def _dump(self, request: Msg) -> list[Msg]:
        request["header"]["type"] = RTM_GETNEIGH
        request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        # nlm_request_batch sends the message as built: fdb()/neigh() would only filter a full dump here.
        return list(self._ipr.nlm_request_batch([request]))

    # The writes of `_sync_remotes` and `_update_remotes`, batched by `_RawDumps.write_neighbours`: the requests
    # `bridge fdb` and `ip neigh` send, with the message to give when the kernel refuses one.

    @staticmethod
    def _flood(network: Network, vxlan: Msg, vtep: IPAddress) -> _NeighWrite:
        return _NeighWrite(
            f"cannot add flood VTEP {vtep} to {network.vxlan}", socket.AF_BRIDGE, int(vxlan["index"]), ALL_ZEROS_MAC,
            vtep, _VXLAN_ENTRY_STATE, NTF_SELF, _NLM_F_CREATE | _NLM_F_APPEND, _FAMILY_REMEDY,
        )  # fmt: skip

    @staticmethod
    def _flood_removal(network: Network, vxlan: Msg, vtep: IPAddress) -> _NeighWrite:
        return _NeighWrite(
            f"cannot remove former flood VTEP {vtep} from {network.vxlan}", socket.AF_BRIDGE, int(vxlan["index"]),
            ALL_ZEROS_MAC, vtep, flags=NTF_SELF, mode=None,
        )  # fmt: skip

    @staticmethod
    def _vxlan_entry(network: Network, vxlan: Msg, mac: str, vtep: IPAddress) -> _NeighWrite:
        return _NeighWrite(
            f"cannot point {mac} at VTEP {vtep} on {network.vxlan}", socket.AF_BRIDGE, int(vxlan["index"]), mac,
            vtep, _VXLAN_ENTRY_STATE, NTF_SELF, remedies=_FAMILY_REMEDY,
        )  # fmt: skip

    @staticmethod
    def _vxlan_entry_removal(network: Network, vxlan: Msg, mac: str) -> _NeighWrite:
        return _NeighWrite(
            f"cannot remove remote {mac} from {network.vxlan}", socket.AF_BRIDGE, int(vxlan["index"]), mac,
            flags=NTF_SELF, mode=None,
        )  # fmt: skip

    @staticmethod
    def _bridge_static(network: Network, vxlan: Msg, mac: str) -> _NeighWrite:
        return _NeighWrite(
            f"cannot add static entry {mac} on port {network.vxlan} to bridge {network.bridge}", socket.AF_BRIDGE,
            int(vxlan["index"]), mac, state=_BRIDGE_STATIC_STATE, flags=NTF_MASTER,
        )  # fmt: skip

    @staticmethod
    def _bridge_static_removal(network: Network, vxlan: Msg, mac: str) -> _NeighWrite:
        return _NeighWrite(
            f"cannot remove static entry {mac} from bridge {network.bridge}", socket.AF_BRIDGE, int(vxlan["index"]),
            mac, state=_BRIDGE_STATIC_STATE, flags=NTF_MASTER, mode=None,
        )  # fmt: skip

    @staticmethod
    def _neigh(network: Network, bridge: Msg, address: IPAddress, mac: str) -> _NeighWrite:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        remedies = {errno.EINVAL: f" (is IPv{address.version} disabled on {network.bridge}?)"}
        return _NeighWrite(
            f"cannot add neighbour {address} -> {mac} to bridge {network.bridge}", family, int(bridge["index"]), mac,
            address, NUD_PERMANENT, remedies=remedies,
        )  # fmt: skip

    @staticmethod
    def _neigh_removal(network: Network, bridge: Msg, address: IPAddress) -> _NeighWrite:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        return _NeighWrite(
            f"cannot remove neighbour {address} from bridge {network.bridge}", family, int(bridge["index"]),
            dst=address, mode=None,
        )  # fmt: skip

    def _add_flood(self, network: Network, vxlan: Msg, vtep: IPAddress) -> None:
        with _netlink(f"cannot add flood VTEP {vtep} to {network.vxlan}", _FAMILY_REMEDY):
            self._ipr.fdb(
                "append",
                ifindex=vxlan["index"],
                lladdr=ALL_ZEROS_MAC,
                dst=str(vtep),
                state=_VXLAN_ENTRY_STATE,
                flags=NTF_SELF,
            )

    # -- veth --------------------------------------------------------------------------------------------

    def _add_veth_fast(self, network: Network, endpoint: Endpoint, bridge_index: int) -> bool:
        """The usual CreateEndpoint: neither end exists yet.  One request creates the pair already up and on the
        bridge, two more label both ends, and nothing is read back (each read is a full link decode).  False when
        either name is taken (a retry, a leftover): the caller then converges whatever is there step by step."""
        mtu = network.config.mtu
        try:
            self._ipr.link(
                "add",
                ifname=endpoint.host_veth,
                kind="veth",
                mtu=mtu,
                master=bridge_index,
                state="up",
                peer={"ifname": endpoint.container_veth, "address": endpoint.mac, "mtu": mtu},
            )
        except NetlinkError as error:
            if error.code == errno.EEXIST:
                return False
            action = f"cannot create veth pair {endpoint.host_veth}/{endpoint.container_veth}"
            raise _dataplane_error(action, error, {}) from error
        try:
            # The kernel ignores IFLA_IFALIAS in a create request, so the labels need requests of their own:
            # both sent at once.  The container end is down until dockerd moves it into the sandbox, so the
            # host end has no carrier yet (see `_label`).
            host, container = endpoint.host_veth, endpoint.container_veth
            with _netlink(f"cannot label interfaces {host} and {container} as vxlanpy's"):
                self._label([(host, endpoint.alias, True), (container, endpoint.alias, False)])
        except DataplaneError:
            # An unlabelled link would be taken for someone else's and block every later attempt.
            self._delete_name(endpoint.host_veth)
            raise
        return True

    def _delete_name(self, name: str) -> None:
        try:
            self._ipr.link("del", ifname=name)
        except NetlinkError as error:
            if error.code != errno.ENODEV:
                raise _dataplane_error(f"cannot delete interface {name}", error, {}) from error

    def _create_veth(self, network: Network, endpoint: Endpoint, bridge: Msg) -> Msg:
        stale = self._owned_link(endpoint.container_veth, _VETH_REMEDY)
        if stale is not None:
            self._delete(stale)
        host = self._create(
            f"cannot create veth pair {endpoint.host_veth}/{endpoint.container_veth}",
            endpoint.alias,
            no_ipv6=True,
            ifname=endpoint.host_veth,
            kind="veth",
            mtu=network.config.mtu,
            master=bridge["index"],
            peer={"ifname": endpoint.container_veth, "address": endpoint.mac, "mtu": network.config.mtu},
        )
        self._converge(self._require(endpoint.container_veth), alias=endpoint.alias)
        return host

    # -- generic link helpers ----------------------------------------------------------------------------

    def _link(self, name: str) -> Msg | None:
        try:
            return self._ipr.link("get", ifname=name)[0]
        except NetlinkError as error:
            if error.code == errno.ENODEV:
                return None
            raise _dataplane_error(f"cannot look up interface {name}", error, {}) from error

    def _require(self, name: str) -> Msg:
        link = self._link(name)
        if link is None:
            raise DataplaneError(f"interface {name} vanished right after it was created; retry the request")
        return link

    def _link_at(self, index: int) -> Msg | None:
        try:
            return self._ipr.link("get", index=index)[0]
        except NetlinkError as error:
            if error.code == errno.ENODEV:
                return None
            raise _dataplane_error(f"cannot look up interface #{index}", error, {}) from error

    def _owned_link(self, name: str, remedy: str) -> Msg | None:
        """The link called `name` if there is one, refusing to touch a link vxlanpy did not create."""
        link = self._link(name)
        if link is not None and not _is_owned(link):
            raise Conflict(f"interface {name} exists and is not managed by vxlanpy; {remedy}")
        return link

    def _dev_index(self, dev: str | None) -> int | None:
        if dev is None:
            return None
        link = self._link(dev)
        if link is None:
            raise InvalidOption(f"underlay interface {dev!r} does not exist: set -o dev=<interface>")
        return int(link["index"])

    def _create(
        self, action: str, alias: str, remedies: Mapping[int, str] | None = None, no_ipv6: bool = False, **spec: Any
    ) -> Msg:
        """Create a link and label it with `alias` (see `_label` for `no_ipv6`); returns the new link."""
        with _netlink(action, remedies):
            self._ipr.link("add", **spec)
        link = self._require(spec["ifname"])
        # The kernel ignores IFLA_IFALIAS in a create request, so the alias needs a second one.
        try:
            with _netlink(f"cannot label interface {spec['ifname']} as vxlanpy's"):
                self._label([(spec["ifname"], alias, no_ipv6)])
        except DataplaneError:
            # An unlabelled link would be taken for someone else's and block every later attempt.
            self._delete(link)
            raise
        return self._require(spec["ifname"])

    def _label(self, links: list[tuple[str, str, bool]]) -> None:
        """Set the alias of each (name, alias, no_ipv6) link and, with `no_ipv6`, turn its IPv6 address
        generation off (`addrgenmode none`); all requests in one send on the raw socket.  Raises OSError.

        A bridge port (VXLAN device, host end of a veth) needs no IPv6 address, nor does the bridge of an
        IPv4-only network.  Without one the kernel skips, per device, the link-local address, its DAD, its
        fe80::/64 route and the MLD reports: kworker time that grows with the devices on the host and slowed
        every netlink request by half at 1000 networks.  It must be set before the link has carrier (it is
        still down, or a veth whose peer is), when the kernel would make the link-local address."""
        failed = self._raw.label(links)
        # A kernel without IPv6 refuses the address generation mode: then the alias is all there is.
        retry = [(name, alias, False) for name, alias, _ in links if failed.get(name) == errno.EAFNOSUPPORT]
        for name, _, _ in retry:
            del failed[name]
        if retry:
            failed.update(self._raw.label(retry))
        if failed:
            code = next(iter(failed.values()))
            raise OSError(code, os.strerror(code))

    def _converge(
        self,
        link: Msg,
        *,
        mtu: int | None = None,
        address: str | None = None,
        master: int | None = None,
        alias: str | None = None,
        up: bool = False,
    ) -> Msg:
        """Change only what differs, so that calling ensure_* again leaves the kernel alone."""
        changes: dict[str, Any] = {}
        if mtu is not None and link.get("mtu") != mtu:
            changes["mtu"] = mtu
        if address is not None and str(link.get("address")).lower() != address.lower():
            changes["address"] = address
        if master is not None and link.get("master") != master:
            changes["master"] = master
        if alias is not None and _alias(link) != alias:
            changes["ifalias"] = alias
        if up and not _is_up(link):
            changes["state"] = "up"
        if not changes:
            return link
        name = link.get("ifname")
        remedies = {}
        if "mtu" in changes:
            remedies[errno.EINVAL] = f" (mtu {mtu} may exceed what the lower device allows); lower -o mtu"
        with _netlink(f"cannot update interface {name} ({', '.join(sorted(changes))})", remedies):
            self._ipr.link("set", index=link["index"], **changes)
        return self._require(name)

    def _delete(self, link: Msg) -> None:
        name = link.get("ifname")
        try:
            self._ipr.link("del", index=link["index"])
        except NetlinkError as error:
            if error.code != errno.ENODEV:
                raise _dataplane_error(f"cannot delete interface {name}", error, {}) from error
