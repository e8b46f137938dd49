"""The multi-host store: the Store and AddressBook on etcd (the client, its failover and TLS: etcd_kv.py).

Key layout under the prefix (default /vxlanpy), every variable part validated before it becomes a key; <host>
is the host's identity (nodes.py: VXLANPY_HOST, or chosen once and kept in the state dir):

    hosts/<host>/networks/<network id>       this host's networks (Docker ids are per host)
    hosts/<host>/endpoints/<endpoint id>     this host's endpoints
    hosts/<host>/node                        its hostname, VTEP and when it was last seen (nodes.py)
    nodes/<host>                             the same, while it runs                        (under its lease)
    segments/<vni>                           the cluster-wide definition of a VXLAN segment (subnets, port, MTU)
    segment-hosts/<vni>/<host>               which hosts have a network on the segment
    live/<vni>/vtep/<host>                   a host's VTEP address on the segment          (under its lease)
    live/<vni>/ep/<host>/<endpoint id>       an endpoint's MAC, addresses and VTEP          (under its lease)
    addresses/<vni>/<ip>                     who uses an address on the segment             (under its lease)
    swarm-vnis/<vni>                         the swarm network the manager gave the VNI (AllocateNetwork)
    ipam/pools/<pool key>/<holder key>       the IPAM driver's pool holders
    ipam/addresses/<pool key>/<ip>           the IPAM driver's reservations
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

from ..errors import Conflict, InvalidOption, NoFreeVni
from ..models import Endpoint, Network
from .base import no_free_vni_message, swarm_vni_message, vni_in_use_message
from .etcd_kv import EtcdConfig, EtcdKV, KeyValue, LeaseNotFound, key_part

# The client's names too: the rest of vxlanpy and its tests import them from here.
__all__ = [
    "HOST_NAME",
    "EtcdConfig",
    "EtcdKV",
    "EtcdStore",
    "KeyValue",
    "LeaseNotFound",
    "key_part",
    "segment_differences",
    "segment_of",
]

HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class EtcdStore:
    """Store and AddressBook on etcd; the host's own networks and endpoints live under hosts/<host>/."""

    def __init__(self, kv: EtcdKV, host: str) -> None:
        if not HOST_NAME.match(host):
            raise InvalidOption(f"VXLANPY_HOST={host!r} is not a valid host name; use letters, digits, '.', '_', '-'")
        self.kv = kv
        self.host = host
        self._lock = threading.Lock()

    # -- Store ----------------------------------------------------------------------------------------------

    def _network_key(self, network_id: str) -> str:
        return self.kv.key("hosts", self.host, "networks", key_part(network_id))

    def _endpoint_key(self, endpoint_id: str) -> str:
        return self.kv.key("hosts", self.host, "endpoints", key_part(endpoint_id))

    def _pending_key(self, network_id: str) -> str:
        return self.kv.key("hosts", self.host, "pending", key_part(network_id))

    def add_network(self, network: Network, pending_since: float | None = None) -> None:
        with self._lock:
            self._check_local(network)
            if pending_since is not None:  # first: a pending mark without its row is harmless, not the reverse
                self.kv.put(self._pending_key(network.network_id), repr(pending_since))
            self._claim_segment(network)
            self._put_network(network)

    def confirm_network(self, network_id: str) -> None:
        self.kv.delete(self._pending_key(network_id))

    def pending_networks(self) -> dict[str, float]:
        items, _ = self.kv.range(self.kv.key("hosts", self.host, "pending", ""))
        return {kv.key.rsplit("/", 1)[1]: float(kv.value) for kv in items}

    def restore_file(self, dry_run: bool = False) -> str | None:
        return None  # etcd keeps its own copies

    def check(self) -> str:
        self.kv.put(self.kv.key("hosts", self.host, "health"), "ok")
        return f"etcd at {self.kv.where} writable"

    def add_network_with_free_vni(
        self, build: Callable[[int], Network], low: int, high: int, pending_since: float | None = None
    ) -> Network:
        with self._lock:
            for _ in range(16):  # another host may take the same VNI between our read and our claim
                used = self._used_vnis()
                vni = next((candidate for candidate in range(low, high + 1) if candidate not in used), None)
                if vni is None:
                    raise NoFreeVni(no_free_vni_message(low, high) + " (cluster-wide)")
                network = build(vni)
                self._check_local(network)
                if pending_since is not None:
                    self.kv.put(self._pending_key(network.network_id), repr(pending_since))
                if self.kv.create(self.kv.key("segments", str(vni)), json.dumps(segment_of(network))) is None:
                    self._put_network(network)
                    return network
            raise Conflict("could not allocate a VNI: too many hosts are creating networks at once; retry")

    def _used_vnis(self) -> set[int]:
        """The VNIs of the cluster's segments and of the swarm's reservations."""
        return {
            int(kv.key.rsplit("/", 1)[1])
            for prefix in ("segments", "swarm-vnis")
            for kv in self.kv.range(self.kv.key(prefix, ""), keys_only=True)[0]
        }

    def _check_local(self, network: Network) -> None:
        if self.kv.get(self._network_key(network.network_id)) is not None:
            raise Conflict(f"network {network.network_id[:12]} already exists")
        for other in self.list_networks():
            if other.vni == network.vni:
                raise Conflict(vni_in_use_message(network.vni, other.network_id))
        owner = self.kv.get(self.kv.key("swarm-vnis", str(network.vni)))
        if owner not in (None, network.network_id):
            raise Conflict(swarm_vni_message(network.vni, owner))

    def _claim_segment(self, network: Network) -> None:
        wanted = segment_of(network)
        recorded_raw = self.kv.create(self.kv.key("segments", str(network.vni)), json.dumps(wanted))
        if recorded_raw is None:
            return
        differences = segment_differences(json.loads(recorded_raw), wanted)
        if differences:
            raise Conflict(
                f"vni {network.vni} is already defined in the cluster with {'; '.join(differences)}; "
                "create the network with the same settings on every host, or choose another vni"
            )

    def _put_network(self, network: Network) -> None:
        self.kv.put(self._network_key(network.network_id), json.dumps(network.to_dict()))
        self.kv.put(self.kv.key("segment-hosts", str(network.vni), self.host), network.network_id)

    def get_network(self, network_id: str) -> Network | None:
        raw = self.kv.get(self._network_key(network_id))
        return Network.from_dict(json.loads(raw)) if raw else None

    def list_networks(self) -> list[Network]:
        items, _ = self.kv.range(self.kv.key("hosts", self.host, "networks", ""))
        return sorted((Network.from_dict(json.loads(kv.value)) for kv in items), key=lambda network: network.vni)

    def delete_network(self, network_id: str) -> None:
        with self._lock:
            network = self.get_network(network_id)
            for endpoint in self.list_endpoints(network_id):
                self.kv.delete(self._endpoint_key(endpoint.endpoint_id))
            self.kv.delete(self._network_key(network_id))
            self.kv.delete(self._pending_key(network_id))
            if network is None:
                return
            self.kv.delete(self.kv.key("segment-hosts", str(network.vni), self.host))
            remaining, _ = self.kv.range(self.kv.key("segment-hosts", str(network.vni), ""), keys_only=True)
            if not remaining:
                self.kv.delete(self.kv.key("segments", str(network.vni)))

    def put_endpoint(self, endpoint: Endpoint) -> None:
        self.kv.put(self._endpoint_key(endpoint.endpoint_id), json.dumps(endpoint.to_dict()))

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        raw = self.kv.get(self._endpoint_key(endpoint_id))
        return Endpoint.from_dict(json.loads(raw)) if raw else None

    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        items, _ = self.kv.range(self.kv.key("hosts", self.host, "endpoints", ""))
        endpoints = [Endpoint.from_dict(json.loads(kv.value)) for kv in items]
        return [e for e in endpoints if network_id is None or e.network_id == network_id]

    def delete_endpoint(self, endpoint_id: str) -> None:
        self.kv.delete(self._endpoint_key(endpoint_id))

    def close(self) -> None:
        pass

    # -- SwarmVnis -------------------------------------------------------------------------------------------

    def reserve_swarm_vni(self, network_id: str, vni: int | None, low: int, high: int) -> int:
        with self._lock:
            mine = next((held for held, owner in self.swarm_vnis().items() if owner == network_id), None)
            for _ in range(16):  # another host may take the same VNI between our read and our claim
                candidate = vni if vni is not None else mine
                if candidate is None:
                    used = self._used_vnis()
                    candidate = next((c for c in range(low, high + 1) if c not in used), None)
                    if candidate is None:
                        raise NoFreeVni(no_free_vni_message(low, high) + " (cluster-wide)")
                elif candidate != mine and vni is not None and self.kv.get(self.kv.key("segments", str(vni))):
                    # A segment of local networks: joining it would put the swarm's tasks on their layer 2.
                    raise Conflict(
                        f"vni {vni} is already used by vxlanpy networks in the cluster; choose another -o vni=N "
                        "or omit it to get a free one"
                    )
                owner = self.kv.create(self.kv.key("swarm-vnis", str(candidate)), network_id)
                if owner in (None, network_id):
                    return candidate
                if vni is not None:
                    raise Conflict(swarm_vni_message(candidate, owner))
            raise Conflict("could not allocate a VNI: too many networks are being created at once; retry")

    def release_swarm_vni(self, network_id: str) -> int | None:
        with self._lock:
            vni = next((held for held, owner in self.swarm_vnis().items() if owner == network_id), None)
            if vni is not None:
                self.kv.delete(self.kv.key("swarm-vnis", str(vni)))
            return vni

    def swarm_vnis(self) -> dict[int, str]:
        items, _ = self.kv.range(self.kv.key("swarm-vnis", ""))
        return {int(kv.key.rsplit("/", 1)[1]): kv.value for kv in items}

    # -- AddressBook ----------------------------------------------------------------------------------------

    def _pool_key(self, pool_id: str) -> str:
        return key_part(pool_id.replace("/", "_").replace(" ", "+"))

    def claim_pool(self, pool_id: str, holder: str, exclusive: bool) -> bool:
        pool = self._pool_key(pool_id)
        # The owner key is created by the pool's first claimant, whoever it is: an exclusive claim wins only
        # by creating it, so it never lands on a pool that someone already holds.
        owner = self.kv.create(self.kv.key("ipam", "pool-owners", pool), holder)
        if exclusive and owner not in (None, holder):
            return False
        self.kv.put(self.kv.key("ipam", "pools", pool, key_part(holder.replace("/", "~"))), holder)
        return True

    def release_pool(self, pool_id: str, holder: str) -> None:
        pool = self._pool_key(pool_id)
        self.kv.delete(self.kv.key("ipam", "pools", pool, key_part(holder.replace("/", "~"))))
        remaining, _ = self.kv.range(self.kv.key("ipam", "pools", pool, ""), keys_only=True)
        if not remaining:
            self.kv.delete_prefix(self.kv.key("ipam", "addresses", pool, ""))
            self.kv.delete(self.kv.key("ipam", "pool-owners", pool))

    def pool_holders(self, pool_id: str) -> set[str]:
        items, _ = self.kv.range(self.kv.key("ipam", "pools", self._pool_key(pool_id), ""))
        return {kv.value for kv in items}

    def claimed_pools(self) -> dict[str, set[str]]:
        prefix = self.kv.key("ipam", "pools", "")
        items, _ = self.kv.range(prefix)
        claims: dict[str, set[str]] = {}
        for kv in items:
            pool = kv.key.removeprefix(prefix).partition("/")[0]
            # The inverse of _pool_key: a pool id is a CIDR, with neither '_' nor '+' of its own.
            claims.setdefault(pool.replace("_", "/").replace("+", " "), set()).add(kv.value)
        return claims

    def reserve_address(self, pool_id: str, address: str, holder: str) -> str | None:
        key = self.kv.key("ipam", "addresses", self._pool_key(pool_id), key_part(address))
        existing = self.kv.create(key, holder)
        return None if existing in (None, holder) else existing

    def release_address(self, pool_id: str, address: str) -> None:
        self.kv.delete(self.kv.key("ipam", "addresses", self._pool_key(pool_id), key_part(address)))

    def reserved_addresses(self, pool_id: str) -> dict[str, str]:
        items, _ = self.kv.range(self.kv.key("ipam", "addresses", self._pool_key(pool_id), ""))
        return {kv.key.rsplit("/", 1)[1]: kv.value for kv in items}


