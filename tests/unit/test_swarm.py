"""Swarm networks (VXLANPY_SCOPE=global): the manager's AllocateNetwork/FreeNetwork, the VNI every node then
creates the network on, and the IPAM records of the manager's allocator, asked for again by each node."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from vxlanpy.config import Settings
from vxlanpy.errors import Conflict, InvalidOption
from vxlanpy.ipam import Ipam
from vxlanpy.store.base import ranges_without
from vxlanpy.store.etcd import EtcdStore
from vxlanpy.store.memory import MemoryStore

from .conftest import NET, NET2, Harness
from .test_store import etcd_store

IPV4 = [{"AddressSpace": "vxlanpy-global", "Pool": "10.70.0.0/24", "Gateway": "10.70.0.1/24"}]


@pytest.fixture
def swarm() -> Harness:
    return Harness(scope="global")


def allocate(harness: Harness, network_id: str = NET, **options: str) -> tuple[int, dict[str, Any]]:
    return harness.call(
        "NetworkDriver.AllocateNetwork", {"NetworkID": network_id, "Options": options, "IPv4Data": IPV4}
    )


def test_a_global_plugin_reports_global_scope(swarm: Harness) -> None:
    assert swarm.call("NetworkDriver.GetCapabilities")[1] == {
        "Scope": "global",
        "ConnectivityScope": "global",
        "GwAllocChecker": True,
    }


def test_allocate_returns_the_options_with_the_reserved_vni(swarm: Harness) -> None:
    status, body = allocate(swarm, mtu="1400")
    assert (status, body) == (200, {"Options": {"mtu": "1400", "vni": "100"}})
    # the manager asks again after a restart, with what it got: the same VNI
    assert allocate(swarm, mtu="1400", vni="100") == (200, {"Options": {"mtu": "1400", "vni": "100"}})
    assert allocate(swarm, mtu="1400") == (200, {"Options": {"mtu": "1400", "vni": "100"}})


def test_every_node_creates_the_network_on_the_reserved_vni(swarm: Harness) -> None:
    options = allocate(swarm)[1]["Options"]
    assert swarm.create_network(NET, generic=options, ipv4=IPV4) == (200, {})
    assert swarm.driver.get_network(NET).vni == 100
    # a local network neither gets nor takes the swarm network's VNI
    assert swarm.create_network(NET2, generic={}) == (200, {})
    assert swarm.driver.get_network(NET2).vni == 101
    assert swarm.call("NetworkDriver.DeleteNetwork", {"NetworkID": NET2}) == (200, {})
    # this node's tasks went (the network goes from the node), yet the swarm network keeps its VNI
    assert swarm.call("NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == (200, {})
    status, body = swarm.create_network(NET2, generic={"vni": "100"})
    assert status == 409 and "reserved by the swarm network" in body["Err"] and NET[:12] in body["Err"]


def test_free_network_gives_the_vni_back(swarm: Harness) -> None:
    allocate(swarm)
    assert swarm.call("NetworkDriver.FreeNetwork", {"NetworkID": NET}) == (200, {})
    assert swarm.store.swarm_vnis() == {}
    assert swarm.create_network(NET2, generic={}) == (200, {})
    assert swarm.driver.get_network(NET2).vni == 100
    assert swarm.call("NetworkDriver.FreeNetwork", {"NetworkID": NET}) == (200, {})  # twice: still fine


def test_allocate_checks_the_options_before_reserving(swarm: Harness) -> None:
    status, body = allocate(swarm, colour="blue")
    assert status == 400 and "unknown option colour" in body["Err"]
    status, body = allocate(swarm, vni="100")
    assert status == 200
    status, body = allocate(swarm, NET2, vni="100")
    assert status == 409 and "reserved by the swarm network" in body["Err"]
    assert swarm.store.swarm_vnis() == {100: NET}


def test_allocate_refuses_options_that_are_not_strings(swarm: Harness) -> None:
    status, body = swarm.call("NetworkDriver.AllocateNetwork", {"NetworkID": NET, "Options": {"mtu": 1400}})
    assert status == 400 and "must be a string" in body["Err"]


# -- the VNI reservations, on every store that has them ----------------------------------------------------------


@pytest.fixture(params=["memory", "etcd"])
def vnis(request: pytest.FixtureRequest) -> MemoryStore | EtcdStore:
    return MemoryStore() if request.param == "memory" else etcd_store(request)


def test_reservations_are_unique_and_idempotent(vnis: MemoryStore | EtcdStore) -> None:
    assert vnis.reserve_swarm_vni(NET, None, 10, 11) == 10
    assert vnis.reserve_swarm_vni(NET, None, 10, 11) == 10
    assert vnis.reserve_swarm_vni(NET, 10, 10, 11) == 10
    assert vnis.reserve_swarm_vni(NET2, None, 10, 11) == 11
    with pytest.raises(Conflict, match="reserved by the swarm network"):
        vnis.reserve_swarm_vni("e" * 64, 10, 10, 11)
    with pytest.raises(Conflict, match="no free VNI left in 10-11"):
        vnis.reserve_swarm_vni("e" * 64, None, 10, 11)
    assert vnis.swarm_vnis() == {10: NET, 11: NET2}
    assert vnis.release_swarm_vni(NET) == 10
    assert vnis.release_swarm_vni(NET) is None
    assert vnis.swarm_vnis() == {11: NET2}
    assert vnis.release_swarm_vni(NET2) == 11


# -- the setting -----------------------------------------------------------------------------------------------


def test_global_scope_needs_the_etcd_store() -> None:
    with pytest.raises(InvalidOption, match="VXLANPY_SCOPE=global .*needs the etcd store"):
        Settings.from_env({"VXLANPY_SCOPE": "global"})
    assert Settings.from_env({"VXLANPY_SCOPE": "global", "VXLANPY_STORE": "etcd://127.0.0.1:2379"}).scope == "global"
    assert Settings.from_env({}).scope == "local"
    with pytest.raises(InvalidOption, match="VXLANPY_SCOPE='swarm' is not valid; use local"):
        Settings.from_env({"VXLANPY_SCOPE": "swarm"})


# -- IPAM: the manager's allocator, then each node ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book() -> MemoryStore:
    return MemoryStore()


def ipam(book: MemoryStore, host: str, clock: Clock) -> Ipam:
    return Ipam(book, host=host, clock=clock)


POOL = ipaddress.ip_network("10.70.0.0/24")
TASK = ipaddress.ip_address("10.70.0.5")


def test_a_node_is_granted_the_address_the_allocator_reserved(book: MemoryStore, clock: Clock) -> None:
    manager, worker = ipam(book, "m1", clock), ipam(book, "w1", clock)
    allocator_pool = manager.request_pool("vxlanpy-global", POOL, None, None, {}).pool_id
    assert str(manager.request_address(allocator_pool, TASK, swarm=True)) == "10.70.0.5/24"
    node_pool = worker.request_pool("vxlanpy-global", POOL, None, None, {}).pool_id
    assert str(worker.request_address(node_pool, TASK)) == "10.70.0.5/24"
    # the node's release (its container went) leaves the address to the allocator
    worker.release_address(node_pool, TASK)
    assert str(TASK) in book.reserved_addresses(str(POOL))
    manager.release_address(allocator_pool, TASK)
    assert str(TASK) not in book.reserved_addresses(str(POOL))


def test_duplicates_are_still_refused(book: MemoryStore, clock: Clock) -> None:
    manager, worker = ipam(book, "m1", clock), ipam(book, "w1", clock)
    allocator_pool = manager.request_pool("vxlanpy-global", POOL, None, None, {}).pool_id
    manager.request_address(allocator_pool, TASK, swarm=True)
    with pytest.raises(Conflict, match="10.70.0.5 is already in use by m1"):  # the same run of the allocator
        manager.request_address(allocator_pool, TASK, swarm=True)
    node_pool = worker.request_pool("vxlanpy-global", POOL, None, None, {}).pool_id
    other = ipaddress.ip_address("10.70.0.6")
    worker.request_address(node_pool, other)  # a node's own reservation (not the allocator's)
    with pytest.raises(Conflict, match="10.70.0.6 is already in use by w1"):
        manager.request_address(allocator_pool, other, swarm=True)
    with pytest.raises(Conflict, match="10.70.0.6 is already in use by w1"):
        worker.request_address(node_pool, other)


def test_a_new_run_of_the_allocator_takes_over_what_the_last_one_reserved(book: MemoryStore, clock: Clock) -> None:
    first = ipam(book, "m1", clock)
    old_pool = first.request_pool("vxlanpy-global", POOL, None, None, {}).pool_id
    first.request_address(old_pool, TASK, swarm=True)
    clock.now += 60  # the manager restarted, or another one leads: it asks for its pool and addresses again
    second = ipam(book, "m2", clock)
    new_pool = second.request_pool("vxlanpy-global", POOL, None, None, {}).pool_id
    assert str(second.request_address(new_pool, TASK, swarm=True)) == "10.70.0.5/24"
    first.release_address(old_pool, TASK)  # the old run's release no longer applies
    assert str(TASK) in book.reserved_addresses(str(POOL))
    second.release_address(new_pool, TASK)
    assert str(TASK) not in book.reserved_addresses(str(POOL))


def test_the_allocator_option_marks_a_request_as_the_swarm_managers(swarm: Harness) -> None:
    status, body = swarm.call(
        "IpamDriver.RequestPool", {"AddressSpace": "vxlanpy-global", "Pool": "10.70.0.0/24", "Options": {}}
    )
    pool_id = body["PoolID"]
    serial = {"com.docker.network.ipam.serial": "true"}
    request = {"PoolID": pool_id, "Address": "10.70.0.5", "Options": serial}
    assert swarm.call("IpamDriver.RequestAddress", request)[1]["Address"] == "10.70.0.5/24"
    # the node's own libnetwork asks for it again, without the option: granted
    node = {"PoolID": pool_id, "Address": "10.70.0.5", "Options": {"com.docker.network.endpoint.name": "web.1"}}
    assert swarm.call("IpamDriver.RequestAddress", node)[1]["Address"] == "10.70.0.5/24"
    # a second allocator request for it, from the same run: refused
    status, body = swarm.call("IpamDriver.RequestAddress", request)
    assert status == 409 and "already in use" in body["Error"]


# -- VNIs that other VXLAN devices of the host hold (swarm's ingress network: VNI 4096, port 4789) ------------


def test_an_automatic_vni_skips_one_another_device_holds(swarm: Harness) -> None:
    swarm.links.foreign[(100, 4789)] = "vx-000064-ingrs"
    assert swarm.create_network(NET, generic={}) == (200, {})
    assert swarm.driver.get_network(NET).vni == 101
    assert set(swarm.links.networks) == {"vxbr-101"} and swarm.store.pending_networks() == {}


def test_a_vni_another_device_holds_is_refused_with_what_to_do(swarm: Harness) -> None:
    swarm.links.foreign[(100, 4789)] = "vx-000064-ingrs"
    status, body = swarm.create_network(NET, generic={"vni": "100"})
    assert status == 409
    assert body["Err"] == (
        "VNI 100 on UDP port 4789 is taken on this host by the VXLAN device vx-000064-ingrs, which is not vxlanpy's "
        "(Docker's overlay networks and swarm's ingress network use 4789); create the network with another -o vni "
        "or -o dstport, or set VXLANPY_VNI_RANGE to a range apart from it"
    )
    assert swarm.store.list_networks() == [] and swarm.links.networks == {}
    assert swarm.create_network(NET, generic={"vni": "100", "dstport": "4800"}) == (200, {})


def test_the_manager_skips_vnis_its_other_devices_hold(swarm: Harness) -> None:
    swarm.links.foreign[(100, 4789)] = "vx-000064-ingrs"
    assert allocate(swarm) == (200, {"Options": {"vni": "101"}})
    assert allocate(swarm, NET2, dstport="4800") == (200, {"Options": {"dstport": "4800", "vni": "100"}})
    assert allocate(swarm, "e" * 64) == (200, {"Options": {"vni": "102"}})
    status, body = allocate(swarm, "f" * 64)
    assert status == 409 and "no free VNI left in 100-102" in body["Err"]


def test_ranges_without() -> None:
    assert ranges_without(10, 20, {10, 15, 21, 3}) == [(11, 14), (16, 20)]
    assert ranges_without(10, 12, {10, 11, 12}) == []
    assert ranges_without(10, 12, set()) == [(10, 12)]


SWARM_NET = "q3z8k1m0x7c2v9b4n6l5j0h2g"  # swarmkit's ids: 25 lowercase base-36 characters


def test_a_swarm_networks_id_is_accepted_and_others_are_not(swarm: Harness) -> None:
    options = allocate(swarm, SWARM_NET)[1]["Options"]
    assert swarm.create_network(SWARM_NET, generic=options, ipv4=IPV4) == (200, {})
    assert swarm.create_endpoint(network_id=SWARM_NET, Address="10.70.0.5/24")[0] == 200
    status, body = swarm.create_network("Q3Z8K1M0X7C2V9B4N6L5J0H2G", generic={})
    assert status == 400 and "is not a Docker network id" in body["Err"]
