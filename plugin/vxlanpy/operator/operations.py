"""The operator's side of the running plugin: what `vxlanpy ls/peers/gc/attach/detach/health/node/recover` and
`rotate-key` ask it over its socket (see api.py), gathered behind one object.

Each concern lives in a module of its own and works with the same `Collaborators` (context.py): reading
(reading.py), garbage collection and the start-up sweeps (cleanup.py), attachments (attachments.py), and the
recovery of a lost store (recovery.py, driven by api.py with `Recovery(operations)`).  Operations is the sum of
the first three.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..cluster_base import Cluster
from ..dataplane.base import Firewall, Links
from ..driver import Driver
from ..encryption_base import Encryption
from ..metrics import Metrics
from ..store.base import AddressBook, Store
from .attachments import Attachments
from .cleanup import Cleanup
from .context import Collaborators, netns_in_use
from .reading import Reading, expected_vxlan_device, network_mode
from .recovery import RecoveredEndpoint, RecoveredNetwork, Recovery, parse_recovered_network
from .sandbox import Sandboxes
from .wireguard import Keys

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


class Operations(Reading, Cleanup, Attachments, Keys):
    """Every concern works with the same collaborators (`self.shared`), so the operations are simply their sum:
    Reading (listing, peers, nodes, health, metrics), Cleanup (gc and the start-up sweeps), Attachments, Keys
    (the WireGuard mesh of encrypted networks: its status, key rotation)."""

    def __init__(
        self,
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
        encryption: Encryption | None = None,
    ) -> None:
        shared = Collaborators(
            driver, store, links, firewall, cluster, book, host, sandboxes, metrics, clock, sandbox_in_use, encryption
        )
        super().__init__(shared)

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