def segment_of(network: Network) -> dict[str, Any]:
    """What every host of a VXLAN segment must agree on."""
    return {
        "vni": network.vni,
        "dstport": network.config.dstport,
        "mtu": network.config.mtu,
        "internal": network.internal,
        "encrypted": network.config.encrypted,
        "ipv4": [subnet.to_dict() for subnet in network.ipv4],
        "ipv6": [subnet.to_dict() for subnet in network.ipv6],
    }


def segment_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Human-readable differences, e.g. "subnet 10.60.0.0/24 (this host asked for 10.61.0.0/24)"."""

    def pools(segment: dict[str, Any], family: str) -> str:
        return ", ".join(f"{item['pool']} gateway {item['gateway']}" for item in segment.get(family, [])) or "none"

    labels = {"dstport": "dstport", "mtu": "mtu", "internal": "internal", "encrypted": "encrypted"}
    defaults = {"encrypted": False}  # segments recorded before the key existed are plain

    def value(segment: dict[str, Any], name: str) -> Any:
        return segment.get(name, defaults.get(name))

    differences = [
        f"{label} {value(recorded, name)} (this host asked for {value(wanted, name)})"
        for name, label in labels.items()
        if value(recorded, name) != value(wanted, name)
    ]
    for family, label in (("ipv4", "subnet"), ("ipv6", "IPv6 subnet")):
        if pools(recorded, family) != pools(wanted, family):
            differences.append(f"{label} {pools(recorded, family)} (this host asked for {pools(wanted, family)})")
    return differences
