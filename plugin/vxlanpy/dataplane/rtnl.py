"""The little rtnetlink vxlanpy speaks without pyroute2: a codec for the requests, dumps and notifications below,
and the socket that carries them.  Everything else goes through pyroute2.

What pyroute2 0.9.7 offers for each, and why this stays: timed on the 2-core benchmark VM, in a throwaway
namespace holding 300 networks (a bridge with an address each), medians; a second run on a busier machine
gave about twice every figure and the same ratios.

* Batched writes: `nlm_request_batch` sends many requests at once, but encodes each message with pyroute2's
  generic codec (ndmsg 176 us, ifinfmsg 232 us, against 9 and 4 us here) and stops at the first refusal
  without saying which request it was.  3000 FDB writes: 89 ms here, 744 ms with `nlm_request_batch`, 1130 ms
  with one `fdb()` each.  Labelling both ends of a new veth pair (alias, `addrgenmode none`): 0.04 ms here in one
  send, 0.58 ms with `nlm_request_batch`, 0.89 ms with two `link("set")`.
* `IFLA_IFALIAS` and `addrgenmode`: pyroute2 encodes both (`ifalias=`, `IFLA_AF_SPEC`/`AF_INET6`), at the cost
  above (one `link("set")` with both: 0.45 ms, 0.02 ms here).  `NetlinkLinks` sets an alias through pyroute2
  when it changes it together with other attributes (`_converge`); a new link's label goes through `label`.
* Devconf: pyroute2 maps `IFLA_AF_SPEC`/`AF_INET` to the flat array a dump returns, not to the nested
  `IFLA_INET_CONF` attributes a change needs: `link("set", IFLA_AF_SPEC={"attrs": [["AF_INET",
  {"route_localnet": 1}]]})` is accepted and changes nothing, so `set_ipv4_devconf` encodes it here.
* Dumps: `addr("dump", index=...)` and `route("dump", table=...)` ask the kernel for everything and filter after
  decoding each message: 26 ms and 56 ms, against 0.07 and 0.37 ms here with the kernel filtering
  (NETLINK_GET_STRICT_CHK) and only the needed fields read.  Even a hand-built request on a strict pyroute2
  socket costs 0.43 ms for the addresses and 18 ms for the default routes (the kernel cannot filter on
  rtm_dst_len, so every connected route is decoded).  Only the gateways of one interface cost the same that
  way (RTA_OIF lets the kernel filter: 0.38 ms both), but it takes a second pyroute2 socket, with strict
  checking, for the dump `default_route_oifs` already reads here.
* Route monitoring: pyroute2's `get()` blocks until a notification arrives and decodes each one (51 us, against
  1.4 us to read rtm_dst_len here); `DefaultRouteWatch` only needs to know, without waiting, whether one was
  about a default route.
* Sockets in another namespace: `pyroute2.netns.create_socket` (it forks: 9 ms, once per socket, and only for a
  namespace other than the plugin's; the ctypes setns in a thread it replaces took 0.6 ms, not worth its code).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink import (
    NETLINK_GET_STRICT_CHK,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
)
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTM_SETLINK,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_ROUTE,
)

from ..errors import DataplaneError
from ..models import IPAddress

T = TypeVar("T")

RT_TABLE_MAIN = 254
RTN_UNICAST = 1
ROUTE_GROUPS = RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
TIMEOUT = 30.0  # seconds to wait for the kernel's answer

NLMSGHDR = struct.Struct("=IHHII")
NLATTR = struct.Struct("=HH")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
RTMSG = struct.Struct("=BBBBBBBBI")
RTNEXTHOP = struct.Struct("=HBBi")
NDMSG = struct.Struct("=BxxxiHBB")
NLMSGERR = struct.Struct("=i")
NLA_TYPE_MASK = 0x3FFF  # an attribute type without NLA_F_NESTED and NLA_F_NET_BYTEORDER

IFF_UP = 1
IFLA_IFNAME, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_AF_SPEC, IFLA_GROUP = 3, 18, 20, 26, 27
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_PORT = 1, 15  # the port in network byte order
NLA_F_NESTED = 0x8000
IFLA_INET_CONF = 1
IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1
IFA_ADDRESS = 1
RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 4, 5, 6, 9, 15
NDA_DST, NDA_LLADDR = 1, 2
IPV4_DEVCONF = {"route_localnet": 26}  # IPV4_DEVCONF_* index, include/uapi/linux/ip.h

NEIGH_BATCH = 256  # writes per send(): their acknowledgements fit in the socket's receive buffer


# -- codec --------------------------------------------------------------------------------------------------


def align(length: int) -> int:
    return (length + 3) & ~3


def nlattr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to the next 4-byte boundary."""
    length = NLATTR.size + len(payload)
    return NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """A request: the netlink header before `body` (a family header and its attributes)."""
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence number, payload) of each netlink message in one buffer read from a socket."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, msg_type, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            return  # malformed or cut short: nothing after it can be trusted
        yield msg_type, seq, data[offset + NLMSGHDR.size : offset + length]
        offset += align(length)


