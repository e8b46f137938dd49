"""Links removed in the background (the plugin's own namespace does so): a removal returns with the links down
and leaves their deletion to a reaper thread.  The reaper is held back here until someone waits for it, so what
a request sees in between is checked, not raced."""

from __future__ import annotations

import json
import threading
from collections.abc import Collection
from dataclasses import dataclass

import pytest

from vxlanpy.dataplane.fake import FakeFirewall
from vxlanpy.dataplane.netlink import NetlinkLinks
from vxlanpy.dataplane.reaper import DELETING_PREFIX
from vxlanpy.dataplane.rtnl import RawSocket
from vxlanpy.driver import Driver
from vxlanpy.models import Endpoint, Network
from vxlanpy.store.memory import MemoryStore

from .conftest import Namespaces
from .test_netlink import UNDERLAY_A, add_underlay_nic, link, make_endpoint, make_network, must_link, run

pytestmark = [pytest.mark.kernel]


class HeldReaper:
    """Keeps the reaper from deleting anything until `release()`, or until a caller waits for a deletion."""

    def __init__(self, links: NetlinkLinks) -> None:
        self.gate = threading.Event()
        reaper = links._reaper
        assert reaper is not None
        opener, waiter = reaper._open_raw, reaper.wait_for

        def held_open() -> RawSocket:
            self.gate.wait()
            return opener()

        def waiting(names: Collection[str]) -> None:
            self.release()
            waiter(names)

        reaper._open_raw = held_open  # type: ignore[method-assign]
        reaper.wait_for = waiting  # type: ignore[method-assign]

    def release(self) -> None:
        self.gate.set()


@dataclass
class Lab:
    host: str  # a namespace standing in for a Docker host, with an underlay NIC eth0 and a default route
    links: NetlinkLinks  # removing in the background, as in the plugin's own namespace
    net: Network  # made
    endpoint: Endpoint  # made on `net`

    def hold(self) -> HeldReaper:
        return HeldReaper(self.links)

    def retired_names(self, *names: str) -> list[str]:
        """The names `names` get once removed (DELETING_PREFIX and their index): read before removing them."""
        return [f"{DELETING_PREFIX}{must_link(self.host, name)['ifindex']}" for name in names]

    def present(self, *names: str) -> list[str]:
        return [name for name in names if link(self.host, name) is not None]


@pytest.fixture
def lab(namespaces: Namespaces) -> Lab:
    host = namespaces.new()
    add_underlay_nic(host, UNDERLAY_A, default_route=True)
    links = NetlinkLinks(netns=host, background_removal=True)
    namespaces.close_later(links.close)
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    endpoint = make_endpoint(net, "192.168.77.11/24")
    links.ensure_endpoint(net, endpoint)
    return Lab(host, links, net, endpoint)


def routes(ns: str, dev: str) -> list[str]:
    return [route["dst"] for route in json.loads(run(ns, "ip", "-j", "route", "show", "dev", dev).stdout)]


def test_a_removed_endpoint_is_down_at_once_and_deleted_once_settled(lab: Lab) -> None:
    endpoint = lab.endpoint
    reaper = lab.hold()
    lab.links.remove_endpoint(endpoint)
    assert "UP" not in must_link(lab.host, endpoint.host_veth)["flags"], "a removed endpoint still forwards"
    assert endpoint.host_veth not in lab.links.owned_links(), "reconciliation would remove it a second time"
    reaper.release()
    assert lab.links.settle(timeout=30)
    assert lab.present(endpoint.host_veth, endpoint.container_veth) == []
    lab.links.remove_endpoint(endpoint)  # idempotent


def test_a_removed_network_loses_its_routes_at_once_and_its_devices_once_settled(lab: Lab) -> None:
    net = lab.net
    assert routes(lab.host, net.bridge) == ["192.168.77.0/24"]
    retired = lab.retired_names(net.bridge, net.vxlan)
    reaper = lab.hold()
    lab.links.remove_endpoint(lab.endpoint)
    lab.links.remove_network(net)
    assert lab.present(net.bridge, net.vxlan) == []
    for name in retired:
        assert "UP" not in must_link(lab.host, name)["flags"], f"{name} of a removed network is still up"
    assert routes(lab.host, retired[0]) == [], "the subnet is still routed to the removed network's bridge"
    reaper.release()
    assert lab.links.settle(timeout=30)
    assert lab.present(*retired, lab.endpoint.host_veth) == []


def test_a_network_made_again_while_its_devices_are_deleted_gets_new_ones(lab: Lab) -> None:
    """The VXLAN device of the same VNI cannot exist twice: making it again waits for the old one's deletion."""
    net = lab.net
    retired = lab.retired_names(net.bridge, net.vxlan)
    lab.hold()  # released by ensure_network's wait for the old devices
    lab.links.remove_network(net)
    lab.links.ensure_network(net)
    assert lab.present(*retired) == []
    assert "UP" in must_link(lab.host, net.bridge)["flags"]
    assert must_link(lab.host, net.vxlan)["master"] == net.bridge
    assert routes(lab.host, net.bridge) == ["192.168.77.0/24"]


def test_removing_a_link_being_deleted_returns_once_it_is_gone(lab: Lab) -> None:
    """What reconciliation does with a link whose row is gone."""
    lab.hold()
    lab.links.remove_endpoint(lab.endpoint)
    lab.links.remove_link(lab.endpoint.host_veth)
    assert lab.present(lab.endpoint.host_veth) == []


def test_close_finishes_the_deletions(lab: Lab) -> None:
    retired = lab.retired_names(lab.net.bridge, lab.net.vxlan)
    reaper = lab.hold()
    lab.links.remove_network(lab.net)
    reaper.release()
    lab.links.close()
    assert lab.present(*retired) == []


def test_what_a_crash_left_being_deleted_is_removed_at_the_next_start(namespaces: Namespaces, lab: Lab) -> None:
    """The plugin dies after DeleteNetwork and DeleteEndpoint answered, before the devices were deleted: the next
    start's reconciliation removes them, and does not take them for a network whose row the store lost."""
    net, endpoint = lab.net, lab.endpoint
    retired = [*lab.retired_names(net.bridge, net.vxlan), endpoint.host_veth]
    reaper = lab.hold()
    lab.links.remove_endpoint(endpoint)
    lab.links.remove_network(net)  # the rows are deleted next; the store below has none
    restarted = NetlinkLinks(netns=lab.host)
    namespaces.close_later(restarted.close)
    report = Driver(MemoryStore(), restarted, FakeFirewall()).reconcile()
    reaper.release()
    assert report.kept_links == [], "taken for a network whose state was lost"
    assert sorted(report.removed_links) == sorted([*retired, endpoint.container_veth])
    assert lab.present(*retired, endpoint.container_veth) == []
