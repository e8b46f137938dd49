"""One contract, every backend: the store behaves the same whether it is SQLite, etcd or the in-memory fake."""

from __future__ import annotations

import ipaddress
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vxlanpy.errors import Conflict, InvalidOption, StoreError
from vxlanpy.models import Endpoint, Network, NetworkConfig, PortMapping, Subnet
from vxlanpy.store import Store, open_store
from vxlanpy.store.base import AddressBook
from vxlanpy.store.etcd import EtcdStore
from vxlanpy.store.etcd_kv import EtcdConfig, EtcdKV
from vxlanpy.store.memory import MemoryStore
from vxlanpy.store.sqlite import SqliteStore

from ..etcd_server import EtcdServer


def etcd_store(request: pytest.FixtureRequest) -> EtcdStore:
    """A store on the session's throwaway etcd, under a prefix of its own."""
    server: EtcdServer = request.getfixturevalue("etcd_server")
    kv = EtcdKV(EtcdConfig.from_url(server.url, prefix=f"/contract-{uuid.uuid4().hex[:10]}", timeout=2))
    return EtcdStore(kv, "contract-host")


@pytest.fixture(params=["memory", "sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "etcd":
        backend: Store = etcd_store(request)
    else:
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


# -- AddressBook: the IPAM driver's records ----------------------------------------------------------------------
#
# To run this contract against another backend, add a factory to ADDRESS_BOOKS (it may call pytest.skip when
# the backend is not reachable); every test below then runs against it too.

ADDRESS_BOOKS: dict[str, Callable[[Path], AddressBook]] = {
    "memory": lambda tmp_path: MemoryStore(),
    "sqlite": lambda tmp_path: SqliteStore(str(tmp_path / "state.db")),
    "etcd": lambda tmp_path: None,  # type: ignore[arg-type,return-value]  # built from the etcd_server fixture
}

POOL = "10.60.0.0/24"
POOL6 = "fd00:60::/64"


@pytest.fixture(params=sorted(ADDRESS_BOOKS))
def book(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AddressBook]:
    backend = etcd_store(request) if request.param == "etcd" else ADDRESS_BOOKS[request.param](tmp_path)
    yield backend
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def test_book_shared_pool_lives_until_its_last_holder_leaves(book: AddressBook) -> None:
    assert book.claim_pool(POOL, "h1/aaaa", exclusive=False) is True
    assert book.claim_pool(POOL, "h2/bbbb", exclusive=False) is True
    assert book.claim_pool(POOL, "h2/bbbb", exclusive=False) is True  # idempotent
    assert book.pool_holders(POOL) == {"h1/aaaa", "h2/bbbb"}
    assert book.reserve_address(POOL, "10.60.0.1", "gateway") is None
    assert book.reserve_address(POOL, "10.60.0.2", "h1/container-1") is None
    book.release_pool(POOL, "h1/aaaa")
    assert book.pool_holders(POOL) == {"h2/bbbb"}
    assert book.reserved_addresses(POOL) == {"10.60.0.1": "gateway", "10.60.0.2": "h1/container-1"}
    book.release_pool(POOL, "h9/not-a-holder")
    assert book.pool_holders(POOL) == {"h2/bbbb"} and len(book.reserved_addresses(POOL)) == 2
    book.release_pool(POOL, "h2/bbbb")
    assert book.pool_holders(POOL) == set() and book.reserved_addresses(POOL) == {}
    book.release_pool(POOL, "h2/bbbb")  # releasing again is a no-op
    assert book.claim_pool(POOL, "h3/cccc", exclusive=True) is True  # forgotten pools are free again


def test_book_lists_every_claimed_pool_with_its_holders(book: AddressBook) -> None:
    assert book.claimed_pools() == {}
    book.claim_pool(POOL, "h1/0123456789ab-1000", exclusive=True)
    book.claim_pool(POOL, "h2/bbbb", exclusive=False)
    book.claim_pool("fd78:7870::/64", "h1/recovered-0123456789ab", exclusive=False)
    assert book.claimed_pools() == {
        POOL: {"h1/0123456789ab-1000", "h2/bbbb"},
        "fd78:7870::/64": {"h1/recovered-0123456789ab"},
    }
    book.release_pool(POOL, "h1/0123456789ab-1000")
    book.release_pool(POOL, "h2/bbbb")
    assert book.claimed_pools() == {"fd78:7870::/64": {"h1/recovered-0123456789ab"}}


def test_book_exclusive_claim_needs_an_unheld_pool(book: AddressBook) -> None:
    assert book.claim_pool(POOL, "h1/aaaa", exclusive=True) is True
    assert book.claim_pool(POOL, "h2/bbbb", exclusive=True) is False
    assert book.pool_holders(POOL) == {"h1/aaaa"}
    assert book.claim_pool(POOL, "h2/bbbb", exclusive=False) is True  # an explicit --subnet may share it
    assert book.claim_pool("10.60.1.0/24", "h2/bbbb", exclusive=True) is True
    assert book.pool_holders(POOL) == {"h1/aaaa", "h2/bbbb"} and book.pool_holders("10.60.1.0/24") == {"h2/bbbb"}
    # a pool first claimed without exclusivity (an explicit --subnet) is not free for an automatic claim either
    assert book.claim_pool("10.60.2.0/24", "h1/cccc", exclusive=False) is True
    assert book.claim_pool("10.60.2.0/24", "h2/dddd", exclusive=True) is False
    assert book.pool_holders("10.60.2.0/24") == {"h1/cccc"}
    # once every holder has left, the pool is free for an exclusive claim again
    book.release_pool(POOL, "h1/aaaa")
    book.release_pool(POOL, "h2/bbbb")
    assert book.claim_pool(POOL, "h3/eeee", exclusive=True) is True


def test_book_reserve_returns_the_winner(book: AddressBook) -> None:
    book.claim_pool(POOL, "h1/aaaa", exclusive=False)
    assert book.reserve_address(POOL, "10.60.0.5", "h2/container-1") is None
    assert book.reserve_address(POOL, "10.60.0.5", "h2/container-1") is None  # the holder asks again
    assert book.reserve_address(POOL, "10.60.0.5", "h1/container-2") == "h2/container-1"
    assert book.reserved_addresses(POOL) == {"10.60.0.5": "h2/container-1"}
    book.release_address(POOL, "10.60.0.5")
    book.release_address(POOL, "10.60.0.5")  # idempotent
    book.release_address("10.99.0.0/24", "10.99.0.5")  # unknown pool: a no-op
    assert book.reserved_addresses(POOL) == {}
    assert book.reserve_address(POOL, "10.60.0.5", "h1/container-2") is None
    assert book.reserved_addresses(POOL) == {"10.60.0.5": "h1/container-2"}


def test_book_pools_are_independent_and_keys_are_opaque(book: AddressBook) -> None:
    # Keys hold "/", ":" and words: a backend that builds paths from them must escape them.
    book.claim_pool(POOL, "h1/aaaa", exclusive=False)
    book.claim_pool(POOL6, "h1/bbbb", exclusive=False)
    book.claim_pool("10.60.0.0/25", "h1/cccc", exclusive=False)
    assert book.reserve_address(POOL, "gateway", "10.60.0.1") is None
    assert book.reserve_address(POOL6, "fd00:60::1", "h1/container-a b") is None
    assert book.reserve_address("10.60.0.0/25", "10.60.0.1", "h2/container-3") is None
    assert book.reserve_address(POOL, "10.60.0.1", "gateway") is None
    assert book.reserved_addresses(POOL) == {"gateway": "10.60.0.1", "10.60.0.1": "gateway"}
    assert book.reserved_addresses(POOL6) == {"fd00:60::1": "h1/container-a b"}
    assert book.reserved_addresses("10.60.0.0/25") == {"10.60.0.1": "h2/container-3"}
    assert book.pool_holders("10.60.0.0") == set() and book.reserved_addresses("10.60.0.0") == {}
    book.release_pool(POOL, "h1/aaaa")
    assert book.reserved_addresses(POOL) == {} and len(book.reserved_addresses("10.60.0.0/25")) == 1


def test_book_release_pool_without_holders_forgets_its_addresses(book: AddressBook) -> None:
    assert book.reserve_address(POOL, "10.60.0.9", "h1/container-1") is None
    book.release_pool(POOL, "h1/aaaa")
    assert book.reserved_addresses(POOL) == {}


def test_book_concurrent_reservations_never_share_an_address(book: AddressBook) -> None:
    book.claim_pool(POOL, "h1/aaaa", exclusive=False)
    start = threading.Barrier(20)
    won: dict[str, str] = {}
    errors: list[Exception] = []

    def reserve(index: int) -> None:
        holder = f"h{index % 3}/container-{index}"
        start.wait()
        try:
            for last_octet in range(1, 255):  # what the IPAM does: the lowest address it can win
                address = f"10.60.0.{last_octet}"
                if book.reserve_address(POOL, address, holder) is None:
                    won[holder] = address
                    return
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=reserve, args=(index,)) for index in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(won) == 20
    assert sorted(won.values()) == sorted(f"10.60.0.{octet}" for octet in range(1, 21))
    assert book.reserved_addresses(POOL) == {address: holder for holder, address in won.items()}


def test_book_concurrent_exclusive_claims_never_share_a_pool(book: AddressBook) -> None:
    start = threading.Barrier(20)
    won: dict[str, str] = {}

    def claim(index: int) -> None:
        holder = f"h{index}/{index:04x}"
        start.wait()
        for third_octet in range(0, 256):
            pool = f"10.200.{third_octet}.0/24"
            if book.claim_pool(pool, holder, exclusive=True):
                won[holder] = pool
                return

    threads = [threading.Thread(target=claim, args=(index,)) for index in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 20 and len(set(won.values())) == 20
    assert all(book.pool_holders(pool) == {holder} for holder, pool in won.items())


def test_sqlite_address_book_survives_reopen_and_is_shared_by_connections(tmp_path: Path) -> None:
    first = SqliteStore(str(tmp_path / "state.db"))
    second = SqliteStore(str(tmp_path / "state.db"))  # e.g. the CLI next to the plugin
    assert first.claim_pool(POOL, "h1/aaaa", exclusive=True) is True
    assert second.claim_pool(POOL, "h2/bbbb", exclusive=True) is False
    assert first.reserve_address(POOL, "10.60.0.2", "h1/container-1") is None
    assert second.reserve_address(POOL, "10.60.0.2", "h1/container-2") == "h1/container-1"
    first.close()
    second.close()
    reopened = SqliteStore(str(tmp_path / "state.db"))
    assert reopened.pool_holders(POOL) == {"h1/aaaa"}
    assert reopened.reserved_addresses(POOL) == {"10.60.0.2": "h1/container-1"}
    reopened.close()


# -- state that vanishes or is replaced (issue #12) ---------------------------------------------------------------


def test_pending_networks_until_confirmed(store: Store) -> None:
    store.add_network(network("a" * 64, 5), pending_since=100.0)
    store.add_network_with_free_vni(lambda vni: network("b" * 64, vni), 10, 20, pending_since=200.0)
    store.add_network(network("e" * 64, 7))
    assert store.pending_networks() == {"a" * 64: 100.0, "b" * 64: 200.0}
    store.confirm_network("a" * 64)
    store.delete_network("b" * 64)
    assert store.pending_networks() == {}
    assert {n.network_id for n in store.list_networks()} == {"a" * 64, "e" * 64}


def test_every_store_checks_that_it_can_write(store: Store) -> None:
    assert store.check()
    assert store.restore_file() is None  # nothing amiss


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_sqlite_state_is_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "lib" / "vxlanpy"
    store = open_store(f"sqlite://{state_dir}/state.db", str(state_dir))
    store.add_network(network("a" * 64, 5))  # a write: the WAL files exist now
    assert mode(state_dir) == 0o700
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        assert mode(state_dir / name) == 0o600, name
    store.close()


def test_sqlite_tightens_an_older_install(tmp_path: Path) -> None:
    state_dir = tmp_path / "vxlanpy"
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)
    (state_dir / "state.db").touch(mode=0o644)
    (state_dir / "state.db").chmod(0o644)
    store = open_store(f"sqlite://{state_dir}/state.db", str(state_dir))
    assert mode(state_dir) == 0o700 and mode(state_dir / "state.db") == 0o600
    store.close()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    other = open_store(f"sqlite://{shared}/state.db", str(state_dir))  # not the state dir: left as it is
    assert mode(shared) == 0o755 and mode(shared / "state.db") == 0o600
    other.close()


def deleted(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_sqlite_refuses_writes_to_a_deleted_file_and_recover_writes_it_back(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(str(path))
    store.add_network(network("a" * 64, 5))
    deleted(path)
    with pytest.raises(StoreError, match=r"state.db was deleted while the plugin ran: writes are refused.*recover"):
        store.add_network(network("b" * 64, 6))
    with pytest.raises(StoreError, match="was deleted"):
        store.check()
    assert [n.network_id for n in store.list_networks()] == ["a" * 64]  # reads still see the plugin's state
    assert "would write" in (store.restore_file(dry_run=True) or "") and not path.exists()
    assert "written back" in (store.restore_file() or "")
    store.add_network(network("b" * 64, 6))
    assert store.check()
    store.close()
    reopened = SqliteStore(str(path))
    assert [n.network_id for n in reopened.list_networks()] == ["a" * 64, "b" * 64]
    assert mode(path) == 0o600
    reopened.close()


def test_sqlite_refuses_writes_to_a_replaced_file_and_keeps_the_replacement(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(str(path))
    store.add_network(network("a" * 64, 5))
    deleted(path)
    restored = SqliteStore(str(path))  # e.g. a bad restore: an empty database in its place
    restored.close()
    with pytest.raises(StoreError, match="was replaced by another file while the plugin ran"):
        store.put_endpoint(Endpoint("c" * 64, "a" * 64, "02:42:0a:00:00:02"))
    message = store.restore_file() or ""
    assert "kept as" in message
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("state.db.replaced-") and p.suffix != ".db-wal"]
    assert kept, list(tmp_path.iterdir())
    store.close()
    assert [n.network_id for n in SqliteStore(str(path)).list_networks()] == ["a" * 64]


def test_sqlite_check_reports_a_read_only_database(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    assert "writable" in store.check()
    store._db.execute("PRAGMA query_only = ON")  # what a read-only file or directory does to every write
    with pytest.raises(StoreError, match="readonly database; the file or its directory is read-only"):
        store.check()
    store.close()
