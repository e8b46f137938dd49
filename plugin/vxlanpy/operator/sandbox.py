"""Inside other network namespaces: plumbing an attachment's interface, and reading a VXLAN device's parameters.

`Sandboxes` is what the operator service (operations.py) needs; `NetlinkSandboxes` does it with pyroute2, one
short-lived netlink socket per call on the calling thread (pyroute2 binds a socket to the thread that opened it),
so it never shares anything with the driver's own netlink worker.  Nothing here runs `ip`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import Conflict, DataplaneError, NotFound
from ..models import IPAddress, IPInterface

MAX_IFNAME_INDEX = 64


@dataclass(frozen=True)
class Plumbing:
    """Move `link` (the container end of a veth pair, in the plugin's namespace) into `netns` and configure it."""

    netns: str
    link: str
    ifname: str | None  # None: eth0 if free, else the first free ethN
    addresses: tuple[IPInterface, ...]
    gateways: tuple[IPAddress, ...]  # a default route via each (one per family); none on internal networks
    mtu: int


@dataclass
class Plumbed:
    ifname: str
    routes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Sandboxes(Protocol):
    def netns_exists(self, path: str) -> bool: ...

    def plumb(self, plumbing: Plumbing) -> Plumbed:
        """Raises NotFound when the namespace is gone, Conflict when the interface name is taken,
        DataplaneError when the kernel refuses a step; the caller removes the veth pair on failure."""
        ...

    def vxlan_device(self, name: str) -> dict[str, Any] | None:
        """The parameters of a VXLAN device in the plugin's namespace (None when it does not exist)."""
        ...


def choose_ifname(requested: str | None, present: set[str]) -> str:
    if requested is not None:
        if requested in present:
            raise Conflict(f"the namespace already has an interface called {requested}; choose another --ifname")
        return requested
    for index in range(MAX_IFNAME_INDEX):
        if f"eth{index}" not in present:
            return f"eth{index}"
    raise Conflict("no free ethN interface name in the namespace; give one with --ifname")


def _netlink_failure(action: str, error: Exception) -> DataplaneError:
    code = getattr(error, "code", None) or getattr(error, "errno", None) or 0
    reason = os.strerror(code) if code else str(error) or type(error).__name__
    return DataplaneError(f"{action}: {reason}")


class NetlinkSandboxes:
    def netns_exists(self, path: str) -> bool:
        return os.path.exists(path)

    def _open(self, netns: str | None) -> Any:
        from pyroute2 import IPRoute

        if netns is None:
            return IPRoute()
        try:
            return IPRoute(netns=netns, flags=0)  # flags=0: never create a missing namespace
        except FileNotFoundError:
            raise NotFound(f"network namespace {netns} does not exist (has the container stopped?)") from None
        except OSError as exc:
            raise _netlink_failure(f"cannot enter network namespace {netns}", exc) from exc

    def plumb(self, plumbing: Plumbing) -> Plumbed:
        from pyroute2.netlink.exceptions import NetlinkError

        with self._open(plumbing.netns) as ns:
            try:
                present = {str(link.get("ifname")) for link in ns.link("dump")}
            except NetlinkError as exc:
                raise _netlink_failure(f"cannot list the interfaces of {plumbing.netns}", exc) from exc
        ifname = choose_ifname(plumbing.ifname, present)
        with self._open(None) as host:
            indexes = host.link_lookup(ifname=plumbing.link)
            if not indexes:
                raise DataplaneError(f"interface {plumbing.link} vanished before it could be moved; retry")
            try:
                # One request moves and renames: the name only has to be free inside the namespace.
                host.link("set", index=indexes[0], net_ns_fd=plumbing.netns, ifname=ifname)
            except NetlinkError as exc:
                raise _netlink_failure(f"cannot move {plumbing.link} into {plumbing.netns} as {ifname}", exc) from exc
        result = Plumbed(ifname)
        with self._open(plumbing.netns) as ns:
            try:
                (index,) = ns.link_lookup(ifname=ifname)
                for lo in ns.link_lookup(ifname="lo"):
                    ns.link("set", index=lo, state="up")
                ns.link("set", index=index, mtu=plumbing.mtu)
                for address in plumbing.addresses:
                    flags = 0x02 if address.version == 6 else 0  # IFA_F_NODAD: the address is ours alone
                    prefixlen = address.network.prefixlen
                    ns.addr("add", index=index, address=str(address.ip), prefixlen=prefixlen, flags=flags)
                ns.link("set", index=index, state="up")
            except NetlinkError as exc:
                hint = ""
                if exc.code in (errno.EACCES, errno.EPERM) and any(a.version == 6 for a in plumbing.addresses):
                    hint = " (is IPv6 disabled in the container? run it with --sysctl net.ipv6.conf.all.disable_ipv6=0)"
                raise _netlink_failure(f"cannot configure {ifname} in {plumbing.netns}{hint}", exc) from exc
            for gateway in plumbing.gateways:
                family = socket.AF_INET6 if gateway.version == 6 else socket.AF_INET
                dst = "::/0" if gateway.version == 6 else "0.0.0.0/0"
                try:
                    ns.route("add", dst=dst, gateway=str(gateway), oif=index, family=family)
                    result.routes.append(f"default via {gateway} dev {ifname}")
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise _netlink_failure(f"cannot add the default route via {gateway}", exc) from exc
                    result.notes.append(f"kept the namespace's existing IPv{gateway.version} default route")
        return result

    def vxlan_device(self, name: str) -> dict[str, Any] | None:
        from pyroute2.netlink.exceptions import NetlinkError

        with self._open(None) as ipr:
            try:
                link = ipr.link("get", ifname=name)[0]
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:
                    return None
                raise _netlink_failure(f"cannot read {name}", exc) from exc

        def info(key: str) -> Any:
            return link.get(("linkinfo", "data", key))

        def address(*keys: str) -> str | None:
            for key in keys:
                value = info(key)
                if value and not ipaddress.ip_address(value).is_unspecified:
                    return str(value)
            return None

        return {
            "vni": info("vxlan_id"),
            "port": info("vxlan_port"),
            "local": address("vxlan_local", "vxlan_local6"),
            "destination": address("vxlan_group", "vxlan_group6"),
            "learning": bool(info("vxlan_learning")),
            "mtu": link.get("mtu"),
            "up": bool(link["flags"] & 1),
        }
