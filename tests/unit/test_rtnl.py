"""The hand-rolled rtnetlink codec and socket (vxlanpy.dataplane.rtnl) without a kernel.

What it encodes is decoded with pyroute2's own message classes, and what it decodes is encoded with them, so
the two codecs check each other; the socket talks to a fake kernel that answers from the requests it is sent.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Callable

import pytest
from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_DELNEIGH, RTM_NEWADDR, RTM_NEWNEIGH, RTM_NEWROUTE, RTM_SETLINK
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import NTF_SELF, NUD_NOARP, NUD_PERMANENT, ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from vxlanpy.dataplane import rtnl
from vxlanpy.errors import DataplaneError

ip = ipaddress.ip_address


# -- codec --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"a", b"ab", b"abc", b"abcd", b"abcde"])
def test_an_attribute_is_padded_and_reads_back(payload: bytes) -> None:
    encoded = rtnl.nlattr(7, payload) + rtnl.nlattr(9, b"next")
    assert len(rtnl.nlattr(7, payload)) % 4 == 0
    assert rtnl.attributes(encoded) == {7: payload, 9: b"next"}


def test_the_nested_flag_is_not_part_of_an_attribute_type() -> None:
    nested = struct.pack("=HH", 8, 0x8000 | 26) + b"abcd"
    assert rtnl.attributes(nested) == {26: b"abcd"}


@pytest.mark.parametrize(
    "data",
    [
        rtnl.nlattr(1, b"good") + struct.pack("=HH", 2, 5) + rtnl.nlattr(3, b"lost"),  # length below the header
        rtnl.nlattr(1, b"good") + struct.pack("=HH", 40, 5) + b"short",  # longer than what was read
        rtnl.nlattr(1, b"good") + b"\x08\x00",  # a header cut short
    ],
    ids=["too-short", "truncated", "partial-header"],
)
def test_attribute_walking_stops_at_a_malformed_attribute(data: bytes) -> None:
    assert rtnl.attributes(data) == {1: b"good"}


def test_messages_splits_a_buffer_and_stops_at_a_truncated_message() -> None:
    first = rtnl.message(RTM_NEWNEIGH, 0, 5, b"abcdef")  # padded to 4 bytes in the buffer
    second = rtnl.message(RTM_DELNEIGH, 0, 6, b"")
    buffer = first + b"\0\0" + second
    assert list(rtnl.messages(buffer)) == [(RTM_NEWNEIGH, 5, b"abcdef"), (RTM_DELNEIGH, 6, b"")]
    assert list(rtnl.messages(buffer + second[:-1])) == [(RTM_NEWNEIGH, 5, b"abcdef"), (RTM_DELNEIGH, 6, b"")]
    claims_more = struct.pack("=IHHII", 64, RTM_NEWNEIGH, 0, 7, 0) + b"x" * 8
    assert list(rtnl.messages(first + b"\0\0" + claims_more)) == [(RTM_NEWNEIGH, 5, b"abcdef")]
    below_header = struct.pack("=IHHII", 8, RTM_NEWNEIGH, 0, 8, 0)
    assert list(rtnl.messages(below_header + second)) == []


def test_error_codes() -> None:
    assert rtnl.error_code(struct.pack("=i", 0) + b"\0" * 16) == 0
    assert rtnl.error_code(struct.pack("=i", -errno.EEXIST) + b"\0" * 16) == errno.EEXIST
    assert rtnl.error_code(b"\0\0") == errno.EBADMSG


@pytest.mark.parametrize("no_ipv6", [True, False])
def test_a_label_request_is_what_pyroute2_reads_as_alias_and_addrgenmode(no_ipv6: bool) -> None:
    message = ifinfmsg(rtnl.label_request(7, "vxlanpy-h1", "vxlanpy:endpoint:abc", no_ipv6))
    message.decode()
    assert message["header"]["type"] == RTM_SETLINK
    assert message["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK
    assert message["header"]["sequence_number"] == 7
    assert message.get_attr("IFLA_IFNAME") == "vxlanpy-h1"
    assert message.get_attr("IFLA_IFALIAS") == "vxlanpy:endpoint:abc"
    addrgenmode = message.get(("af_spec", "af_inet6", "inet6_addr_gen_mode"))
    assert addrgenmode == (rtnl.IN6_ADDR_GEN_MODE_NONE if no_ipv6 else None)


def test_a_devconf_request_nests_the_setting_under_af_inet() -> None:
    [(kind, seq, payload)] = rtnl.messages(rtnl.devconf_request(3, 42, "route_localnet", 1))
    assert (kind, seq) == (RTM_SETLINK, 3)
    assert rtnl.IFINFOMSG.unpack_from(payload)[2] == 42
    af_spec = rtnl.attributes(payload, rtnl.IFINFOMSG.size)[rtnl.IFLA_AF_SPEC]
    inet = rtnl.attributes(af_spec)[socket.AF_INET]
    conf = rtnl.attributes(inet)[rtnl.IFLA_INET_CONF]
    assert rtnl.attributes(conf) == {26: struct.pack("=I", 1)}  # IPV4_DEVCONF_ROUTE_LOCALNET


def decoded(write: rtnl.NeighWrite, seq: int = 1) -> ndmsg:
    message = ndmsg(write.request(seq))
    message.decode()
    return message


def test_neighbour_writes_are_what_pyroute2_reads() -> None:
    replace = rtnl.NeighWrite(
        "x", socket.AF_BRIDGE, 5, "02:42:c0:a8:4d:0c", ip("10.99.0.2"), NUD_PERMANENT | NUD_NOARP, NTF_SELF
    )
    message = decoded(replace, 9)
    assert message["header"]["type"] == RTM_NEWNEIGH
    assert message["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    assert (message["family"], message["ifindex"], message["state"], message["flags"]) == (
        socket.AF_BRIDGE, 5, NUD_PERMANENT | NUD_NOARP, NTF_SELF,
    )  # fmt: skip
    assert (message.get_attr("NDA_LLADDR"), message.get_attr("NDA_DST")) == ("02:42:c0:a8:4d:0c", "10.99.0.2")

    append = rtnl.NeighWrite(
        "x", socket.AF_BRIDGE, 5, "00:00:00:00:00:00", ip("fd00::2"), mode=NLM_F_CREATE | NLM_F_APPEND
    )
    assert decoded(append)["header"]["flags"] & NLM_F_APPEND
    assert decoded(append).get_attr("NDA_DST") == "fd00::2"

    removal = rtnl.NeighWrite("x", socket.AF_INET, 8, dst=ip("192.168.1.2"), mode=None)
    message = decoded(removal)
    assert message["header"]["type"] == RTM_DELNEIGH
    assert message["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK
    assert message.get_attr("NDA_LLADDR") is None and message.get_attr("NDA_DST") == "192.168.1.2"


def test_removing_what_is_gone_is_no_refusal() -> None:
    removal = rtnl.NeighWrite("x", socket.AF_INET, 8, dst=ip("192.168.1.2"), mode=None)
    write = rtnl.NeighWrite("x", socket.AF_INET, 8, "02:00:00:00:00:01", ip("192.168.1.2"))
    assert not removal.refused_by(0) and not removal.refused_by(errno.ENOENT) and removal.refused_by(errno.EPERM)
    assert not write.refused_by(0) and write.refused_by(errno.ENOENT)


def route(
    dst_len: int = 0, table: int = rtnl.RT_TABLE_MAIN, kind: int = rtnl.RTN_UNICAST, *attrs: list[object], seq: int = 0
) -> bytes:
    """A route message as the kernel sends it, encoded by pyroute2."""
    message = rtmsg()
    message["family"] = socket.AF_INET
    message["dst_len"], message["table"], message["type"] = dst_len, min(table, 255), kind
    message["attrs"] = [list(attr) for attr in attrs]
    message["header"]["type"] = RTM_NEWROUTE
    message["header"]["sequence_number"] = seq
    message.encode()
    return bytes(message.data)


def payload_of(data: bytes) -> bytes:
    return next(rtnl.messages(data))[2]


def test_default_route_hops_of_a_plain_and_a_multipath_route() -> None:
    plain = route(0, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST, ["RTA_OIF", 3], ["RTA_GATEWAY", "10.0.0.1"])
    [(oif, attrs)] = rtnl.default_route_hops(payload_of(plain)) or []
    assert (oif, attrs[rtnl.RTA_GATEWAY]) == (3, ip("10.0.0.1").packed)
    multipath = route(
        0, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST,
        ["RTA_MULTIPATH", [{"oif": 4, "attrs": [["RTA_GATEWAY", "10.0.0.4"]]}, {"oif": 5, "attrs": [["RTA_GATEWAY", "10.0.0.5"]]}]],
    )  # fmt: skip
    hops = rtnl.default_route_hops(payload_of(multipath)) or []
    assert [(oif, attrs[rtnl.RTA_GATEWAY]) for oif, attrs in hops] == [
        (4, ip("10.0.0.4").packed),
        (5, ip("10.0.0.5").packed),
    ]


@pytest.mark.parametrize(
    "data",
    [
        route(24, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST, ["RTA_OIF", 3]),  # a connected route
        route(0, rtnl.RT_TABLE_MAIN, 2, ["RTA_OIF", 3]),  # local, not unicast
        route(0, 100, rtnl.RTN_UNICAST, ["RTA_OIF", 3]),  # another table
        route(0, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST, ["RTA_OIF", 3], ["RTA_TABLE", 1000]),  # RTA_TABLE wins
    ],
    ids=["connected", "local", "other-table", "table-attribute"],
)
def test_other_routes_have_no_default_hops(data: bytes) -> None:
    assert rtnl.default_route_hops(payload_of(data)) is None


def test_a_truncated_route_is_none() -> None:
    assert rtnl.default_route_hops(b"\0" * 5) is None


def test_only_default_route_notifications_count() -> None:
    default = payload_of(route(0, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST, ["RTA_OIF", 3]))
    connected = payload_of(route(24, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST, ["RTA_OIF", 3]))
    assert rtnl.is_default_route_change(RTM_NEWROUTE, default)
    assert not rtnl.is_default_route_change(RTM_NEWROUTE, connected)
    assert not rtnl.is_default_route_change(RTM_NEWADDR, default)
    assert not rtnl.is_default_route_change(RTM_NEWROUTE, default[:4])


# -- the socket, against a fake kernel ----------------------------------------------------------------------


def ack(seq: int, code: int = 0) -> bytes:
    return struct.pack("=IHHII", 36, rtnl.NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", -code) + b"\0" * 16


def done(seq: int) -> bytes:
    return struct.pack("=IHHIIi", 20, rtnl.NLMSG_DONE, 0, seq, 0, 0)


class FakeKernel:
    """Stands in for a NETLINK_ROUTE socket: `answer` maps each request (type, flags, seq, payload) to the
    datagrams the kernel would send back; `recv` hands them out in order."""

    def __init__(self, answer: Callable[[int, int, int, bytes], list[bytes]]) -> None:
        self._answer = answer
        self.sends: list[list[tuple[int, int, int, bytes]]] = []
        self._queue: list[bytes] = []

    def send(self, data: bytes) -> int:
        requests = []
        offset = 0
        while offset < len(data):
            length, kind, flags, seq, _ = rtnl.NLMSGHDR.unpack_from(data, offset)
            requests.append((kind, flags, seq, data[offset + 16 : offset + length]))
            offset += rtnl.align(length)
        self.sends.append(requests)
        for request in requests:
            self._queue += self._answer(*request)
        return len(data)

    def recv(self, size: int) -> bytes:
        assert self._queue, "the caller waits for an answer the kernel never sends"
        return self._queue.pop(0)

    def close(self) -> None:
        pass


def raw_socket(kernel: FakeKernel) -> rtnl.RawSocket:
    return rtnl.RawSocket(kernel)  # type: ignore[arg-type]


def neigh_write(index: int, mode: int | None = NLM_F_CREATE | NLM_F_REPLACE) -> rtnl.NeighWrite:
    return rtnl.NeighWrite(f"write {index}", socket.AF_INET, 3, dst=ip("10.1.0.0") + index, mode=mode)


def test_neighbour_writes_go_256_per_send_and_all_are_answered() -> None:
    kernel = FakeKernel(lambda kind, flags, seq, payload: [ack(seq)])
    assert raw_socket(kernel).write_neighbours([neigh_write(i) for i in range(600)]) is None
    assert [len(batch) for batch in kernel.sends] == [256, 256, 88]
    assert all(kind == RTM_NEWNEIGH and flags & NLM_F_ACK for batch in kernel.sends for kind, flags, _, _ in batch)


def test_the_first_refused_write_is_returned_and_later_batches_are_not_sent() -> None:
    def answer(kind: int, flags: int, seq: int, payload: bytes) -> list[bytes]:
        index = int(ip(rtnl.attributes(payload, rtnl.NDMSG.size)[rtnl.NDA_DST])) - int(ip("10.1.0.0"))
        return [ack(seq, errno.EINVAL if index in (300, 301) else errno.ENOENT if index == 5 else 0)]

    kernel = FakeKernel(answer)
    writes = [neigh_write(i, None if i == 5 else NLM_F_CREATE | NLM_F_REPLACE) for i in range(800)]
    refused = raw_socket(kernel).write_neighbours(writes)
    assert refused == (writes[300], errno.EINVAL)  # the removal of something gone (5) is fine
    assert [len(batch) for batch in kernel.sends] == [256, 256]


def test_answers_arriving_together_and_out_of_order_are_matched_by_sequence() -> None:
    batched: list[int] = []

    def answer(kind: int, flags: int, seq: int, payload: bytes) -> list[bytes]:
        batched.append(seq)
        if len(batched) < 3:
            return []
        first, second, third = batched
        return [ack(third) + ack(first, errno.EEXIST), ack(0), ack(second)]  # ack(0): an unrelated answer

    kernel = FakeKernel(answer)
    failed = raw_socket(kernel).label([("a", "vxlanpy:x", True), ("b", "vxlanpy:x", False), ("c", "vxlanpy:x", True)])
    assert failed == {"a": errno.EEXIST}
    assert [kind for kind, _, _, _ in kernel.sends[0]] == [RTM_SETLINK] * 3


def address(seq: int, family: int, value: str, prefixlen: int, index: int, scope: int = 0) -> bytes:
    message = ifaddrmsg()
    message["family"], message["prefixlen"], message["scope"], message["index"] = family, prefixlen, scope, index
    message["attrs"] = [["IFA_ADDRESS", value], ["IFA_LABEL", "eth0"]]
    message["header"]["type"] = RTM_NEWADDR
    message["header"]["sequence_number"] = seq
    message.encode()
    return bytes(message.data)


def test_addresses_of_one_interface_even_when_the_kernel_sends_all() -> None:
    def answer(kind: int, flags: int, seq: int, payload: bytes) -> list[bytes]:
        assert flags & NLM_F_DUMP and rtnl.IFADDRMSG.unpack_from(payload)[4] == 2
        return [
            address(seq - 1, socket.AF_INET, "10.9.9.9", 24, 2)  # a late answer to something else
            + address(seq, socket.AF_INET, "10.0.0.1", 24, 2),
            address(seq, socket.AF_INET, "10.0.1.1", 24, 3) + address(seq, socket.AF_INET6, "fe80::1", 64, 2, 253),
            done(seq),
        ]

    assert raw_socket(FakeKernel(answer)).addresses(2) == [(ip("10.0.0.1"), 24, 0), (ip("fe80::1"), 64, 253)]


def test_a_refused_dump_raises_the_kernels_errno() -> None:
    kernel = FakeKernel(lambda kind, flags, seq, payload: [ack(seq, errno.EINVAL)])
    with pytest.raises(OSError) as raised:
        raw_socket(kernel).addresses(2)
    assert raised.value.errno == errno.EINVAL


def test_default_routes_lowest_metric_first_and_their_gateways() -> None:
    def answer(kind: int, flags: int, seq: int, payload: bytes) -> list[bytes]:
        return [
            route(0, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST, ["RTA_OIF", 7], ["RTA_PRIORITY", 200], ["RTA_GATEWAY", "10.7.0.1"], seq=seq)
            + route(24, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST, ["RTA_OIF", 9], seq=seq),
            route(0, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST, ["RTA_OIF", 3], ["RTA_PRIORITY", 100], ["RTA_GATEWAY", "10.3.0.1"], seq=seq),
            route(
                0, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST, ["RTA_PRIORITY", 300],
                ["RTA_MULTIPATH", [{"oif": 5, "attrs": [["RTA_GATEWAY", "10.5.0.1"]]}, {"oif": 7, "attrs": [["RTA_GATEWAY", "10.7.0.2"]]}]],
                seq=seq,
            ),
            done(seq),
        ]  # fmt: skip

    raw = raw_socket(FakeKernel(answer))
    assert raw.default_route_oifs(socket.AF_INET) == [3, 7, 5]
    assert raw.default_route_gateways(socket.AF_INET, 7) == [ip("10.7.0.1"), ip("10.7.0.2")]
    assert raw.default_route_gateways(socket.AF_INET, 9) == []


class Notifications:
    """A non-blocking listener's socket: hands out the given datagrams (or raises the given errors), then
    would block."""

    def __init__(self, *items: bytes | OSError) -> None:
        self._items = list(items)

    def recv(self, size: int) -> bytes:
        if not self._items:
            raise BlockingIOError
        item = self._items.pop(0)
        if isinstance(item, OSError):
            raise item
        return item


def watch(*items: bytes | OSError) -> rtnl.DefaultRouteWatch:
    return rtnl.DefaultRouteWatch(Notifications(*items))  # type: ignore[arg-type]


def test_the_route_watch_sees_default_routes_and_lost_notifications_only() -> None:
    connected = route(24, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST, ["RTA_OIF", 9])
    default = route(0, rtnl.RT_TABLE_MAIN, rtnl.RTN_UNICAST, ["RTA_OIF", 3])
    assert not watch().changed()
    assert not watch(connected, connected).changed()
    assert watch(connected, connected + default).changed()
    assert watch(OSError(errno.ENOBUFS, "lost")).changed()
    with pytest.raises(OSError):
        watch(OSError(errno.EBADF, "closed")).changed()
    drained = watch(default, connected)
    assert drained.changed() and not drained.changed()


def test_setting_devconf_of_a_missing_device_is_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtnl, "open_socket", lambda netns: pytest.fail("no request for a missing device"))
    rtnl.set_ipv4_devconf("vxlanpy-nosuch", "route_localnet", 1)


@pytest.mark.parametrize("code", [0, errno.ENODEV, errno.EPERM])
def test_setting_devconf_reports_what_the_kernel_refused(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    kernel = FakeKernel(lambda kind, flags, seq, payload: [ack(seq, code)])
    monkeypatch.setattr(rtnl.socket, "if_nametoindex", lambda name: 4)
    monkeypatch.setattr(rtnl, "open_socket", lambda netns: kernel)
    if code == errno.EPERM:
        with pytest.raises(DataplaneError, match=r"setting route_localnet=1 on vxbr-7 failed: EPERM .*CAP_NET_ADMIN"):
            rtnl.set_ipv4_devconf("vxbr-7", "route_localnet", 1)
    else:
        rtnl.set_ipv4_devconf("vxbr-7", "route_localnet", 1)  # done, or the device went away meanwhile
    [[(kind, _, _, payload)]] = kernel.sends
    assert kind == RTM_SETLINK and rtnl.IFINFOMSG.unpack_from(payload)[2] == 4
