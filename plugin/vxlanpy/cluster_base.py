"""The interface between the driver (and the operator's tools) and multi-host publication: what other hosts
need to know about this one, and what this host knows of them.  cluster.EtcdCluster implements it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

from .models import Endpoint, Network

if TYPE_CHECKING:
    from .cluster import SegmentView
    from .nodes import Nodes


class Cluster(Protocol):
    nodes: Nodes | None  # the cluster's hosts (`vxlanpy node ls` / `node rm`); None before an identity is known
    synced: threading.Event  # set while the watch is in step with the store

    def publish_network(self, network: Network) -> None: ...

    def unpublish_network(self, network: Network) -> None: ...

    def publish_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        """Raises Conflict when one of the endpoint's addresses is in use on another host of the segment."""
        ...

    def unpublish_endpoint(self, network: Network, endpoint: Endpoint) -> None: ...

    def remote_view(self, vni: int) -> SegmentView:
        """What the other hosts publish for one VNI, as this host last read it."""
        ...
