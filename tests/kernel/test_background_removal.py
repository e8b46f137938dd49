"""Links removed in the background (the plugin's own namespace does so): a removal returns with the links down
and leaves their deletion to a reaper thread.  The reaper is held back here until someone waits for it, so what
a request sees in between is checked, not raced."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection

import pytest

from vxlanpy.dataplane.fake import FakeFirewall
from vxlanpy.dataplane.netlink import NetlinkLinks
from vxlanpy.dataplane.rtnl import RawSocket
from vxlanpy.driver import Driver
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


@pytest.fixture
def host(namespaces: Namespaces) -> str:
    ns = namespaces.new()
    add_underlay_nic(ns, UNDERLAY_A, default_route=True)
    return ns


@pytest.fixture
def links(namespaces: Namespaces, host: str) -> NetlinkLinks:
    links = NetlinkLinks(netns=host, background_removal=True)
    namespaces.close_later(links.close)
    return links


@pytest.fixture
def held(links: NetlinkLinks) -> Callable[[], HeldReaper]:
    return lambda: HeldReaper(links)


def routes(ns: str, dev: str) -> list[str]:
    return [route["dst"] for route in json.loads(run(ns, "ip", "-j", "route", "show", "dev", dev).stdout)]


def test_a_removed_endpoint_is_down_at_once_and_gone_once_settled(
    host: str, links: NetlinkLinks, held: Callable[[], HeldReaper]
) -> None:
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    endpoint = make_endpoint(net, "192.168.77.11/24")
    links.ensure_endpoint(net, endpoint)
    reaper = held()
    links.remove_endpoint(endpoint)
    assert "UP" not in must_link(host, endpoint.host_veth)["flags"], "a removed endpoint still forwards"
    assert endpoint.host_veth not in links.owned_links(), "reconciliation would remove it a second time"
    reaper.release()
    assert links.settle(timeout=30)
    assert link(host, endpoint.host_veth) is None and link(host, endpoint.container_veth) is None
    links.remove_endpoint(endpoint)  # idempotent


def test_a_removed_network_loses_its_routes_at_once_and_its_devices_once_settled(
    host: str, links: NetlinkLinks, held: Callable[[], HeldReaper]
) -> None:
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    endpoint = make_endpoint(net, "192.168.77.11/24")
    links.ensure_endpoint(net, endpoint)
    assert routes(host, net.bridge) == ["192.168.77.0/24"]
    reaper = held()
    links.remove_endpoint(endpoint)
    links.remove_network(net)
    for name in (net.bridge, net.vxlan):
        assert "UP" not in must_link(host, name)["flags"], f"{name} of a removed network is still up"
    assert routes(host, net.bridge) == [], "the subnet is still routed to the removed network's bridge"
    reaper.release()
    assert links.settle(timeout=30)
    assert [name for name in (net.bridge, net.vxlan, endpoint.host_veth) if link(host, name) is not None] == []


def test_a_network_made_again_while_its_devices_are_deleted_gets_new_ones(
    host: str, links: NetlinkLinks, held: Callable[[], HeldReaper]
) -> None:
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    old_bridge = must_link(host, net.bridge)["ifindex"]
    held()  # released by ensure_network's wait for the old devices
    links.remove_network(net)
    links.ensure_network(net)
    assert links.settle(timeout=30)
    bridge = must_link(host, net.bridge)
    assert bridge["ifindex"] != old_bridge and "UP" in bridge["flags"]
    assert must_link(host, net.vxlan)["master"] == net.bridge
    assert routes(host, net.bridge) == ["192.168.77.0/24"]


def test_removing_a_link_being_deleted_returns_once_it_is_gone(
    host: str, links: NetlinkLinks, held: Callable[[], HeldReaper]
) -> None:
    """What reconciliation does with a link whose row is gone."""
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    endpoint = make_endpoint(net, "192.168.77.11/24")
    links.ensure_endpoint(net, endpoint)
    held()
    links.remove_endpoint(endpoint)
    links.remove_link(endpoint.host_veth)
    assert link(host, endpoint.host_veth) is None


def test_close_finishes_the_deletions(namespaces: Namespaces, host: str) -> None:
    links = NetlinkLinks(netns=host, background_removal=True)
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    reaper = HeldReaper(links)
    links.remove_network(net)
    reaper.release()
    links.close()
    assert link(host, net.bridge) is None and link(host, net.vxlan) is None


def test_what_a_crash_left_being_deleted_is_removed_at_the_next_start(
    namespaces: Namespaces, host: str, links: NetlinkLinks, held: Callable[[], HeldReaper]
) -> None:
    """The plugin dies after DeleteNetwork and DeleteEndpoint answered, before the devices were deleted: the next
    start's reconciliation removes them, and does not take them for a network whose row the store lost."""
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    endpoint = make_endpoint(net, "192.168.77.11/24")
    links.ensure_endpoint(net, endpoint)
    reaper = held()
    links.remove_endpoint(endpoint)
    links.remove_network(net)  # the rows are deleted next; the store below has none
    restarted = NetlinkLinks(netns=host)
    namespaces.close_later(restarted.close)
    report = Driver(MemoryStore(), restarted, FakeFirewall()).reconcile()
    reaper.release()
    assert report.kept_links == [], "taken for a network whose state was lost"
    assert sorted(report.removed_links) == sorted([net.bridge, net.vxlan, endpoint.host_veth, endpoint.container_veth])
    assert [name for name in (net.bridge, net.vxlan, endpoint.host_veth) if link(host, name) is not None] == []
