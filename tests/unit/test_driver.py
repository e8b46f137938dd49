"""Driver lifecycle on fakes: allocation, rollback, idempotency, reconciliation after a crash."""

from __future__ import annotations

import ipaddress

import pytest

from vxlanpy.dataplane.base import Underlay
from vxlanpy.errors import Conflict, DataplaneError
from vxlanpy.models import Endpoint

from .conftest import EP, EP2, NET, NET2, Harness


def test_vnis_are_allocated_from_the_free_range(harness: Harness) -> None:
    harness.create_network(NET, generic={"vni": "100"})
    harness.create_network(NET2)
    assert sorted(network.vni for network in harness.store.list_networks()) == [100, 101]
    harness.create_network("1" * 64)
    status, body = harness.create_network("2" * 64)
    assert status == 409 and "no free VNI left in 100-102" in body["Err"]


def test_network_failure_in_links_rolls_back_everything(harness: Harness) -> None:
    harness.links.fail_on.add("ensure_network")
    status, body = harness.create_network(generic={"vni": "42"})
    assert status == 500 and "injected failure" in body["Err"]
    assert harness.store.list_networks() == []
    assert harness.links.networks == {} and harness.firewall.networks == {}


def test_network_failure_in_firewall_rolls_back_links(harness: Harness) -> None:
    harness.firewall.fail_on.add("ensure_network")
    status, _ = harness.create_network(generic={"vni": "42"})
    assert status == 500
    assert harness.links.networks == {} and harness.store.list_networks() == []


def test_endpoint_failure_rolls_back(harness: Harness) -> None:
    harness.create_network()
    harness.links.fail_on.add("ensure_endpoint")
    status, _ = harness.create_endpoint()
    assert status == 500
    assert harness.store.list_endpoints() == [] and harness.links.endpoints == {}


def test_endpoint_address_outside_subnet_is_refused(harness: Harness) -> None:
    harness.create_network()
    status, body = harness.create_endpoint(Address="10.9.0.2/24")
    assert status == 400 and "outside the network's subnets (10.1.0.0/24)" in body["Err"]


def test_create_network_twice_is_idempotent(harness: Harness) -> None:
    assert harness.create_network(generic={"vni": "42"})[0] == 200
    assert harness.create_network(generic={"vni": "42"})[0] == 200
    assert len(harness.store.list_networks()) == 1


def test_delete_network_removes_leftover_endpoints(harness: Harness) -> None:
    harness.create_network()
    harness.create_endpoint()
    harness.driver.delete_network(NET)
    assert harness.links.endpoints == {} and harness.store.list_endpoints() == []


def test_delete_network_keeps_row_when_kernel_fails(harness: Harness) -> None:
    harness.create_network()
    harness.links.fail_on.add("remove_network")
    with pytest.raises(DataplaneError):
        harness.driver.delete_network(NET)
    assert harness.store.get_network(NET) is not None  # reconciliation can still finish the job


def test_same_host_port_twice_conflicts(harness: Harness) -> None:
    harness.create_network()
    harness.create_endpoint(EP)
    harness.create_endpoint(EP2, Address="10.1.0.3/24")
    from vxlanpy.models import PortMapping

    harness.driver.program_external_connectivity(NET, EP, [PortMapping("tcp", 80, 8080)])
    with pytest.raises(Conflict):
        harness.driver.program_external_connectivity(NET, EP2, [PortMapping("tcp", 80, 8080)])
    harness.driver.program_external_connectivity(NET, EP2, [PortMapping("udp", 80, 8080)])
    assert harness.firewall.published() == {("tcp", 8080), ("udp", 8080)}
    harness.driver.delete_endpoint(NET, EP)
    assert harness.firewall.published() == {("udp", 8080)}


def test_internal_network_publishes_nothing(harness: Harness) -> None:
    from vxlanpy.models import PortMapping

    harness.create_network(options={"com.docker.network.internal": True})
    harness.create_endpoint()
    harness.driver.program_external_connectivity(NET, EP, [PortMapping("tcp", 80, 8080)])
    assert harness.firewall.published() == set()


