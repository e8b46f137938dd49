"""The gretap ports of `NetlinkLinks` (`-o encap=gretap`): one keyed gretap (ip6gretap on an IPv6 underlay) port
per peer on the network's bridge, in place of the VXLAN device.

    vxg-<VNI>       remote=IP              ip link add vxg-N type gretap local L remote IP key N
    vxg-<VNI>-<n>   the n-th of peers=     the same, one port per peer

The GRE key carries the VNI, so several networks between the same hosts stay apart.  Every port is isolated on
the bridge (IFLA_BRPORT_ISOLATED): a frame that came in by one peer's port never leaves by another's, the split
horizon that keeps three or more hosts from looping a broadcast for ever (each host floods only what its own
containers send).  Like the VXLAN port, each has neigh_suppress on, so ARP/ND for the anycast gateway stays home.

The ports are made before the bridge, so a kernel without GRE fails the create before anything exists.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from pyroute2.netlink.rtnl.ifinfmsg import GRE_KEY

from ..models import Network, NetworkConfig, gretap_ports, is_gretap_port_of
from .base import NO_GRE
from .linkops import VNI_REMEDY, LinkOps, Msg, address_or_none, alias_of, info_of, kind_of, netlink_errors

GRETAP_KINDS = ("gretap", "ip6gretap")
# ip6gretap adds by default a tunnel encapsulation limit option (8 bytes more: an overhead of 70); like iproute2's
# `encaplimit none`, vxlanpy leaves it out, so that the overhead is 62 and the MTU default holds.
IP6_TNL_F_IGN_ENCAP_LIMIT = 0x1
# pyroute2 encodes the IPv4 flags big-endian, as the kernel reads them, but the IPv6 ones in host order: give
# it the value whose host-order bytes are GRE_KEY's big-endian ones.
_IP6GRE_KEY_FLAG = int.from_bytes(GRE_KEY.to_bytes(2, "big"), sys.byteorder)


def _prefix(kind: str) -> str:
    return "ip6gre_" if kind == "ip6gretap" else "gre_"


def _spec(config: NetworkConfig, remote: Any, dev_index: int | None) -> dict[str, Any]:
    kind = "ip6gretap" if remote.version == 6 else "gretap"
    flags = _IP6GRE_KEY_FLAG if kind == "ip6gretap" else GRE_KEY
    key = _prefix(kind)
    spec: dict[str, Any] = {
        "kind": kind,
        f"{key}ikey": config.vni,
        f"{key}okey": config.vni,
        f"{key}iflags": flags,
        f"{key}oflags": flags,
        f"{key}remote": str(remote),
    }
    if kind == "ip6gretap":
        spec["ip6gre_flags"] = IP6_TNL_F_IGN_ENCAP_LIMIT
    if config.local is not None:
        spec[f"{key}local"] = str(config.local)
    if dev_index is not None:
        spec[f"{key}link"] = dev_index
    if config.ttl is not None:
        spec[f"{key}ttl"] = config.ttl
    return spec


def _matches(port: Msg, config: NetworkConfig, remote: Any, dev_index: int | None) -> bool:
    """Whether an existing port already has what only a re-creation can change."""
    kind = kind_of(port)
    if kind not in GRETAP_KINDS:
        return False
    key = _prefix(str(kind))
    return (
        kind == _spec(config, remote, dev_index)["kind"]
        and info_of(port, f"{key}ikey") == config.vni
        and info_of(port, f"{key}okey") == config.vni
        and address_or_none(info_of(port, f"{key}remote")) == remote
        and address_or_none(info_of(port, f"{key}local")) == config.local
        and (info_of(port, f"{key}link") or None) == dev_index
        and (info_of(port, f"{key}ttl") or 0) == (config.ttl or 0)
        and (kind == "gretap" or bool((info_of(port, "ip6gre_flags") or 0) & IP6_TNL_F_IGN_ENCAP_LIMIT))
    )


def is_unlabelled_gretap_of(link: Msg, network: Network) -> bool:
    """A port of `network` that a killed create made but did not label (see netlink._created_unlabelled)."""
    kind = kind_of(link)
    return (
        kind in GRETAP_KINDS
        and str(link.get("ifname")) in network.tunnels
        and info_of(link, f"{_prefix(str(kind))}ikey") == network.vni
    )


class GretapPorts(LinkOps):
    """Part of `NetlinkLinks`; worker thread only."""

    def _ensure_gretap_ports(self, network: Network, dev_index: int | None) -> list[Msg]:
        """Create or converge every port the network needs, not yet on its bridge; remove the ports of peers it
        no longer has.  Returns the ports, for `_attach_gretap_ports`."""
        config = network.config
        wanted = gretap_ports(config)
        self._remove_stale_gretap_ports(network, set(wanted))
        ports = []
        for name, remote in wanted.items():
            port = self._owned_link(name, VNI_REMEDY)
            if port is not None and not _matches(port, config, remote, dev_index):
                self._delete(port)
                port = None
            if port is None:
                remedies = {
                    errno.EOPNOTSUPP: NO_GRE + "; nothing was created",
                    errno.EEXIST: f" (another GRE port already uses key {config.vni} towards {remote}); "
                    "remove it or choose another vni",
                    errno.EINVAL: f" (mtu {config.mtu} or an address does not fit the underlay); "
                    "lower -o mtu or check -o local/remote/peers",
                }
                port = self._create(
                    f"cannot create gretap port {name} to {remote}",
                    network.alias,
                    remedies,
                    no_ipv6=True,
                    ifname=name,
                    mtu=config.mtu,
                    **_spec(config, remote, dev_index),
                )
            ports.append(port)
        return ports

    def _attach_gretap_ports(self, network: Network, bridge: Msg, ports: list[Msg]) -> None:
        for port in ports:
            port = self._converge(port, mtu=network.config.mtu, master=bridge["index"], alias=network.alias, up=True)
            # Set every time, as neigh_suppress on the VXLAN port: one request that changes nothing when set.
            name = port.get("ifname")
            remedies = {errno.EINVAL: "; the kernel is too old for port isolation (needs 4.18 or later)"}
            with netlink_errors(f"cannot isolate bridge port {name} (split horizon)", remedies):
                self._ipr.brport("set", index=port["index"], neigh_suppress=1, isolated=1)

    def _remove_stale_gretap_ports(self, network: Network, wanted: set[str]) -> None:
        """Delete the network's labelled gretap ports that are not in `wanted`: ports of peers the network no
        longer has, after a restore or `vxlanpy recover`.  A dump of every link: only
        gretap networks pay for it."""
        with netlink_errors(f"cannot list the gretap ports of {network.bridge}"):
            links = list(self._ipr.link("dump"))
        for link in links:
            name = str(link.get("ifname"))
            if name in wanted or not is_gretap_port_of(name, network.vni):
                continue
            if alias_of(link) == network.alias:
                self._delete(link)
