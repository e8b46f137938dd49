"""Swarm networks: the part of a global-scope driver that runs on the swarm manager.

With VXLANPY_SCOPE=global, GetCapabilities reports Scope "global" and libnetwork registers vxlanpy as a network
allocator: the swarm manager calls AllocateNetwork when a swarm network is created and FreeNetwork when it is
removed.  What AllocateNetwork returns is all that the nodes receive: every node then creates the network
(same id, the manager's subnets) with these options as its driver options.  So the reply carries the user's
options plus the VNI reserved cluster-wide (store.base.SwarmVnis), and every node builds the same segment.
Addresses are the manager's too (its IPAM); ipam.py accepts them again on the nodes.
"""

from __future__ import annotations

from collections.abc import Mapping

SWARM_NEEDS_ETCD = (
    "swarm networks need the etcd store, shared by every node of the swarm, and VXLANPY_SCOPE=global: "
    "`docker plugin set vxlanpy/vxlanpy:latest VXLANPY_STORE=etcd://ETCD_HOST:2379 VXLANPY_SCOPE=global` "
    "on every node (the plugin disabled), then create the network again"
)


def options_for_nodes(options: Mapping[str, str], vni: int) -> dict[str, str]:
    """The options every node's CreateNetwork gets: the user's, with the VNI the manager reserved."""
    return {**options, "vni": str(vni)}