def attributes(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The top-level attributes from `offset` on (type -> payload; nested and byte-order flags masked off)."""
    found: dict[int, bytes] = {}
    while offset + NLATTR.size <= len(data):
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > len(data):
            break
        found[kind & NLA_TYPE_MASK] = data[offset + NLATTR.size : offset + length]
        offset += align(length)
    return found


def error_code(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR payload (0: an acknowledgement)."""
    if len(payload) < NLMSGERR.size:
        return errno.EBADMSG
    return -int(NLMSGERR.unpack_from(payload)[0])


def u32(attrs: dict[int, bytes], kind: int, default: int = 0) -> int:
    raw = attrs.get(kind)
    return int(struct.unpack_from("=I", raw)[0]) if raw is not None and len(raw) >= 4 else default


def label_request(seq: int, name: str, alias: str, no_ipv6: bool) -> bytes:
    """RTM_SETLINK of the link called `name`: its alias and, with `no_ipv6`, `addrgenmode none`."""
    attrs = nlattr(IFLA_IFNAME, name.encode() + b"\0") + nlattr(IFLA_IFALIAS, alias.encode())
    if no_ipv6:
        mode = nlattr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE]))
        attrs += nlattr(IFLA_AF_SPEC, nlattr(socket.AF_INET6, mode))
    return message(RTM_SETLINK, NLM_F_ACK, seq, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attrs)


def devconf_request(seq: int, index: int, name: str, value: int) -> bytes:
    """RTM_SETLINK setting IPv4 devconf `name` of link `index`: the kernel reads IFLA_INET_CONF as nested
    attributes whose type is the IPV4_DEVCONF_* index."""
    conf = nlattr(IFLA_INET_CONF, nlattr(IPV4_DEVCONF[name], struct.pack("=I", value)))
    attrs = nlattr(IFLA_AF_SPEC, nlattr(socket.AF_INET, conf))
    return message(RTM_SETLINK, NLM_F_ACK, seq, IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0) + attrs)


def retire_requests(seq: int, index: int, alias: str, group: int, name: str | None) -> bytes:
    """RTM_SETLINK of link `index`: down (IFF_UP cleared, no other flag changed) with `alias` and device `group`;
    then, with a `name`, a second one renaming it (`seq` + 1), which the kernel refuses while the link is up."""
    down = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, IFF_UP)
    down += nlattr(IFLA_IFALIAS, alias.encode()) + nlattr(IFLA_GROUP, struct.pack("=I", group))
    if name is None:
        return message(RTM_SETLINK, NLM_F_ACK, seq, down)
    rename = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0) + nlattr(IFLA_IFNAME, name.encode() + b"\0")
    return message(RTM_SETLINK, NLM_F_ACK, seq, down) + message(RTM_SETLINK, NLM_F_ACK, seq + 1, rename)


def delete_request(seq: int, index: int) -> bytes:
    return message(RTM_DELLINK, NLM_F_ACK, seq, IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))


