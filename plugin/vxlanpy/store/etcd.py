"""The multi-host store: etcd v3, through its JSON gateway (the etcd3gw client's session and URLs).

Key layout under the prefix (default /vxlanpy), every variable part validated before it becomes a key:

    hosts/<host>/networks/<network id>       this host's networks (Docker ids are per host)
    hosts/<host>/endpoints/<endpoint id>     this host's endpoints
    segments/<vni>                           the cluster-wide definition of a VXLAN segment (subnets, port, MTU)
    segment-hosts/<vni>/<host>               which hosts have a network on the segment
    live/<vni>/vtep/<host>                   a host's VTEP address on the segment          (under its lease)
    live/<vni>/ep/<host>/<endpoint id>       an endpoint's MAC, addresses and VTEP          (under its lease)
    addresses/<vni>/<ip>                     who uses an address on the segment             (under its lease)
    ipam/pools/<pool key>/<holder key>       the IPAM driver's pool holders
    ipam/addresses/<pool key>/<ip>           the IPAM driver's reservations

Every etcd failure becomes a StoreError that says etcd is unreachable and what still works, within the
client timeout (VXLANPY_ETCD_TIMEOUT, 3 s by default): dockerd waits forever on a hung plugin.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from ..digits import ascii_int
from ..errors import Conflict, InvalidOption, StoreError
from ..models import Endpoint, Network
from .base import no_free_vni_message, vni_in_use_message

log = logging.getLogger(__name__)

HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
KEY_PART = re.compile(r"^[A-Za-z0-9_.:~+=-]{1,128}$")
DEFAULT_PORT = 2379


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (etcd's convention: last byte + 1)."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


def key_part(value: str) -> str:
    """A piece of a key; anything that could escape its place (a '/', '..', spaces) is refused."""
    if not KEY_PART.match(value) or value in (".", ".."):
        raise InvalidOption(f"{value[:64]!r} cannot be used in a store key")
    return value


class LeaseNotFound(StoreError):
    """The lease expired (etcd was out of reach for longer than its TTL): get a new one and publish again."""


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[tuple[str, int], ...]
    prefix: str = "/vxlanpy"
    timeout: float = 3.0
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_url(cls, url: str, **extra: Any) -> EtcdConfig:
        """etcd://host:port[,host:port...]"""
        rest = url.removeprefix("etcd://").strip("/")
        endpoints = []
        for item in rest.split(","):
            host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", str(DEFAULT_PORT))
            host = host.strip("[]")
            number = ascii_int(port, 1, 65535)
            if not host or number is None:
                raise InvalidOption(f"VXLANPY_STORE={url[:80]!r} is not valid; use etcd://HOST:PORT[,HOST:PORT...]")
            endpoints.append((host, number))
        prefix = "/" + extra.pop("prefix", "/vxlanpy").strip("/")
        if not all(KEY_PART.match(part) for part in prefix.strip("/").split("/")):
            raise InvalidOption(f"VXLANPY_ETCD_PREFIX={prefix!r} is not valid; use e.g. /vxlanpy")
        return cls(endpoints=tuple(endpoints), prefix=prefix, **extra)


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    mod_revision: int
    lease: int


