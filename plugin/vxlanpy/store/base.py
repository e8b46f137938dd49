"""The store interface the driver depends on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..models import Endpoint, Network


class Store(Protocol):
    """Networks and endpoints, keyed by Docker's ids.  VNIs are unique per store.

    Implementations raise `errors.Conflict` for a VNI already in use and `errors.StoreError` when the
    backend fails; every write is atomic."""

    def add_network(self, network: Network) -> None: ...

    def add_network_with_free_vni(self, build: Callable[[int], Network], low: int, high: int) -> Network:
        """Atomically pick the lowest VNI in [low, high] that no network uses, and add build(vni)."""
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


def vni_in_use_message(vni: int, network_id: str) -> str:
    return (
        f"vni {vni} is already used by vxlanpy network {network_id[:12]} on this host; "
        "choose another -o vni=N or omit it to get a free one"
    )


def no_free_vni_message(low: int, high: int) -> str:
    return f"no free VNI left in {low}-{high}; remove unused networks or widen VXLANPY_VNI_RANGE"