def group_delete_request(seq: int, group: int) -> bytes:
    """RTM_DELLINK of every link in device `group` (`ip link delete group N`): one unregistering for them all."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + nlattr(IFLA_GROUP, struct.pack("=I", group))
    return message(RTM_DELLINK, NLM_F_ACK, seq, body)


@dataclass(frozen=True)
class NeighWrite:
    """One neighbour or FDB write (what `ip neigh replace/del` and `bridge fdb replace/append/del` send), with
    what to say if the kernel refuses it."""

    action: str  # "cannot add ...", for the error
    family: int
    ifindex: int
    lladdr: str | None = None
    dst: IPAddress | None = None
    state: int = 0
    flags: int = 0  # NTF_SELF / NTF_MASTER
    mode: int | None = NLM_F_CREATE | NLM_F_REPLACE  # None: a removal (an entry already gone is fine)
    remedies: dict[int, str] = field(default_factory=dict)

    def request(self, seq: int) -> bytes:
        attrs = b""
        if self.dst is not None:
            attrs += nlattr(NDA_DST, self.dst.packed)
        if self.lladdr is not None:
            attrs += nlattr(NDA_LLADDR, bytes.fromhex(self.lladdr.replace(":", "")))
        body = NDMSG.pack(self.family, self.ifindex, self.state, self.flags, 0) + attrs
        kind, flags = (RTM_DELNEIGH, 0) if self.mode is None else (RTM_NEWNEIGH, self.mode)
        return message(kind, NLM_F_ACK | flags, seq, body)

    def refused_by(self, code: int) -> bool:
        """Whether the kernel's answer `code` is a failure: removing what is already gone is not one."""
        return code != 0 and not (self.mode is None and code == errno.ENOENT)


def default_route_hops(payload: bytes) -> list[tuple[int, dict[int, bytes]]] | None:
    """(output interface, attributes) of each next hop of a unicast default route of the main table (one for
    a plain route, one per path of a multipath one); None for any other route, which stays unparsed."""
    if len(payload) < RTMSG.size:
        return None
    _, dst_len, _, _, table, _, _, kind, _ = RTMSG.unpack_from(payload)
    if dst_len != 0 or kind != RTN_UNICAST:
        return None  # the connected route of every bridge ends here
    attrs = attributes(payload, RTMSG.size)
    if u32(attrs, RTA_TABLE, table) != RT_TABLE_MAIN:
        return None
    hops: list[tuple[int, dict[int, bytes]]] = []
    if RTA_OIF in attrs:
        hops.append((u32(attrs, RTA_OIF), attrs))
    multipath, offset = attrs.get(RTA_MULTIPATH, b""), 0
    while offset + RTNEXTHOP.size <= len(multipath):
        length, _, _, hop_oif = RTNEXTHOP.unpack_from(multipath, offset)
        if length < RTNEXTHOP.size:
            break
        hops.append((hop_oif, attributes(multipath[offset : offset + length], RTNEXTHOP.size)))
        offset += align(length)
    return hops


# -- the socket ---------------------------------------------------------------------------------------------


def open_socket(netns: str | None, groups: int = 0) -> socket.socket:
    """A NETLINK_ROUTE socket in `netns` (a name under /run/netns, never created) or in this process's namespace;
    with `groups` a non-blocking listener to those notifications, else one that asks the kernel to filter dumps."""
    sock = pyroute2_netns.create_socket(
        netns, family=socket.AF_NETLINK, socket_type=socket.SOCK_RAW, proto=socket.NETLINK_ROUTE, flags=0
    )
    if groups:
        sock.bind((0, groups))
        sock.setblocking(False)
        return sock
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    except OSError:
        pass  # before Linux 4.20: the kernel does not filter, the readers below still do
    sock.settimeout(TIMEOUT)
    return sock


@dataclass(frozen=True)
class VxlanDevice:
    name: str
    vni: int
    port: int
    alias: str


def vxlan_device(payload: bytes) -> VxlanDevice | None:
    """The VXLAN device an RTM_NEWLINK payload describes; None for any other kind of link."""
    attrs = attributes(payload, IFINFOMSG.size)
    info = attributes(attrs.get(IFLA_LINKINFO, b""))
    if info.get(IFLA_INFO_KIND, b"").rstrip(b"\0") != b"vxlan":
        return None  # a kernel that does not filter dumps by kind sends every link
    data = attributes(info.get(IFLA_INFO_DATA, b""))
    port = data.get(IFLA_VXLAN_PORT, b"")
    return VxlanDevice(
        name=attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace"),
        vni=u32(data, IFLA_VXLAN_ID),
        port=struct.unpack("!H", port)[0] if len(port) == 2 else 0,
        alias=attrs.get(IFLA_IFALIAS, b"").rstrip(b"\0").decode(errors="replace"),
    )


