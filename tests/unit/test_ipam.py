"""The remote IPAM driver: golden libnetwork calls through the app, pools and gateways shared by hosts, refusals.

Each `Host` is one plugin instance (its own app and Ipam, named h1, h2, ...) on a store shared with the others,
which is what an etcd store gives a cluster.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from vxlanpy.app import create_app
from vxlanpy.config import Settings
from vxlanpy.dataplane.fake import FakeFirewall, FakeLinks
from vxlanpy.driver import Driver
from vxlanpy.errors import BadRequest, InvalidOption
from vxlanpy.ipam import AutoPools, Ipam, parse_auto_pools, parse_pool_id
from vxlanpy.store.memory import MemoryStore
from vxlanpy.store.sqlite import SqliteStore
from vxlanpy.wiring import assemble

GATEWAY_OPTIONS = {"RequestAddressType": "com.docker.network.gateway"}
POOL_ID = re.compile(r"^10\.60\.0\.0/24 claim=h1/[0-9a-f]{12}-[0-9]+$")  # HOST/TOKEN-SECONDS


class Host:
    def __init__(self, store: MemoryStore | SqliteStore, name: str, **pools: Any) -> None:
        self.store = store
        self.ipam = Ipam(store, host=name, **pools)
        driver = Driver(store, FakeLinks(), FakeFirewall())
        self.client: FlaskClient = create_app(assemble(driver, Settings(), ipam=self.ipam)).test_client()

    def call(self, method: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        response = self.client.post(f"/{method}", data=data)  # like dockerd: no Content-Type
        return response.status_code, json.loads(response.data)

    def request_pool(self, pool: str = "", subpool: str = "", v6: bool = False, **options: str) -> dict[str, Any]:
        status, body = self.call(
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Pool": pool, "SubPool": subpool, "Options": options, "V6": v6},
        )
        assert status == 200, body
        return body

    def request_address(self, pool_id: str, address: str = "", gateway: bool = False) -> tuple[int, dict[str, Any]]:
        options = GATEWAY_OPTIONS if gateway else {}
        return self.call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": address, "Options": options})

    def address(self, pool_id: str, address: str = "", gateway: bool = False) -> str:
        status, body = self.request_address(pool_id, address, gateway)
        assert status == 200, body
        assert set(body) == {"Address", "Data"} and body["Data"] == {}
        return str(body["Address"])

    def release_address(self, pool_id: str, address: str) -> tuple[int, dict[str, Any]]:
        return self.call("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address})

    def release_pool(self, pool_id: str) -> tuple[int, dict[str, Any]]:
        return self.call("IpamDriver.ReleasePool", {"PoolID": pool_id})

    def network(self, pool: str = "10.60.0.0/24", subpool: str = "", gateway: str = "") -> str:
        """What libnetwork does for `docker network create`: a pool, then its gateway."""
        pool_id = str(self.request_pool(pool, subpool)["PoolID"])
        self.address(pool_id, gateway, gateway=True)
        return pool_id


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def h1(store: MemoryStore) -> Host:
    return Host(store, "h1")


@pytest.fixture
def h2(store: MemoryStore) -> Host:
    return Host(store, "h2")


# -- golden calls ------------------------------------------------------------------------------------------------


def test_capabilities_and_default_address_spaces(h1: Host) -> None:
    assert h1.call("IpamDriver.GetCapabilities", raw=b"") == (
        200,
        {"RequiresMACAddress": False, "RequiresRequestReplay": False},
    )
    assert h1.call("IpamDriver.GetDefaultAddressSpaces") == (
        200,
        {"LocalDefaultAddressSpace": "vxlanpy-local", "GlobalDefaultAddressSpace": "vxlanpy-global"},
    )


def test_network_lifecycle_golden(h1: Host, store: MemoryStore) -> None:
    status, body = h1.call(
        "IpamDriver.RequestPool",
        {"AddressSpace": "vxlanpy-local", "Pool": "10.60.0.0/24", "SubPool": "", "Options": None, "V6": False},
    )
    assert status == 200 and set(body) == {"PoolID", "Pool", "Data"}
    assert POOL_ID.match(body["PoolID"]) and body["Pool"] == "10.60.0.0/24" and body["Data"] == {}
    pool_id = body["PoolID"]
    assert h1.call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": GATEWAY_OPTIONS}) == (
        200,
        {"Address": "10.60.0.1/24", "Data": {}},
    )
    assert h1.call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": None}) == (
        200,
        {"Address": "10.60.0.2/24", "Data": {}},
    )
    assert h1.call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "10.60.0.77", "Options": {}}) == (
        200,
        {"Address": "10.60.0.77/24", "Data": {}},
    )
    assert h1.release_address(pool_id, "10.60.0.2") == (200, {})
    assert h1.release_address(pool_id, "10.60.0.2") == (200, {})  # idempotent
    assert h1.release_address(pool_id, "10.60.0.77") == (200, {})
    assert h1.release_address(pool_id, "10.60.0.1") == (200, {})  # the gateway stays until the pool goes
    assert set(store.reserved_addresses("10.60.0.0/24").values()) == {"gateway", "10.60.0.1"}
    assert h1.release_pool(pool_id) == (200, {})
    assert store.pool_holders("10.60.0.0/24") == set() and store.reserved_addresses("10.60.0.0/24") == {}


def test_ipv6_pool_and_addresses(h1: Host) -> None:
    body = h1.request_pool("fd00:60::/64", v6=True)
    assert body["Pool"] == "fd00:60::/64"
    assert h1.address(body["PoolID"], gateway=True) == "fd00:60::1/64"
    assert h1.address(body["PoolID"]) == "fd00:60::2/64"
    assert h1.address(body["PoolID"], "fd00:60::ffff:ffff:ffff:ffff") == "fd00:60::ffff:ffff:ffff:ffff/64"


def test_subpool_allocates_from_the_range_and_keeps_the_gateway_in_the_pool(h1: Host) -> None:
    body = h1.request_pool("10.60.0.0/24", "10.60.0.128/25")
    assert body["Pool"] == "10.60.0.0/24" and body["PoolID"].startswith("10.60.0.0/24 10.60.0.128/25 claim=h1/")
    pool_id = body["PoolID"]
    assert h1.address(pool_id, gateway=True) == "10.60.0.1/24"
    assert h1.address(pool_id) == "10.60.0.128/24"
    assert h1.address(pool_id, "10.60.0.20") == "10.60.0.20/24"  # --ip / --aux-address outside the range
    status, body = h1.request_address(pool_id, "10.61.0.20")
    assert status == 400 and "10.61.0.20 is outside the pool 10.60.0.0/24" in body["Error"]


def test_request_pool_logs_one_line_per_request(h1: Host, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vxlanpy.requests"):
        pool_id = h1.network()
        h1.address(pool_id)
        h1.request_address(pool_id, "10.60.0.2")
    lines = [record.getMessage() for record in caplog.records if record.name == "vxlanpy.requests"]
    assert len(lines) == 4
    assert lines[0].startswith("IpamDriver.RequestPool pool=10.60.0.0/24 address=- ok 10.60.0.0/24 ")
    assert lines[2].startswith(f"IpamDriver.RequestAddress pool={pool_id} address=- ok 10.60.0.2/24 ")
    assert "address=10.60.0.2 error 409: 10.60.0.2 is already in use by h1 (container-" in lines[3]


# -- automatic pools ---------------------------------------------------------------------------------------------


def test_automatic_pools_are_distinct(h1: Host, h2: Host) -> None:
    first = h1.request_pool()
    second = h1.request_pool()
    third = h2.request_pool()
    assert [first["Pool"], second["Pool"], third["Pool"]] == ["10.200.0.0/24", "10.200.1.0/24", "10.200.2.0/24"]
    assert h1.address(first["PoolID"], gateway=True) == "10.200.0.1/24"
    assert h1.address(second["PoolID"], gateway=True) == "10.200.1.1/24"
    assert [h1.request_pool(v6=True)["Pool"], h2.request_pool(v6=True)["Pool"]] == [
        "fd78:7870::/64",
        "fd78:7870:0:1::/64",
    ]
    h1.release_pool(first["PoolID"])
    assert h2.request_pool()["Pool"] == "10.200.0.0/24"  # released automatic pools are reused


def test_automatic_pool_skips_a_pool_given_explicitly(h1: Host, h2: Host) -> None:
    h2.request_pool("10.200.0.0/24")
    assert h1.request_pool()["Pool"] == "10.200.1.0/24"


def test_automatic_pools_come_from_the_configured_ranges(store: MemoryStore) -> None:
    host = Host(store, "h1", pool4="10.9.0.0/23:24", pool6=parse_auto_pools("fd00:9::/63:64", 6))
    assert [host.request_pool()["Pool"], host.request_pool()["Pool"]] == ["10.9.0.0/24", "10.9.1.0/24"]
    status, body = host.call("IpamDriver.RequestPool", {"AddressSpace": "vxlanpy-local", "Pool": ""})
    assert status == 409 and body["Error"] == (
        "no free automatic pool left in 10.9.0.0/23 (/24 each); remove unused networks, give --subnet explicitly, "
        "or widen VXLANPY_IPAM_POOL4"
    )
    assert host.request_pool(v6=True)["Pool"] == "fd00:9::/64"


@pytest.mark.parametrize(
    ("raw", "version", "expected"),
    [
        ("10.200.0.0/16:24", 4, AutoPools(ipaddress.ip_network("10.200.0.0/16"), 24)),
        (" 10.0.0.0/8:16 ", 4, AutoPools(ipaddress.ip_network("10.0.0.0/8"), 16)),
        ("fd78:7870::/48:64", 6, AutoPools(ipaddress.ip_network("fd78:7870::/48"), 64)),
    ],
)
def test_parse_auto_pools(raw: str, version: int, expected: AutoPools) -> None:
    assert parse_auto_pools(raw, version) == expected
    assert str(expected) in raw


@pytest.mark.parametrize(
    ("raw", "version", "phrase"),
    [
        ("10.200.0.0/16", 4, "it must end with :PREFIXLEN"),
        ("10.200.0.0/16:", 4, "it must end with :PREFIXLEN"),
        ("10.200.0.0/16:x", 4, "it must end with :PREFIXLEN"),
        ("10.200.0.1/16:24", 4, "'10.200.0.1/16' is not a CIDR with its host bits clear"),
        ("10.200.0.0/16:8", 4, "the pool size must be between /16 and /30"),
        ("10.200.0.0/16:31", 4, "the pool size must be between /16 and /30"),
        ("fd78:7870::/48:64", 4, "fd78:7870::/48 is not an IPv4 network"),
        ("fd78:7870::/48", 6, "it must end with :PREFIXLEN"),
        ("10.200.0.0/16:24", 6, "10.200.0.0/16 is not an IPv6 network"),
    ],
)
def test_parse_auto_pools_refuses_with_a_clear_message(raw: str, version: int, phrase: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        parse_auto_pools(raw, version)
    message = str(caught.value)
    assert phrase in message and message.startswith(f"VXLANPY_IPAM_POOL{version}=") and "CIDR:PREFIXLEN" in message


# -- explicit pools shared by hosts ------------------------------------------------------------------------------


def test_explicit_pool_shared_by_two_hosts(h1: Host, h2: Host, store: MemoryStore) -> None:
    pool1 = h1.network()
    pool2 = h2.network()
    assert h1.address(pool1, gateway=True) == h2.address(pool2, gateway=True) == "10.60.0.1/24"
    addresses = [h1.address(pool1), h2.address(pool2), h1.address(pool1), h2.address(pool2)]
    assert addresses == ["10.60.0.2/24", "10.60.0.3/24", "10.60.0.4/24", "10.60.0.5/24"]
    h1.release_address(pool1, "10.60.0.2")
    h1.release_address(pool1, "10.60.0.4")
    h1.release_address(pool1, "10.60.0.1")
    assert h1.release_pool(pool1) == (200, {})
    assert h2.address(pool2) == "10.60.0.2/24"  # h2's network lives on, with its gateway
    assert set(store.reserved_addresses("10.60.0.0/24")) == {
        "gateway",
        "10.60.0.1",
        "10.60.0.2",
        "10.60.0.3",
        "10.60.0.5",
    }
    h2.release_pool(pool2)
    assert store.pool_holders("10.60.0.0/24") == set() and store.reserved_addresses("10.60.0.0/24") == {}


def test_hosts_with_different_ranges_of_one_subnet_never_collide(h1: Host, h2: Host) -> None:
    pool1 = h1.network("10.60.0.0/24", "10.60.0.0/25")
    pool2 = h2.network("10.60.0.0/24", "10.60.0.0/26")
    assert h1.address(pool1) == "10.60.0.2/24" and h2.address(pool2) == "10.60.0.3/24"
    assert h2.address(pool2, gateway=True) == "10.60.0.1/24"


def test_conflicting_explicit_address_names_the_holder_host(h1: Host, h2: Host) -> None:
    pool1, pool2 = h1.network(), h2.network()
    assert h2.address(pool2, "10.60.0.5") == "10.60.0.5/24"
    status, body = h1.request_address(pool1, "10.60.0.5")
    assert status == 409 and set(body) == {"Error"}
    assert re.fullmatch(
        r"10\.60\.0\.5 is already in use by h2 \(container-[0-9a-f]{12}\); "
        r"choose another --ip or omit it to get a free address",
        body["Error"],
    )
    status, body = h1.request_address(pool1, "10.60.0.1")
    assert status == 409 and "10.60.0.1 is already in use by the network's gateway" in body["Error"]
    assert h1.address(pool1) == "10.60.0.2/24"  # automatic allocation skips both


def test_two_requests_of_one_host_never_share_an_address(h1: Host) -> None:
    pool_id = h1.network()
    assert h1.address(pool_id, "10.60.0.9") == "10.60.0.9/24"
    status, body = h1.request_address(pool_id, "10.60.0.9")  # `docker run --ip 10.60.0.9` twice
    assert status == 409 and "already in use by h1" in body["Error"]


def test_gateway_mismatch_is_refused_naming_both(h1: Host, h2: Host) -> None:
    h1.network(gateway="10.60.0.254")
    pool2 = str(h2.request_pool("10.60.0.0/24")["PoolID"])
    status, body = h2.request_address(pool2, "10.60.0.1", gateway=True)
    assert status == 409 and body["Error"] == (
        "--gateway 10.60.0.1 differs from the gateway 10.60.0.254 already recorded for 10.60.0.0/24 "
        "(hosts sharing a subnet share its gateway); use --gateway 10.60.0.254 or omit --gateway"
    )
    assert h2.address(pool2, gateway=True) == "10.60.0.254/24"  # without --gateway: the recorded one
    assert h2.address(pool2, "10.60.0.254", gateway=True) == "10.60.0.254/24"
    assert h2.address(pool2) == "10.60.0.1/24"  # a container may have .1: it is not the gateway here


def test_default_gateway_taken_by_a_container_is_refused_and_recorded_nothing(h1: Host, h2: Host) -> None:
    pool1 = str(h1.request_pool("10.60.0.0/24")["PoolID"])
    assert h1.address(pool1, "10.60.0.1") == "10.60.0.1/24"
    pool2 = str(h2.request_pool("10.60.0.0/24")["PoolID"])
    status, body = h2.request_address(pool2, gateway=True)
    assert status == 409 and re.fullmatch(
        r"the gateway 10\.60\.0\.1 of 10\.60\.0\.0/24 is already in use by h1 \(container-[0-9a-f]{12}\); "
        r"choose another --gateway",
        body["Error"],
    )
    assert h2.address(pool2, "10.60.0.100", gateway=True) == "10.60.0.100/24"


def test_release_then_request_reuses_the_address(h1: Host) -> None:
    pool_id = h1.network()
    assert [h1.address(pool_id) for _ in range(3)] == ["10.60.0.2/24", "10.60.0.3/24", "10.60.0.4/24"]
    h1.release_address(pool_id, "10.60.0.3")
    assert h1.address(pool_id) == "10.60.0.3/24"
    assert h1.address(pool_id) == "10.60.0.5/24"


def test_release_address_leaves_another_hosts_address_alone(h1: Host, h2: Host, store: MemoryStore) -> None:
    pool1, pool2 = h1.network(), h2.network()
    assert h2.address(pool2) == "10.60.0.2/24"
    assert h1.release_address(pool1, "10.60.0.2") == (200, {})  # a repeated release from h1: not h1's now
    assert "10.60.0.2" in store.reserved_addresses("10.60.0.0/24")


def test_last_pool_release_frees_everything(h1: Host, h2: Host, store: MemoryStore) -> None:
    pool1, pool2 = h1.network(gateway="10.60.0.254"), h2.network()
    h1.address(pool1)
    h2.address(pool2, "10.60.0.50")
    h1.release_pool(pool1)
    h2.release_pool(pool2)
    assert store.reserved_addresses("10.60.0.0/24") == {} and store.pool_holders("10.60.0.0/24") == set()
    assert h1.address(h1.network(gateway="10.60.0.1"), "10.60.0.50") == "10.60.0.50/24"  # a fresh start


def test_two_networks_of_one_host_on_one_subnet_keep_their_records(h1: Host, store: MemoryStore) -> None:
    first, second = h1.network(), h1.network()
    assert first != second
    assert h1.address(first) == "10.60.0.2/24"
    h1.release_pool(second)  # e.g. the second `docker network create` failed and libnetwork rolled back
    assert "10.60.0.2" in store.reserved_addresses("10.60.0.0/24")
    assert h1.address(first) == "10.60.0.3/24"


def test_released_pool_is_not_found(h1: Host) -> None:
    pool_id = h1.network()
    h1.release_pool(pool_id)
    assert h1.release_pool(pool_id) == (200, {})  # idempotent
    assert h1.release_address(pool_id, "10.60.0.2") == (200, {})
    status, body = h1.request_address(pool_id)
    assert status == 404 and "pool 10.60.0.0/24 is not allocated to this network any more" in body["Error"]


def test_small_pool_exhaustion_is_explained(h1: Host) -> None:
    pool_id = h1.network("10.60.0.0/30")
    assert h1.address(pool_id) == "10.60.0.2/30"
    status, body = h1.request_address(pool_id)
    assert status == 409 and body["Error"] == (
        "no free address left in 10.60.0.0/30 (2 host addresses, all in use); "
        "remove unused containers or use a larger --subnet or --ip-range"
    )
    pool_id = h1.network("10.70.0.0/24", "10.70.0.4/31")
    assert [h1.address(pool_id), h1.address(pool_id)] == ["10.70.0.4/24", "10.70.0.5/24"]
    status, body = h1.request_address(pool_id)
    assert status == 409 and "no free address left in --ip-range 10.70.0.4/31 of 10.70.0.0/24 (2 host" in body["Error"]


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_concurrent_requests_from_two_hosts_get_unique_addresses(backend: str, tmp_path: Path) -> None:
    store = MemoryStore() if backend == "memory" else SqliteStore(str(tmp_path / "state.db"))
    hosts = [Ipam(store, host="h1"), Ipam(store, host="h2")]
    subnet = ipaddress.ip_network("10.60.0.0/24")
    pool_ids = [ipam.request_pool("vxlanpy-local", subnet, None, False, {}).pool_id for ipam in hosts]
    # Both hosts create the network at once: they race for the gateway and agree on it.
    gateways = _race(4, lambda index: hosts[index % 2].request_address(pool_ids[index % 2], None, gateway=True))
    assert [str(gateway) for gateway in gateways] == ["10.60.0.1/24"] * 4
    # Then containers start on both at once.
    results = _race(20, lambda index: hosts[index % 2].request_address(pool_ids[index % 2], None))
    assert all(isinstance(result, ipaddress.IPv4Interface) for result in results), results
    assert sorted(int(result.ip) & 0xFF for result in results) == list(range(2, 22))
    holders = store.reserved_addresses("10.60.0.0/24")
    assert sum(holder.startswith("h1/container-") for holder in holders.values()) == 10


def test_concurrent_different_gateways_agree_on_one(store: MemoryStore) -> None:
    hosts = [Ipam(store, host=f"h{index}") for index in range(10)]
    subnet = ipaddress.ip_network("10.60.0.0/24")
    pool_ids = [ipam.request_pool("vxlanpy-local", subnet, None, False, {}).pool_id for ipam in hosts]
    wanted = [ipaddress.ip_address(f"10.60.0.{250 + index % 2}") for index in range(10)]
    results = _race(10, lambda index: hosts[index].request_address(pool_ids[index], wanted[index], gateway=True))
    winners = {str(result) for result in results if not isinstance(result, Exception)}
    assert len(winners) == 1
    winner = winners.pop()
    for result in results:
        assert not isinstance(result, Exception) or "already recorded for 10.60.0.0/24" in str(result)
    gateway = ipaddress.ip_interface(winner).ip
    assert store.reserved_addresses("10.60.0.0/24") == {"gateway": str(gateway), str(gateway): "gateway"}


def _race(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(0..count-1) in threads released together; each result or exception, by index."""
    start = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = work(index)
        except Exception as exc:  # returned to the test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# -- refusals ----------------------------------------------------------------------------------------------------

