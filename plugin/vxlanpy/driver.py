"""The network driver: network and endpoint lifecycle, validation and rollback.

It knows nothing of HTTP or libnetwork's JSON; the protocol layer calls it with typed values.  Its
collaborators (store, links, firewall) are injected, so unit tests run it on fakes without root.

Ordering rule, so that a crash at any point is recoverable by `reconcile()`:
  * creating: write the state row first, then change the kernel; a failure rolls both back;
  * deleting: change the kernel first, then delete the row.
Reconciliation (reconcile.py) then only has to make the kernel match the store: recreate what a row describes
and remove vxlanpy-labelled links and chains that no row owns.

The driver is the one owner of kernel state: in multi-host mode the cluster's watch programs what other hosts
publish through program_segments/update_segment, under the same per-network lock as Docker's requests.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from .cluster_base import Cluster, RemoteChanges
from .dataplane.base import Firewall, Links, side_by_side
from .encryption_base import Encryption
from .errors import InvalidOption, NotFound, VniTaken, VxlanpyError
from .models import Endpoint, IPNetwork, Network, NetworkConfig, PortMapping, Subnet, endpoint_mac
from .options import (
    ENCRYPTION_NEEDS_ETCD,
    RequestedNetwork,
    check_gateway_mode,
    check_in_subnets,
    check_port_kind,
    check_subnets_clear_of_tunnel,
    check_subnets_clear_of_underlay,
    no_subnet_message,
    parse_network_options,
    refuse_several_subnets,
)
from .ports import allocate_ports, host_port_is_free
from .reconcile import NETWORK_ALIAS_PREFIX as NETWORK_ALIAS_PREFIX  # the names other modules import from here
from .reconcile import STALE_UNJOINED_SECONDS, Reconciler, ReconcileReport, sandbox_path_exists
from .store.base import Store, SwarmVnis, pick_around

log = logging.getLogger(__name__)

DST_PREFIX = "eth"
FOREIGN_VNI_ATTEMPTS = 8  # automatic VNIs tried when the host's other VXLAN devices hold the first ones
NETWORKS_MAX_AGE = 1.0  # seconds the watch's changes trust the driver's copy of this host's networks


@dataclass(frozen=True)
class JoinInfo:
    src_name: str
    dst_prefix: str
    gateway_v4: ipaddress.IPv4Address | None
    gateway_v6: ipaddress.IPv6Address | None
    # gateway=docker_gwbridge: libnetwork is to attach the container to docker_gwbridge (no gateway returned).
    docker_gateway: bool = False


@dataclass(frozen=True)
class GatewaySkip:
    """Which gateway addresses Docker need not reserve for a new network (Docker 28's GwAllocCheck)."""

    ipv4: bool
    ipv6: bool


class KeyedLocks:
    """One lock per key (network id), so requests on one network never race while others proceed."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks[key]
        with lock:
            yield


class Driver:
    def __init__(
        self,
        store: Store,
        links: Links,
        firewall: Firewall,
        vni_range: tuple[int, int] = (4096, 65535),
        default_dev: str | None = None,
        port_is_free: Callable[[PortMapping], bool] | None = None,
        cluster: Cluster | None = None,
        clock: Callable[[], float] = time.time,
        sandbox_exists: Callable[[str], bool | None] | None = None,
        encryption: Encryption | None = None,
        swarm: SwarmVnis | None = None,
    ) -> None:
        self.store = store
        self.swarm = swarm  # the cluster's swarm VNI reservations; None: AllocateNetwork is refused
        self.foreign_vnis: set[int] = set()  # VNIs that other VXLAN devices of the host hold: not allocated
        self.cluster = cluster
        self.encryption = encryption  # this host's WireGuard mesh; None: encrypted networks are refused
        self.clock = clock
        self.sandbox_exists = sandbox_exists or sandbox_path_exists
        self.links = links
        self.firewall = firewall
        self.vni_range = vni_range
        self.default_dev = default_dev
        self.port_is_free = port_is_free or host_port_is_free
        self.network_locks = KeyedLocks()  # held by each request on a network and each change of its kernel state
        self._ports_lock = threading.Lock()
        self._filter_lock = threading.Lock()  # the VTEP filter is the host's, not a network's
        self._networks: dict[str, Network] | None = None  # this host's networks, for the watch's changes
        self._networks_read = 0.0
        self._networks_lock = threading.Lock()
        if cluster is not None:
            cluster.program_through(self)

    # -- networks -------------------------------------------------------------------------------------------

    def check_gateway_allocation(self, options: dict[str, object], internal: bool) -> GatewaySkip:
        """Asked before Docker allocates a new network's addresses: the options are checked now, so a bad one
        is refused before any pool or address is taken, and Docker reserves every gateway address.

        vxlanpy needs them all.  On a non-internal network the gateway sits on the bridge of every host (the
        anycast gateway) and Join returns it; without one Docker would attach docker_gwbridge instead.  An
        internal network's gateway gives no default route, but the host keeps it on the bridge to reach its
        containers, as with Docker's bridge; and hosts sharing a VNI must record the same gateway whatever
        their engine version (one before 28 always reserves it), or the segment would be refused."""
        requested = self.requested(options)
        if internal:
            check_gateway_mode(requested.gateway, internal, has_ipv4=True)  # the subnets are not known yet
        return GatewaySkip(ipv4=False, ipv6=False)

    def requested(self, options: dict[str, object]) -> RequestedNetwork:
        """The options checked as far as they can be before the subnets are known."""
        requested = parse_network_options(
            options, self.links.underlay, self.default_dev, multi_host=self.cluster is not None
        )
        if requested.encrypted:
            self._required_encryption()
        return requested

    def create_network(
        self,
        network_id: str,
        options: dict[str, object],
        ipv4: tuple[Subnet, ...] = (),
        ipv6: tuple[Subnet, ...] = (),
        internal: bool = False,
        ipv4_enabled: bool | None = None,
        ipv6_enabled: bool | None = None,
    ) -> Network:
        """`ipv4_enabled`/`ipv6_enabled`: Docker's --ipv4/--ipv6 when it sends them (28+), None otherwise.
        A network with IPv6 only (`--ipv4=false --ipv6`) has no IPv4 subnet: no masquerade, no published ports."""
        with self.network_locks.hold(network_id):
            existing = self.store.get_network(network_id)
            if existing is not None:
                return existing  # dockerd retried a call that had succeeded
            if not ipv4 and not ipv6:
                raise InvalidOption(no_subnet_message(ipv4_enabled, ipv6_enabled))
            refuse_several_subnets(ipv4, ipv6)
            requested = parse_network_options(
                options, self.links.underlay, self.default_dev, multi_host=self.cluster is not None
            )
            check_gateway_mode(requested.gateway, internal, has_ipv4=bool(ipv4))
            if requested.underlay is not None:
                check_subnets_clear_of_underlay(requested.underlay, [subnet.pool for subnet in (*ipv4, *ipv6)])

            config_for = self._encrypted_config(requested, [subnet.pool for subnet in (*ipv4, *ipv6)])
            if self.cluster is not None:  # encrypted networks exist in multi-host mode only
                check_port_kind(config_for(requested.vni or 0), self._known_networks().values())

            def build(vni: int) -> Network:
                return Network(network_id, config_for(vni), ipv4, ipv6, internal)

            for attempt in range(FOREIGN_VNI_ATTEMPTS):
                network = self._add_network_row(requested.vni, build)
                try:
                    self._make_network(network)
                    break
                except VniTaken as taken:
                    if requested.vni is not None or attempt == FOREIGN_VNI_ATTEMPTS - 1:
                        raise
                    # Another device of the host (swarm's ingress network) has it: the next free one, then.
                    self.foreign_vnis.add(taken.vni)
                    log.warning("vni %d is taken on this host by a VXLAN device not vxlanpy's: skipped", taken.vni)
            log.info(
                "network %s ready: vni %d, bridge %s, mtu %d",
                network_id[:12],
                network.vni,
                network.bridge,
                network.config.mtu,
            )
            return network

    def _add_network_row(self, vni: int | None, build: Callable[[int], Network]) -> Network:
        """The network's row, pending until the kernel side is done: a kill -9 in between leaves a row that
        reconciliation expires.  An automatic VNI is the lowest free one that no other device of the host holds."""
        if vni is not None:
            network = build(vni)
            self.store.add_network(network, pending_since=self.clock())
            return network
        pending_since = self.clock()

        def pick(low: int, high: int) -> Network:
            return self.store.add_network_with_free_vni(build, low, high, pending_since=pending_since)

        return pick_around(pick, *self.vni_range, self.foreign_vnis)

    def _make_network(self, network: Network) -> None:
        """The kernel side of a new network and its publication; everything is undone when a step fails."""
        self._forget_networks()  # a watch event from now on must find this network
        try:
            if network.config.encrypted and self.encryption is not None:
                self.encryption.ensure()  # the WireGuard interface the VXLAN device sends through
            self.links.ensure_network(network)
            self.firewall.ensure_network(network, [])
            if self.cluster is not None:
                self.cluster.publish_network(network)
                self.program_remotes(network)  # what the segment's other hosts publish
                self._sync_vtep_filter()
            self.store.confirm_network(network.network_id)
        except Exception:
            self._roll_back_network(network)
            raise

    def _roll_back_network(self, network: Network) -> None:
        cluster = self.cluster
        for undo in (
            lambda: cluster.unpublish_network(network) if cluster is not None else None,
            lambda: self.firewall.remove_network(network.vni),
            lambda: self.links.remove_network(network),
            lambda: self.store.delete_network(network.network_id),
            lambda: self._release_encryption(network),
        ):
            try:
                undo()
            except VxlanpyError as exc:  # keep the original error; reconciliation cleans up the rest
                log.error("rollback of network %s incomplete: %s", network.network_id[:12], exc)
        self._forget_networks()
        if cluster is not None:
            self._sync_vtep_filter()

    def delete_network(self, network_id: str) -> None:
        with self.network_locks.hold(network_id):
            network = self.store.get_network(network_id)
            if network is None:
                return  # already gone: let `docker network rm` succeed
            for endpoint in self.store.list_endpoints(network_id):
                self.links.remove_endpoint(endpoint)
            side_by_side(lambda: self.firewall.remove_network(network.vni), lambda: self.links.remove_network(network))
            if self.cluster is not None:
                self.cluster.unpublish_network(network)
            self.store.delete_network(network_id)
            self._forget_networks()  # a watch event waiting for this lock must not program the network
            if self.cluster is not None:
                self._sync_vtep_filter()
            try:
                self._release_encryption(network)
            except VxlanpyError as exc:  # the network is gone; the interface goes with the next encrypted delete
                log.error("cannot release this host's WireGuard interface: %s", exc)

    def _encrypted_config(self, requested: RequestedNetwork, pools: list[IPNetwork]) -> Callable[[int], NetworkConfig]:
        """For an encrypted network, the configuration with this host's tunnel: the VXLAN device sends from the
        tunnel address through the WireGuard interface (no kernel change yet)."""
        if not requested.encrypted:
            return requested.config_for
        tunnel = self._required_encryption().tunnel()
        check_subnets_clear_of_tunnel(tunnel, pools)
        return lambda vni: replace(requested.config_for(vni), local=tunnel.address, dev=tunnel.interface)

    def _required_encryption(self) -> Encryption:
        """The mesh an encrypted network needs; refused where none is wired (single-host mode)."""
        if self.encryption is None:
            raise InvalidOption(f"-o encrypted is not available on this host: {ENCRYPTION_NEEDS_ETCD}")
        return self.encryption

    def _release_encryption(self, network: Network) -> None:
        """After an encrypted network's row is gone: the WireGuard interface goes when no encrypted network is left."""
        if network.config.encrypted and self.encryption is not None:
            self.encryption.release_if_unused(
                lambda: any(other.config.encrypted for other in self.store.list_networks())
            )

    def get_network(self, network_id: str) -> Network:
        network = self.store.get_network(network_id)
        if network is None:
            raise NotFound(
                f"network {network_id[:12]} is not known to vxlanpy (its state may have been deleted); "
                "remove it with `docker network rm` and create it again"
            )
        return network

    # -- endpoints ------------------------------------------------------------------------------------------

    def create_endpoint(
        self,
        network_id: str,
        endpoint_id: str,
        ipv4: ipaddress.IPv4Interface | None,
        ipv6: ipaddress.IPv6Interface | None,
        mac: str | None,
    ) -> Endpoint:
        with self.network_locks.hold(network_id):
            network = self.get_network(network_id)
            existing = self.store.get_endpoint(endpoint_id)
            if existing is not None:
                return existing
            check_in_subnets("address", ipv4, network.ipv4)
            check_in_subnets("IPv6 address", ipv6, network.ipv6)
            mac = mac or endpoint_mac(ipv4, endpoint_id)
            endpoint = Endpoint(endpoint_id, network_id, mac, ipv4, ipv6, created=self.clock())
            self.store.put_endpoint(endpoint)
            try:
                if self.cluster is not None:  # before the kernel: a duplicate address is refused cleanly
                    self.cluster.publish_endpoint(network, endpoint)
                self.links.ensure_endpoint(network, endpoint)
            except Exception:
                self._roll_back_endpoint(network, endpoint)
                raise
            return endpoint

    def _roll_back_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        cluster = self.cluster
        for undo in (
            lambda: cluster.unpublish_endpoint(network, endpoint) if cluster is not None else None,
            lambda: self.links.remove_endpoint(endpoint),
            lambda: self.store.delete_endpoint(endpoint.endpoint_id),
        ):
            try:
                undo()
            except VxlanpyError as exc:
                log.error("rollback of endpoint %s incomplete: %s", endpoint.endpoint_id[:12], exc)

    def get_endpoint(self, network_id: str, endpoint_id: str) -> Endpoint:
        endpoint = self.store.get_endpoint(endpoint_id)
        if endpoint is None or endpoint.network_id != network_id:
            raise NotFound(f"endpoint {endpoint_id[:12]} does not exist on network {network_id[:12]}")
        return endpoint

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        with self.network_locks.hold(network_id):
            endpoint = self.store.get_endpoint(endpoint_id)
            if endpoint is None:
                return  # dockerd may delete twice, or an endpoint that never finished
            self.links.remove_endpoint(endpoint)
            if endpoint.ports:
                self.refresh_firewall(network_id, drop=endpoint_id)
            network = self.store.get_network(network_id)
            if self.cluster is not None and network is not None:
                self.cluster.unpublish_endpoint(network, endpoint)
            self.store.delete_endpoint(endpoint_id)

    def join(self, network_id: str, endpoint_id: str, sandbox_key: str | None) -> JoinInfo:
        with self.network_locks.hold(network_id):
            network = self.get_network(network_id)
            endpoint = self.get_endpoint(network_id, endpoint_id)
            if sandbox_key and endpoint.sandbox_key != sandbox_key:
                self.store.put_endpoint(replace(endpoint, sandbox_key=sandbox_key))
            # gateway=docker_gwbridge returns no gateway: libnetwork then joins the container to docker_gwbridge too.
            gateway_v4 = network.ipv4[0].gateway if network.ipv4 and network.routes_egress else None
            gateway_v6 = network.ipv6[0].gateway if network.ipv6 and network.routes_egress else None
            return JoinInfo(
                src_name=endpoint.container_veth,
                dst_prefix=DST_PREFIX,
                gateway_v4=gateway_v4.ip if isinstance(gateway_v4, ipaddress.IPv4Interface) else None,
                gateway_v6=gateway_v6.ip if isinstance(gateway_v6, ipaddress.IPv6Interface) else None,
                docker_gateway=not network.internal and not network.routes_egress,
            )

    def leave(self, network_id: str, endpoint_id: str) -> None:
        with self.network_locks.hold(network_id):
            endpoint = self.store.get_endpoint(endpoint_id)
            if endpoint is not None and endpoint.sandbox_key:
                self.store.put_endpoint(replace(endpoint, sandbox_key=None))

    # -- published ports ------------------------------------------------------------------------------------

    def program_external_connectivity(self, network_id: str, endpoint_id: str, ports: list[PortMapping]) -> Endpoint:
        """Publish `ports` on this endpoint, which Docker (28+) only asks of the container's gateway endpoint;
        Revoke follows when it stops being the gateway.  Docker 29 may ask again without a Revoke in between
        (the endpoint became the gateway of the other IP family too): the ports are then set again, keeping the
        host ports chosen before."""
        with self.network_locks.hold(network_id):
            network = self.get_network(network_id)
            endpoint = self.get_endpoint(network_id, endpoint_id)
            if network.internal or not ports:
                return endpoint  # like Docker's bridge: an internal network publishes nothing
            if not network.routes_egress:
                # gateway=docker_gwbridge: the bridge driver publishes on the container's docker_gwbridge endpoint
                # (libnetwork's gateway endpoint), so it is not asked here; if it were, a second DNAT would race it.
                log.info(
                    "endpoint %s on network %s (gateway=docker_gwbridge): ports are published by Docker, not vxlanpy",
                    endpoint_id[:12],
                    network_id[:12],
                )
                return endpoint
            if endpoint.ipv4 is None:
                # Ports are DNATed to the container's IPv4 address only.  Not an error: Docker sends the same
                # port list to an IPv6-only gateway endpoint when another network of the container is its
                # IPv4 gateway (and publishes there), and refusing would fail that `docker network connect`.
                log.warning(
                    "endpoint %s on network %s has no IPv4 address: ports %s are not published through it "
                    "(vxlanpy publishes ports over IPv4 only; give the network an IPv4 subnet to publish them)",
                    endpoint_id[:12],
                    network_id[:12],
                    ", ".join(f"{p.host_port or '(any)'}->{p.container_port}/{p.proto}" for p in ports),
                )
                return endpoint
            with self._ports_lock:
                chosen = allocate_ports(endpoint, ports, self.store.list_endpoints(), self.port_is_free)
                updated = endpoint.with_ports(chosen)
                self.store.put_endpoint(updated)
            try:
                self.refresh_firewall(network_id)
            except Exception:
                self.store.put_endpoint(endpoint)  # the row must not claim ports the kernel does not publish
                raise
            return updated

    def revoke_external_connectivity(self, network_id: str, endpoint_id: str) -> None:
        with self.network_locks.hold(network_id):
            endpoint = self.store.get_endpoint(endpoint_id)
            if endpoint is None or not endpoint.ports:
                return
            self.store.put_endpoint(endpoint.with_ports(()))
            self.refresh_firewall(network_id)

    def refresh_firewall(self, network_id: str, drop: str | None = None) -> None:
        """Rewrite the network's nat chains from its endpoints' rows (but `drop`'s); the network's lock is held."""
        network = self.get_network(network_id)
        endpoints = [e for e in self.store.list_endpoints(network_id) if e.endpoint_id != drop]
        self.firewall.ensure_network(network, endpoints)

    # -- what other hosts publish (multi-host mode) -----------------------------------------------------------
    # The cluster's watch changes the kernel only through these two (cluster_base.KernelOwner), and they change a
    # network's entries only under its lock.  They take one network lock at a time and hold nothing else while
    # waiting for it; a request holding a network lock writes to etcd, which needs nothing the watch holds.

    def program_segments(self, vnis: Collection[int] | None = None) -> None:
        for network in self._known_networks(fresh=vnis is None).values():
            if vnis is None or network.vni in vnis:
                with self.network_locks.hold(network.network_id):
                    current = self._known_networks().get(network.network_id)
                    if current is not None:  # not deleted while we waited
                        self.program_remotes(current)
        self._sync_vtep_filter()

    def update_segment(self, vni: int, changes: Callable[[], RemoteChanges | None]) -> None:
        for network in self._known_networks().values():
            if network.vni != vni:
                continue
            with self.network_locks.hold(network.network_id):
                current = self._known_networks().get(network.network_id)  # None: deleted while we waited
                wanted = None if current is None else changes()
                if current is None or wanted is None:
                    continue
                try:
                    self.links.update_remotes(current, wanted.gone_macs, wanted.gone_addresses, wanted.remotes)
                except VxlanpyError as exc:
                    log.warning("cannot update remote entries of vni %d: %s; programming the segment", vni, exc)
                    self.program_remotes(current)

    def program_remotes(self, network: Network) -> None:
        """Every remote entry of `network`, from the cluster's view as it is now; the network's lock is held."""
        if self.cluster is None:
            return
        view = self.cluster.remote_view(network.vni)
        flood = set(network.config.peers) | set(view.vteps.values())
        try:
            self.links.sync_remotes(network, flood, list(view.endpoints.values()))
        except VxlanpyError as exc:  # e.g. its devices are gone: reconciliation recreates them
            log.warning("cannot program remote entries of vni %d: %s", network.vni, exc)

    def _sync_vtep_filter(self) -> None:
        """Accept VXLAN from the cluster's VTEPs on this host's ports.  One writer at a time, each reading the
        sets once it writes, so an older set never lands after a newer one."""
        if self.cluster is None:
            return
        with self._filter_lock:
            try:
                networks = self.store.list_networks()
                ports = {network.config.dstport for network in networks}
                tunnel_ports = {n.config.dstport: n.config.dev for n in networks if n.config.encrypted and n.config.dev}
                self.firewall.sync_vtep_filter(ports, self.cluster.remote_vteps(), tunnel_ports)
            except VxlanpyError as exc:
                log.warning("cannot update the VTEP filter: %s", exc)

    def _known_networks(self, fresh: bool = False) -> dict[str, Network]:
        """This host's networks by id, read from the store at most once a second, and again after one is created
        or deleted: under a stream of watch events, no store round trip per batch.  The store is read under the
        lock, so a read that began before a deletion cannot put the deleted network back after it."""
        with self._networks_lock:
            now = time.monotonic()
            if fresh or self._networks is None or now - self._networks_read > NETWORKS_MAX_AGE:
                self._networks = {network.network_id: network for network in self.store.list_networks()}
                self._networks_read = now
            return self._networks

    def _forget_networks(self) -> None:
        with self._networks_lock:
            self._networks = None

    # -- restart --------------------------------------------------------------------------------------------

    def reconcile(self, dry_run: bool = False, unjoined_grace: float = STALE_UNJOINED_SECONDS) -> ReconcileReport:
        """Make the kernel match the store (reconcile.py); safe while requests run."""
        return Reconciler(self).run(dry_run, unjoined_grace)
