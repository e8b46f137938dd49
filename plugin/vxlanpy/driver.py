"""The network driver: network and endpoint lifecycle, validation and rollback.

It knows nothing of HTTP or libnetwork's JSON; the protocol layer calls it with typed values.  Its
collaborators (store, links, firewall) are injected, so unit tests run it on fakes without root.

Ordering rule, so that a crash at any point is recoverable by `reconcile()`:
  * creating: write the state row first, then change the kernel; a failure rolls both back;
  * deleting: change the kernel first, then delete the row.
Reconciliation then only has to make the kernel match the store: recreate what a row describes and
remove vxlanpy-labelled links and chains that no row owns.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from .cluster_base import Cluster
from .dataplane.base import Firewall, Links
from .errors import Conflict, InvalidOption, NotFound, VxlanpyError
from .models import (
    LINK_ALIAS_PREFIX,
    Endpoint,
    Network,
    PortMapping,
    Subnet,
    endpoint_mac,
    is_attachment_id,
)
from .options import check_gateway_mode, check_subnets_clear_of_underlay, parse_network_options
from .store.base import Store

log = logging.getLogger(__name__)

EPHEMERAL_PORTS = (49153, 60999)  # Docker's bridge driver uses the same range
# libnetwork joins an endpoint right after creating it; one still unjoined after this long was left behind by
# a start that failed while the plugin was down, and nothing will ever delete it but reconciliation.
STALE_UNJOINED_SECONDS = 60.0
JOINING_SECONDS = 10.0  # a joined endpoint without its sandbox file is being started, not stale, this long
DST_PREFIX = "eth"
NETWORK_ALIAS_PREFIX = f"{LINK_ALIAS_PREFIX}net:"


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


@dataclass
class ReconcileReport:
    """What a reconciliation did (or, in a dry run, would do)."""

    recreated_networks: list[int] = field(default_factory=list)
    reattached_endpoints: list[str] = field(default_factory=list)
    lost_endpoints: list[str] = field(default_factory=list)
    removed_endpoints: list[str] = field(default_factory=list)
    removed_links: list[str] = field(default_factory=list)
    removed_chains: list[int] = field(default_factory=list)
    expired_networks: list[int] = field(default_factory=list)  # creates Docker never completed (VNIs)
    kept_links: list[str] = field(default_factory=list)  # unowned, but the store may have lost their rows
    kept_chains: list[int] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"networks ensured {len(self.recreated_networks)}, endpoints reattached {len(self.reattached_endpoints)}, "
            f"endpoints lost {len(self.lost_endpoints)}, stale endpoints removed {len(self.removed_endpoints)}, "
            f"orphan links removed {len(self.removed_links)}, "
            f"orphan chains removed {len(self.removed_chains)}, "
            f"unfinished creates removed {len(self.expired_networks)}, "
            f"unowned links kept {len(self.kept_links)}"
        )


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
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.clock = clock
        self.sandbox_exists = sandbox_exists or sandbox_path_exists
        self.links = links
        self.firewall = firewall
        self.vni_range = vni_range
        self.default_dev = default_dev
        self.port_is_free = port_is_free or host_port_is_free
        self._network_locks = KeyedLocks()
        self._ports_lock = threading.Lock()

    # -- networks -------------------------------------------------------------------------------------------

    def check_gateway_allocation(self, options: dict[str, object], internal: bool) -> GatewaySkip:
        """Asked before Docker allocates a new network's addresses: the options are checked now, so a bad one
        is refused before any pool or address is taken, and Docker reserves every gateway address.

        vxlanpy needs them all.  On a non-internal network the gateway sits on the bridge of every host (the
        anycast gateway) and Join returns it; without one Docker would attach docker_gwbridge instead.  An
        internal network's gateway gives no default route, but the host keeps it on the bridge to reach its
        containers, as with Docker's bridge; and hosts sharing a VNI must record the same gateway whatever
        their engine version (one before 28 always reserves it), or the segment would be refused."""
        requested = parse_network_options(
            options, self.links.underlay, self.default_dev, multi_host=self.cluster is not None
        )
        if internal:
            check_gateway_mode(requested.gateway, internal, has_ipv4=True)  # the subnets are not known yet
        return GatewaySkip(ipv4=False, ipv6=False)

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
        with self._network_locks.hold(network_id):
            existing = self.store.get_network(network_id)
            if existing is not None:
                return existing  # dockerd retried a call that had succeeded
            if not ipv4 and not ipv6:
                raise InvalidOption(_no_subnet_message(ipv4_enabled, ipv6_enabled))
            _refuse_several_subnets(ipv4, ipv6)
            requested = parse_network_options(
                options, self.links.underlay, self.default_dev, multi_host=self.cluster is not None
            )
            check_gateway_mode(requested.gateway, internal, has_ipv4=bool(ipv4))
            if requested.underlay is not None:
                check_subnets_clear_of_underlay(requested.underlay, [subnet.pool for subnet in (*ipv4, *ipv6)])

            def build(vni: int) -> Network:
                return Network(network_id, requested.config_for(vni), ipv4, ipv6, internal)

            # Pending until the kernel side is done: a kill -9 in between leaves a row that reconciliation expires.
            if requested.vni is None:
                network = self.store.add_network_with_free_vni(build, *self.vni_range, pending_since=self.clock())
            else:
                network = build(requested.vni)
                self.store.add_network(network, pending_since=self.clock())
            try:
                self.links.ensure_network(network)
                self.firewall.ensure_network(network, [])
                if self.cluster is not None:
                    self.cluster.publish_network(network)
                self.store.confirm_network(network_id)
            except Exception:
                self._roll_back_network(network)
                raise
            log.info(
                "network %s ready: vni %d, bridge %s, mtu %d",
                network_id[:12],
                network.vni,
                network.bridge,
                network.config.mtu,
            )
            return network

    def _roll_back_network(self, network: Network) -> None:
        cluster = self.cluster
        for undo in (
            lambda: cluster.unpublish_network(network) if cluster is not None else None,
            lambda: self.firewall.remove_network(network.vni),
            lambda: self.links.remove_network(network),
            lambda: self.store.delete_network(network.network_id),
        ):
            try:
                undo()
            except VxlanpyError as exc:  # keep the original error; reconciliation cleans up the rest
                log.error("rollback of network %s incomplete: %s", network.network_id[:12], exc)

    def delete_network(self, network_id: str) -> None:
        with self._network_locks.hold(network_id):
            network = self.store.get_network(network_id)
            if network is None:
                return  # already gone: let `docker network rm` succeed
            for endpoint in self.store.list_endpoints(network_id):
                self.links.remove_endpoint(endpoint)
            self.firewall.remove_network(network.vni)
            self.links.remove_network(network)
            if self.cluster is not None:
                self.cluster.unpublish_network(network)
            self.store.delete_network(network_id)

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
        with self._network_locks.hold(network_id):
            network = self.get_network(network_id)
            existing = self.store.get_endpoint(endpoint_id)
            if existing is not None:
                return existing
            _check_in_subnets("address", ipv4, network.ipv4)
            _check_in_subnets("IPv6 address", ipv6, network.ipv6)
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
        with self._network_locks.hold(network_id):
            endpoint = self.store.get_endpoint(endpoint_id)
            if endpoint is None:
                return  # dockerd may delete twice, or an endpoint that never finished
            self.links.remove_endpoint(endpoint)
            if endpoint.ports:
                self._refresh_firewall(network_id, drop=endpoint_id)
            network = self.store.get_network(network_id)
            if self.cluster is not None and network is not None:
                self.cluster.unpublish_endpoint(network, endpoint)
            self.store.delete_endpoint(endpoint_id)

    def join(self, network_id: str, endpoint_id: str, sandbox_key: str | None) -> JoinInfo:
        with self._network_locks.hold(network_id):
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
        with self._network_locks.hold(network_id):
            endpoint = self.store.get_endpoint(endpoint_id)
            if endpoint is not None and endpoint.sandbox_key:
                self.store.put_endpoint(replace(endpoint, sandbox_key=None))

    # -- published ports ------------------------------------------------------------------------------------

    def program_external_connectivity(self, network_id: str, endpoint_id: str, ports: list[PortMapping]) -> Endpoint:
        """Publish `ports` on this endpoint, which Docker (28+) only asks of the container's gateway endpoint;
        Revoke follows when it stops being the gateway.  Docker 29 may ask again without a Revoke in between
        (the endpoint became the gateway of the other IP family too): the ports are then set again, keeping the
        host ports chosen before."""
        with self._network_locks.hold(network_id):
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
                chosen = self._allocate_ports(endpoint, ports)
                updated = endpoint.with_ports(chosen)
                self.store.put_endpoint(updated)
            try:
                self._refresh_firewall(network_id)
            except Exception:
                self.store.put_endpoint(endpoint)  # the row must not claim ports the kernel does not publish
                raise
            return updated

    def revoke_external_connectivity(self, network_id: str, endpoint_id: str) -> None:
        with self._network_locks.hold(network_id):
            endpoint = self.store.get_endpoint(endpoint_id)
            if endpoint is None or not endpoint.ports:
                return
            self.store.put_endpoint(endpoint.with_ports(()))
            self._refresh_firewall(network_id)

    def _allocate_ports(self, endpoint: Endpoint, wanted: list[PortMapping]) -> tuple[PortMapping, ...]:
        taken = {
            (port.proto, port.host_port)
            for other in self.store.list_endpoints()
            if other.endpoint_id != endpoint.endpoint_id
            for port in other.ports
        }
        # Set again without a Revoke (Docker 29): a port chosen by vxlanpy stays the same.
        before = {(port.proto, port.container_port, port.host_ip): port.host_port for port in endpoint.ports}
        chosen: list[PortMapping] = []
        for mapping in wanted:
            kept = None if mapping.host_port else before.get((mapping.proto, mapping.container_port, mapping.host_ip))
            again = replace(mapping, host_port=kept or 0)
            if kept is not None and (mapping.proto, kept) not in taken and self.port_is_free(again):
                chosen.append(again)
            elif mapping.host_port:
                key = (mapping.proto, mapping.host_port)
                if key in taken or not self.port_is_free(mapping):
                    raise Conflict(
                        f"host port {mapping.host_port}/{mapping.proto} is already allocated; "
                        "publish on another host port"
                    )
                chosen.append(mapping)
            else:
                chosen.append(self._ephemeral(mapping, taken))
            taken.add((mapping.proto, chosen[-1].host_port))
        return tuple(chosen)

    def _ephemeral(self, mapping: PortMapping, taken: set[tuple[str, int]]) -> PortMapping:
        for port in range(EPHEMERAL_PORTS[0], EPHEMERAL_PORTS[1] + 1):
            candidate = replace(mapping, host_port=port)
            if (mapping.proto, port) not in taken and self.port_is_free(candidate):
                return candidate
        raise Conflict(f"no free host port left in {EPHEMERAL_PORTS[0]}-{EPHEMERAL_PORTS[1]}; publish an explicit port")

    def _refresh_firewall(self, network_id: str, drop: str | None = None) -> None:
        network = self.get_network(network_id)
        endpoints = [e for e in self.store.list_endpoints(network_id) if e.endpoint_id != drop]
        self.firewall.ensure_network(network, endpoints)

    # -- restart --------------------------------------------------------------------------------------------

    def reconcile(self, dry_run: bool = False, unjoined_grace: float = STALE_UNJOINED_SECONDS) -> ReconcileReport:
        """Make the kernel match the store: recreate what is missing, remove vxlanpy objects no row owns.

        Safe while requests run: the kernel is read before the store, and requests write a row before they touch
        the kernel, so whatever this snapshot holds without a row is a real orphan; each network is then
        re-read and repaired under its lock, so a network deleted meanwhile is not brought back.
        Endpoints never joined for `unjoined_grace` seconds are removed: at start-up, before serving, that is all
        of them (0), since the start that created them cannot have succeeded."""
        report = ReconcileReport()
        links = self.links.owned_links()
        chains = self.firewall.owned_vnis()
        pending = self.store.pending_networks()
        networks = self.store.list_networks()
        endpoints = self.store.list_endpoints()
        if not dry_run:
            self.firewall.ensure_base()
        expired = self._expire_unfinished_creates(pending, networks, report, dry_run, unjoined_grace)
        # The expired networks' devices are in the snapshot: they were owned until now, not orphans.
        known_aliases = {network.alias for network in networks} | {endpoint.alias for endpoint in endpoints}
        networks = [network for network in networks if network.network_id not in expired]
        endpoints = [endpoint for endpoint in endpoints if endpoint.network_id not in expired]
        orphans = {name: alias for name, alias in links.items() if alias not in known_aliases}
        orphan_chains = chains - {network.vni for network in networks} - set(report.expired_networks)
        lost = sorted({alias for alias in orphans.values() if alias.startswith(NETWORK_ALIAS_PREFIX)})
        if lost:
            # Creation writes the row before any device and deletion removes devices before the row, so a network's
            # devices without its row mean the store lost rows (deleted, emptied or replaced by a bad restore), not
            # a leftover: Docker's containers may still use them.  Keep every unowned object, and say how to recover.
            report.kept_links = sorted(orphans)
            report.kept_chains = sorted(orphan_chains)
            log.error(
                "the store does not know %d vxlanpy network(s) whose devices exist (%s): their state was lost "
                "(state.db deleted, emptied or replaced?). Nothing of theirs is removed. Run `vxlanpy recover` to "
                "adopt the networks Docker still knows (and remove the devices of the others)",
                len(lost),
                ", ".join(sorted(name for name, alias in orphans.items() if alias in lost)),
            )
        else:
            for name in sorted(orphans):
                report.removed_links.append(name)
                if not dry_run:
                    self.links.remove_link(name)
            for vni in sorted(orphan_chains):
                report.removed_chains.append(vni)
                if not dry_run:
                    self.firewall.remove_network(vni)
        known_endpoints = {endpoint.endpoint_id for endpoint in endpoints}
        for network in networks:
            with self._network_locks.hold(network.network_id):
                self._reconcile_network(network.network_id, links, known_endpoints, report, dry_run, unjoined_grace)
        network_ids = {network.network_id for network in networks}
        for endpoint in endpoints:
            if endpoint.network_id not in network_ids:  # its network's row is gone: nothing can use it
                report.lost_endpoints.append(endpoint.endpoint_id)
                if not dry_run:
                    self.links.remove_endpoint(endpoint)
                    self.store.delete_endpoint(endpoint.endpoint_id)
        return report

    def _expire_unfinished_creates(
        self,
        pending: dict[str, float],
        networks: list[Network],
        report: ReconcileReport,
        dry_run: bool,
        grace: float,
    ) -> set[str]:
        """Networks whose create never finished (the plugin was killed in the middle; Docker's retry carries no
        body and fails, so Docker never knew them): removed with their devices and chains, which frees their VNI
        and subnet.  At start-up, before serving, every pending network is such a leftover; while serving, one
        pending for `grace` seconds."""
        rows = {network.network_id: network for network in networks}
        expired: set[str] = set()
        for network_id, since in sorted(pending.items()):
            if self.clock() - since < grace:
                continue
            network = rows.get(network_id)
            if network is None:
                if not dry_run:
                    self.store.confirm_network(network_id)  # a mark whose row was never written
                continue
            with self._network_locks.hold(network_id):
                if network_id not in self.store.pending_networks():
                    continue  # its create finished meanwhile
            expired.add(network_id)
            report.expired_networks.append(network.vni)
            log.warning(
                "network %s (vni %d): its create never finished (the plugin stopped in the middle), so Docker does "
                "not know it; %s its devices, chains and row",
                network_id[:12],
                network.vni,
                "would remove" if dry_run else "removing",
            )
            if not dry_run:
                self.delete_network(network_id)
        return expired

    def _reconcile_network(
        self,
        network_id: str,
        links: dict[str, str],
        known_endpoints: set[str],
        report: ReconcileReport,
        dry_run: bool,
        unjoined_grace: float,
    ) -> None:
        network = self.store.get_network(network_id)
        if network is None:
            return  # deleted since the snapshot
        if network.bridge not in links or network.vxlan not in links:
            report.recreated_networks.append(network.vni)
        if not dry_run:
            self.links.ensure_network(network)
        endpoints = self.store.list_endpoints(network_id)
        for endpoint in endpoints:
            if endpoint.endpoint_id in known_endpoints:  # newer ones are being set up by their own request
                self._reconcile_endpoint(network, endpoint, links, report, dry_run, unjoined_grace)
        if not dry_run:
            self.firewall.ensure_network(network, endpoints)

    def _reconcile_endpoint(
        self,
        network: Network,
        endpoint: Endpoint,
        links: dict[str, str],
        report: ReconcileReport,
        dry_run: bool,
        unjoined_grace: float,
    ) -> None:
        if self._is_stale(endpoint, unjoined_grace):
            report.removed_endpoints.append(endpoint.endpoint_id)
            if not dry_run:
                self.links.remove_endpoint(endpoint)
                if endpoint.ports:
                    self._refresh_firewall(network.network_id, drop=endpoint.endpoint_id)
                if self.cluster is not None:
                    self.cluster.unpublish_endpoint(network, endpoint)
                self.store.delete_endpoint(endpoint.endpoint_id)
        elif endpoint.host_veth in links or endpoint.sandbox_key is None:
            # Put a surviving veth back on a recreated bridge, or recreate one Docker has not used yet.
            report.reattached_endpoints.append(endpoint.endpoint_id)
            if not dry_run:
                self.links.ensure_endpoint(network, endpoint)
        else:
            # The container's interface died with its veth; only Docker can rebuild the sandbox.
            report.lost_endpoints.append(endpoint.endpoint_id)
            log.warning(
                "endpoint %s lost its veth %s while joined; restart its container to reconnect it",
                endpoint.endpoint_id[:12],
                endpoint.host_veth,
            )

    def _is_stale(self, endpoint: Endpoint, unjoined_grace: float) -> bool:
        """An endpoint Docker will never delete: its container's sandbox is gone, or it was never joined."""
        age = self.clock() - endpoint.created
        if endpoint.sandbox_key is not None:
            if self.sandbox_exists(endpoint.sandbox_key) is not False:
                return False
            # Docker makes the namespace file only after Join (runc's prestart hook): a container being started
            # has none yet, and removing its veth then fails the start ("Link not found").  `vxlanpy attach`
            # joins namespaces that exist already.
            return is_attachment_id(endpoint.endpoint_id) or age >= min(unjoined_grace, JOINING_SECONDS)
        return age >= unjoined_grace


