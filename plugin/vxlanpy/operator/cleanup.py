"""`vxlanpy gc` and the start-up sweeps: reconciliation on demand, then what reconciliation cannot judge alone
(stale attachments, reservations and pool claims nothing holds, networks Docker lost, containers that died)."""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import asdict

from ..driver import STALE_UNJOINED_SECONDS, ReconcileReport
from ..ipam import CONTAINER_LABEL, GATEWAY_RECORD, orphan_pool_claims, orphan_reservations
from ..models import Endpoint, is_attachment_id
from .attach import is_reservation_of_attachment, reservation_holder
from .context import Body, Concern

log = logging.getLogger(__name__)


class Cleanup(Concern):
    def gc(self, dry_run: bool, forget: list[str] | None = None, docker_pools: set[str] | None = None) -> Body:
        """Reconcile, then sweep stale attachments and their addresses.  `forget` names networks Docker no longer
        knows (the CLI checks that): they are deleted as `docker network rm` would have.  `docker_pools`: the
        subnets of every network Docker has (the CLI reads them); with them, pool claims whose network create
        never completed are released too."""
        started = time.monotonic()
        with self.shared.lock:
            forgotten = []
            for network_id in forget or ():
                network = self.shared.driver.get_network(network_id)
                forgotten.append({"id": network.network_id, "vni": network.vni})
                if not dry_run:
                    self.shared.driver.delete_network(network.network_id)
            before = {endpoint.endpoint_id: endpoint for endpoint in self.shared.store.list_endpoints()}
            try:
                report = self.shared.driver.reconcile(dry_run=dry_run)
            except Exception:
                if self.shared.metrics is not None and not dry_run:
                    self.shared.metrics.observe_reconcile("gc", None)
                raise
            self._remove_dead(report, dry_run)
            released = []
            if not dry_run:
                for endpoint_id in report.removed_endpoints:
                    if endpoint_id in before:
                        released += self._release_container_addresses(before[endpoint_id])
            result = asdict(report)
            links = self.shared.links.owned_links()
            stale = []
            for endpoint in self.shared.store.list_endpoints():
                reason = self.shared.stale_reason(endpoint, links) if is_attachment_id(endpoint.endpoint_id) else None
                if reason is None:
                    continue
                stale.append({"id": endpoint.endpoint_id, "network": endpoint.network_id, "reason": reason})
                if not dry_run:
                    self.shared.remove_attachment(endpoint)
            result["removed_attachments"] = stale
            result["released_addresses"] = released + self._sweep_reservations(dry_run)
            result["forgotten_networks"] = forgotten
            result["released_pools"] = (
                self.release_orphan_pools(docker_pools, dry_run) if docker_pools is not None else []
            )
            if self.shared.metrics is not None:
                self.shared.metrics.observe_reconcile("gc", result, dry_run=dry_run)
        return {"dry_run": dry_run, "report": result, "ms": round((time.monotonic() - started) * 1000, 1)}

    def _remove_dead(self, report: ReconcileReport, dry_run: bool) -> None:
        """Docker endpoints whose container is gone although their sandbox file is still there: Docker keeps a
        sandbox whose endpoint it failed to delete (the plugin was down or its store read-only), and never asks
        again.  Such a sandbox holds no process any more.  An endpoint whose veth survives is judged only when no
        `docker run` can be between its Join and its container's start: made before this plugin process started,
        or a minute ago.
        Moved to `removed_endpoints` (and deleted unless `dry_run`), whether its veth survived or not."""
        now = self.shared.clock()
        for endpoint in self.shared.store.list_endpoints():
            endpoint_id = endpoint.endpoint_id
            if endpoint.sandbox_key is None or is_attachment_id(endpoint_id) or endpoint_id in report.removed_endpoints:
                continue
            young = endpoint.created >= self.shared.started and now - endpoint.created < STALE_UNJOINED_SECONDS
            if young and endpoint_id not in report.lost_endpoints:  # a lost one's veth is gone: no start under way
                continue
            if self.shared.sandbox_in_use(endpoint.sandbox_key) is not False:
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
                self.shared.driver.delete_endpoint(endpoint.network_id, endpoint_id)

    def _pools_of(self, network_id: str) -> list[str]:
        network = self.shared.store.get_network(network_id)
        return [str(subnet.pool) for subnet in (*network.ipv4, *network.ipv6)] if network is not None else []

    def _release_container_addresses(self, endpoint: Endpoint) -> list[Body]:
        """The reservations this host made for the addresses of an endpoint that was just removed (any kind:
        an `--ip` too), since Docker's ReleaseAddress for them was lost or will never come."""
        released = []
        prefix = f"{self.shared.host}/{CONTAINER_LABEL}-"
        for address in (a for a in (endpoint.ipv4, endpoint.ipv6) if a is not None):
            for key in self._pools_of(endpoint.network_id):
                if address.ip not in ipaddress.ip_network(key):
                    continue
                holder = self.shared.book.reserved_addresses(key).get(str(address.ip))
                if holder is not None and holder.startswith(prefix):
                    self.shared.book.release_address(key, str(address.ip))
                    released.append({"pool": key, "address": str(address.ip), "holder": holder})
        return released

    def _sweep_reservations(self, dry_run: bool) -> list[Body]:
        """Reservations in vxlanpy's IPAM that nothing holds any more: an attachment's whose endpoint no longer
        exists (e.g. after a crash), and a container's that no endpoint holds a minute after it was made
        (Docker's ReleaseAddress was lost while the plugin was down or its store read-only)."""
        endpoints = self.shared.store.list_endpoints()
        holders = {
            reservation_holder(self.shared.host, ep.endpoint_id) for ep in endpoints if is_attachment_id(ep.endpoint_id)
        }
        held = {str(a.ip) for ep in endpoints for a in (ep.ipv4, ep.ipv6) if a is not None}
        released = []
        pools = sorted({str(subnet.pool) for n in self.shared.store.list_networks() for subnet in (*n.ipv4, *n.ipv6)})
        now = self.shared.clock()
        for key in pools:
            reserved = self.shared.book.reserved_addresses(key)
            orphans = orphan_reservations(reserved, held, self.shared.host, now, started=self.shared.started)
            for address, holder in sorted(reserved.items()):
                if address == GATEWAY_RECORD or not is_reservation_of_attachment(holder, self.shared.host):
                    continue
                if holder not in holders:
                    orphans.append((address, holder))
            for address, holder in orphans:
                released.append({"pool": key, "address": address, "holder": holder})
                if not dry_run:
                    self.shared.book.release_address(key, address)
        return released

    def remove_networks_docker_lacks(self, docker_ids: set[str]) -> list[Body]:
        """Start-up only: delete the networks Docker does not know that have no endpoint.  Such a network's create
        succeeded here but not in Docker: the plugin was killed after its answer was ready and before dockerd
        read it (or before Docker's own clean-up DeleteNetwork), so `docker network rm` can never remove it.
        Nothing is removed unless Docker knows every network that has an endpoint: a listing without them is
        not of the dockerd this plugin serves (DOCKER_HOST pointing elsewhere)."""
        networks = self.shared.store.list_networks()
        used = {endpoint.network_id for endpoint in self.shared.store.list_endpoints()}
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
        pending = self.shared.store.pending_networks()
        removed = []
        for network in networks:
            if network.network_id in docker_ids or network.network_id in used or network.network_id in pending:
                continue
            removed.append({"id": network.network_id, "vni": network.vni})
            self.shared.driver.delete_network(network.network_id)
        return removed

    def release_orphan_pools(self, docker_pools: set[str], dry_run: bool = False) -> list[Body]:
        """Release this host's pool claims whose network create never completed: the plugin was killed between
        RequestPool and CreateNetwork (or Docker gave up), so Docker's ReleasePool never came and the subnet was
        held for good.  A claim is released when neither a network row nor a Docker network (`docker_pools`, any
        driver: a network of another driver may use vxlanpy's IPAM) uses its pool, a minute after it was made or
        when it predates this process.  The last claim's release frees the pool and its gateway."""
        in_use = {str(subnet.pool) for n in self.shared.store.list_networks() for subnet in (*n.ipv4, *n.ipv6)}
        in_use |= {_canonical(pool) for pool in docker_pools}
        released = []
        now = self.shared.clock()
        for pool, claim in orphan_pool_claims(
            self.shared.book.claimed_pools(), in_use, self.shared.host, now, started=self.shared.started
        ):
            released.append({"pool": pool, "claim": claim})
            log.warning(
                "pool %s: claim %s belongs to a network create that never completed (no network uses the pool); %s",
                pool,
                claim,
                "would release it" if dry_run else "releasing it",
            )
            if not dry_run:
                self.shared.book.release_pool(pool, claim)
        return released


def _canonical(pool: str) -> str:
    """A subnet as the IPAM records key it; anything else is kept as given (it then matches nothing)."""
    try:
        return str(ipaddress.ip_network(pool, strict=False))
    except ValueError:
        return pool