VALID_POOL_ID = "10.60.0.0/24 claim=h1/0123456789ab"


@pytest.mark.parametrize(
    ("method", "body", "phrase"),
    [
        ("IpamDriver.RequestPool", b"{not json", "not valid JSON"),
        ("IpamDriver.RequestPool", b"[]", "must be a JSON object"),
        ("IpamDriver.RequestPool", {"Pool": "10.60.0.0/24"}, "missing the field AddressSpace"),
        ("IpamDriver.RequestPool", {"AddressSpace": ""}, "field AddressSpace is empty"),
        ("IpamDriver.RequestPool", {"AddressSpace": 7}, "field AddressSpace has the wrong type (int)"),
        ("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault"}, "address space 'LocalDefault' is not vxlanpy's"),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Pool": "10.60.0.0/33"},
            "Pool '10.60.0.0/33' is not a CIDR",
        ),
        ("IpamDriver.RequestPool", {"AddressSpace": "vxlanpy-local", "Pool": "banana"}, "Pool 'banana' is not a CIDR"),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Pool": "10.60.0.5/24"},
            "did you mean 10.60.0.0/24?",
        ),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Pool": ["10.60.0.0/24"]},
            "field Pool has the wrong type (list)",
        ),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "SubPool": "10.60.0.0/25"},
            "SubPool 10.60.0.0/25 was given without a Pool",
        ),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Pool": "10.60.0.0/24", "SubPool": "10.61.0.0/25"},
            "--ip-range 10.61.0.0/25 is not inside --subnet 10.60.0.0/24",
        ),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Pool": "10.60.0.0/24", "SubPool": "fd00::/64"},
            "--ip-range fd00::/64 is not inside",
        ),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Pool": "10.60.0.0/24", "V6": True},
            "pool 10.60.0.0/24 is IPv4 but the request is for IPv6",
        ),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Pool": "10.60.0.0/24", "V6": "yes"},
            "field V6 has the wrong type (str)",
        ),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Pool": "10.60.0.1/32"},
            "--subnet 10.60.0.1/32 is too small",
        ),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Options": {"size": "24"}},
            "unknown IPAM option 'size'",
        ),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Options": {"com.docker.x": 1}},
            "Options['com.docker.x'] must be a string, not int",
        ),
        (
            "IpamDriver.RequestPool",
            {"AddressSpace": "vxlanpy-local", "Options": []},
            "field Options has the wrong type (list)",
        ),
        ("IpamDriver.ReleasePool", {}, "missing the field PoolID"),
        ("IpamDriver.ReleasePool", {"PoolID": ""}, "field PoolID is empty"),
        ("IpamDriver.ReleasePool", {"PoolID": "10.60.0.0/24"}, "is not one vxlanpy made"),
        ("IpamDriver.ReleasePool", {"PoolID": "10.60.0.0/24 claim=h1/xyz"}, "has a malformed claim"),
        ("IpamDriver.ReleasePool", {"PoolID": "10.60.0.0/24  claim=h1/0123456789ab"}, "which is not a CIDR"),
        ("IpamDriver.ReleasePool", {"PoolID": "10.60.0.1/24 claim=h1/0123456789ab"}, "which is not in canonical form"),
        (
            "IpamDriver.ReleasePool",
            {"PoolID": "10.60.0.0/24 10.61.0.0/25 claim=h1/0123456789ab"},
            "10.61.0.0/25 is not inside 10.60.0.0/24",
        ),
        ("IpamDriver.ReleasePool", {"PoolID": "a b c d"}, "is not one vxlanpy made"),
        ("IpamDriver.RequestAddress", {"Address": ""}, "missing the field PoolID"),
        (
            "IpamDriver.RequestAddress",
            {"PoolID": VALID_POOL_ID, "Address": "10.60.0.5/24"},
            "'10.60.0.5/24' is not an IP address (without a /prefix)",
        ),
        (
            "IpamDriver.RequestAddress",
            {"PoolID": VALID_POOL_ID, "Address": 5},
            "field Address has the wrong type (int)",
        ),
        (
            "IpamDriver.RequestAddress",
            {"PoolID": VALID_POOL_ID, "Options": {"RequestAddressType": None}},
            "must be a string, not NoneType",
        ),
        (
            "IpamDriver.RequestAddress",
            {"PoolID": VALID_POOL_ID, "Address": "10.61.0.5"},
            "address 10.61.0.5 is outside the pool 10.60.0.0/24",
        ),
        (
            "IpamDriver.RequestAddress",
            {"PoolID": VALID_POOL_ID, "Address": "fd00::5"},
            "address fd00::5 is IPv6 but the pool 10.60.0.0/24 is IPv4",
        ),
        (
            "IpamDriver.RequestAddress",
            {"PoolID": VALID_POOL_ID, "Address": "10.60.0.0"},
            "address 10.60.0.0 is the network address of 10.60.0.0/24",
        ),
        (
            "IpamDriver.RequestAddress",
            {"PoolID": VALID_POOL_ID, "Address": "10.60.0.255"},
            "the broadcast address of 10.60.0.0/24",
        ),
        (
            "IpamDriver.RequestAddress",
            {"PoolID": VALID_POOL_ID, "Address": "10.60.0.255", "Options": GATEWAY_OPTIONS},
            "--gateway 10.60.0.255 is the broadcast address",
        ),
        ("IpamDriver.ReleaseAddress", {"PoolID": VALID_POOL_ID}, "missing the field Address"),
        ("IpamDriver.ReleaseAddress", {"PoolID": VALID_POOL_ID, "Address": ""}, "field Address is empty"),
        (
            "IpamDriver.ReleaseAddress",
            {"PoolID": VALID_POOL_ID, "Address": "10.61.0.5"},
            "address 10.61.0.5 is outside the pool",
        ),
        ("IpamDriver.ReleaseAddress", {"PoolID": VALID_POOL_ID, "Address": "nope"}, "'nope' is not an IP address"),
    ],
)
def test_malformed_requests_get_a_clear_400(h1: Host, store: MemoryStore, method: str, body: Any, phrase: str) -> None:
    store.claim_pool("10.60.0.0/24", "h1/0123456789ab", exclusive=False)  # the pool of VALID_POOL_ID
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, reply = h1.call(method, raw=raw)
    assert status == 400 and set(reply) == {"Error"} and phrase in reply["Error"], reply
    assert store.pool_holders("10.60.0.0/24") == {"h1/0123456789ab"} and store.reserved_addresses("10.60.0.0/24") == {}
    assert store.pool_holders("10.200.0.0/24") == set()  # no automatic pool was taken either