def sandbox_path_exists(path: str) -> bool | None:
    """Whether a sandbox (network namespace file) still exists; None when we cannot tell, e.g. inside a managed
    plugin that does not see Docker's netns directory."""
    if not os.path.isdir(os.path.dirname(path)):
        return None
    return os.path.exists(path)


def _no_subnet_message(ipv4_enabled: bool | None, ipv6_enabled: bool | None) -> str:
    if ipv4_enabled is False and not ipv6_enabled:
        return (
            "the network would have no addresses: --ipv4=false turns IPv4 off and IPv6 is off too; "
            "add --ipv6 (and --subnet with an IPv6 prefix if Docker has no default IPv6 pool), or drop --ipv4=false"
        )
    return "Docker gave the network neither an IPv4 nor an IPv6 subnet; create it with --subnet"


def _refuse_several_subnets(ipv4: tuple[Subnet, ...], ipv6: tuple[Subnet, ...]) -> None:
    """One subnet per IP family, as Docker's bridge driver ("bridge driver doesn't support multiple subnets"):
    Join gives a container one gateway per family, so one on a second subnet would get the first subnet's
    gateway, which it has no route to, and could not start."""
    for family, subnets in (("IPv4", ipv4), ("IPv6", ipv6)):
        if len(subnets) > 1:
            pools = ", ".join(str(subnet.pool) for subnet in subnets)
            raise InvalidOption(
                f"a vxlanpy network takes one {family} subnet, not {len(subnets)} ({pools}); as with Docker's "
                "bridge driver, create one network per subnet (containers can join several networks), or give "
                "one larger --subnet and choose addresses with --ip-range"
            )


def _check_in_subnets(
    what: str, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None, subnets: tuple[Subnet, ...]
) -> None:
    if address is None or not subnets:
        return
    if not any(address.ip in subnet.pool for subnet in subnets):
        pools = ", ".join(str(subnet.pool) for subnet in subnets)
        raise InvalidOption(f"{what} {address} is outside the network's subnets ({pools})")


def host_port_is_free(mapping: PortMapping) -> bool:
    """True when nothing on this host is bound to the port now (docker-proxy and other services included)."""
    family = socket.AF_INET6 if mapping.host_ip is not None and mapping.host_ip.version == 6 else socket.AF_INET
    kind = socket.SOCK_DGRAM if mapping.proto == "udp" else socket.SOCK_STREAM
    address = str(mapping.host_ip) if mapping.host_ip is not None else ("::" if family == socket.AF_INET6 else "")
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, mapping.host_port))
        except OSError:
            return False
    return True
