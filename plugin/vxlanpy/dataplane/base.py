"""Interfaces between the driver and the kernel.  The driver only ever talks to these."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..models import Endpoint, IPAddress, Network, PortMapping

# How a create of a gretap port on a kernel without GRE fails (netlink's EOPNOTSUPP, and the fake's).
NO_GRE = (
    " (the kernel lacks GRE support: load ip_gre (modprobe ip_gre; ip6_gre for an IPv6 underlay), or use encap=vxlan)"
)


@dataclass(frozen=True)
class Underlay:
    """What the host's underlay interface looks like: used for defaults (dev, local, MTU), and to refuse an
    overlay subnet that would capture the host's own address or gateway."""

    dev: str
    mtu: int
    addresses: tuple[IPAddress, ...]
    gateways: tuple[IPAddress, ...] = ()  # of the main table's default routes that leave by this interface


@dataclass(frozen=True, slots=True)  # slots: a host may hold 10^5 of them
class RemoteEndpoint:
    """An endpoint on another host, as the kernel needs it: its MAC, its addresses and its host's VTEP."""

    mac: str
    vtep: IPAddress
    addresses: tuple[IPAddress, ...] = ()


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
        the VXLAN port with neigh_suppress on, and one all-zero FDB entry per static peer.  With encap=gretap,
        one keyed gretap port per peer instead, isolated on the bridge (see gretap.py), and no other."""
        ...

    def remove_network(self, network: Network) -> None: ...

    def ensure_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        """A veth pair: the host end enslaved to the network's bridge and up, the container end with the
        endpoint's MAC, both with the network's MTU.  A container end already moved into a sandbox is fine."""
        ...

    def remove_endpoint(self, endpoint: Endpoint) -> None: ...

    def sync_remotes(self, network: Network, flood: set[IPAddress], remotes: list[RemoteEndpoint]) -> None:
        """Make the kernel hold exactly these remote entries for the network (multi-host mode):

        * one all-zero FDB entry on the VXLAN device per VTEP in `flood` (broadcast and multicast that remain);
        * per remote endpoint, a VXLAN FDB entry MAC -> VTEP, a static bridge FDB entry MAC -> VXLAN port,
          and a permanent neighbour entry per address (IP -> MAC) on the bridge, which the bridge's
          neigh_suppress uses to answer ARP/ND locally.
        Entries for other MACs, addresses or VTEPs are removed."""
        ...

    def update_remotes(
        self, network: Network, gone_macs: set[str], gone_addresses: set[IPAddress], remotes: list[RemoteEndpoint]
    ) -> None:
        """Change only some remote entries (one watch event's worth), as sync_remotes would, without reading
        the kernel's tables: remove every entry of `gone_macs` and the neighbour entries of `gone_addresses`,
        then add or correct the entries of `remotes`.  Nothing else is touched."""
        ...

    def remote_entries(self, network: Network) -> tuple[set[IPAddress], list[RemoteEndpoint]]:
        """What sync_remotes would have to produce to match the kernel now: (flood VTEPs, remote endpoints)."""
        ...

    def remove_link(self, name: str) -> None:
        """Delete one link by name, if it exists and carries vxlanpy's alias (used for orphans)."""
        ...

    def owned_links(self) -> dict[str, str]:
        """Every link on this host whose alias starts with vxlanpy's prefix: name -> alias."""
        ...

    def foreign_vnis(self, dstport: int) -> dict[int, str]:
        """The VXLAN devices of this host that are not vxlanpy's and receive UDP port `dstport`: VNI -> name.
        The kernel refuses a second device on one VNI and port (Docker's overlay and swarm's ingress use 4789)."""
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

    def sync_vtep_filter(
        self, ports: set[int], vteps: set[IPAddress], tunnel_ports: Mapping[int, str] | None = None
    ) -> None:
        """Accept VXLAN UDP on `ports` only from `vteps` (multi-host mode); empty ports removes the filter.
        `tunnel_ports` (encrypted networks' ports -> the WireGuard interface) are also dropped unless they
        arrive on that interface."""
        ...

    def owned_vnis(self) -> set[int]:
        """VNIs for which vxlanpy has per-network chains installed now."""
        ...

    def published_ports(self, vni: int) -> dict[IPAddress, list[PortMapping]]:
        """The ports the kernel publishes now for the network of `vni` (its DNAT rules), by container address:
        what `vxlanpy recover` keeps of a lost store's host ports."""
        ...


def vni_taken_message(vni: int, dstport: int, device: str | None) -> str:
    """Why a VXLAN device cannot be made on `vni`, and how to get around it."""
    holder = f"the VXLAN device {device}" if device else "another VXLAN device"
    overlay = " (Docker's overlay networks and swarm's ingress network use 4789)" if dstport == 4789 else ""
    return (
        f"VNI {vni} on UDP port {dstport} is taken on this host by {holder}, which is not vxlanpy's{overlay}; "
        "create the network with another -o vni or -o dstport, or set VXLANPY_VNI_RANGE to a range apart from it"
    )


def side_by_side(aside: Callable[[], None], here: Callable[[], None]) -> None:
    """Run `aside` on a thread of its own while `here` runs on this one; return when both are done, raising the
    first error.  For a firewall restore and netlink requests, which wait on different kernel locks: together
    they take the longer of the two, not their sum."""
    errors: list[BaseException] = []

    def run_aside() -> None:
        try:
            aside()
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            errors.append(error)

    thread = threading.Thread(target=run_aside, name="vxlanpy-aside", daemon=True)
    thread.start()
    try:
        here()
    finally:
        thread.join()
    if errors:
        raise errors[0]