def test_unknown_ipam_method_and_http_method_answer_error(h1: Host) -> None:
    status, body = h1.call("IpamDriver.Frobnicate", {})
    assert status == 404 and set(body) == {"Error"} and "unknown method 'IpamDriver.Frobnicate'" in body["Error"]
    assert "IpamDriver.RequestPool" in body["Error"] and "NetworkDriver" not in body["Error"]
    response = h1.client.get("/IpamDriver.RequestPool")
    assert response.status_code == 405 and set(response.get_json(force=True)) == {"Error"}
    status, body = h1.call("NetworkDriver.Frobnicate", {})
    assert status == 404 and set(body) == {"Err"}  # the network driver keeps its own error field


def test_internal_bug_answers_error_without_traceback(h1: Host) -> None:
    h1.ipam.request_pool = None  # type: ignore[assignment,method-assign]
    status, body = h1.call("IpamDriver.RequestPool", {"AddressSpace": "vxlanpy-local"})
    assert (status, body) == (500, {"Error": "internal error in vxlanpy (TypeError); see the plugin log"})


def test_ipam_refuses_a_host_name_it_cannot_record(store: MemoryStore) -> None:
    with pytest.raises(InvalidOption, match="host name 'a/b' cannot name IPAM reservations"):
        Ipam(store, host="a/b")


