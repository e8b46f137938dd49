"""An in-memory Store: the fake for unit tests, with the same contract as the real backends."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import Conflict, NoFreeVni, StoreError
from ..models import Endpoint, Network
from .base import no_free_vni_message, swarm_vni_message, vni_in_use_message


class MemoryStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._networks: dict[str, Network] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._pool_holders: dict[str, set[str]] = {}
        self._addresses: dict[str, dict[str, str]] = {}  # pool id -> address -> holder
        self._pending: dict[str, float] = {}  # network id -> since
        self._swarm_vnis: dict[int, str] = {}  # vni -> swarm network id (SwarmVnis)
        self.fail_writes: str | None = None  # a message: every write raises StoreError(message), as a broken file

    def _write(self) -> None:
        if self.fail_writes is not None:
            raise StoreError(self.fail_writes)

    def restore_file(self, dry_run: bool = False) -> str | None:
        return None

    def check(self) -> str:
        with self._lock:
            self._write()
        return "in memory"

    def _check_free(self, network: Network) -> None:
        if network.network_id in self._networks:
            raise Conflict(f"network {network.network_id[:12]} already exists")
        for other in self._networks.values():
            if other.vni == network.vni:
                raise Conflict(vni_in_use_message(network.vni, other.network_id))
        owner = self._swarm_vnis.get(network.vni)
        if owner not in (None, network.network_id):
            raise Conflict(swarm_vni_message(network.vni, owner))

    def add_network(self, network: Network, pending_since: float | None = None) -> None:
        with self._lock:
            self._write()
            self._check_free(network)
            self._networks[network.network_id] = network
            if pending_since is not None:
                self._pending[network.network_id] = pending_since

    def add_network_with_free_vni(
        self, build: Callable[[int], Network], low: int, high: int, pending_since: float | None = None
    ) -> Network:
        with self._lock:
            self._write()
            used = {network.vni for network in self._networks.values()} | set(self._swarm_vnis)
            vni = next((candidate for candidate in range(low, high + 1) if candidate not in used), None)
            if vni is None:
                raise NoFreeVni(no_free_vni_message(low, high))
            network = build(vni)
            self._check_free(network)
            self._networks[network.network_id] = network
            if pending_since is not None:
                self._pending[network.network_id] = pending_since
            return network

    def confirm_network(self, network_id: str) -> None:
        with self._lock:
            self._write()
            self._pending.pop(network_id, None)

    def pending_networks(self) -> dict[str, float]:
        with self._lock:
            return dict(self._pending)

    def get_network(self, network_id: str) -> Network | None:
        with self._lock:
            return self._networks.get(network_id)

    def list_networks(self) -> list[Network]:
        with self._lock:
            return sorted(self._networks.values(), key=lambda network: network.vni)

    def delete_network(self, network_id: str) -> None:
        with self._lock:
            self._write()
            self._networks.pop(network_id, None)
            self._pending.pop(network_id, None)
            for endpoint_id in [e.endpoint_id for e in self._endpoints.values() if e.network_id == network_id]:
                del self._endpoints[endpoint_id]

    def put_endpoint(self, endpoint: Endpoint) -> None:
        with self._lock:
            self._write()
            self._endpoints[endpoint.endpoint_id] = endpoint

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        with self._lock:
            return self._endpoints.get(endpoint_id)

    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        with self._lock:
            return [e for e in self._endpoints.values() if network_id is None or e.network_id == network_id]

    def delete_endpoint(self, endpoint_id: str) -> None:
        with self._lock:
            self._write()
            self._endpoints.pop(endpoint_id, None)

    # -- AddressBook (the IPAM driver's records) -------------------------------------------------------------

    def claim_pool(self, pool_id: str, holder: str, exclusive: bool) -> bool:
        with self._lock:
            self._write()
            holders = self._pool_holders.setdefault(pool_id, set())
            if exclusive and holders:
                return False
            holders.add(holder)
            return True

    def release_pool(self, pool_id: str, holder: str) -> None:
        with self._lock:
            self._write()
            holders = self._pool_holders.get(pool_id, set())
            holders.discard(holder)
            if not holders:
                self._pool_holders.pop(pool_id, None)
                self._addresses.pop(pool_id, None)

    def pool_holders(self, pool_id: str) -> set[str]:
        with self._lock:
            return set(self._pool_holders.get(pool_id, ()))

    def claimed_pools(self) -> dict[str, set[str]]:
        with self._lock:
            return {pool_id: set(holders) for pool_id, holders in self._pool_holders.items() if holders}

    def reserve_address(self, pool_id: str, address: str, holder: str) -> str | None:
        with self._lock:
            self._write()
            addresses = self._addresses.setdefault(pool_id, {})
            current = addresses.setdefault(address, holder)
            return None if current == holder else current

    def release_address(self, pool_id: str, address: str) -> None:
        with self._lock:
            self._write()
            addresses = self._addresses.get(pool_id)
            if addresses is not None:
                addresses.pop(address, None)
                if not addresses:
                    del self._addresses[pool_id]

    def reserved_addresses(self, pool_id: str) -> dict[str, str]:
        with self._lock:
            return dict(self._addresses.get(pool_id, {}))

    def close(self) -> None:
        pass

    # -- SwarmVnis -------------------------------------------------------------------------------------------

    def reserve_swarm_vni(self, network_id: str, vni: int | None, low: int, high: int) -> int:
        with self._lock:
            self._write()
            if vni is None:
                mine = [held for held, owner in self._swarm_vnis.items() if owner == network_id]
                used = {network.vni for network in self._networks.values()} | set(self._swarm_vnis)
                vni = mine[0] if mine else next((c for c in range(low, high + 1) if c not in used), None)
                if vni is None:
                    raise NoFreeVni(no_free_vni_message(low, high))
            owner = self._swarm_vnis.get(vni)
            if owner not in (None, network_id):
                raise Conflict(swarm_vni_message(vni, owner))
            user = next((n for n in self._networks.values() if n.vni == vni and n.network_id != network_id), None)
            if owner is None and user is not None:
                raise Conflict(vni_in_use_message(vni, user.network_id))
            self._swarm_vnis[vni] = network_id
            return vni

    def release_swarm_vni(self, network_id: str) -> int | None:
        with self._lock:
            self._write()
            vni = next((held for held, owner in self._swarm_vnis.items() if owner == network_id), None)
            if vni is not None:
                del self._swarm_vnis[vni]
            return vni

    def swarm_vnis(self) -> dict[int, str]:
        with self._lock:
            return dict(self._swarm_vnis)
