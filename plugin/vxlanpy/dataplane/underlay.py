"""The underlay of `NetlinkLinks`: the interface VXLAN traffic leaves by (given, or the default route's), its MTU,
addresses and default gateways, with the default routes read again only after one changed."""

from __future__ import annotations

import socket

from pyroute2.netlink.rtnl import rt_scope

from ..errors import InvalidOption
from ..models import IPAddress
from .base import Underlay
from .linkops import LinkOps, Msg, netlink_errors
from .rtnl import DefaultRouteWatch

RT_SCOPE_UNIVERSE = rt_scope["universe"]


class UnderlayLookup(LinkOps):
    """Part of `NetlinkLinks`; worker thread only."""

    _routes: DefaultRouteWatch
    _default_oif: int | None  # the default route's interface, while `_routes` sees no change
    _gateways: dict[int, tuple[IPAddress, ...]]  # link index -> its default gateways, likewise

    def _underlay(self, dev: str | None) -> Underlay:
        link = self._default_route_link() if dev is None else self._link(dev)
        if link is None:
            raise InvalidOption(f"underlay interface {dev!r} does not exist: set -o dev=<interface>")
        dev = str(link.get("ifname"))
        with netlink_errors(f"cannot read the addresses of {dev}"):
            addresses = self._raw.addresses(int(link["index"]))
        universe = [address for address, _, scope in addresses if scope == RT_SCOPE_UNIVERSE]
        ordered = sorted(universe, key=lambda address: address.version)
        return Underlay(
            dev=dev, mtu=int(link.get("mtu")), addresses=tuple(ordered), gateways=self._default_gateways(link)
        )

    def _note_route_changes(self) -> None:
        """Forget what was read of the default routes when one changed since (see `DefaultRouteWatch`)."""
        with netlink_errors("cannot read the routing table"):
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
                with netlink_errors("cannot read the routing table"):
                    gateways += self._raw.default_route_gateways(family, index)
            self._gateways[index] = tuple(dict.fromkeys(gateways))
        return self._gateways[index]

    def _default_route_link(self) -> Msg:
        """The link of the default route: IPv4 first, lowest metric first (see `DefaultRouteWatch`)."""
        self._note_route_changes()
        if self._default_oif is not None:
            link = self._link_at(self._default_oif)
            if link is not None:
                return link
        for family in (socket.AF_INET, socket.AF_INET6):
            with netlink_errors("cannot read the routing table"):
                oifs = self._raw.default_route_oifs(family)
            for oif in oifs:
                link = self._link_at(oif)
                if link is not None:
                    self._default_oif = oif
                    return link
        self._default_oif = None
        raise InvalidOption("no default route to pick the underlay interface from: set -o dev=<interface>")
