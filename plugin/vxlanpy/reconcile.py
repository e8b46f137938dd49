"""Reconciliation: make the kernel match the store, at start-up and while serving (`vxlanpy gc`).

Creation writes the state row first and then changes the kernel; deletion changes the kernel first and then
deletes the row.  So reconciliation only has to recreate what a row describes and remove vxlanpy-labelled links
and chains that no row owns, plus the endpoints Docker will never delete.  It works through the driver's
collaborators and under the driver's per-network locks, so requests may run meanwhile.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import VxlanpyError
from .models import LINK_ALIAS_PREFIX, Endpoint, Network, is_attachment_id

if TYPE_CHECKING:
    from .driver import Driver

log = logging.getLogger(__name__)

# libnetwork joins an endpoint right after creating it; one still unjoined after this long was left behind by
# a start that failed while the plugin was down, and nothing will ever delete it but reconciliation.
STALE_UNJOINED_SECONDS = 60.0
JOINING_SECONDS = 10.0  # a joined endpoint without its sandbox file is being started, not stale, this long
NETWORK_ALIAS_PREFIX = f"{LINK_ALIAS_PREFIX}net:"


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
    # Encrypted networks (VNIs) whose devices were not rebuilt: this host's WireGuard interface could not be set up
    encrypted_not_rebuilt: list[int] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"networks ensured {len(self.recreated_networks)}, endpoints reattached {len(self.reattached_endpoints)}, "
            f"endpoints lost {len(self.lost_endpoints)}, stale endpoints removed {len(self.removed_endpoints)}, "
            f"orphan links removed {len(self.removed_links)}, "
            f"orphan chains removed {len(self.removed_chains)}, "
            f"unfinished creates removed {len(self.expired_networks)}, "
            f"unowned links kept {len(self.kept_links)}, "
            f"encrypted networks not rebuilt (no WireGuard) {len(self.encrypted_not_rebuilt)}"
        )


class Reconciler:
    """One reconciliation (or dry run) of the driver's store against the kernel."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.store = driver.store
        self.links = driver.links
        self.firewall = driver.firewall

    def run(self, dry_run: bool = False, unjoined_grace: float = STALE_UNJOINED_SECONDS) -> ReconcileReport:
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
        tunnel_ready = self._ensure_encryption(networks, report, dry_run)
        for network in networks:
            with self.driver.network_locks.hold(network.network_id):
                self._reconcile_network(
                    network.network_id, links, known_endpoints, report, dry_run, unjoined_grace, tunnel_ready
                )
        network_ids = {network.network_id for network in networks}
        for endpoint in endpoints:
            if endpoint.network_id not in network_ids:  # its network's row is gone: nothing can use it
                report.lost_endpoints.append(endpoint.endpoint_id)
                if not dry_run:
                    self.links.remove_endpoint(endpoint)
                    self.store.delete_endpoint(endpoint.endpoint_id)
        return report

    def _ensure_encryption(self, networks: list[Network], report: ReconcileReport, dry_run: bool) -> bool:
        """This host's WireGuard interface, once, before encrypted networks' devices (which send through it) are
        rebuilt.  A failure is logged and reported, not raised: the plain networks are still reconciled."""
        encrypted = [network.vni for network in networks if network.config.encrypted]
        encryption = self.driver.encryption
        if not encrypted or dry_run:
            return True
        try:
            if encryption is None:
                raise VxlanpyError("this host has no encryption configured (it needs the etcd store)")
            encryption.ensure()
        except VxlanpyError as exc:
            report.encrypted_not_rebuilt += encrypted
            log.error(
                "cannot set up this host's WireGuard interface, so the devices of encrypted networks (vni %s) are "
                "not rebuilt: %s",
                ", ".join(map(str, encrypted)),
                exc,
            )
            return False
        return True

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
            if self.driver.clock() - since < grace:
                continue
            network = rows.get(network_id)
            if network is None:
                if not dry_run:
                    self.store.confirm_network(network_id)  # a mark whose row was never written
                continue
            with self.driver.network_locks.hold(network_id):
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
                self.driver.delete_network(network_id)
        return expired

    def _reconcile_network(
        self,
        network_id: str,
        links: dict[str, str],
        known_endpoints: set[str],
        report: ReconcileReport,
        dry_run: bool,
        unjoined_grace: float,
        tunnel_ready: bool = True,
    ) -> None:
        network = self.store.get_network(network_id)
        if network is None or (network.config.encrypted and not tunnel_ready):
            return  # deleted since the snapshot, or reported in encrypted_not_rebuilt (retried at the next run)
        recreated = any(name not in links for name in (network.bridge, *network.tunnels))
        if recreated:
            report.recreated_networks.append(network.vni)
        if not dry_run:
            self.links.ensure_network(network)
            if recreated:  # new devices hold none of the entries of other hosts' endpoints
                self.driver.program_remotes(network)
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
                    self.driver.refresh_firewall(network.network_id, drop=endpoint.endpoint_id)
                if self.driver.cluster is not None:
                    self.driver.cluster.unpublish_endpoint(network, endpoint)
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
        age = self.driver.clock() - endpoint.created
        if endpoint.sandbox_key is not None:
            if self.driver.sandbox_exists(endpoint.sandbox_key) is not False:
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
