"""The interface between the driver (and the operator's tools) and multi-host publication: what other hosts
need to know about this one, what this host knows of them, and the one door through which what they publish
reaches this host's kernel.  cluster.EtcdCluster implements Cluster; the driver is the KernelOwner."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .dataplane.base import RemoteEndpoint
from .models import Endpoint, IPAddress, Network

if TYPE_CHECKING:
    from .cluster import SegmentView
    from .nodes import Nodes

STOP_JOIN_SECONDS = 1.0  # what a stop waits for each background thread
# A watch reading an idle etcd stream ends at its idle timeout only; it holds no lock and is a daemon thread, so
# a stop (a plugin's shutdown, a test's host going away) does not wait for it.
WATCH_JOIN_SECONDS = 0.1


def end_threads(threads: list[threading.Thread], timeout: float, watches: Collection[str]) -> list[threading.Thread]:
    """Join each thread (those named in `watches` briefly); returns those still running."""
    for thread in threads:
        thread.join(min(timeout, WATCH_JOIN_SECONDS) if thread.name in watches else timeout)
    return [thread for thread in threads if thread.is_alive()]


@dataclass(frozen=True)
class RemoteChanges:
    """Some of a segment's remote entries to change, as Links.update_remotes takes them."""

    gone_macs: set[str]
    gone_addresses: set[IPAddress]
    remotes: list[RemoteEndpoint]


class KernelOwner(Protocol):
    """The one owner of this host's kernel state: the driver.  The cluster's watch changes the kernel only through
    it, and it programs each network under that network's lock, the one Docker's requests on the network hold, so
    a watch event and a request never interleave on one network's devices.  Called with no lock held."""

    def program_segments(self, vnis: Collection[int] | None = None) -> None:
        """Every remote entry of this host's networks on `vnis` (None: on every VNI, a full resync), from the
        cluster's view as it is when each network's lock is taken; then the VTEP filter."""
        ...

    def update_segment(self, vni: int, changes: Callable[[], RemoteChanges | None]) -> None:
        """Only some remote entries of this host's network(s) on `vni`: `changes()` is called under each network's
        lock, so it reads the view as it is then; None means there is nothing to do."""
        ...


class Cluster(Protocol):
    nodes: Nodes | None  # the cluster's hosts (`vxlanpy node ls` / `node rm`); None before an identity is known
    synced: threading.Event  # set while the watch is in step with the store

    def program_through(self, owner: KernelOwner) -> None:
        """Send what the watch learns to `owner`'s kernel (the driver's, which calls this when it is built)."""
        ...

    def publish_network(self, network: Network) -> None: ...

    def unpublish_network(self, network: Network) -> None: ...

    def publish_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        """Raises Conflict when one of the endpoint's addresses is in use on another host of the segment."""
        ...

    def unpublish_endpoint(self, network: Network, endpoint: Endpoint) -> None: ...

    def remote_view(self, vni: int) -> SegmentView:
        """What the other hosts publish for one VNI, as this host last read it."""
        ...

    def remote_vteps(self) -> set[IPAddress]:
        """Every other host's VTEP on any segment: the sources the VTEP filter accepts VXLAN from."""
        ...
