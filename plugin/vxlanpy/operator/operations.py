"""The operator's side of the running plugin: what `vxlanpy ls/peers/gc/attach/detach/health` ask it over its socket.

Everything that changes state goes through the same Driver (its per-network locks, its store, its rollback) as
Docker's requests.  One more lock serialises the operator's own state changes (attach, detach, gc), so that a
garbage collection never sees an attachment half made.  Docker's names are unknown here: the CLI adds them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..cluster_base import Cluster
from ..dataplane.base import RemoteEndpoint
from ..driver import NETWORK_ALIAS_PREFIX, STALE_UNJOINED_SECONDS, Driver, ReconcileReport
from ..errors import BadRequest, Conflict, InvalidOption, NotFound, VxlanpyError
from ..ipam import (
    CONTAINER_LABEL,
    GATEWAY_RECORD,
    Ipam,
    describe_holder,
    first_host,
    orphan_pool_claims,
    orphan_reservations,
)
from ..metrics import Metrics
from ..models import (
    BRIDGE_PREFIX,
    LINK_ALIAS_PREFIX,
    Endpoint,
    IPAddress,
    IPInterface,
    Network,
    PortMapping,
    Subnet,
    attachment_id,
    is_attachment_id,
)
from ..store.base import AddressBook
from .attach import IFNAME as IFNAME_PATTERN
from .attach import (
    first_free,
    is_host_address,
    is_reservation_of_attachment,
    reservation_holder,
    valid_netns_path,
    valid_target,
)
from .sandbox import Plumbing, Sandboxes

if TYPE_CHECKING:
    from ..cluster import SegmentView

log = logging.getLogger(__name__)

Body = dict[str, Any]


def network_mode(network: Network, multi_host: bool) -> str:
    config = network.config
    if multi_host:
        return "etcd"
    if config.remote is not None:
        return "remote"
    if config.peers:
        return "peers"
    if config.group is not None:
        return "group"
    return "local"


def endpoint_view(endpoint: Endpoint, links: dict[str, str] | None) -> Body:
    return {
        "id": endpoint.endpoint_id,
        "ipv4": str(endpoint.ipv4) if endpoint.ipv4 else None,
        "ipv6": str(endpoint.ipv6) if endpoint.ipv6 else None,
        "mac": endpoint.mac,
        "veth": endpoint.host_veth,
        "veth_present": None if links is None else endpoint.host_veth in links,
        "sandbox": endpoint.sandbox_key,
        "kind": "attached" if is_attachment_id(endpoint.endpoint_id) else "docker",
        "ports": [f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.proto}" for p in endpoint.ports],
    }


def _remote_view(remote: RemoteEndpoint) -> Body:
    return {"mac": remote.mac, "vtep": str(remote.vtep), "addresses": sorted(str(a) for a in remote.addresses)}


def netns_in_use(path: str) -> bool | None:
    """Whether any process lives in the network namespace bound at `path`: False when no process is in it (the
    sandbox of a container that died, kept by Docker after a failed endpoint delete), None when this cannot be
    told (the file is gone, or the plugin does not see the host's processes, e.g. a managed plugin)."""
    try:
        target = os.stat(path)
    except OSError:  # a sandbox file that is gone is reconciliation's case (stale), not this one
        return None
    seen_dockerd = False
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            ns = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino):
            return True
        if not seen_dockerd:
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8") as comm:
                    seen_dockerd = comm.read().strip() == "dockerd"
            except OSError:
                continue
    return False if seen_dockerd else None  # without dockerd in sight, other processes may be hidden from us


@dataclass(frozen=True)
class RecoveredEndpoint:
    endpoint_id: str
    mac: str | None
    ipv4: ipaddress.IPv4Interface | None
    ipv6: ipaddress.IPv6Interface | None
    sandbox_key: str | None
    ports: tuple[PortMapping, ...] = ()


@dataclass(frozen=True)
class RecoveredNetwork:
    """What Docker still knows of a network (`docker network inspect` and its containers), as the CLI sends it."""

    network_id: str
    options: dict[str, str]
    internal: bool
    ipam_vxlanpy: bool
    ipv4: tuple[Subnet, ...]
    ipv6: tuple[Subnet, ...]
    endpoints: tuple[RecoveredEndpoint, ...] = field(default=())