def test_reconcile_recreates_missing_devices_and_removes_orphans(harness: Harness) -> None:
    harness.create_network(generic={"vni": "42"})
    harness.create_endpoint()
    # a simulated reboot: every link is gone; plus an orphan chain and an orphan link from a crash
    harness.links.networks.clear()
    harness.firewall.networks.clear()
    orphan = Endpoint("9" * 64, NET2, "02:00:00:00:00:09", ipaddress.IPv4Interface("10.2.0.2/24"))
    harness.links.endpoints = {orphan.host_veth: orphan}
    harness.firewall.networks[77] = harness.firewall.networks.get(77) or (harness.store.list_networks()[0], [])

    report = harness.driver.reconcile()

    assert report.recreated_networks == [42]
    assert report.removed_links == [orphan.host_veth]
    assert report.removed_chains == [77]
    assert set(harness.links.networks) == {"vxbr-42"}
    assert set(harness.links.endpoints) == {"vxh-ccccccccccc"}  # not joined yet: recreated
    assert set(harness.firewall.networks) == {42} and harness.firewall.base_ready


def test_reconcile_dry_run_changes_nothing(harness: Harness) -> None:
    harness.create_network(generic={"vni": "42"})
    harness.links.networks.clear()
    report = harness.driver.reconcile(dry_run=True)
    assert report.recreated_networks == [42] and harness.links.networks == {}


def test_reconcile_does_not_fake_a_joined_endpoints_interface(harness: Harness) -> None:
    harness.create_network(generic={"vni": "42"})
    harness.create_endpoint()
    harness.live_sandboxes.add("/var/run/docker/netns/abc")
    harness.driver.join(NET, EP, "/var/run/docker/netns/abc")
    harness.links.endpoints.clear()  # the veth died with the sandbox's side
    report = harness.driver.reconcile()
    assert report.lost_endpoints == [EP] and harness.links.endpoints == {}


def test_reconcile_removes_endpoints_docker_will_never_delete(harness: Harness) -> None:
    from vxlanpy.models import PortMapping

    harness.create_network(generic={"vni": "42"})
    harness.create_endpoint(EP)  # joined, but its container's sandbox is gone (it died while we were down)
    harness.driver.join(NET, EP, "/var/run/docker/netns/gone")
    harness.driver.program_external_connectivity(NET, EP, [PortMapping("tcp", 80, 8080)])
    harness.create_endpoint(EP2, Address="10.1.0.3/24")  # created, never joined: a start that failed
    harness.now += 30
    harness.create_endpoint("e" * 64, Address="10.1.0.4/24")  # created just now: its Join is on the way

    report = harness.driver.reconcile()
    assert report.removed_endpoints == [EP]  # EP2 is not stale yet
    harness.now += 31  # EP2 is now 61 s old, the newest one 31 s
    report = harness.driver.reconcile()
    assert report.removed_endpoints == [EP2]
    assert [e.endpoint_id for e in harness.store.list_endpoints()] == ["e" * 64]
    assert set(harness.links.endpoints) == {"vxh-eeeeeeeeeee"}
    assert harness.firewall.published() == set()


def test_reconcile_keeps_an_endpoint_whose_container_is_being_started(harness: Harness) -> None:
    """Joined, but Docker has not made the sandbox file yet (it does so after Join): e.g. a reconciliation after
    an etcd reconnection while containers start.  Removed only once it is old enough, or at start-up."""
    harness.create_network(generic={"vni": "42"})
    harness.create_endpoint()
    harness.driver.join(NET, EP, "/var/run/docker/netns/starting")
    assert harness.driver.reconcile().removed_endpoints == []
    assert set(harness.links.endpoints) == {"vxh-ccccccccccc"}
    assert harness.driver.reconcile(unjoined_grace=0).removed_endpoints == [EP]  # at start-up: no start under way


def test_reconcile_removes_a_joined_endpoint_without_sandbox_after_a_while(harness: Harness) -> None:
    harness.create_network(generic={"vni": "42"})
    harness.create_endpoint()
    harness.driver.join(NET, EP, "/var/run/docker/netns/gone")
    harness.now += 9
    assert harness.driver.reconcile().removed_endpoints == []
    harness.now += 1
    assert harness.driver.reconcile().removed_endpoints == [EP]


def test_unknown_sandbox_visibility_keeps_the_endpoint(harness: Harness) -> None:
    harness.driver.sandbox_exists = lambda path: None  # e.g. a managed plugin that cannot see Docker's netns dir
    harness.create_network(generic={"vni": "42"})
    harness.create_endpoint()
    harness.driver.join(NET, EP, "/var/run/docker/netns/x")
    assert harness.driver.reconcile().removed_endpoints == []


