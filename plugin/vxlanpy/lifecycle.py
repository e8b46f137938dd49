"""The plugin's background work, started and stopped in order; server.py runs it in gunicorn's worker.

`start()`, before the socket accepts requests:

1. multi-host: resume the etcd lease of the previous run, first of all, before the other hosts give up on us;
   then claim the host identity, before anything is written under it.  Another live host holding it stops the
   plugin with exit code WORKER_BOOT_ERROR, which stops gunicorn's master too;
2. reconcile the kernel with the store (not serving yet: an endpoint still unjoined belongs to a start that
   failed while we were down);
3. multi-host: start the cluster's threads, which reconcile again after every (re)connection to etcd, then the
   WireGuard mesh's watch of the other hosts' keys (encrypted networks);
4. watch the firewall hooks (dockerd puts its FORWARD rules above ours whenever it restarts);
5. remove the leftovers of network creates Docker never completed, on Docker's word;
6. serve metrics and health, when asked to.

`stop()` ends them in the reverse order and waits for the threads it started.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from .config import DEFAULT_HOOK_CHECK_SECONDS
from .driver import STALE_UNJOINED_SECONDS
from .errors import StoreError, VxlanpyError
from .metrics import MetricsServer
from .nodes import IdentityConflict
from .wiring import BackgroundCluster, Components, DockerAsker

log = logging.getLogger("vxlanpy")

WORKER_BOOT_ERROR = 3  # gunicorn's Arbiter.WORKER_BOOT_ERROR: the master stops too, instead of a new worker
HOOK_CHECK_SECONDS = float(DEFAULT_HOOK_CHECK_SECONDS)  # VXLANPY_HOOK_CHECK_SECONDS
JOIN_SECONDS = 5.0  # how long stop() waits for each thread it started


class Lifecycle:
    def __init__(
        self,
        components: Components,
        metrics_addr: tuple[str, int] | None = None,
        hook_check_seconds: float = HOOK_CHECK_SECONDS,
        exit_process: Callable[[int], object] = os._exit,
    ) -> None:
        """`metrics_addr`: where to serve metrics and health (off when None).  `exit_process` ends the process
        when another host takes our identity while we serve (os._exit: from a cluster thread, at once)."""
        self.components = components
        self.metrics_addr = metrics_addr
        self.hook_check_seconds = hook_check_seconds
        self.exit_process = exit_process
        self.metrics_server: MetricsServer | None = None
        self._stopping = threading.Event()
        self._hook_watcher: threading.Thread | None = None
        self._cluster_started = False
        self._encryption_started = False

    def start(self) -> None:
        cluster = self.components.cluster
        if cluster is not None:
            self._claim_identity(cluster)
            cluster.on_refused = self._refused
        # Not serving yet: an endpoint still unjoined now belongs to a start that failed while we were down.
        self.reconcile("startup", unjoined_grace=0.0)
        if cluster is not None:
            # After every (re)connection to etcd: etcd may have been down when we started, or lost our lease.
            cluster.on_reconnect = lambda: self.reconcile("etcd")
            cluster.start()
            self._cluster_started = True
        if self.components.encryption is not None:
            self.components.encryption.start()
            self._encryption_started = True
        self._hook_watcher = threading.Thread(target=self._watch_firewall_hooks, name="vxlanpy-hooks", daemon=True)
        self._hook_watcher.start()
        if self.components.docker_listing is not None:
            self._sweep_unfinished_creates(self.components.docker_listing)
        if self.metrics_addr is not None:
            self.metrics_server = MetricsServer(
                self.metrics_addr, self.components.metrics, self.components.operations.health
            )
            self.metrics_server.start()

    def stop(self) -> None:
        """Idempotent; safe after a start that failed half-way."""
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self._stopping.set()
        if self._hook_watcher is not None:
            self._hook_watcher.join(JOIN_SECONDS)
        lingering: list[str] = []
        if self._encryption_started and self.components.encryption is not None:
            lingering += self.components.encryption.stop()
        if self._cluster_started and self.components.cluster is not None:
            lingering += self.components.cluster.stop()
        if lingering:  # a watch reading an idle stream: it ends at its idle timeout, and is a daemon thread
            log.info("still ending: %s", ", ".join(lingering))
        log.info("background work stopped")

    # -- the steps

    def _claim_identity(self, cluster: BackgroundCluster) -> None:
        try:  # first of all, before the other hosts give up on us
            cluster.resume_lease()
        except StoreError as exc:
            log.warning("cannot reach etcd at start-up: %s", exc)
        try:  # before reconciliation writes anything under our identity
            cluster.claim_identity()
        except IdentityConflict as exc:
            # no traceback, and gunicorn's "worker failed to boot" code stops the master too, instead of starting
            # the worker again and again
            log.critical("refusing to start: %s", exc.message)
            raise SystemExit(WORKER_BOOT_ERROR) from None
        except StoreError as exc:  # the watch thread claims it when etcd answers
            log.warning("cannot claim the host identity yet: %s", exc)

    def _refused(self, message: str) -> None:
        """Another live host took our identity while etcd was out of reach: stop serving rather than write under
        it, with the exit code of a refusal found at start."""
        log.critical("stopping: %s", message)
        self.exit_process(WORKER_BOOT_ERROR)

    def reconcile(self, trigger: str, unjoined_grace: float = STALE_UNJOINED_SECONDS) -> None:
        """A store error is tolerated in multi-host mode (etcd may come back; the cluster reconciles then)."""
        started = time.monotonic()
        metrics = self.components.metrics
        try:
            report = self.components.driver.reconcile(unjoined_grace=unjoined_grace)
        except Exception as exc:
            metrics.observe_reconcile(trigger, None)
            if not isinstance(exc, StoreError) or self.components.cluster is None:
                raise
            log.warning("reconciliation postponed until the store is reachable: %s", exc)
            return
        metrics.observe_reconcile(trigger, report)
        log.info("reconciliation: %s (%.0f ms)", report.summary(), (time.monotonic() - started) * 1000)

    def _watch_firewall_hooks(self) -> None:
        """dockerd puts its own FORWARD rules above ours whenever it (re)starts; put ours back on top soon after."""
        while not self._stopping.wait(self.hook_check_seconds):
            try:
                self.components.driver.firewall.ensure_base()
            except VxlanpyError as exc:
                log.warning("cannot check the firewall hooks: %s", exc)

    def _sweep_unfinished_creates(self, docker_listing: DockerAsker) -> None:
        """Not serving yet, so no create of this process is under way: a network Docker does not know, and a pool
        claim no network uses, belong to creates of an earlier process that Docker never completed."""
        listing = docker_listing()
        if listing is None:
            log.info(
                "Docker's networks could not be read at start-up; `vxlanpy gc` releases the IPAM pools of creates "
                "that never completed, `vxlanpy gc --forget` removes networks Docker does not know"
            )
            return
        operations = self.components.operations
        try:
            removed = operations.remove_networks_docker_lacks(set(listing.ids))
            released = operations.release_orphan_pools(set(listing.subnets))
        except VxlanpyError as exc:  # the store is checked and reported by health; never block the start
            log.error("cannot sweep the leftovers of unfinished network creates: %s", exc)
            return
        if removed:
            log.warning(
                "removed %d network(s) whose create Docker never completed (the plugin stopped before Docker had "
                "its answer; Docker does not know them): %s",
                len(removed),
                ", ".join(f"{item['id'][:12]} (vni {item['vni']})" for item in removed),
            )
        if released:
            log.warning(
                "released %d IPAM pool claim(s) of network creates that never completed: %s",
                len(released),
                ", ".join(f"{item['pool']} ({item['claim']})" for item in released),
            )