def test_pool_id_round_trip() -> None:
    grant = parse_pool_id("10.60.0.0/24 10.60.0.128/25 claim=h-1.example/0123456789ab")
    assert str(grant.pool) == "10.60.0.0/24" and str(grant.subpool) == "10.60.0.128/25"
    assert grant.claim == "h-1.example/0123456789ab" and grant.key == "10.60.0.0/24"
    assert grant.pool_id == "10.60.0.0/24 10.60.0.128/25 claim=h-1.example/0123456789ab"
    with pytest.raises(BadRequest):
        parse_pool_id("10.60.0.0/24 claim=../0123456789ab")


# -- wiring ------------------------------------------------------------------------------------------------------


def test_the_wiring_builds_the_ipam_on_the_drivers_store() -> None:
    store = MemoryStore()
    settings = Settings()
    ipam = assemble(Driver(store, FakeLinks(), FakeFirewall()), settings).ipam
    assert isinstance(ipam, Ipam) and ipam.book is store
    assert ipam.host == settings.host
    assert str(ipam.pool4) == "10.200.0.0/16:24" and str(ipam.pool6) == "fd78:7870::/48:64"


def test_oversized_ipam_request_answers_error(h1: Host) -> None:
    status, body = h1.call("IpamDriver.RequestPool", raw=b'{"AddressSpace": "' + b"x" * (2 << 20) + b'"}')
    assert status == 413 and set(body) == {"Error"}


