"""Swarm networks: the part of a global-scope driver that runs on the swarm manager.

With VXLANPY_SCOPE=global, GetCapabilities reports Scope "global" and libnetwork registers vxlanpy as a network
allocator: the swarm manager calls AllocateNetwork when a swarm network is created (and again for each network
when it restarts or another manager leads) and FreeNetwork when it is removed.  What AllocateNetwork returns is
all that the nodes receive: every node then creates the network (same id, the manager's subnets) with these
options as its driver options.  So the reply carries the user's options plus the VNI reserved cluster-wide
(store.base.SwarmVnis), and every node builds the same segment.  Addresses are the manager's too (its IPAM);
ipam.py grants them again to the nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .driver import Driver
from .errors import InvalidOption
from .models import Subnet
from .options import check_subnets_clear_of_underlay, refuse_several_subnets
from .store.base import pick_around

log = logging.getLogger(__name__)

SWARM_NEEDS_ETCD = (
    "swarm networks need the etcd store, shared by every node of the swarm, and VXLANPY_SCOPE=global: "
    "`docker plugin set vxlanpy/vxlanpy:latest VXLANPY_STORE=etcd://ETCD_HOST:2379 VXLANPY_SCOPE=global` "
    "on every node (the plugin disabled), then create the network again"
)


def options_for_nodes(options: Mapping[str, str], vni: int) -> dict[str, str]:
    """The options every node's CreateNetwork gets: the user's, with the VNI the manager reserved."""
    return {**options, "vni": str(vni)}


class SwarmNetworks:
    """AllocateNetwork and FreeNetwork, on the driver's checks, links and VNI reservations."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def allocate(
        self, network_id: str, options: dict[str, str], ipv4: tuple[Subnet, ...], ipv6: tuple[Subnet, ...]
    ) -> dict[str, str]:
        """Check the options, reserve the VNI cluster-wide, and return the options that every node's
        CreateNetwork of this network will get.  An automatic VNI is the highest free one, away from swarm's
        overlay VNIs (4096 up), and skips those that other VXLAN devices of this host hold on the network's port."""
        driver, vnis = self.driver, self.driver.swarm
        if vnis is None:
            raise InvalidOption(SWARM_NEEDS_ETCD)
        refuse_several_subnets(ipv4, ipv6)
        requested = driver.requested(dict(options))
        if requested.underlay is not None:
            check_subnets_clear_of_underlay(requested.underlay, [subnet.pool for subnet in (*ipv4, *ipv6)])
        if requested.vni is not None:
            vni = vnis.reserve_swarm_vni(network_id, requested.vni, *driver.vni_range)
        else:
            taken = driver.foreign_vnis | set(driver.links.foreign_vnis(requested.config_for(0).dstport))
            reserve = vnis.reserve_swarm_vni
            vni = pick_around(
                lambda low, high: reserve(network_id, None, low, high), *driver.vni_range, taken, highest_first=True
            )
        log.info("swarm network %s allocated: vni %d", network_id[:12], vni)
        return options_for_nodes(options, vni)

    def free(self, network_id: str) -> None:
        """The swarm manager removed the network: its VNI may go to another network."""
        vnis = self.driver.swarm
        if vnis is not None and vnis.release_swarm_vni(network_id) is not None:
            log.info("swarm network %s freed", network_id[:12])
