"""The WireGuard mesh of encrypted networks (encryption.WireGuardMesh) on a real throwaway etcd, with an in-memory
WireGuard: tunnel addresses, the published record, the peers watch, rotation, release, and the private key kept
off etcd and every answer."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vxlanpy.cluster import EtcdCluster
from vxlanpy.dataplane.base import Underlay
from vxlanpy.encryption import WireGuardMesh
from vxlanpy.encryption_base import (
    BACKEND_USERSPACE,
    NO_WIREGUARD,
    WireGuardPeer,
    WireGuardState,
)
from vxlanpy.errors import Conflict, DataplaneError, StoreError
from vxlanpy.models import IPAddress
from vxlanpy.nodes import Nodes
from vxlanpy.operator.views import node_table
from vxlanpy.store.etcd import EtcdStore
from vxlanpy.store.etcd_kv import EtcdConfig, EtcdKV

from ..etcd_server import EtcdServer
from .test_cluster import eventually


def _public_of(private: str) -> str:
    return base64.b64encode(hashlib.sha256(private.encode()).digest()).decode()


@dataclass
class FakeInterface:
    public_key: str
    listen_port: int
    address: IPAddress
    prefix_len: int
    mtu: int
    peers: dict[str, WireGuardPeer] = field(default_factory=dict)


class FakeWireGuard:
    """encryption_base.WireGuard in memory: keys are files (as the real one's), interfaces and peers are dicts."""

    def __init__(self, backend: str | None = BACKEND_USERSPACE) -> None:
        self.available = backend
        self.interfaces: dict[str, FakeInterface] = {}
        self.keepalives: list[int] = []

    def backend(self) -> str:
        if self.available is None:
            raise DataplaneError(NO_WIREGUARD)
        return self.available

    def generate_key(self, path: Path) -> str:
        private = base64.b64encode(secrets.token_bytes(32)).decode()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(private + "\n")
        return _public_of(private)

    def public_key(self, path: Path) -> str:
        return _public_of(path.read_text().strip())

    def ensure_interface(
        self, name: str, private_key: Path, listen_port: int, address: IPAddress, prefix_len: int, mtu: int
    ) -> str:
        backend = self.backend()
        current = self.interfaces.get(name)
        peers = current.peers if current is not None else {}
        self.interfaces[name] = FakeInterface(
            self.public_key(private_key), listen_port, address, prefix_len, mtu, peers
        )
        return backend

    def set_private_key(self, name: str, private_key: Path) -> None:
        self.interfaces[name].public_key = self.public_key(private_key)

    def sync_peers(self, name: str, peers: list[WireGuardPeer], keepalive: int = 25) -> None:
        self.interfaces[name].peers = {peer.public_key: peer for peer in peers}
        self.keepalives.append(keepalive)

    def state(self, name: str) -> WireGuardState | None:
        interface = self.interfaces.get(name)
        if interface is None:
            return None
        return WireGuardState(self.backend(), name, interface.public_key, interface.listen_port, dict(interface.peers))

    def remove_interface(self, name: str) -> None:
        self.interfaces.pop(name, None)


class RecordingKV(EtcdKV):
    """Every value written to etcd, to search them for the private key."""

    written: list[str]

    def put(self, key: str, value: str, lease: int = 0) -> None:
        self.written.append(value)
        super().put(key, value, lease)

    def create(self, key: str, value: str, lease: int = 0) -> str | None:
        self.written.append(value)
        return super().create(key, value, lease)


@dataclass
class Host:
    name: str
    kv: RecordingKV
    cluster: EtcdCluster
    wireguard: FakeWireGuard
    mesh: WireGuardMesh
    state_dir: Path

    @property
    def interface(self) -> FakeInterface:
        return self.wireguard.interfaces["vxlanpy-wg"]

    def peer_keys(self) -> set[str]:
        interface = self.wireguard.interfaces.get("vxlanpy-wg")
        return set(interface.peers) if interface is not None else set()

    def private_key(self) -> str:
        return (self.state_dir / "wireguard.key").read_text().strip()


@pytest.fixture
def hosts(etcd_server: EtcdServer, tmp_path: Path) -> Iterator[Callable[..., Host]]:
    prefix = f"/test-{uuid.uuid4().hex[:8]}"
    made: list[Host] = []

    def make(
        name: str,
        address: str = "192.0.2.1",
        subnet: str = "10.255.0.0/16",
        wireguard: FakeWireGuard | None = None,
        watch: bool = True,
    ) -> Host:
        kv = RecordingKV(EtcdConfig.from_url(etcd_server.url, prefix=prefix, timeout=2))
        kv.written = []
        cluster = EtcdCluster(kv, EtcdStore(kv, name), lease_ttl=5)
        wireguard = wireguard or FakeWireGuard()
        state_dir = tmp_path / name
        state_dir.mkdir(exist_ok=True)
        underlay = Underlay("eth0", 1500, (ipaddress.ip_address(address),))
        mesh = WireGuardMesh(kv, cluster, wireguard, name, state_dir, lambda: underlay, subnet=subnet, watch_idle=1.0)
        if watch:
            mesh.start()
            assert mesh.synced.wait(5)
        made.append(Host(name, kv, cluster, wireguard, mesh, state_dir))
        return made[-1]

    yield make
    for host in made:
        assert set(host.mesh.stop(3)) <= {"vxlanpy-wg-watch"}  # a watch on an idle stream ends by itself


def two_hosts(hosts: Callable[..., Host]) -> tuple[Host, Host]:
    """node-a and node-b, each with its interface up and the other as its peer."""
    a = hosts("node-a", address="192.0.2.1")
    b = hosts("node-b", address="192.0.2.2")
    a.mesh.ensure()
    b.mesh.ensure()
    assert eventually(lambda: a.peer_keys() == {b.interface.public_key})
    assert eventually(lambda: b.peer_keys() == {a.interface.public_key})
    return a, b


def records(host: Host) -> dict[str, dict[str, Any]]:
    prefix = host.kv.key("wg", "peers", "")
    return {item.key.removeprefix(prefix): json.loads(item.value) for item in host.kv.range(prefix)[0]}


# -- tunnel addresses ----------------------------------------------------------------------------------------------


def test_tunnel_addresses_are_the_first_free_ones_unique_between_hosts_and_kept_across_restarts(
    hosts: Callable[..., Host],
) -> None:
    a = hosts("node-a", watch=False)
    b = hosts("node-b", watch=False)
    assert str(a.mesh.tunnel().address) == "10.255.0.1"
    assert str(b.mesh.tunnel().address) == "10.255.0.2"
    assert a.mesh.tunnel().interface == "vxlanpy-wg" and a.mesh.tunnel().port == 4790
    # a restart of node-a (a new process) finds its address in etcd, not the next free one
    again = hosts("node-a", watch=False)
    assert str(again.mesh.tunnel().address) == "10.255.0.1"
    held = {item.key.rsplit("/", 1)[-1]: item for item in a.kv.range(a.kv.key("wg", "addresses", ""))[0]}
    assert {address: item.value for address, item in held.items()} == {"10.255.0.1": "node-a", "10.255.0.2": "node-b"}
    assert all(item.lease == 0 for item in held.values())  # kept when the host's lease expires


def test_a_clash_with_another_host_claiming_the_same_address_moves_on_to_the_next(hosts: Callable[..., Host]) -> None:
    a = hosts("node-a", watch=False)
    b = hosts("node-b", watch=False)
    scan = a.kv.range

    def racing_scan(prefix: str, keys_only: bool = False) -> Any:
        seen = scan(prefix, keys_only)  # node-b claims .1 right after our scan
        b.mesh.tunnel()
        return seen

    a.kv.range = racing_scan  # type: ignore[method-assign]
    assert str(a.mesh.tunnel().address) == "10.255.0.2"
    assert str(b.mesh.tunnel().address) == "10.255.0.1"


def test_an_exhausted_subnet_is_refused_with_what_to_do(hosts: Callable[..., Host]) -> None:
    small = "10.255.9.0/30"  # two host addresses
    for name in ("node-a", "node-b"):
        hosts(name, subnet=small, watch=False).mesh.tunnel()
    with pytest.raises(Conflict) as refused:
        hosts("node-c", subnet=small, watch=False).mesh.tunnel()
    assert "no free tunnel address left in VXLANPY_WG_SUBNET=10.255.9.0/30" in refused.value.message
    assert "vxlanpy node rm" in refused.value.message


def test_an_ipv6_tunnel_subnet(hosts: Callable[..., Host]) -> None:
    a = hosts("node-a", address="2001:db8::1", subnet="fd00:255::/64")
    a.mesh.ensure()
    assert str(a.mesh.tunnel().address) == "fd00:255::1"
    assert a.interface.prefix_len == 64 and a.interface.mtu == 1500 - 80  # an IPv6 underlay's WireGuard overhead
    assert records(a)["node-a"]["endpoint_address"] == "2001:db8::1"


# -- ensure, the record, the private key ---------------------------------------------------------------------------


def test_ensure_brings_the_interface_up_and_publishes_the_record_under_the_lease(hosts: Callable[..., Host]) -> None:
    a = hosts("node-a", address="192.0.2.1")
    a.mesh.ensure()
    key_file = a.state_dir / "wireguard.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    interface = a.interface
    assert (str(interface.address), interface.prefix_len, interface.listen_port, interface.mtu) == (
        "10.255.0.1",
        16,
        51820,
        1500 - 60,
    )
    record = records(a)["node-a"]
    assert record == {
        "public_key": interface.public_key,
        "tunnel": "10.255.0.1",
        "endpoint_address": "192.0.2.1",
        "endpoint_port": 51820,
    }
    (item,) = a.kv.range(a.kv.key("wg", "peers", "node-a"))[0]
    assert item.lease == a.cluster.lease() != 0
    # a second ensure (every create, every reconciliation) keeps the key
    private = a.private_key()
    a.mesh.ensure()
    assert a.private_key() == private and a.interface.public_key == interface.public_key


def test_the_private_key_never_reaches_etcd_an_answer_or_the_log(hosts: Callable[..., Host], caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    a, b = two_hosts(hosts)
    privates = [a.private_key()]
    rotated = a.mesh.rotate_key()
    privates.append(a.private_key())
    assert privates[0] != privates[1]
    answers = json.dumps([rotated, a.mesh.status(), b.mesh.status()])
    everything = [item.value for item in a.kv.range(a.kv.key(""))[0]]
    assert a.kv.written and b.kv.written
    assert "WireGuard key rotated" in caplog.text
    for private in privates:
        assert private not in answers and private not in caplog.text
        for value in [*a.kv.written, *b.kv.written, *everything]:
            assert private not in value


def test_a_host_without_wireguard_fails_ensure_with_what_to_install(hosts: Callable[..., Host]) -> None:
    a = hosts("node-a", wireguard=FakeWireGuard(backend=None))
    with pytest.raises(DataplaneError) as failed:
        a.mesh.ensure()
    assert "wireguard-go" in failed.value.message and "wireguard-tools" in failed.value.message
    assert records(a) == {}  # nothing published for a host that cannot take the traffic
    status = a.mesh.status()
    assert status["backend"] is None and status["backend_error"] == NO_WIREGUARD and status["up"] is False


# -- the peers watch -----------------------------------------------------------------------------------------------


def test_hosts_become_each_others_peers_and_a_released_host_is_dropped(hosts: Callable[..., Host]) -> None:
    a, b = two_hosts(hosts)
    peer = a.interface.peers[b.interface.public_key]
    assert (str(peer.endpoint_address), peer.endpoint_port, str(peer.tunnel)) == ("192.0.2.2", 51820, "10.255.0.2")
    # A host that joins sets its peers without keepalive for JOIN_SECONDS, so it starts no handshake: the hosts
    # there before it start them, and two handshakes never cross.  Then its watch turns the keepalives on.
    assert a.wireguard.keepalives[0] == 0 and b.wireguard.keepalives[0] == 0
    assert eventually(lambda: a.wireguard.keepalives[-1] == b.wireguard.keepalives[-1] == 25, within=10)
    c = hosts("node-c", address="192.0.2.3")
    c.mesh.ensure()  # a host that joins is added everywhere; it finds the others at once
    assert c.peer_keys() == {a.interface.public_key, b.interface.public_key}
    assert eventually(lambda: len(a.peer_keys()) == 2 and len(b.peer_keys()) == 2)
    # a host whose last encrypted network goes
    b.mesh.release_if_unused(lambda: True)
    assert "vxlanpy-wg" in b.wireguard.interfaces and "node-b" in records(a)  # still in use: nothing changes
    b.mesh.release_if_unused(lambda: False)
    assert "vxlanpy-wg" not in b.wireguard.interfaces and "node-b" not in records(a)
    assert eventually(lambda: a.peer_keys() == {c.interface.public_key})
    assert eventually(lambda: c.peer_keys() == {a.interface.public_key})
    # its address stays allocated for when it comes back
    assert str(b.mesh.tunnel().address) == "10.255.0.2"


def test_a_host_whose_lease_ends_is_dropped_and_a_republish_puts_the_record_back(hosts: Callable[..., Host]) -> None:
    a, b = two_hosts(hosts)
    b.kv.revoke(b.cluster.lease())  # as when its lease expires, or `node rm` revokes it
    assert eventually(lambda: a.peer_keys() == set())
    with b.cluster._lease_lock:  # the cluster learns the lease is gone (its keepalive does so) ...
        b.cluster._lease = 0
    b.cluster.republish()  # ... and publishes everything again under a new one, the WireGuard record included
    assert records(a)["node-b"]["public_key"] == b.interface.public_key
    assert eventually(lambda: a.peer_keys() == {b.interface.public_key})


def test_rotation_switches_locally_then_the_others_replace_the_peer(hosts: Callable[..., Host]) -> None:
    a, b = two_hosts(hosts)
    old = a.interface.public_key
    assert eventually(lambda: b.peer_keys() == {old})
    result = a.mesh.rotate_key()
    assert result == {"public_key": a.interface.public_key, "previous": old} and result["public_key"] != old
    assert a.wireguard.public_key(a.state_dir / "wireguard.key") == result["public_key"]
    assert (a.state_dir / "wireguard.key").stat().st_mode & 0o777 == 0o600
    assert sorted(path.name for path in a.state_dir.iterdir()) == ["wireguard.key"]  # no temporary file left
    assert records(b)["node-a"]["public_key"] == result["public_key"]
    assert eventually(lambda: b.peer_keys() == {result["public_key"]})
    peer = b.interface.peers[result["public_key"]]
    assert str(peer.tunnel) == "10.255.0.1"  # the same host, the same tunnel address


def test_rotation_is_refused_where_the_interface_is_not_up(hosts: Callable[..., Host]) -> None:
    a = hosts("node-a", watch=False)
    with pytest.raises(Conflict) as refused:
        a.mesh.rotate_key()
    assert "not up on this host" in refused.value.message and "vxlanpy doctor" in refused.value.message
    assert not (a.state_dir / "wireguard.key").exists()


def test_a_malformed_record_is_ignored_with_a_warning(hosts: Callable[..., Host], caplog: Any) -> None:
    a = hosts("node-a")
    a.mesh.ensure()
    caplog.set_level(logging.WARNING, logger="vxlanpy.encryption")
    a.kv.put(a.kv.key("wg", "peers", "node-x"), json.dumps({"public_key": "short", "tunnel": "10.255.0.9"}))
    b = hosts("node-b", address="192.0.2.2")
    b.mesh.ensure()
    assert eventually(lambda: a.peer_keys() == {b.interface.public_key})
    assert "ignoring malformed key" in caplog.text and "node-x" in caplog.text
    assert b.peer_keys() == {a.interface.public_key}


def test_status_compares_the_interface_with_etcd(hosts: Callable[..., Host]) -> None:
    a, b = two_hosts(hosts)
    status = a.mesh.status()
    assert status["backend"] == BACKEND_USERSPACE and status["interface_present"] and status["up"]
    assert (status["tunnel"], status["listen_port"], status["public_key"]) == (
        "10.255.0.1",
        51820,
        a.interface.public_key,
    )
    assert status["underlay"] == {"dev": "eth0", "mtu": 1500} and status["overhead"] == 60
    assert [peer["endpoint"] for peer in status["peers"]] == ["192.0.2.2:51820"]
    assert [row["host"] for row in status["expected"]] == ["node-b"]
    assert status["missing"] == [] and status["extra"] == []
    a.interface.peers = {"X" * 43 + "=": a.interface.peers[b.interface.public_key]}  # a peer changed behind our back
    status = a.mesh.status()
    assert status["missing"] == ["node-b"] and status["extra"] == ["X" * 43 + "="]


def test_node_ls_shows_the_tunnel_address_and_node_rm_releases_it_and_drops_the_peer(
    hosts: Callable[..., Host],
) -> None:
    a, b = two_hosts(hosts)
    nodes = Nodes(a.kv, "node-a", "host-a")
    rows = {row["id"]: row for row in nodes.listing()}
    assert rows["node-a"]["tunnel"] == "10.255.0.1" and rows["node-b"]["tunnel"] == "10.255.0.2"
    assert "wg:10.255.0.2" in node_table(list(rows.values()), 0.0)
    b.mesh.stop()  # gone for good
    result = nodes.remove("node-b", force=False)
    assert result["keys"] >= 2
    left = [(item.key, item.value) for item in a.kv.range(a.kv.key("wg", ""))[0]]
    assert not [pair for pair in left if "node-b" in pair[0] or pair[1] == "node-b"], left
    assert eventually(lambda: a.peer_keys() == set())
    assert [row["id"] for row in nodes.listing()] == ["node-a"]
    c = hosts("node-c", address="192.0.2.3", watch=False)
    assert str(c.mesh.tunnel().address) == "10.255.0.2"  # node-b's address is free again


def test_a_broken_watch_is_followed_by_a_full_resync(hosts: Callable[..., Host]) -> None:
    a = hosts("node-a", address="192.0.2.1", watch=False)
    watch = a.kv.watch
    broken: list[int] = []

    def breaking_watch(prefix: str, start_revision: int, idle_timeout: float) -> Any:
        if not broken:  # etcd goes away once, while node-b joins
            broken.append(start_revision)
            b.mesh.ensure()
            raise StoreError("etcd at 127.0.0.1 closed the watch stream")
        return watch(prefix, start_revision, idle_timeout)

    a.kv.watch = breaking_watch  # type: ignore[method-assign]
    b = hosts("node-b", address="192.0.2.2")
    a.mesh.ensure()
    a.mesh.start()
    assert eventually(lambda: bool(broken) and "vxlanpy-wg" in b.wireguard.interfaces, within=5)
    assert eventually(lambda: a.peer_keys() == {b.interface.public_key}, within=5)  # the resync found node-b
    assert a.mesh.synced.is_set()
