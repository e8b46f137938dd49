"""The operator's side of the running plugin: what `vxlanpy ls/peers/gc/attach/detach/health` ask it over its socket.

Everything that changes state goes through the same Driver (its per-network locks, its store, its rollback) as
Docker's requests.  One more lock serialises the operator's own state changes (attach, detach, gc), so that a
garbage collection never sees an attachment half made.  Docker's names are unknown here: the CLI adds them.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from .attach import IFNAME as IFNAME_PATTERN
from .attach import (
    attachment_id,
    first_free,
    is_attachment_id,
    is_host_address,
    is_reservation_of_attachment,
    reservation_holder,
    valid_netns_path,
    valid_target,
)
from .dataplane.base import RemoteEndpoint
from .driver import Driver
from .errors import BadRequest, Conflict, InvalidOption, NotFound, VxlanpyError
from .ipam import GATEWAY_RECORD, describe_holder
from .metrics import Metrics
from .models import Endpoint, IPAddress, IPInterface, Network, Subnet
from .sandbox import Plumbing, Sandboxes
from .store.base import AddressBook

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


class Operations:
    def __init__(
        self,
        driver: Driver,
        book: AddressBook,
        host: str,
        sandboxes: Sandboxes,
        metrics: Metrics | None = None,
    ) -> None:
        self.driver = driver
        self.store = driver.store
        self.book = book
        self.host = host
        self.sandboxes = sandboxes
        self.metrics = metrics
        self._lock = threading.Lock()

    @property
    def cluster(self) -> Any:
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

    def _segment(self, vni: int) -> Any:
        remote_view = getattr(self.cluster, "remote_view", None)
        return remote_view(vni) if callable(remote_view) else None

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
        wanted: dict[str, tuple[str | None, str | None, RemoteEndpoint]] = {}
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
            host, endpoint_id, remote = wanted.get(mac, (None, None, None))
            in_kernel = kernel_by_mac.get(mac)
            store_view = _remote_view(remote) if remote is not None else None
            kernel_view = _remote_view(in_kernel) if in_kernel is not None else None
            entries.append(
                {
                    "mac": mac,
                    "host": host,
                    "endpoint": endpoint_id,
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

        probe("store", lambda: f"{len(self.store.list_networks())} networks")
        probe("netlink", lambda: f"{len(self.driver.links.owned_links())} vxlanpy links")
        synced = getattr(self.cluster, "synced", None)
        if synced is not None:

            def etcd() -> str:
                if not synced.is_set():
                    raise VxlanpyError("not in sync with etcd (unreachable, or still connecting); see the plugin log")
                return "in sync"

            probe("etcd", etcd)
        healthy = all(check["ok"] for check in checks.values())
        return healthy, {"status": "healthy" if healthy else "unhealthy", "host": self.host, "checks": checks}

    # -- garbage collection ---------------------------------------------------------------------------------

    def _stale_reason(self, endpoint: Endpoint, links: dict[str, str]) -> str | None:
        if endpoint.host_veth not in links:
            return "its interface is gone (the container stopped or its namespace was deleted)"
        if endpoint.container_veth in links:
            return "it never reached its namespace (an attach was interrupted)"
        if endpoint.sandbox_key and not self.sandboxes.netns_exists(endpoint.sandbox_key):
            return f"its namespace {endpoint.sandbox_key} is gone"
        return None

    def gc(self, dry_run: bool, forget: list[str] | None = None) -> Body:
        """Reconcile, then sweep stale attachments and their addresses.  `forget` names networks Docker no longer
        knows (the CLI checks that): they are deleted as `docker network rm` would have."""
        started = time.monotonic()
        with self._lock:
            forgotten = []
            for network_id in forget or ():
                network = self.driver.get_network(network_id)
                forgotten.append({"id": network.network_id, "vni": network.vni})
                if not dry_run:
                    self.driver.delete_network(network.network_id)
            try:
                report = self.driver.reconcile(dry_run=dry_run)
            except Exception:
                if self.metrics is not None and not dry_run:
                    self.metrics.observe_reconcile("gc", None)
                raise
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
            result["released_addresses"] = self._sweep_reservations(dry_run)
            result["forgotten_networks"] = forgotten
            if self.metrics is not None:
                self.metrics.observe_reconcile("gc", result, dry_run=dry_run)
        return {"dry_run": dry_run, "report": result, "ms": round((time.monotonic() - started) * 1000, 1)}

    def _sweep_reservations(self, dry_run: bool) -> list[Body]:
        """Attachment reservations in vxlanpy's IPAM whose endpoint no longer exists (e.g. after a crash)."""
        holders = {
            reservation_holder(self.host, ep.endpoint_id)
            for ep in self.store.list_endpoints()
            if is_attachment_id(ep.endpoint_id)
        }
        released = []
        for network in self.store.list_networks():
            for subnet in (*network.ipv4, *network.ipv6):
                key = str(subnet.pool)
                for address, holder in sorted(self.book.reserved_addresses(key).items()):
                    if address == GATEWAY_RECORD or not is_reservation_of_attachment(holder, self.host):
                        continue
                    if holder in holders:
                        continue
                    released.append({"pool": key, "address": address, "holder": holder})
                    if not dry_run:
                        self.book.release_address(key, address)
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
        if network.internal:
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