class RawSocket:
    """Filtered dumps, batched labels and neighbour writes on a socket of their own; one thread at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _acknowledge(self, pending: dict[int, T], batch: bytes) -> list[tuple[int, T, int]]:
        """Send `batch` (the requests of `pending`) in one send(), read every answer: (seq, item, errno)."""
        self._sock.send(batch)
        answers = []
        while pending:
            for msg_type, seq, payload in messages(self._sock.recv(1 << 20)):
                if msg_type == NLMSG_ERROR and seq in pending:
                    answers.append((seq, pending.pop(seq), error_code(payload)))
        return answers

    def label(self, links: list[tuple[str, str, bool]]) -> dict[str, int]:
        """Label each (name, alias, no_ipv6) link (`label_request`): all requests in one send, then every
        answer read.  Returns the errno of each link whose request failed."""
        pending: dict[int, str] = {}
        batch = b""
        for name, alias, no_ipv6 in links:
            seq = self._next_seq()
            pending[seq] = name
            batch += label_request(seq, name, alias, no_ipv6)
        return {name: code for _, name, code in self._acknowledge(pending, batch) if code}

    def set_devconf(self, index: int, name: str, value: int) -> int:
        """Set IPv4 devconf `name` of link `index` (`devconf_request`); returns the kernel's errno (0: done)."""
        seq = self._next_seq()
        return self._acknowledge({seq: name}, devconf_request(seq, index, name, value))[0][2]

    def retire_links(self, indexes: list[int], alias: str, group: int, prefix: str | None) -> dict[int, int]:
        """Take each link down, relabel it `alias`, move it to `group` and, with a `prefix`, rename it `prefix` +
        its index (`retire_requests`), all in one send.  The errno of each link that could not be taken down
        (ENODEV: it is gone); a refused rename (a name taken) only leaves the link its old name."""
        pending: dict[int, tuple[int, bool]] = {}
        batch = b""
        for index in indexes:
            seq = self._next_seq()
            pending[seq] = (index, True)
            if prefix is not None:
                pending[self._next_seq()] = (index, False)  # the rename's
            batch += retire_requests(seq, index, alias, group, None if prefix is None else f"{prefix}{index}")
        answers = self._acknowledge(pending, batch) if pending else []
        return {index: code for _, (index, down), code in answers if down and code}

    def delete_links(self, indexes: list[int]) -> dict[int, int]:
        """Delete each link (`delete_request`), in one send; the errno of each refused request."""
        pending: dict[int, int] = {}
        batch = b""
        for index in indexes:
            seq = self._next_seq()
            pending[seq] = index
            batch += delete_request(seq, index)
        return {index: code for _, index, code in self._acknowledge(pending, batch) if code} if pending else {}

    def delete_group(self, group: int) -> int:
        """Delete every link in device `group` (`group_delete_request`); the kernel's errno (ENODEV: none there)."""
        seq = self._next_seq()
        return self._acknowledge({seq: group}, group_delete_request(seq, group))[0][2]

    def write_neighbours(self, writes: list[NeighWrite]) -> tuple[NeighWrite, int] | None:
        """Send `writes` in order, `NEIGH_BATCH` per send() instead of one request and one answer each (a full
        resync of 10^4 remote endpoints is 3 * 10^4 writes).  Stops after the first batch holding a refusal and
        returns the first refused write with its errno: the writes before it are done, later batches not sent."""
        for start in range(0, len(writes), NEIGH_BATCH):
            pending: dict[int, NeighWrite] = {}
            batch = b""
            for write in writes[start : start + NEIGH_BATCH]:
                seq = self._next_seq()
                pending[seq] = write
                batch += write.request(seq)
            answers = self._acknowledge(dict(pending), batch)
            refused = sorted((seq, code) for seq, write, code in answers if write.refused_by(code))
            if refused:
                seq, code = refused[0]
                return pending[seq], code
        return None

    def _dump(self, kind: int, header: bytes, attrs: bytes = b"") -> Iterator[bytes]:
        """The payload of each message of one dump."""
        seq = self._next_seq()
        self._sock.send(message(kind, NLM_F_DUMP, seq, header + attrs))
        while True:
            for msg_type, msg_seq, payload in messages(self._sock.recv(1 << 20)):
                if msg_seq != seq:
                    continue  # a late answer to an earlier, abandoned request
                if msg_type == NLMSG_DONE:
                    return
                if msg_type == NLMSG_ERROR:
                    code = error_code(payload)
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                yield payload

    def addresses(self, index: int) -> list[tuple[IPAddress, int, int]]:
        """(address, prefix length, scope) of each address of interface `index` (IFA_ADDRESS, as `ip addr`)."""
        found = []
        for payload in self._dump(RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, index)):
            if len(payload) < IFADDRMSG.size:
                continue
            family, prefixlen, _, scope, ifindex = IFADDRMSG.unpack_from(payload)
            if ifindex != index:
                continue  # a kernel without strict checking dumps every interface
            raw = attributes(payload, IFADDRMSG.size).get(IFA_ADDRESS)
            if raw is None or family not in (socket.AF_INET, socket.AF_INET6) or len(raw) not in (4, 16):
                continue
            found.append((ipaddress.ip_address(raw), prefixlen, scope))
        return found

    def vxlan_devices(self) -> list[VxlanDevice]:
        """Every VXLAN device of the namespace.  The kernel filters the dump by kind (a full dump decoded by
        pyroute2 takes 0.65 s with 1,500 links)."""
        kind = nlattr(IFLA_LINKINFO | NLA_F_NESTED, nlattr(IFLA_INFO_KIND, b"vxlan\0"))
        header = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        devices = (vxlan_device(payload) for payload in self._dump(RTM_GETLINK, header, kind))
        return [device for device in devices if device is not None]

    def _default_routes(self, family: int) -> Iterator[tuple[bytes, list[tuple[int, dict[int, bytes]]]]]:
        header = RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, 0, 0, RTN_UNICAST, 0)
        for payload in self._dump(RTM_GETROUTE, header):
            hops = default_route_hops(payload)
            if hops is not None:
                yield payload, hops

    def default_route_oifs(self, family: int) -> list[int]:
        """Output interfaces of the unicast default routes of the main table, lowest metric first."""
        routes = []
        for payload, hops in self._default_routes(family):
            oif = next((hop_oif for hop_oif, _ in hops if hop_oif), 0)
            if oif:
                routes.append((u32(attributes(payload, RTMSG.size), RTA_PRIORITY), oif))
        return [oif for _, oif in sorted(routes, key=lambda route: route[0])]

    def default_route_gateways(self, family: int, oif: int) -> list[IPAddress]:
        """Gateways of the main table's unicast default routes that leave by interface `oif` (multipath too)."""
        gateways: list[IPAddress] = []
        for _, hops in self._default_routes(family):
            for hop_oif, hop in hops:
                raw = hop.get(RTA_GATEWAY)
                if hop_oif == oif and raw is not None and len(raw) in (4, 16):
                    gateways.append(ipaddress.ip_address(raw))
        return gateways


