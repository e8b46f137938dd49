"""Interfaces between the driver and the kernel.  The driver only ever talks to these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..models import Endpoint, IPAddress, Network


@dataclass(frozen=True)
class Underlay:
    """What the host's underlay interface looks like: used for defaults (dev, local, MTU)."""

    dev: str
    mtu: int
    addresses: tuple[IPAddress, ...]


class Links(Protocol):
    """Bridges, VXLAN devices, veth pairs and FDB entries.

    Every method is idempotent: `ensure_*` converges the kernel to the given object whatever is there now,
    `remove_*` succeeds when the object is already gone.  Every link vxlanpy creates carries the object's
    `alias` (IFLA_IFALIAS) so that reconciliation can tell vxlanpy's links from everyone else's.
    """

    def underlay(self, dev: str | None) -> Underlay:
        """The named interface, or the one the default route leaves by when dev is None.

        Raises InvalidOption when the interface does not exist or there is no default route."""
        ...

    def ensure_network(self, network: Network) -> None:
        """Bridge (MTU, gateway addresses, anycast MAC) plus the VXLAN device enslaved to it, both up,
        the VXLAN port with neigh_suppress on, and one all-zero FDB entry per static peer."""
        ...

    def remove_network(self, network: Network) -> None: ...

    def ensure_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        """A veth pair: the host end enslaved to the network's bridge and up, the container end with the
        endpoint's MAC, both with the network's MTU.  A container end already moved into a sandbox is fine."""
        ...

    def remove_endpoint(self, endpoint: Endpoint) -> None: ...

    def remove_link(self, name: str) -> None:
        """Delete one link by name, if it exists and carries vxlanpy's alias (used for orphans)."""
        ...

    def owned_links(self) -> dict[str, str]:
        """Every link on this host whose alias starts with vxlanpy's prefix: name -> alias."""
        ...


class Firewall(Protocol):
    """The host firewall rules vxlanpy needs, kept in vxlanpy's own chains only.

    `ensure_network` (re)writes everything a network needs, published ports of its endpoints included;
    it is idempotent and is what both requests and reconciliation call."""

    def ensure_base(self) -> None:
        """Create vxlanpy's top-level chains and hook them into the built-in chains, once."""
        ...

    def ensure_network(self, network: Network, endpoints: list[Endpoint]) -> None: ...

    def remove_network(self, vni: int) -> None:
        """Drop the network's chains and the jumps to them; a no-op when absent."""
        ...

    def owned_vnis(self) -> set[int]:
        """VNIs for which vxlanpy has per-network chains installed now."""
        ...