# -- several subnets, and subnets over the underlay (issue 12) ---------------------------------------------------


def _pool(cidr: str, gateway: str) -> dict[str, str]:
    return {"AddressSpace": "LocalDefault", "Pool": cidr, "Gateway": gateway}


def _nothing_made(harness: Harness) -> None:
    assert harness.store.list_networks() == []
    assert harness.links.networks == {} and harness.firewall.networks == {}


def test_two_ipv4_subnets_are_refused_as_docker_bridge_does(harness: Harness) -> None:
    status, body = harness.create_network(
        ipv4=[_pool("10.200.137.0/24", "10.200.137.1/24"), _pool("10.200.138.0/24", "10.200.138.1/24")]
    )
    assert status == 400
    assert body["Err"].startswith(
        "a vxlanpy network takes one IPv4 subnet, not 2 (10.200.137.0/24, 10.200.138.0/24); as with Docker's "
        "bridge driver, create one network per subnet"
    ), body
    _nothing_made(harness)


def test_two_ipv6_subnets_are_refused(harness: Harness) -> None:
    status, body = harness.create_network(
        ipv6=[_pool("fd00:1::/64", "fd00:1::1/64"), _pool("fd00:2::/64", "fd00:2::1/64")]
    )
    assert status == 400 and "takes one IPv6 subnet, not 2 (fd00:1::/64, fd00:2::/64)" in body["Err"], body
    _nothing_made(harness)


def test_one_subnet_per_family_is_still_fine(harness: Harness) -> None:
    status, _ = harness.create_network(ipv6=[_pool("fd00:1::/64", "fd00:1::1/64")])
    assert status == 200 and len(harness.store.list_networks()) == 1


def _underlay(harness: Harness, gateways: tuple[str, ...] = ("10.233.0.1", "2001:db8::1")) -> None:
    harness.links.underlays["eth0"] = Underlay(
        "eth0",
        1500,
        (ipaddress.ip_address("10.233.0.5"), ipaddress.ip_address("2001:db8::10")),
        tuple(ipaddress.ip_address(gateway) for gateway in gateways),
    )


def test_a_subnet_holding_the_underlay_address_and_gateway_is_refused(harness: Harness) -> None:
    _underlay(harness)
    status, body = harness.create_network(ipv4=[_pool("10.233.0.0/24", "10.233.0.254/24")])
    assert status == 400
    assert body["Err"].startswith(
        "subnet 10.233.0.0/24 overlaps the underlay interface eth0: it contains eth0's address 10.233.0.5 and the "
        "default gateway 10.233.0.1 via eth0; the host would route its own traffic into the network's bridge"
    ), body
    _nothing_made(harness)


def test_a_subnet_holding_only_the_underlay_gateway_is_refused(harness: Harness) -> None:
    _underlay(harness)
    status, body = harness.create_network(ipv4=[_pool("10.233.0.0/30", "10.233.0.2/30")])
    assert status == 400
    assert (
        "subnet 10.233.0.0/30 overlaps the underlay interface eth0: it contains the default gateway 10.233.0.1 via"
        in (body["Err"])
    ), body
    assert "10.233.0.5" not in body["Err"]
    _nothing_made(harness)


def test_an_ipv6_subnet_holding_the_underlay_address_is_refused(harness: Harness) -> None:
    _underlay(harness, gateways=())
    status, body = harness.create_network(ipv6=[_pool("2001:db8::/64", "2001:db8::1/64")])
    assert status == 400
    assert (
        "subnet 2001:db8::/64 overlaps the underlay interface eth0: it contains eth0's address 2001:db8::10;"
        in body["Err"]
    )
    _nothing_made(harness)


def test_the_underlay_named_by_dev_is_the_one_checked(harness: Harness) -> None:
    _underlay(harness)
    harness.links.underlays["eth1"] = Underlay("eth1", 1500, (ipaddress.ip_address("10.99.0.5"),))
    status, body = harness.create_network(generic={"dev": "eth1"}, ipv4=[_pool("10.99.0.0/16", "10.99.0.1/16")])
    assert (
        status == 400 and "overlaps the underlay interface eth1: it contains eth1's address 10.99.0.5;" in body["Err"]
    ), body
    # a subnet beside the underlay's is fine
    assert harness.create_network(generic={"dev": "eth1"}, ipv4=[_pool("10.98.0.0/24", "10.98.0.1/24")])[0] == 200
