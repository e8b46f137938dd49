"""An in-memory Store: the fake for unit tests, with the same contract as the real backends."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import Conflict
from ..models import Endpoint, Network
from .base import no_free_vni_message, vni_in_use_message


class MemoryStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._networks: dict[str, Network] = {}
        self._endpoints: dict[str, Endpoint] = {}

    def _check_free(self, network: Network) -> None:
        if network.network_id in self._networks:
            raise Conflict(f"network {network.network_id[:12]} already exists")
        for other in self._networks.values():
            if other.vni == network.vni:
                raise Conflict(vni_in_use_message(network.vni, other.network_id))

    def add_network(self, network: Network) -> None:
        with self._lock:
            self._check_free(network)
            self._networks[network.network_id] = network

    def add_network_with_free_vni(self, build: Callable[[int], Network], low: int, high: int) -> Network:
        with self._lock:
            used = {network.vni for network in self._networks.values()}
            vni = next((candidate for candidate in range(low, high + 1) if candidate not in used), None)
            if vni is None:
                raise Conflict(no_free_vni_message(low, high))
            network = build(vni)
            self._check_free(network)
            self._networks[network.network_id] = network
            return network

    def get_network(self, network_id: str) -> Network | None:
        with self._lock:
            return self._networks.get(network_id)

    def list_networks(self) -> list[Network]:
        with self._lock:
            return sorted(self._networks.values(), key=lambda network: network.vni)

    def delete_network(self, network_id: str) -> None:
        with self._lock:
            self._networks.pop(network_id, None)
            for endpoint_id in [e.endpoint_id for e in self._endpoints.values() if e.network_id == network_id]:
                del self._endpoints[endpoint_id]

    def put_endpoint(self, endpoint: Endpoint) -> None:
        with self._lock:
            self._endpoints[endpoint.endpoint_id] = endpoint

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        with self._lock:
            return self._endpoints.get(endpoint_id)

    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        with self._lock:
            return [e for e in self._endpoints.values() if network_id is None or e.network_id == network_id]

    def delete_endpoint(self, endpoint_id: str) -> None:
        with self._lock:
            self._endpoints.pop(endpoint_id, None)

    def close(self) -> None:
        pass
