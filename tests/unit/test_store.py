"""One contract, every backend: the store behaves the same whether it is SQLite or the in-memory fake."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vxlanpy.errors import Conflict, InvalidOption
from vxlanpy.models import Endpoint, Network, NetworkConfig, PortMapping, Subnet
from vxlanpy.store import Store, open_store


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend = open_store("memory://" if request.param == "memory" else f"sqlite://{tmp_path}/state.db")
    yield backend
    backend.close()


def network(network_id: str, vni: int) -> Network:
    return Network(
        network_id,
        NetworkConfig(
            vni=vni, dev="eth0", local=ipaddress.ip_address("192.0.2.1"), peers=(ipaddress.ip_address("192.0.2.9"),)
        ),
        ipv4=(Subnet(ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_interface("10.0.0.1/24")),),
        ipv6=(Subnet(ipaddress.ip_network("fd00::/64"), ipaddress.ip_interface("fd00::1/64")),),
    )


def test_round_trip(store: Store) -> None:
    original = network("a" * 64, 5)
    store.add_network(original)
    assert store.get_network("a" * 64) == original
    endpoint = Endpoint(
        "c" * 64,
        "a" * 64,
        "02:42:0a:00:00:02",
        ipaddress.IPv4Interface("10.0.0.2/24"),
        ports=(PortMapping("tcp", 80, 8080, ipaddress.ip_address("127.0.0.1")),),
        sandbox_key="/x",
    )
    store.put_endpoint(endpoint)
    assert store.get_endpoint("c" * 64) == endpoint
    assert store.list_endpoints("a" * 64) == [endpoint] and store.list_endpoints("b" * 64) == []


def test_vni_is_unique(store: Store) -> None:
    store.add_network(network("a" * 64, 5))
    with pytest.raises(Conflict, match="vni 5 is already used"):
        store.add_network(network("b" * 64, 5))


def test_free_vni_allocation_fills_gaps(store: Store) -> None:
    for index, vni in enumerate((10, 11, 13)):
        store.add_network(network(str(index) * 64, vni))
    assert store.add_network_with_free_vni(lambda vni: network("7" * 64, vni), 10, 20).vni == 12
    assert store.add_network_with_free_vni(lambda vni: network("8" * 64, vni), 10, 20).vni == 14
    with pytest.raises(Conflict, match="no free VNI"):
        store.add_network_with_free_vni(lambda vni: network("9" * 64, vni), 10, 11)


def test_concurrent_allocation_never_duplicates(store: Store) -> None:
    results: list[int] = []
    errors: list[Exception] = []

    def allocate(index: int) -> None:
        try:
            results.append(store.add_network_with_free_vni(lambda vni: network(f"{index:064x}", vni), 1, 1000).vni)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=allocate, args=(index,)) for index in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(results) == list(range(1, 41))


def test_delete_network_deletes_its_endpoints(store: Store) -> None:
    store.add_network(network("a" * 64, 5))
    store.put_endpoint(Endpoint("c" * 64, "a" * 64, "02:00:00:00:00:01"))
    store.delete_network("a" * 64)
    store.delete_network("a" * 64)
    assert store.list_networks() == [] and store.list_endpoints() == []


def test_unknown_store_url() -> None:
    with pytest.raises(InvalidOption, match="VXLANPY_STORE='redis://x' is not supported"):
        open_store("redis://x")


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    first = open_store(f"sqlite://{tmp_path}/state.db")
    first.add_network(network("a" * 64, 5))
    first.close()
    second = open_store(f"sqlite://{tmp_path}/state.db")
    assert [n.vni for n in second.list_networks()] == [5]
    second.close()