# -- reservations that outlive their containers (issue #12) --------------------------------------------------------


def test_container_reservations_record_their_kind_and_time() -> None:
    from vxlanpy.ipam import Ipam, orphan_reservations, reservation_age
    from vxlanpy.store.memory import MemoryStore

    book = MemoryStore()
    now = [1000.0]
    ipam = Ipam(book, "h1", clock=lambda: now[0])
    grant = ipam.request_pool("vxlanpy-local", ipaddress.ip_network("10.60.0.0/24"), None, None, {})
    ipam.request_address(grant.pool_id, None, gateway=True)
    ipam.request_address(grant.pool_id, None)
    ipam.request_address(grant.pool_id, ipaddress.ip_address("10.60.0.9"))
    reserved = book.reserved_addresses("10.60.0.0/24")
    assert reservation_age(reserved["10.60.0.2"], "h1", 1030.0) == ("auto", 30.0)
    assert reservation_age(reserved["10.60.0.9"], "h1", 1030.0) == ("ip", 30.0)
    assert reservation_age(reserved["10.60.0.2"], "h2", 1030.0) is None  # another host's
    assert reservation_age("h1/container-0123456789ab", "h1", 1030.0) == ("ip", float("inf"))  # before the stamp
    assert orphan_reservations(reserved, set(), "h1", 1059.0) == []
    assert [a for a, _ in orphan_reservations(reserved, set(), "h1", 1060.0)] == ["10.60.0.2"]
    assert orphan_reservations(reserved, {"10.60.0.2"}, "h1", 5000.0) == []
    assert orphan_reservations(reserved, set(), "h2", 5000.0) == []
    assert [a for a, _ in orphan_reservations(reserved, set(), "h1", 1030.0, started=1001.0)] == ["10.60.0.2"]
    assert orphan_reservations(reserved, set(), "h1", 1030.0, started=1000.5) == []  # made in the start's second
    with pytest.raises(Exception, match=r"10\.60\.0\.9 is already in use by h1 \(container-[0-9a-f]{12}\); "):
        ipam.request_address(grant.pool_id, ipaddress.ip_address("10.60.0.9"))


