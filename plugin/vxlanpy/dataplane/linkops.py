"""What every part of `NetlinkLinks` shares: netlink failures as DataplaneErrors that say what to do, reading a
link's pyroute2 message, and the generic link operations (look up, create and label, converge, delete)."""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from ..errors import Conflict, DataplaneError, InvalidOption
from ..models import LINK_ALIAS_PREFIX, IPAddress
from .rtnl import RawSocket

# pyroute2 messages are untyped; this alias only documents what a value is.
Msg = Any

# What the user can do about the errors the kernel commonly returns; a call site can give a better one.
REMEDIES: dict[int, str] = {
    errno.EPERM: "; vxlanpy needs CAP_NET_ADMIN: run the plugin as root",
    errno.EACCES: "; vxlanpy needs CAP_NET_ADMIN: run the plugin as root",
    errno.EEXIST: "; remove the existing object or choose another vni",
    errno.EINVAL: "; check the network options (mtu, ttl, local, remote, group) against the underlay",
    errno.ENODEV: "; an interface disappeared meanwhile: retry the request",
    errno.EOPNOTSUPP: "; the kernel lacks the feature: load the module (vxlan, bridge, veth) and retry",
    errno.ENOENT: "; the object disappeared meanwhile: retry the request",
}
DEFAULT_REMEDY = "; check the host's network configuration and retry"
VNI_REMEDY = "remove it or choose another vni"
VETH_REMEDY = "remove it (vxlanpy derives veth names from the endpoint id)"


def errno_of(error: Exception) -> int:
    if isinstance(error, NetlinkError):
        return int(error.code)
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno
    return 0


def dataplane_error(action: str, error: Exception, remedies: Mapping[int, str]) -> DataplaneError:
    code = errno_of(error)
    reason = os.strerror(code) if code else str(error) or type(error).__name__
    remedy = remedies.get(code) or REMEDIES.get(code, DEFAULT_REMEDY)
    return DataplaneError(f"{action}: {reason}{remedy}")


@contextmanager
def netlink_errors(action: str, remedies: Mapping[int, str] | None = None) -> Iterator[None]:
    """Turn a netlink failure inside the block into a DataplaneError saying `action` failed and why."""
    try:
        yield
    except (NetlinkError, OSError) as error:
        raise dataplane_error(action, error, remedies or {}) from error


def alias_of(link: Msg) -> str:
    return str(link.get("ifalias") or "")


def is_owned(link: Msg) -> bool:
    return alias_of(link).startswith(LINK_ALIAS_PREFIX)


def kind_of(link: Msg) -> str | None:
    kind = link.get(("linkinfo", "kind"))
    return str(kind) if kind is not None else None


def info_of(link: Msg, key: str) -> Any:
    return link.get(("linkinfo", "data", key))


def is_up(link: Msg) -> bool:
    return bool(link["flags"] & IFF_UP)


def address_or_none(value: str | None) -> IPAddress | None:
    """Kernel dumps report an unset address as absent or as the all-zero address."""
    if not value:
        return None
    address = ipaddress.ip_address(value)
    return None if address.is_unspecified else address


class LinkOps:
    """Generic link operations on the pyroute2 socket `_ipr` and the raw socket `_raw` (see `rtnl`); the worker
    thread of `NetlinkLinks` is their only caller."""

    _ipr: Any
    _raw: RawSocket

    def _link(self, name: str) -> Msg | None:
        return self._lookup(f"interface {name}", ifname=name)

    def _require(self, name: str) -> Msg:
        link = self._link(name)
        if link is None:
            raise DataplaneError(f"interface {name} vanished right after it was created; retry the request")
        return link

    def _link_at(self, index: int) -> Msg | None:
        return self._lookup(f"interface #{index}", index=index)

    def _lookup(self, what: str, **which: Any) -> Msg | None:
        """The link `which` selects (ifname= or index=), None when there is none."""
        try:
            return self._ipr.link("get", **which)[0]
        except NetlinkError as error:
            if error.code == errno.ENODEV:
                return None
            raise dataplane_error(f"cannot look up {what}", error, {}) from error

    def _owned_link(self, name: str, remedy: str) -> Msg | None:
        """The link called `name` if there is one, refusing to touch a link vxlanpy did not create."""
        link = self._link(name)
        if link is not None and not is_owned(link):
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
        with netlink_errors(action, remedies):
            self._ipr.link("add", **spec)
        link = self._require(spec["ifname"])
        # The kernel ignores IFLA_IFALIAS in a create request, so the alias needs a second one.
        try:
            with netlink_errors(f"cannot label interface {spec['ifname']} as vxlanpy's"):
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
        if alias is not None and alias_of(link) != alias:
            changes["ifalias"] = alias
        if up and not is_up(link):
            changes["state"] = "up"
        if not changes:
            return link
        name = link.get("ifname")
        remedies = {}
        if "mtu" in changes:
            remedies[errno.EINVAL] = f" (mtu {mtu} may exceed what the lower device allows); lower -o mtu"
        with netlink_errors(f"cannot update interface {name} ({', '.join(sorted(changes))})", remedies):
            self._ipr.link("set", index=link["index"], **changes)
        return self._require(name)

    def _delete(self, link: Msg) -> None:
        self._delete_where(f"cannot delete interface {link.get('ifname')}", index=link["index"])

    def _delete_name(self, name: str) -> None:
        self._delete_where(f"cannot delete interface {name}", ifname=name)

    def _delete_where(self, action: str, **which: Any) -> None:
        """Delete the link `which` selects (index= or ifname=); one already gone is fine."""
        try:
            self._ipr.link("del", **which)
        except NetlinkError as error:
            if error.code != errno.ENODEV:
                raise dataplane_error(action, error, {}) from error
