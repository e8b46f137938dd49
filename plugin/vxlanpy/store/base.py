"""The store interface the driver depends on."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol, TypeVar

from ..errors import NoFreeVni
from ..models import Endpoint, Network

T = TypeVar("T")


class AddressBook(Protocol):
    """The IPAM driver's records: pools and the addresses reserved in them, shared by every host of a store.

    Pool ids are opaque strings made by the IPAM layer from validated CIDRs; holders name who reserved an
    address (`host/endpoint-or-label`), so that a refusal can say which host holds it. Every method is atomic."""

    def claim_pool(self, pool_id: str, holder: str, exclusive: bool) -> bool:
        """Record `holder` as a user of the pool. Returns False, changing nothing, when `exclusive` is set and
        the pool already has any holder (used to pick automatic pools no one else uses)."""
        ...

    def release_pool(self, pool_id: str, holder: str) -> None:
        """Drop `holder`; when no holder remains, forget the pool and every address reserved in it."""
        ...

    def pool_holders(self, pool_id: str) -> set[str]: ...

    def claimed_pools(self) -> dict[str, set[str]]:
        """pool id -> holders, for every pool someone holds (the sweep of claims whose create never finished)."""
        ...

    def reserve_address(self, pool_id: str, address: str, holder: str) -> str | None:
        """Reserve `address` for `holder` if it is free. Returns None on success (or when `holder` already
        holds it), else the holder that has it."""
        ...

    def release_address(self, pool_id: str, address: str) -> None: ...

    def reserved_addresses(self, pool_id: str) -> dict[str, str]:
        """address -> holder, for every address reserved in the pool."""
        ...


class Store(AddressBook, Protocol):
    """Networks and endpoints, keyed by Docker's ids.  VNIs are unique per store.

    Implementations raise `errors.Conflict` for a VNI already in use and `errors.StoreError` when the
    backend fails; every write is atomic."""

    def add_network(self, network: Network, pending_since: float | None = None) -> None:
        """`pending_since` (a time) marks the network as being created, until `confirm_network`: a row still
        pending after its create's request ended belongs to a create Docker never completed (the plugin was
        killed in the middle), and reconciliation removes it with its devices."""
        ...

    def add_network_with_free_vni(
        self, build: Callable[[int], Network], low: int, high: int, pending_since: float | None = None
    ) -> Network:
        """Atomically pick the lowest VNI in [low, high] that no network uses, and add build(vni)."""
        ...

    def confirm_network(self, network_id: str) -> None:
        """The network's create finished: it is no longer pending."""
        ...

    def pending_networks(self) -> dict[str, float]:
        """network id -> since, for every network still pending."""
        ...

    def restore_file(self, dry_run: bool = False) -> str | None:
        """When the store's file was deleted or replaced under the running plugin, write the state it still
        holds back to the file's path (dry_run: only say so), and say what was done; None when nothing is amiss."""
        ...

    def check(self) -> str:
        """The health check: prove that the store answers and that a write reaches it (a short detail), or
        raise StoreError saying what is wrong and how to fix it."""
        ...

    def get_network(self, network_id: str) -> Network | None: ...

    def list_networks(self) -> list[Network]: ...

    def delete_network(self, network_id: str) -> None:
        """Remove the network and its endpoints; a no-op when it is not there."""
        ...

    def put_endpoint(self, endpoint: Endpoint) -> None:
        """Insert or replace."""
        ...

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None: ...

    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]: ...

    def delete_endpoint(self, endpoint_id: str) -> None: ...

    def close(self) -> None: ...


class SwarmVnis(Protocol):
    """The VNIs a swarm manager gave its networks (AllocateNetwork), kept cluster-wide until FreeNetwork, so
    that every node creates the network on the same VNI and no other network takes it meanwhile."""

    def reserve_swarm_vni(self, network_id: str, vni: int | None, low: int, high: int) -> int:
        """Reserve `vni` (None: the lowest one in [low, high] that no network uses or has reserved) for the
        swarm network; its own reservation is confirmed again. Conflict when another network has it."""
        ...

    def release_swarm_vni(self, network_id: str) -> int | None:
        """Drop the network's reservation; returns its VNI, None when it had none."""
        ...

    def swarm_vnis(self) -> dict[int, str]:
        """vni -> swarm network id, for every reservation."""
        ...


def swarm_vni_message(vni: int, network_id: str) -> str:
    return (
        f"vni {vni} is reserved by the swarm network {network_id[:12]}; choose another -o vni=N or omit it to get "
        "a free one"
    )


def vni_in_use_message(vni: int, network_id: str) -> str:
    return (
        f"vni {vni} is already used by vxlanpy network {network_id[:12]} on this host; "
        "choose another -o vni=N or omit it to get a free one"
    )


def ranges_without(low: int, high: int, skipped: Collection[int]) -> list[tuple[int, int]]:
    """[low, high] in pieces around the `skipped` VNIs (those the host's other VXLAN devices hold), lowest first."""
    pieces, start = [], low
    for vni in sorted(vni for vni in set(skipped) if low <= vni <= high):
        if vni > start:
            pieces.append((start, vni - 1))
        start = vni + 1
    if start <= high:
        pieces.append((start, high))
    return pieces


def pick_around(pick: Callable[[int, int], T], low: int, high: int, skipped: Collection[int]) -> T:
    """`pick(start, end)` (an allocation of the lowest free VNI in that range) on each piece of [low, high] around
    the `skipped` VNIs in turn, until one finds a free VNI."""
    for start, end in ranges_without(low, high, skipped):
        try:
            return pick(start, end)
        except NoFreeVni:
            continue
    raise NoFreeVni(no_free_vni_message(low, high))


def no_free_vni_message(low: int, high: int) -> str:
    return f"no free VNI left in {low}-{high}; remove unused networks or widen VXLANPY_VNI_RANGE"