class Operations:
    def __init__(
        self,
        driver: Driver,
        book: AddressBook,
        host: str,
        sandboxes: Sandboxes,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        sandbox_in_use: Callable[[str], bool | None] = netns_in_use,
    ) -> None:
        self.driver = driver
        self.store = driver.store
        self.book = book
        self.host = host
        self.sandboxes = sandboxes
        self.metrics = metrics
        self.clock = clock
        self.sandbox_in_use = sandbox_in_use
        self.started = clock()  # reservations older than this process belong to requests that ended
        self._lock = threading.Lock()

    @property
    def cluster(self) -> Cluster | None:
        return self.driver.cluster

    @property
    def multi_host(self) -> bool:
        return self.driver.cluster is not None

    # -- reading --------------------------------------------------------------------------------------------

    def _peers(self, network: Network) -> list[Body]:
        config = network.config
        peers: list[Body] = []
        if config.remote is not None:
            peers.append({"address": str(config.remote), "host": None, "source": "remote"})
        peers += [{"address": str(peer), "host": None, "source": "static"} for peer in config.peers]
        if config.group is not None:
            peers.append({"address": str(config.group), "host": None, "source": "group"})
        view = self._segment(network.vni)
        if view is not None:
            peers += [
                {"address": str(vtep), "host": host, "source": "etcd"} for host, vtep in sorted(view.vteps.items())
            ]
        return peers

    def _segment(self, vni: int) -> SegmentView | None:
        return self.cluster.remote_view(vni) if self.cluster is not None else None

    def listing(self) -> Body:
        links = self.driver.links.owned_links()
        networks = self.store.list_networks()
        endpoints = self.store.list_endpoints()
        result = []
        for network in networks:
            config = network.config
            result.append(
                {
                    "id": network.network_id,
                    "vni": network.vni,
                    "mode": network_mode(network, self.multi_host),
                    "internal": network.internal,
                    "mtu": config.mtu,
                    "subnets": [subnet.to_dict() for subnet in (*network.ipv4, *network.ipv6)],
                    "config": config.to_dict(),
                    "devices": [
                        {"name": network.bridge, "kind": "bridge", "present": network.bridge in links},
                        {
                            "name": network.vxlan,
                            "kind": "vxlan",
                            "present": network.vxlan in links,
                            "dev": config.dev,
                            "local": str(config.local) if config.local else None,
                            "dstport": config.dstport,
                        },
                    ],
                    "peers": self._peers(network),
                    "endpoints": [
                        endpoint_view(endpoint, links)
                        for endpoint in endpoints
                        if endpoint.network_id == network.network_id
                    ],
                }
            )
        return {"host": self.host, "multi_host": self.multi_host, "networks": result}

    def nodes(self) -> Body:
        """The cluster's hosts (`vxlanpy node ls`); on the SQLite store, this one host."""
        nodes = self.cluster.nodes if self.cluster is not None else None
        if nodes is not None:
            return {"host": self.host, "multi_host": True, "nodes": nodes.listing()}
        endpoints = self.store.list_endpoints()
        addresses = sorted(
            str(address.ip) for endpoint in endpoints for address in (endpoint.ipv4, endpoint.ipv6) if address
        )
        vteps = sorted({str(network.config.local) for network in self.store.list_networks() if network.config.local})
        row = {
            "id": self.host,
            "hostname": socket.gethostname(),
            "vteps": vteps,
            "state": "alive",
            "this_host": True,
            "last_seen": self.clock(),
            "networks": len(self.store.list_networks()),
            "endpoints": len(endpoints),
            "addresses": addresses,
        }
        return {"host": self.host, "multi_host": False, "nodes": [row]}

    def node_rm(self, identity: str, force: bool) -> Body:
        """Remove a host that is gone for good from the cluster (`vxlanpy node rm`)."""
        nodes = self.cluster.nodes if self.cluster is not None else None
        if nodes is None:
            raise Conflict(
                "this plugin keeps its state in a single-host (SQLite) store, which only ever holds this host: "
                "node rm removes hosts of a multi-host (etcd) cluster"
            )
        with self._lock:
            result: Body = nodes.remove(identity, force)
        return result

    def metrics_state(self) -> Body:
        """What the metrics gauges show; read at scrape time."""
        networks = self.store.list_networks()
        endpoints = self.store.list_endpoints()
        rows = []
        for network in networks:
            view = self._segment(network.vni)
            rows.append(
                {
                    "vni": network.vni,
                    "endpoints": sum(1 for ep in endpoints if ep.network_id == network.network_id),
                    "peers": len(self._peers(network)),
                    "remote_endpoints": len(view.endpoints) if view is not None else 0,
                }
            )
        kinds = [{"kind": "attached" if is_attachment_id(ep.endpoint_id) else "docker"} for ep in endpoints]
        return {"networks": rows, "endpoints": kinds}

    def peers(self, network_id: str) -> Body:
        network = self.driver.get_network(network_id)
        config = network.config
        kernel_flood, kernel_remotes = self.driver.links.remote_entries(network)
        view = self._segment(network.vni)
        hosts: dict[IPAddress, str] = {}
        wanted_flood: set[IPAddress] = set(config.peers)
        wanted: dict[str, tuple[str | None, str | None, RemoteEndpoint | None]] = {}
        if view is not None:
            for host, vtep in view.vteps.items():
                wanted_flood.add(vtep)
                hosts[vtep] = host
            for (host, endpoint_id), remote in view.endpoints.items():
                wanted[remote.mac] = (host, endpoint_id, remote)
        vteps = [
            {
                "address": str(address),
                "host": hosts.get(address),
                "store": address in wanted_flood,
                "kernel": address in kernel_flood,
            }
            for address in sorted(wanted_flood | kernel_flood, key=lambda a: (a.version, a))
        ]
        kernel_by_mac = {remote.mac: remote for remote in kernel_remotes}
        entries = []
        for mac in sorted(set(wanted) | set(kernel_by_mac)):
            holder, holder_endpoint, stored = wanted.get(mac, (None, None, None))
            in_kernel = kernel_by_mac.get(mac)
            store_view = _remote_view(stored) if stored is not None else None
            kernel_view = _remote_view(in_kernel) if in_kernel is not None else None
            entries.append(
                {
                    "mac": mac,
                    "host": holder,
                    "endpoint": holder_endpoint,
                    "store": store_view,
                    "kernel": kernel_view,
                    "match": store_view is not None and store_view == kernel_view,
                }
            )
        device = self._device_check(network)
        match = (
            all(row["store"] == row["kernel"] for row in vteps)
            and all(row["match"] for row in entries)
            and not device["differences"]
        )
        return {
            "id": network.network_id,
            "vni": network.vni,
            "mode": network_mode(network, self.multi_host),
            "learning": config.learning,
            "source": "etcd" if view is not None else "static peers config",
            "vteps": vteps,
            "entries": entries,
            "device": device,
            "match": match,
        }

    def _device_check(self, network: Network) -> Body:
        expected = expected_vxlan_device(network)
        actual = self.sandboxes.vxlan_device(network.vxlan)
        if actual is None:
            return {"name": network.vxlan, "expected": expected, "kernel": None, "differences": ["missing"]}
        differences = [
            f"{key} {actual.get(key)} (store: {value})" for key, value in expected.items() if actual.get(key) != value
        ]
        return {"name": network.vxlan, "expected": expected, "kernel": actual, "differences": differences}

    def health(self) -> tuple[bool, Body]:
        checks: dict[str, Body] = {}

        def probe(name: str, action: Any) -> None:
            started = time.monotonic()
            try:
                detail = action()
                checks[name] = {"ok": True, "detail": detail}
            except VxlanpyError as exc:
                checks[name] = {"ok": False, "detail": exc.message}
            except Exception as exc:  # noqa: BLE001 - a health check reports, it never crashes
                checks[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
            checks[name]["ms"] = round((time.monotonic() - started) * 1000, 1)

        probe("store", lambda: f"{len(self.store.list_networks())} networks; {self.store.check()}")
        probe("netlink", lambda: f"{len(self.driver.links.owned_links())} vxlanpy links")
        probe("state", self._state_check)
        synced = self.cluster.synced if self.cluster is not None else None
        if synced is not None:

            def etcd() -> str:
                if not synced.is_set():
                    raise VxlanpyError("not in sync with etcd (unreachable, or still connecting); see the plugin log")
                return "in sync"

            probe("etcd", etcd)
        healthy = all(check["ok"] for check in checks.values())
        return healthy, {"status": "healthy" if healthy else "unhealthy", "host": self.host, "checks": checks}

    def _lost_networks(self) -> dict[str, list[str]]:
        """network id -> its links, for every network whose devices exist but which the store does not know."""
        known = {network.network_id for network in self.store.list_networks()}
        lost: dict[str, list[str]] = {}
        for name, alias in sorted(self.driver.links.owned_links().items()):
            network_id = alias.removeprefix(NETWORK_ALIAS_PREFIX)
            if alias.startswith(NETWORK_ALIAS_PREFIX) and network_id not in known:
                lost.setdefault(network_id, []).append(name)
        return lost

    def _state_check(self) -> str:
        lost = self._lost_networks()
        if lost:
            bridges = (name for links in lost.values() for name in links if name.startswith(BRIDGE_PREFIX))
            names = ", ".join(sorted(bridges))
            raise VxlanpyError(
                f"the kernel holds the devices of {len(lost)} network(s) the store does not know ({names}): the "
                "state was lost (state.db deleted, emptied or replaced?); run `vxlanpy recover` to adopt the "
                "networks Docker still knows"
            )
        return "every vxlanpy device is owned by the store"

    # -- garbage collection ---------------------------------------------------------------------------------

    def _stale_reason(self, endpoint: Endpoint, links: dict[str, str]) -> str | None:
        if endpoint.host_veth not in links:
            return "its interface is gone (the container stopped or its namespace was deleted)"
        if endpoint.container_veth in links:
            return "it never reached its namespace (an attach was interrupted)"
        if endpoint.sandbox_key and not self.sandboxes.netns_exists(endpoint.sandbox_key):
            return f"its namespace {endpoint.sandbox_key} is gone"
        return None

    def gc(self, dry_run: bool, forget: list[str] | None = None, docker_pools: set[str] | None = None) -> Body:
        """Reconcile, then sweep stale attachments and their addresses.  `forget` names networks Docker no longer
        knows (the CLI checks that): they are deleted as `docker network rm` would have.  `docker_pools`: the
        subnets of every network Docker has (the CLI reads them); with them, pool claims whose network create
        never completed are released too."""
        started = time.monotonic()
        with self._lock:
            forgotten = []
            for network_id in forget or ():
                network = self.driver.get_network(network_id)
                forgotten.append({"id": network.network_id, "vni": network.vni})
                if not dry_run:
                    self.driver.delete_network(network.network_id)
            before = {endpoint.endpoint_id: endpoint for endpoint in self.store.list_endpoints()}
            try:
                report = self.driver.reconcile(dry_run=dry_run)
            except Exception:
                if self.metrics is not None and not dry_run:
                    self.metrics.observe_reconcile("gc", None)
                raise
            self._remove_dead(report, dry_run)
            released = []
            if not dry_run:
                for endpoint_id in report.removed_endpoints:
                    if endpoint_id in before:
                        released += self._release_container_addresses(before[endpoint_id])
            result = asdict(report)
            links = self.driver.links.owned_links()
            stale = []
            for endpoint in self.store.list_endpoints():
                reason = self._stale_reason(endpoint, links) if is_attachment_id(endpoint.endpoint_id) else None
                if reason is None:
                    continue
                stale.append({"id": endpoint.endpoint_id, "network": endpoint.network_id, "reason": reason})
                if not dry_run:
                    self._remove_attachment(endpoint)
            result["removed_attachments"] = stale
            result["released_addresses"] = released + self._sweep_reservations(dry_run)
            result["forgotten_networks"] = forgotten
            result["released_pools"] = (
                self.release_orphan_pools(docker_pools, dry_run) if docker_pools is not None else []
            )
            if self.metrics is not None:
                self.metrics.observe_reconcile("gc", result, dry_run=dry_run)
        return {"dry_run": dry_run, "report": result, "ms": round((time.monotonic() - started) * 1000, 1)}

    def _remove_dead(self, report: ReconcileReport, dry_run: bool) -> None:
        """Docker endpoints whose container is gone although their sandbox file is still there: Docker keeps a
        sandbox whose endpoint it failed to delete (the plugin was down or its store read-only), and never asks
        again.  Such a sandbox holds no process any more.  An endpoint whose veth survives is judged only when no
        `docker run` can be between its Join and its container's start: made before this plugin process started,
        or a minute ago.
        Moved to `removed_endpoints` (and deleted unless `dry_run`), whether its veth survived or not."""
        now = self.clock()
        for endpoint in self.store.list_endpoints():
            endpoint_id = endpoint.endpoint_id
            if endpoint.sandbox_key is None or is_attachment_id(endpoint_id) or endpoint_id in report.removed_endpoints:
                continue
            young = endpoint.created >= self.started and now - endpoint.created < STALE_UNJOINED_SECONDS
            if young and endpoint_id not in report.lost_endpoints:  # a lost one's veth is gone: no start under way
                continue
            if self.sandbox_in_use(endpoint.sandbox_key) is not False:
                continue
            for listed in (report.lost_endpoints, report.reattached_endpoints):
                if endpoint_id in listed:
                    listed.remove(endpoint_id)
            report.removed_endpoints.append(endpoint_id)
            log.info(
                "endpoint %s: its container is gone (%s has no process left); %s",
                endpoint_id[:12],
                endpoint.sandbox_key,
                "would remove it" if dry_run else "removing it",
            )
            if not dry_run:
                self.driver.delete_endpoint(endpoint.network_id, endpoint_id)

    def _pools_of(self, network_id: str) -> list[str]:
        network = self.store.get_network(network_id)
        return [str(subnet.pool) for subnet in (*network.ipv4, *network.ipv6)] if network is not None else []

    def _release_container_addresses(self, endpoint: Endpoint) -> list[Body]:
        """The reservations this host made for the addresses of an endpoint that was just removed (any kind:
        an `--ip` too), since Docker's ReleaseAddress for them was lost or will never come."""
        released = []
        prefix = f"{self.host}/{CONTAINER_LABEL}-"
        for address in (a for a in (endpoint.ipv4, endpoint.ipv6) if a is not None):
            for key in self._pools_of(endpoint.network_id):
                if address.ip not in ipaddress.ip_network(key):
                    continue
                holder = self.book.reserved_addresses(key).get(str(address.ip))
                if holder is not None and holder.startswith(prefix):
                    self.book.release_address(key, str(address.ip))
                    released.append({"pool": key, "address": str(address.ip), "holder": holder})
        return released

    def _sweep_reservations(self, dry_run: bool) -> list[Body]:
        """Reservations in vxlanpy's IPAM that nothing holds any more: an attachment's whose endpoint no longer
        exists (e.g. after a crash), and a container's that no endpoint holds a minute after it was made
        (Docker's ReleaseAddress was lost while the plugin was down or its store read-only)."""
        endpoints = self.store.list_endpoints()
        holders = {
            reservation_holder(self.host, ep.endpoint_id) for ep in endpoints if is_attachment_id(ep.endpoint_id)
        }
        held = {str(a.ip) for ep in endpoints for a in (ep.ipv4, ep.ipv6) if a is not None}
        released = []
        pools = sorted({str(subnet.pool) for n in self.store.list_networks() for subnet in (*n.ipv4, *n.ipv6)})
        now = self.clock()
        for key in pools:
            reserved = self.book.reserved_addresses(key)
            orphans = orphan_reservations(reserved, held, self.host, now, started=self.started)
            for address, holder in sorted(reserved.items()):
                if address == GATEWAY_RECORD or not is_reservation_of_attachment(holder, self.host):
                    continue
                if holder not in holders:
                    orphans.append((address, holder))
            for address, holder in orphans:
                released.append({"pool": key, "address": address, "holder": holder})
                if not dry_run:
                    self.book.release_address(key, address)
        return released

    def remove_networks_docker_lacks(self, docker_ids: set[str]) -> list[Body]:
        """Start-up only: delete the networks Docker does not know that have no endpoint.  Such a network's create
        succeeded here but not in Docker: the plugin was killed after its answer was ready and before dockerd
        read it (or before Docker's own clean-up DeleteNetwork), so `docker network rm` can never remove it.
        Nothing is removed unless Docker knows every network that has an endpoint: a listing without them is
        not of the dockerd this plugin serves (DOCKER_HOST pointing elsewhere)."""
        networks = self.store.list_networks()
        used = {endpoint.network_id for endpoint in self.store.list_endpoints()}
        strangers = sorted(
            n.network_id[:12] for n in networks if n.network_id in used and n.network_id not in docker_ids
        )
        if strangers:
            log.warning(
                "Docker's network listing lacks networks with endpoints (%s): not the dockerd this plugin serves? "
                "Removing none of the networks it does not list",
                ", ".join(strangers),
            )
            return []
        pending = self.store.pending_networks()
        removed = []
        for network in networks:
            if network.network_id in docker_ids or network.network_id in used or network.network_id in pending:
                continue
            removed.append({"id": network.network_id, "vni": network.vni})
            self.driver.delete_network(network.network_id)
        return removed

    def release_orphan_pools(self, docker_pools: set[str], dry_run: bool = False) -> list[Body]:
        """Release this host's pool claims whose network create never completed: the plugin was killed between
        RequestPool and CreateNetwork (or Docker gave up), so Docker's ReleasePool never came and the subnet was
        held for good.  A claim is released when neither a network row nor a Docker network (`docker_pools`, any
        driver: a network of another driver may use vxlanpy's IPAM) uses its pool, a minute after it was made or
        when it predates this process.  The last claim's release frees the pool and its gateway."""
        in_use = {str(subnet.pool) for n in self.store.list_networks() for subnet in (*n.ipv4, *n.ipv6)}
        in_use |= {_canonical(pool) for pool in docker_pools}
        released = []
        now = self.clock()
        for pool, claim in orphan_pool_claims(self.book.claimed_pools(), in_use, self.host, now, started=self.started):
            released.append({"pool": pool, "claim": claim})
            log.warning(
                "pool %s: claim %s belongs to a network create that never completed (no network uses the pool); %s",
                pool,
                claim,
                "would release it" if dry_run else "releasing it",
            )
            if not dry_run:
                self.book.release_pool(pool, claim)
        return released

    def _remove_attachment(self, endpoint: Endpoint) -> None:
        network = self.store.get_network(endpoint.network_id)
        self.driver.delete_endpoint(endpoint.network_id, endpoint.endpoint_id)
        if network is not None:
            self._release(network, endpoint.endpoint_id, [a for a in (endpoint.ipv4, endpoint.ipv6) if a])
        log.info("attachment %s removed from network %s", endpoint.endpoint_id[:12], endpoint.network_id[:12])

    def _release(self, network: Network, endpoint_id: str, addresses: list[IPInterface]) -> None:
        holder = reservation_holder(self.host, endpoint_id)
        for address in addresses:
            for subnet in (*network.ipv4, *network.ipv6):
                if address.ip not in subnet.pool:
                    continue
                key = str(subnet.pool)
                try:
                    if self.book.reserved_addresses(key).get(str(address.ip)) == holder:
                        self.book.release_address(key, str(address.ip))
                except VxlanpyError as exc:  # gc sweeps it later
                    log.error("cannot release %s in %s: %s", address.ip, key, exc)

    # -- attach and detach ----------------------------------------------------------------------------------

    def attach(
        self,
        network_id: str,
        target: str,
        netns_paths: list[str],
        ipv4: IPAddress | None = None,
        ipv6: IPAddress | None = None,
        ifname: str | None = None,
    ) -> Body:
        if not valid_target(target):
            raise BadRequest(f"target {target[:80]!r} is neither container:<64 hex id> nor netns:<name>")
        if not netns_paths or not all(isinstance(p, str) and valid_netns_path(p) for p in netns_paths):
            raise BadRequest("netns must list namespace paths under /run/docker/netns, /run/netns or /proc/PID/ns/net")
        if ifname is not None and not IFNAME_PATTERN.match(ifname):
            raise InvalidOption(f"interface name {ifname[:32]!r} is not valid (1-15 letters, digits, '_', '.', '-')")
        with self._lock:
            network = self.driver.get_network(network_id)
            endpoint_id = attachment_id(target, network_id)
            existing = self.store.get_endpoint(endpoint_id)
            if existing is not None:
                reason = self._stale_reason(existing, self.driver.links.owned_links())
                if reason is None:
                    raise Conflict(
                        f"{target.partition(':')[2][:12]} is already attached to network {network_id[:12]} "
                        f"({existing.ipv4 or existing.ipv6}); detach it first"
                    )
                log.info("replacing stale attachment %s: %s", endpoint_id[:12], reason)
                self._remove_attachment(existing)
            netns = next((path for path in netns_paths if self.sandboxes.netns_exists(path)), None)
            if netns is None:
                raise NotFound(f"network namespace {netns_paths[0]} does not exist (is the container running?)")
            reserved: list[IPInterface] = []
            addresses: list[IPInterface] = []
            try:
                for version, requested in ((4, ipv4), (6, ipv6)):
                    chosen, is_reserved = self._address(network, version, requested, endpoint_id)
                    if chosen is not None:
                        addresses.append(chosen)
                        if is_reserved:
                            reserved.append(chosen)
                if not addresses:
                    raise InvalidOption(f"network {network_id[:12]} has no subnet to take an address from")
                v4 = next((a for a in addresses if isinstance(a, ipaddress.IPv4Interface)), None)
                v6 = next((a for a in addresses if isinstance(a, ipaddress.IPv6Interface)), None)
                endpoint = self.driver.create_endpoint(network_id, endpoint_id, v4, v6, None)
            except Exception:
                self._release(network, endpoint_id, reserved)
                raise
            try:
                self.driver.join(network_id, endpoint_id, netns)
                gateways = self._gateways(network, addresses)
                plumbed = self.sandboxes.plumb(
                    Plumbing(netns, endpoint.container_veth, ifname, tuple(addresses), gateways, network.config.mtu)
                )
            except Exception:
                try:
                    self.driver.delete_endpoint(network_id, endpoint_id)
                except VxlanpyError as exc:
                    log.error("rollback of attachment %s incomplete: %s", endpoint_id[:12], exc)
                self._release(network, endpoint_id, reserved)
                raise
        log.info(
            "attached %s to network %s as %s (%s)",
            target[:22],
            network_id[:12],
            plumbed.ifname,
            ", ".join(str(a) for a in addresses),
        )
        return {
            "endpoint": endpoint_view(endpoint, None),
            "netns": netns,
            "ifname": plumbed.ifname,
            "mtu": network.config.mtu,
            "routes": plumbed.routes,
            "notes": plumbed.notes,
        }

    def _gateways(self, network: Network, addresses: list[IPInterface]) -> tuple[IPAddress, ...]:
        # gateway=docker_gwbridge: vxlanpy routes nothing out, and only Docker adds docker_gwbridge: no default route.
        if not network.routes_egress:
            return ()
        gateways = []
        for address in addresses:
            for subnet in (*network.ipv4, *network.ipv6):
                if address.ip in subnet.pool and subnet.gateway is not None:
                    gateways.append(subnet.gateway.ip)
                    break
        return tuple(gateways)

    def _address(
        self, network: Network, version: int, requested: IPAddress | None, endpoint_id: str
    ) -> tuple[IPInterface | None, bool]:
        """(address, reserved in vxlanpy's IPAM) for one family; (None, False) when the network has none."""
        subnets = network.ipv4 if version == 4 else network.ipv6
        if requested is not None and requested.version != version:
            raise InvalidOption(f"{requested} is not an IPv{version} address")
        if not subnets:
            if requested is not None:
                raise InvalidOption(f"network {network.network_id[:12]} has no IPv{version} subnet for {requested}")
            return None, False
        subnet = subnets[0]
        if requested is not None:
            subnet = next((s for s in subnets if requested in s.pool), None)  # type: ignore[assignment]
            if subnet is None:
                pools = ", ".join(str(s.pool) for s in subnets)
                raise InvalidOption(f"--ip {requested} is outside the network's subnets ({pools})")
            if subnet.gateway is not None and requested == subnet.gateway.ip:
                raise Conflict(f"--ip {requested} is the network's gateway; choose another address")
            if not is_host_address(requested, subnet.pool):
                raise InvalidOption(f"--ip {requested} is not a host address of {subnet.pool}")
        key = str(subnet.pool)
        if self.book.pool_holders(key):
            return self._reserve(subnet, requested, endpoint_id), True
        taken = self._addresses_in_use(network)
        if requested is not None:
            if requested in taken:
                raise Conflict(f"--ip {requested} is already used by another endpoint of the network; choose another")
            return ipaddress.ip_interface(f"{requested}/{subnet.pool.prefixlen}"), False
        chosen = first_free(subnet, taken, highest_first=True)
        if chosen is None:
            raise Conflict(f"no free address left in {subnet.pool}; give one with --ip")
        return chosen, False

    def _addresses_in_use(self, network: Network) -> set[IPAddress]:
        taken: set[IPAddress] = set()
        for endpoint in self.store.list_endpoints(network.network_id):
            taken.update(a.ip for a in (endpoint.ipv4, endpoint.ipv6) if a is not None)
        view = self._segment(network.vni)
        if view is not None:
            for remote in view.endpoints.values():
                taken.update(remote.addresses)
        return taken

    def _reserve(self, subnet: Subnet, requested: IPAddress | None, endpoint_id: str) -> IPInterface:
        key = str(subnet.pool)
        holder = reservation_holder(self.host, endpoint_id)
        prefix = subnet.pool.prefixlen
        if requested is not None:
            winner = self.book.reserve_address(key, str(requested), holder)
            if winner is not None:
                raise Conflict(f"--ip {requested} is already in use by {describe_holder(winner)}; choose another")
            return ipaddress.ip_interface(f"{requested}/{prefix}")
        for _ in range(16):  # another request may take the address between our read and our claim
            reserved = self.book.reserved_addresses(key)
            taken = {ipaddress.ip_address(a) for a in reserved if a != GATEWAY_RECORD}
            if GATEWAY_RECORD in reserved:
                taken.add(ipaddress.ip_address(reserved[GATEWAY_RECORD]))
            chosen = first_free(subnet, taken, highest_first=False)
            if chosen is None:
                raise Conflict(f"no free address left in {subnet.pool}")
            if self.book.reserve_address(key, str(chosen.ip), holder) is None:
                return chosen
        raise Conflict(f"could not reserve an address in {subnet.pool}: too many concurrent requests; retry")

    def detach(self, network_id: str, target: str) -> Body:
        if not valid_target(target):
            raise BadRequest(f"target {target[:80]!r} is neither container:<64 hex id> nor netns:<name>")
        with self._lock:
            self.driver.get_network(network_id)
            endpoint_id = attachment_id(target, network_id)
            endpoint = self.store.get_endpoint(endpoint_id)
            if endpoint is None:
                raise NotFound(f"{target.partition(':')[2][:12]} is not attached to network {network_id[:12]}")
            self._remove_attachment(endpoint)
        return {"endpoint": endpoint_view(endpoint, None)}


def expected_vxlan_device(network: Network) -> Body:
    """The VXLAN device's settings as `vxlanpy peers` compares them with the kernel's."""
    config = network.config
    destination = config.remote or config.group
    return {
        "vni": config.vni,
        "port": config.dstport,
        "local": str(config.local) if config.local else None,
        "destination": str(destination) if destination else None,
        "learning": config.learning,
        "mtu": config.mtu,
        "up": True,
    }


# -- recovery of a lost store ---------------------------------------------------------------------------------


def _kept_host_ports(wanted: RecoveredEndpoint, published: dict[IPAddress, list[PortMapping]]) -> list[PortMapping]:
    """The endpoint's ports with their host ports: an explicit one as Docker recorded it; one Docker left to
    vxlanpy (`-p PORT`, host port 0) as the kernel's DNAT rule still has it (Docker records it nowhere: its
    inspect shows a remote driver's host ports only while that driver answers), else it is not published."""
    rules = published.get(wanted.ipv4.ip, []) if wanted.ipv4 is not None else []
    ports = []
    for port in wanted.ports:
        if not port.host_port:
            found = [r for r in rules if (r.proto, r.container_port) == (port.proto, port.container_port)]
            found = [r for r in found if port.host_ip is None or r.host_ip in (None, port.host_ip)] or found
            if not found:
                continue
            port = replace(port, host_port=found[0].host_port)
        ports.append(port)
    return ports


def _canonical(pool: str) -> str:
    """A subnet as the IPAM records key it; anything else is kept as given (it then matches nothing)."""
    try:
        return str(ipaddress.ip_network(pool, strict=False))
    except ValueError:
        return pool


def _text(value: object, what: str, limit: int = 256) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{what} must be a string of at most {limit} characters")
    return value


def _hex_id(value: object, what: str) -> str:
    text = _text(value, what)
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise BadRequest(f"{what} must be a full Docker id (64 lowercase hex characters)")
    return text


def _interface(value: object, version: int, what: str) -> Any:
    if value in (None, ""):
        return None
    try:
        parsed = ipaddress.ip_interface(_text(value, what, 64))
    except ValueError:
        raise BadRequest(f"{what} {str(value)[:64]!r} is not an address in CIDR form") from None
    if parsed.version != version:
        raise BadRequest(f"{what} {parsed} is not IPv{version}")
    return parsed


def _ports(items: object) -> tuple[PortMapping, ...]:
    if not isinstance(items, list):
        raise BadRequest("ports must be a list")
    ports = []
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest("each port must be an object")
        proto = item.get("proto")
        container_port, host_port = item.get("container_port"), item.get("host_port")
        if proto not in ("tcp", "udp", "sctp"):
            raise BadRequest("port proto must be tcp, udp or sctp")
        for number in (container_port, host_port):
            if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 65535:
                raise BadRequest("port numbers must be integers in 0-65535")
        host_ip = item.get("host_ip")
        try:
            address = ipaddress.ip_address(_text(host_ip, "host_ip", 64)) if host_ip else None
        except ValueError:
            raise BadRequest(f"host_ip {str(host_ip)[:64]!r} is not an IP address") from None
        ports.append(PortMapping(str(proto), int(container_port), int(host_port), address))  # type: ignore[arg-type]
    return tuple(ports)


def parse_recovered_network(body: object) -> RecoveredNetwork:
    """The CLI's account of one Docker network (see cli.py `recover`), checked strictly."""
    if not isinstance(body, dict):
        raise BadRequest("network must be an object")
    network_id = _hex_id(body.get("id"), "network id")
    options = body.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
        raise BadRequest("options must map strings to strings")
    subnets: dict[int, list[Subnet]] = {4: [], 6: []}
    for item in body.get("subnets") or []:
        if not isinstance(item, dict):
            raise BadRequest("each subnet must be an object")
        try:
            pool = ipaddress.ip_network(_text(item.get("pool"), "subnet", 64))
        except ValueError:
            raise BadRequest(f"subnet {str(item.get('pool'))[:64]!r} is not a CIDR") from None
        gateway_raw = item.get("gateway")
        gateway = None
        if gateway_raw:
            try:
                gateway = ipaddress.ip_interface(f"{_text(gateway_raw, 'gateway', 64)}/{pool.prefixlen}")
            except ValueError:
                raise BadRequest(f"gateway {str(gateway_raw)[:64]!r} is not an address") from None
            if gateway.ip not in pool:
                raise BadRequest(f"gateway {gateway.ip} is outside {pool}")
        subnets[pool.version].append(Subnet(pool, gateway))
    endpoints = []
    for item in body.get("endpoints") or []:
        if not isinstance(item, dict):
            raise BadRequest("each endpoint must be an object")
        sandbox = item.get("sandbox") or None
        mac = item.get("mac") or None
        endpoints.append(
            RecoveredEndpoint(
                endpoint_id=_hex_id(item.get("id"), "endpoint id"),
                mac=_text(mac, "mac", 17) if mac else None,
                ipv4=_interface(item.get("ipv4"), 4, "ipv4"),
                ipv6=_interface(item.get("ipv6"), 6, "ipv6"),
                sandbox_key=_text(sandbox, "sandbox") if sandbox else None,
                ports=_ports(item.get("ports") or []),
            )
        )
    internal, ipam_vxlanpy = body.get("internal", False), body.get("ipam_vxlanpy", False)
    if not isinstance(internal, bool) or not isinstance(ipam_vxlanpy, bool):
        raise BadRequest("internal and ipam_vxlanpy must be true or false")
    return RecoveredNetwork(
        network_id, dict(options), internal, ipam_vxlanpy, tuple(subnets[4]), tuple(subnets[6]), tuple(endpoints)
    )


def _with_gateways(subnets: tuple[Subnet, ...]) -> tuple[Subnet, ...]:
    """`docker network inspect` shows a gateway only when it was given to `docker network create`; otherwise
    Docker's IPAM, like vxlanpy's, took the first host address of the subnet."""
    return tuple(
        subnet
        if subnet.gateway is not None
        else Subnet(subnet.pool, ipaddress.ip_interface(f"{first_host(subnet.pool)}/{subnet.pool.prefixlen}"))
        for subnet in subnets
    )


class Recovery:
    """`vxlanpy recover`: rebuild a lost store from what survives, in three steps the CLI drives.

    1. `state()`: the store file is written back when it was deleted or replaced under the running plugin (the
       plugin still holds it open, so nothing is lost); then the networks whose devices exist in the kernel but
       whose rows do not (start-up kept them: see Driver.reconcile).
    2. `adopt(network)`, for each vxlanpy network Docker knows: its row is re-created from Docker's options and
       subnets, with the VNI of its devices in the kernel (labelled with the network id); the endpoints whose
       veth survives get their rows back, with their sandbox and explicitly published ports; the addresses of
       a network on vxlanpy's IPAM are reserved again.
    3. `finish(forget)`: the devices of the lost networks Docker does not know are removed, then a reconciliation
       repairs the rest."""

    def __init__(self, operations: Operations) -> None:
        self.ops = operations
        self.driver = operations.driver

    def state(self, dry_run: bool) -> Body:
        with self.ops._lock:
            return self._state(dry_run)

    def adopt(self, wanted: RecoveredNetwork, dry_run: bool) -> Body:
        with self.ops._lock:
            return self._adopt(wanted, dry_run)

    def finish(self, forget: list[str], dry_run: bool) -> Body:
        with self.ops._lock:
            return self._finish(forget, dry_run)

    def _state(self, dry_run: bool) -> Body:
        file_note = self.ops.store.restore_file(dry_run)
        lost = self.ops._lost_networks()
        return {
            "store_file": file_note,
            "known": [network.network_id for network in self.ops.store.list_networks()],
            "lost": [{"id": network_id, "links": links} for network_id, links in sorted(lost.items())],
        }

    def _kernel_vni(self, network_id: str) -> int | None:
        alias = f"{NETWORK_ALIAS_PREFIX}{network_id}"
        for name, owner in self.driver.links.owned_links().items():
            if owner == alias and name.startswith(BRIDGE_PREFIX):
                number = name.removeprefix(BRIDGE_PREFIX)
                if number.isascii() and number.isdigit():
                    return int(number)
        return None

    def _adopt(self, wanted: RecoveredNetwork, dry_run: bool) -> Body:
        result: Body = {"id": wanted.network_id, "adopted": False, "endpoints": [], "skipped": [], "ipam": []}
        network = self.ops.store.get_network(wanted.network_id)
        published: dict[IPAddress, list[PortMapping]] = {}
        if network is None:
            options: dict[str, object] = dict(wanted.options)
            vni = self._kernel_vni(wanted.network_id)
            if vni is not None:  # read before the create below rewrites the network's chains
                published = self.driver.firewall.published_ports(vni)
            if vni is not None:
                options["vni"] = str(vni)
            result["vni"] = vni
            result["adopted"] = True
            if dry_run:
                result["endpoints"] = [ep.endpoint_id for ep in wanted.endpoints]
                return result
            ipv4, ipv6 = _with_gateways(wanted.ipv4), _with_gateways(wanted.ipv6)
            network = self.driver.create_network(wanted.network_id, options, ipv4, ipv6, wanted.internal)
            result["vni"] = network.vni
        else:
            result["vni"] = network.vni
        links = self.driver.links.owned_links()
        for wanted_ep in wanted.endpoints:
            if self.ops.store.get_endpoint(wanted_ep.endpoint_id) is not None:
                continue
            host_veth = Endpoint(wanted_ep.endpoint_id, network.network_id, "").host_veth
            if links.get(host_veth) != f"{LINK_ALIAS_PREFIX}ep:{wanted_ep.endpoint_id}":
                result["skipped"].append(
                    {"id": wanted_ep.endpoint_id, "reason": "its veth is gone; restart its container to reconnect it"}
                )
                continue
            result["endpoints"].append(wanted_ep.endpoint_id)
            if dry_run:
                continue
            self.driver.create_endpoint(
                network.network_id, wanted_ep.endpoint_id, wanted_ep.ipv4, wanted_ep.ipv6, wanted_ep.mac
            )
            if wanted_ep.sandbox_key:
                self.driver.join(network.network_id, wanted_ep.endpoint_id, wanted_ep.sandbox_key)
            ports = _kept_host_ports(wanted_ep, published)
            if ports and not network.internal:
                self.driver.program_external_connectivity(network.network_id, wanted_ep.endpoint_id, ports)
        if wanted.ipam_vxlanpy and not dry_run:
            ipam = Ipam(self.ops.book, self.ops.host, clock=self.ops.clock)
            for subnet in (*network.ipv4, *network.ipv6):
                addresses = [
                    a.ip for ep in wanted.endpoints for a in (ep.ipv4, ep.ipv6) if a is not None and a.ip in subnet.pool
                ]
                gateway = subnet.gateway.ip if subnet.gateway is not None else None
                result["ipam"] += ipam.recover_pool(network.network_id, subnet.pool, gateway, addresses)
        return result

    def _finish(self, forget: list[str], dry_run: bool) -> Body:
        lost = self.ops._lost_networks()
        removed = []
        for network_id in forget:
            links = lost.get(network_id)
            if links is None:
                continue  # not lost (adopted meanwhile, or never here): nothing to remove
            vni = next((int(n.removeprefix(BRIDGE_PREFIX)) for n in links if n.startswith(BRIDGE_PREFIX)), None)
            removed.append({"id": network_id, "vni": vni, "links": links})
            if dry_run:
                continue
            for name in links:
                self.driver.links.remove_link(name)
            if vni is not None:
                self.driver.firewall.remove_network(vni)
        report = asdict(self.driver.reconcile(dry_run=dry_run))
        return {"removed_networks": removed, "report": report}