class EtcdKV:
    """The few etcd v3 calls vxlanpy needs, with failover across endpoints and errors mapped to StoreError."""

    def __init__(self, config: EtcdConfig) -> None:
        from etcd3gw.client import Etcd3Client

        self.config = config
        protocol = "https" if config.ca_cert or config.cert else "http"
        self._clients = [
            Etcd3Client(
                host=host,
                port=port,
                protocol=protocol,
                ca_cert=config.ca_cert,
                cert_key=config.key,
                cert_cert=config.cert,
                timeout=config.timeout,
                api_path="/v3/",
            )
            for host, port in config.endpoints
        ]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.config.endpoints)

    def key(self, *parts: str) -> str:
        return "/".join((self.config.prefix, *parts))

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        from etcd3gw import exceptions

        last: Exception | None = None
        for attempt in range(len(self._clients)):
            with self._lock:
                index = (self._current + attempt) % len(self._clients)
            client = self._clients[index]
            try:
                result: dict[str, Any] = client.post(client.get_url(path), json=body)
            except (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError) as exc:
                last = exc
                continue
            except exceptions.Etcd3Exception as exc:
                detail = exc.detail_text or str(exc)
                if "lease not found" in detail:
                    raise LeaseNotFound(f"etcd at {self.where} no longer knows our lease") from exc
                raise StoreError(f"etcd at {self.where} refused {path}: {detail[:200]}") from exc
            with self._lock:
                self._current = index
            return result
        raise StoreError(
            f"etcd at {self.where} is unreachable ({type(last).__name__}); running containers keep working, "
            "but networks and containers cannot be changed until etcd is back: check etcd and VXLANPY_STORE"
        ) from last

    # -- key-value ------------------------------------------------------------------------------------------

    def range(self, prefix: str, keys_only: bool = False) -> tuple[list[KeyValue], int]:
        body: dict[str, Any] = {"key": _b64(prefix), "range_end": _prefix_end(prefix)}
        if keys_only:
            body["keys_only"] = True
        result = self.call("/kv/range", body)
        items = [
            KeyValue(
                _unb64(kv["key"]), _unb64(kv.get("value", "")), int(kv.get("mod_revision", 0)), int(kv.get("lease", 0))
            )
            for kv in result.get("kvs", [])
        ]
        return items, int(result["header"]["revision"])

    def range_pages(self, prefix: str, page: int = 1000) -> Iterator[tuple[list[KeyValue], int]]:
        """The keys under `prefix`, `page` at a time, every page read at the revision of the first: (items,
        revision) per page.  A host reading 10^5 keys never holds the whole answer (JSON, base64) at once."""
        start, revision = prefix, 0
        while True:
            body: dict[str, Any] = {"key": _b64(start), "range_end": _prefix_end(prefix), "limit": page}
            if revision:
                body["revision"] = revision
            result = self.call("/kv/range", body)
            revision = revision or int(result["header"]["revision"])
            items = [
                KeyValue(
                    _unb64(kv["key"]),
                    _unb64(kv.get("value", "")),
                    int(kv.get("mod_revision", 0)),
                    int(kv.get("lease", 0)),
                )
                for kv in result.get("kvs", [])
            ]
            yield items, revision
            if not result.get("more") or not items:
                return
            start = items[-1].key + "\0"  # the next key after the last one read

    def get(self, key: str) -> str | None:
        result = self.call("/kv/range", {"key": _b64(key)})
        kvs = result.get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def put(self, key: str, value: str, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        self.call("/kv/put", body)

    def create(self, key: str, value: str, lease: int = 0) -> str | None:
        """Put `key` only if it does not exist. Returns None on success, else the value that is there."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = lease
        result = self.call(
            "/kv/txn",
            {
                "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
                "success": [{"request_put": put}],
                "failure": [{"request_range": {"key": _b64(key)}}],
            },
        )
        if result.get("succeeded"):
            return None
        kvs = result["responses"][0]["response_range"].get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else ""

    def delete(self, key: str) -> None:
        self.call("/kv/deleterange", {"key": _b64(key)})

    def delete_prefix(self, prefix: str) -> None:
        self.call("/kv/deleterange", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})

    # -- leases ---------------------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self.call("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh the lease; returns its remaining TTL, 0 when etcd no longer knows it."""
        result = self.call("/lease/keepalive", {"ID": lease})
        return int(result.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.call("/lease/revoke", {"ID": lease})

    # -- watch ----------------------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, idle_timeout: float) -> Iterator[tuple[str, KeyValue]]:
        """Yield ("PUT" | "DELETE", kv) from start_revision on.  Ends quietly after idle_timeout without events
        (the caller watches again from where it was); raises StoreError when etcd breaks the stream."""
        client = self._clients[self._current]
        body: dict[str, Any] = {
            "create_request": {"key": _b64(prefix), "range_end": _prefix_end(prefix), "start_revision": start_revision}
        }
        try:
            response = client.session.post(
                client.get_url("/watch"), json=body, stream=True, timeout=(self.config.timeout, idle_timeout)
            )
            with response:
                for line in response.iter_lines(chunk_size=None):  # type: ignore[call-overload]  # per chunk, no buffering
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result", {})
                    if result.get("compact_revision"):
                        raise StoreError(f"etcd compacted past revision {start_revision}; resyncing")
                    for event in result.get("events", []):
                        kv = event["kv"]
                        yield (
                            event.get("type", "PUT"),
                            KeyValue(
                                _unb64(kv["key"]),
                                _unb64(kv.get("value", "")),
                                int(kv.get("mod_revision", 0)),
                                int(kv.get("lease", 0)),
                            ),
                        )
        except (requests.RequestException, ValueError) as exc:
            if _is_idle_timeout(exc):
                return
            with self._lock:
                self._current = (self._current + 1) % len(self._clients)
            raise StoreError(f"etcd watch on {self.where} ended: {type(exc).__name__}") from exc
        raise StoreError(f"etcd at {self.where} closed the watch stream")


def _is_idle_timeout(exc: Exception) -> bool:
    """requests reports a read timeout in the middle of a stream as a ConnectionError wrapping urllib3's."""
    from urllib3.exceptions import ReadTimeoutError

    return isinstance(exc, requests.exceptions.ReadTimeout) or any(
        isinstance(arg, ReadTimeoutError) for arg in getattr(exc, "args", ())
    )


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
                used = {
                    int(kv.key.rsplit("/", 1)[1])
                    for kv in self.kv.range(self.kv.key("segments", ""), keys_only=True)[0]
                }
                vni = next((candidate for candidate in range(low, high + 1) if candidate not in used), None)
                if vni is None:
                    raise Conflict(no_free_vni_message(low, high) + " (cluster-wide)")
                network = build(vni)
                self._check_local(network)
                if pending_since is not None:
                    self.kv.put(self._pending_key(network.network_id), repr(pending_since))
                if self.kv.create(self.kv.key("segments", str(vni)), json.dumps(segment_of(network))) is None:
                    self._put_network(network)
                    return network
            raise Conflict("could not allocate a VNI: too many hosts are creating networks at once; retry")

    def _check_local(self, network: Network) -> None:
        if self.kv.get(self._network_key(network.network_id)) is not None:
            raise Conflict(f"network {network.network_id[:12]} already exists")
        for other in self.list_networks():
            if other.vni == network.vni:
                raise Conflict(vni_in_use_message(network.vni, other.network_id))

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
        "ipv4": [subnet.to_dict() for subnet in network.ipv4],
        "ipv6": [subnet.to_dict() for subnet in network.ipv6],
    }


def segment_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Human-readable differences, e.g. "subnet 10.60.0.0/24 (this host asked for 10.61.0.0/24)"."""

    def pools(segment: dict[str, Any], family: str) -> str:
        return ", ".join(f"{item['pool']} gateway {item['gateway']}" for item in segment.get(family, [])) or "none"

    labels = {"dstport": "dstport", "mtu": "mtu", "internal": "internal"}
    differences = [
        f"{label} {recorded.get(name)} (this host asked for {wanted.get(name)})"
        for name, label in labels.items()
        if recorded.get(name) != wanted.get(name)
    ]
    for family, label in (("ipv4", "subnet"), ("ipv6", "IPv6 subnet")):
        if pools(recorded, family) != pools(wanted, family):
            differences.append(f"{label} {pools(recorded, family)} (this host asked for {pools(wanted, family)})")
    return differences