class DefaultRouteWatch:
    """Whether a default route changed since the last look, from the kernel's route notifications.

    Finding the default route means dumping the whole main table, which holds the connected route of every
    network: its cost grows with the networks.  So the answer is kept, and dumped again only after a default
    route (or anything, if notifications were lost) changed.  One thread at a time."""

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
            changed = changed or any(
                is_default_route_change(msg_type, payload) for msg_type, _, payload in messages(data)
            )


def is_default_route_change(msg_type: int, payload: bytes) -> bool:
    """Whether a notification announces or withdraws a default route (rtm_dst_len 0), read without decoding."""
    return msg_type in (RTM_NEWROUTE, RTM_DELROUTE) and len(payload) >= RTMSG.size and payload[1] == 0


def set_ipv4_devconf(dev: str, name: str, value: int) -> None:
    """`sysctl net.ipv4.conf.<dev>.<name>=<value>` through netlink: needs CAP_NET_ADMIN only, not a writable
    /proc/sys.  A missing device is not an error (as for the sysctl)."""
    try:
        index = socket.if_nametoindex(dev)
    except OSError:
        return
    try:
        raw = RawSocket(open_socket(None))
        try:
            code = raw.set_devconf(index, name, value)
        finally:
            raw.close()
    except OSError as exc:
        raise DataplaneError(f"netlink: setting {name} on {dev} failed: {exc}") from exc
    if code and code != errno.ENODEV:
        raise DataplaneError(
            f"netlink: setting {name}={value} on {dev} failed: {errno.errorcode.get(code, code)} "
            f"({os.strerror(code)}). Hint: the plugin needs CAP_NET_ADMIN"
        )