def test_pool_claims_record_their_time_and_unused_ones_are_orphans() -> None:
    """A RequestPool whose CreateNetwork never came (the plugin was killed in between, Docker's ReleasePool was
    lost) must not hold its subnet for good."""
    from vxlanpy.ipam import claim_age, orphan_pool_claims
    from vxlanpy.store.memory import MemoryStore

    book = MemoryStore()
    ipam = Ipam(book, "h1", clock=lambda: 1000.0)
    grant = ipam.request_pool("vxlanpy-local", None, None, None, {})
    assert grant.claim.endswith("-1000") and parse_pool_id(grant.pool_id) == grant
    assert parse_pool_id("10.60.0.0/24 claim=h1/0123456789ab").claim == "h1/0123456789ab"  # an older PoolID
    assert claim_age(grant.claim, "h1", 1030.0) == 30.0
    assert claim_age("h1/0123456789ab", "h1", 1030.0) == float("inf")  # from before claims were timed
    assert claim_age(grant.claim, "h2", 1030.0) is None and claim_age("h1/recovered-0123456789ab", "h1", 9e9) is None
    claims = {"10.200.0.0/24": {grant.claim, "h2/0123456789ab-900"}, "10.60.0.0/24": {"h1/0123456789ab"}}
    assert orphan_pool_claims(claims, set(), "h1", 1059.0) == [("10.60.0.0/24", "h1/0123456789ab")]
    assert orphan_pool_claims(claims, set(), "h1", 1060.0) == [
        ("10.200.0.0/24", grant.claim),  # never another host's claim
        ("10.60.0.0/24", "h1/0123456789ab"),
    ]
    assert orphan_pool_claims(claims, {"10.200.0.0/24", "10.60.0.0/24"}, "h1", 5000.0) == []  # in use
    assert orphan_pool_claims(claims, {"10.60.0.0/24"}, "h1", 1030.0, started=1001.0) == [
        ("10.200.0.0/24", grant.claim)
    ]
    assert orphan_pool_claims(claims, {"10.60.0.0/24"}, "h1", 1030.0, started=1000.5) == []  # the start's second
