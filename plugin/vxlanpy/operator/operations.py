"""The operator's side of the running plugin: what `vxlanpy ls/peers/gc/attach/detach/health/node/recover` ask
it over its socket (see api.py), gathered behind one object.

Each concern lives in a module of its own and works with the same `Collaborators` (context.py): reading
(reading.py), garbage collection and the start-up sweeps (cleanup.py), attachments (attachments.py), and the
recovery of a lost store (recovery.py, driven by api.py with `Recovery(operations)`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..cluster_base import Cluster
from ..dataplane.base import Firewall, Links
from ..driver import Driver
from ..metrics import Metrics
from ..models import IPAddress
from ..store.base import AddressBook, Store
from .attachments import Attachments
from .cleanup import Cleanup
from .context import Body, Collaborators, netns_in_use
from .reading import Reading, expected_vxlan_device, network_mode
from .recovery import RecoveredEndpoint, RecoveredNetwork, Recovery, parse_recovered_network
from .sandbox import Sandboxes

__all__ = [
    "Operations",
    "Recovery",
    "RecoveredEndpoint",
    "RecoveredNetwork",
    "expected_vxlan_device",
    "netns_in_use",
    "network_mode",
    "parse_recovered_network",
]


class Operations:
    def __init__(
        self,
        *,
        driver: Driver,
        store: Store,
        links: Links,
        firewall: Firewall,
        cluster: Cluster | None,
        book: AddressBook,
        host: str,
        sandboxes: Sandboxes,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        sandbox_in_use: Callable[[str], bool | None] = netns_in_use,
    ) -> None:
        self.shared = Collaborators(
            driver, store, links, firewall, cluster, book, host, sandboxes, metrics, clock, sandbox_in_use
        )
        self._reading = Reading(self.shared)
        self._cleanup = Cleanup(self.shared)
        self._attachments = Attachments(self.shared)

    # What tests (and a plugin that has been up a while) adjust: the clock, when this process started, and how
    # a sandbox is told to be in use.

    @property
    def clock(self) -> Callable[[], float]:
        return self.shared.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.shared.clock = clock

    @property
    def started(self) -> float:
        return self.shared.started

    @started.setter
    def started(self, started: float) -> None:
        self.shared.started = started

    @property
    def sandbox_in_use(self) -> Callable[[str], bool | None]:
        return self.shared.sandbox_in_use

    @sandbox_in_use.setter
    def sandbox_in_use(self, sandbox_in_use: Callable[[str], bool | None]) -> None:
        self.shared.sandbox_in_use = sandbox_in_use

    # -- reading --------------------------------------------------------------------------------------------

    def listing(self) -> Body:
        return self._reading.listing()

    def peers(self, network_id: str) -> Body:
        return self._reading.peers(network_id)

    def nodes(self) -> Body:
        return self._reading.nodes()

    def node_rm(self, identity: str, force: bool) -> Body:
        return self._reading.node_rm(identity, force)

    def metrics_state(self) -> Body:
        return self._reading.metrics_state()

    def health(self) -> tuple[bool, Body]:
        return self._reading.health()

    # -- garbage collection ---------------------------------------------------------------------------------

    def gc(self, dry_run: bool, forget: list[str] | None = None, docker_pools: set[str] | None = None) -> Body:
        return self._cleanup.gc(dry_run, forget, docker_pools)

    def remove_networks_docker_lacks(self, docker_ids: set[str]) -> list[Body]:
        return self._cleanup.remove_networks_docker_lacks(docker_ids)

    def release_orphan_pools(self, docker_pools: set[str], dry_run: bool = False) -> list[Body]:
        return self._cleanup.release_orphan_pools(docker_pools, dry_run)

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
        return self._attachments.attach(network_id, target, netns_paths, ipv4, ipv6, ifname)

    def detach(self, network_id: str, target: str) -> Body:
        return self._attachments.detach(network_id, target)
