"""Host identity (issue 13): chosen without configuration, kept across restarts and upgrades, refused when another
live host holds it; `vxlanpy node ls` / `node rm` on a real throwaway etcd with fake kernels, and on the fakes."""

from __future__ import annotations

import ipaddress
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.test_cluster import eventually, net
from vxlanpy.cluster import EtcdCluster
from vxlanpy.config import Settings
from vxlanpy.dataplane.base import Underlay
from vxlanpy.dataplane.fake import FakeFirewall, FakeLinks
from vxlanpy.driver import Driver
from vxlanpy.errors import InvalidOption
from vxlanpy.ipam import GLOBAL_ADDRESS_SPACE, Ipam
from vxlanpy.models import Subnet
from vxlanpy.nodes import IDENTITY_FILE, IdentityConflict, Nodes, choose_identity, label_of
from vxlanpy.store.etcd import EtcdConfig, EtcdKV, EtcdStore
from vxlanpy.wiring import assemble, identity_of, local_addresses

from ..etcd_server import EtcdServer
from .cli_fakes import CliHarness
from .conftest import Harness

SUBNET = (Subnet(ipaddress.ip_network("10.70.0.0/24"), ipaddress.ip_interface("10.70.0.1/24")),)


# -- choosing the identity --------------------------------------------------------------------------------------


def never(name: str) -> bool:
    return False


def test_hosts_sharing_a_hostname_get_distinct_identities_kept_in_the_state_dir(tmp_path: Path) -> None:
    first = choose_identity(None, "node", tmp_path / "a", never)
    second = choose_identity(None, "node", tmp_path / "b", never)
    assert re.fullmatch(r"node-[0-9a-f]{8}", first.name) and re.fullmatch(r"node-[0-9a-f]{8}", second.name)
    assert first.name != second.name and first.source == "new"
    kept = tmp_path / "a" / IDENTITY_FILE
    assert kept.read_text() == first.name + "\n" and kept.stat().st_mode & 0o777 == 0o600
    again = choose_identity(None, "renamed", tmp_path / "a", never)  # a restart, even after a rename
    assert again.name == first.name and again.source == str(kept)


def test_vxlanpy_host_overrides_and_is_checked(tmp_path: Path) -> None:
    assert choose_identity("web1", "node", tmp_path, never).name == "web1"
    assert not (tmp_path / IDENTITY_FILE).exists()  # an explicit identity is not written down
    with pytest.raises(InvalidOption, match="VXLANPY_HOST='a/b' is not a valid host identity"):
        choose_identity("a/b", "node", tmp_path, never)


def test_a_damaged_identity_file_is_refused_saying_where(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILE).write_text("../etc\n")
    with pytest.raises(InvalidOption, match=f"{tmp_path / IDENTITY_FILE}='../etc' is not a valid host identity"):
        choose_identity(None, "node", tmp_path, never)


def test_upgrade_keeps_the_hostname_when_etcd_holds_state_under_it(tmp_path: Path) -> None:
    asked: list[str] = []

    def has_state(name: str) -> bool:
        asked.append(name)
        return True

    identity = choose_identity(None, "web1", tmp_path, has_state)
    assert identity.name == "web1" and asked == ["web1"] and "already holds" in identity.source
    assert (tmp_path / IDENTITY_FILE).read_text() == "web1\n"  # and it stays so once etcd has moved on


def test_upgrade_with_etcd_unreachable_goes_by_the_lease_file_of_the_earlier_run(tmp_path: Path) -> None:
    fresh, upgraded = tmp_path / "fresh", tmp_path / "upgraded"
    upgraded.mkdir()
    (upgraded / "etcd-lease").write_text("1234")
    assert choose_identity(None, "web1", upgraded, lambda name: None).name == "web1"
    assert choose_identity(None, "web1", fresh, lambda name: None).name.startswith("web1-")


def test_hostnames_are_made_fit_for_an_identity() -> None:
    assert label_of("my host.example!") == "my-host.example"
    assert label_of("__") == "host" and len(label_of("x" * 200)) == 50


# -- on etcd ----------------------------------------------------------------------------------------------------


class Host:
    """A plugin's cluster side on fake kernels; `start` claims the identity first, as the plugin's Lifecycle does."""

    def __init__(self, url: str, prefix: str, identity: str, address: str, hostname: str = "node") -> None:
        self.kv = EtcdKV(EtcdConfig.from_url(url, prefix=prefix, timeout=2))
        self.store = EtcdStore(self.kv, identity)
        self.links = FakeLinks({"eth0": Underlay("eth0", 1500, (ipaddress.ip_address(address),))})
        self.nodes = Nodes(self.kv, identity, hostname)
        self.cluster = EtcdCluster(
            self.kv,
            self.store,
            lease_ttl=2,
            nodes=self.nodes,
            local_addresses=lambda: local_addresses(self.links, self.store, None),
        )
        self.driver = Driver(
            self.store, self.links, FakeFirewall(), vni_range=(300, 310), cluster=self.cluster, port_is_free=bool
        )
        self.ipam = Ipam(self.store, host=identity)

    def start(self) -> Host:
        self.cluster.claim_identity()
        self.cluster.start()
        assert self.cluster.synced.wait(5)
        return self


@pytest.fixture
def cluster(etcd_server: EtcdServer) -> Iterator[Callable[..., Host]]:
    prefix = f"/test-{uuid.uuid4().hex[:8]}"
    made: list[Host] = []

    def make(identity: str, address: str, hostname: str = "node") -> Host:
        made.append(Host(etcd_server.url, prefix, identity, address, hostname))
        return made[-1]

    yield make
    for host in made:
        host.cluster.stop()


def snapshot(kv: EtcdKV) -> dict[str, tuple[str, int]]:
    """Every key with its value and lease; of the node records, all but `seen`, which the owner refreshes."""

    def value(key: str, raw: str) -> str:
        return json.dumps({**json.loads(raw), "seen": None}) if key.endswith("/node") else raw

    return {item.key: (value(item.key, item.value), item.lease) for item in kv.range(kv.key(""))[0]}


def test_a_second_live_host_with_the_same_identity_is_refused_and_changes_nothing(
    cluster: Callable[..., Host],
) -> None:
    first = cluster("web", "192.0.2.1").start()
    first.driver.create_network(net(1), {"vni": "300"}, SUBNET)
    first.driver.create_endpoint(net(1), net(11), ipaddress.IPv4Interface("10.70.0.2/24"), None, None)
    before = snapshot(first.kv)
    second = cluster("web", "192.0.2.2")
    with pytest.raises(IdentityConflict) as refused:
        second.start()
    message = refused.value.message
    assert "host identity 'web' is already held by a live vxlanpy with VTEP 192.0.2.1" in message
    assert "this host's VTEP is 192.0.2.2" in message and "unset VXLANPY_HOST" in message
    assert snapshot(first.kv) == before
    with pytest.raises(IdentityConflict):  # and it publishes nothing afterwards either
        second.cluster.lease()


def test_a_duplicate_found_once_etcd_answers_stops_the_plugin_and_writes_nothing(
    cluster: Callable[..., Host],
) -> None:
    first = cluster("web", "192.0.2.1").start()
    first.driver.create_network(net(1), {"vni": "304"}, SUBNET)
    before = snapshot(first.kv)
    second = cluster("web", "192.0.2.2")  # etcd was out of reach at its start: the watch thread claims
    refusals: list[str] = []
    second.cluster.on_refused = refusals.append
    second.cluster.start()
    assert eventually(lambda: bool(refusals))
    assert "VTEP 192.0.2.1" in refusals[0] and "this host's VTEP is 192.0.2.2" in refusals[0]
    assert not second.cluster.synced.is_set() and snapshot(first.kv) == before


def test_an_earlier_run_of_the_same_host_is_not_a_duplicate(cluster: Callable[..., Host]) -> None:
    first = cluster("web", "192.0.2.1").start()
    first.cluster.stop()  # kill -9 without its lease file: the old lease is still alive for a while
    again = cluster("web", "192.0.2.1").start()
    assert again.cluster.refused is None


def test_a_live_host_of_an_earlier_version_is_detected_by_its_vteps(cluster: Callable[..., Host]) -> None:
    old = cluster("web", "192.0.2.1")
    lease = old.kv.grant(5)
    old.kv.put(old.kv.key("live", "300", "vtep", "web"), "192.0.2.1", lease)  # no nodes/ key: version 0.x
    with pytest.raises(IdentityConflict, match="VTEP 192.0.2.1"):
        cluster("web", "192.0.2.2").start()


def test_identity_of_keeps_the_hostname_of_an_upgraded_host(etcd_server: EtcdServer, tmp_path: Path) -> None:
    prefix = f"/test-{uuid.uuid4().hex[:8]}"
    kv = EtcdKV(EtcdConfig.from_url(etcd_server.url, prefix=prefix, timeout=2))
    kv.put(kv.key("hosts", "legacy", "networks", net(1)), "{}")  # what an earlier version wrote
    settings = Settings(host="legacy", hostname="legacy", state_dir=str(tmp_path / "old"))
    assert identity_of(settings, kv) == "legacy"
    fresh = Settings(host="fresh", hostname="fresh", state_dir=str(tmp_path / "new"))
    assert identity_of(fresh, kv).startswith("fresh-")
    explicit = Settings(host="pinned", hostname="legacy", host_explicit=True, state_dir=str(tmp_path / "x"))
    assert identity_of(explicit, kv) == "pinned"


def test_node_ls_shows_alive_and_expired_hosts_with_what_they_hold(cluster: Callable[..., Host]) -> None:
    a = cluster("node-aaaa", "192.0.2.1", hostname="node").start()
    b = cluster("node-bbbb", "192.0.2.2", hostname="node").start()
    a.driver.create_network(net(1), {"vni": "301"}, SUBNET)
    b.driver.create_network(net(2), {"vni": "301"}, SUBNET)
    b.driver.create_endpoint(net(2), net(12), ipaddress.IPv4Interface("10.70.0.3/24"), None, None)
    rows = {row["id"]: row for row in a.nodes.listing()}
    assert set(rows) == {"node-aaaa", "node-bbbb"}
    assert rows["node-aaaa"]["this_host"] and rows["node-aaaa"]["state"] == "alive"
    assert rows["node-bbbb"] | {"last_seen": 0} == {
        "id": "node-bbbb",
        "hostname": "node",
        "vteps": ["192.0.2.2"],
        "state": "alive",
        "this_host": False,
        "last_seen": 0,
        "networks": 1,
        "endpoints": 1,
        "addresses": ["10.70.0.3"],
    }
    b.cluster.stop()  # the host dies: its lease runs out
    stopped = time.time()
    assert eventually(lambda: a.nodes.listing()[1]["state"] == "expired", within=8)
    gone = a.nodes.listing()[1]
    assert gone["networks"] == 1 and gone["endpoints"] == 1 and gone["addresses"] == []  # claims left with it
    assert stopped - 3 <= gone["expired_at"] <= stopped + 3  # within a TTL of its last refresh


def test_node_rm_refuses_a_live_host_and_removes_a_dead_one_everywhere(cluster: Callable[..., Host]) -> None:
    a = cluster("node-aaaa", "192.0.2.1").start()
    b = cluster("node-bbbb", "192.0.2.2").start()
    a.driver.create_network(net(1), {"vni": "302"}, SUBNET)
    b.driver.create_network(net(2), {"vni": "302"}, SUBNET)
    b.driver.create_endpoint(net(2), net(12), ipaddress.IPv4Interface("10.70.0.3/24"), None, None)
    pool = b.ipam.request_pool(GLOBAL_ADDRESS_SPACE, ipaddress.ip_network("10.71.0.0/24"), None, False, {}).pool_id
    b.ipam.request_address(pool, ipaddress.ip_address("10.71.0.9"))
    assert eventually(lambda: len(a.links.remote_entries(a.store.list_networks()[0])[1]) == 1)
    with pytest.raises(Exception, match=r"host node-bbbb \(hostname node, VTEP 192.0.2.2\) is alive.*--force"):
        a.nodes.remove("node-bbbb", force=False)
    with pytest.raises(Exception, match="node-aaaa is this host"):
        a.nodes.remove("node-aaaa", force=False)
    b.cluster.stop()  # b is still "alive" for up to a TTL; --force does not wait
    started = time.monotonic()
    result = a.nodes.remove("node-bbbb", force=True)
    assert result["forced"] is True and result["keys"] > 0
    assert eventually(lambda: a.links.remote_entries(a.store.list_networks()[0]) == (set(), []), within=3)
    took = time.monotonic() - started
    assert took < 3.0, f"entries of the removed host stayed {took:.2f} s"
    left = [key for key in snapshot(a.kv) if "node-bbbb" in key or "10.71.0" in key]
    assert left == [], left
    assert [row["id"] for row in a.nodes.listing()] == ["node-aaaa"]
    # its address is free again on the segment, and its IPAM pool was forgotten
    a.driver.create_endpoint(net(1), net(11), ipaddress.IPv4Interface("10.70.0.3/24"), None, None)
    assert a.ipam.book.pool_holders(pool) == set()


def test_node_rm_of_an_unknown_or_malformed_host(cluster: Callable[..., Host]) -> None:
    a = cluster("node-aaaa", "192.0.2.1").start()
    with pytest.raises(Exception, match="etcd knows no host 'ghost'"):
        a.nodes.remove("ghost", force=False)
    with pytest.raises(InvalidOption, match="HOST='x/../y' is not a valid host identity"):
        a.nodes.remove("x/../y", force=True)


# -- the CLI ----------------------------------------------------------------------------------------------------


def test_cli_node_ls_and_rm_on_the_single_host_store(harness: Harness) -> None:
    harness.create_network(net(1), generic={"vni": "42"})
    cli = CliHarness(harness)
    table = cli.run("node", "ls")
    assert table.exit_code == 0, table.output
    header, row = table.output.splitlines()
    assert header.split() == ["HOST", "HOSTNAME", "VTEP", "STATE", "NETWORKS", "ENDPOINTS", "ADDRESSES"]
    assert row.split()[0] == "testhost" and "alive (this host)" in row
    listed = json.loads(cli.run("node", "ls", "--json").output)
    assert [node["id"] for node in listed] == ["testhost"] and listed[0]["networks"] == 1
    refused = cli.run("node", "rm", "other")
    assert refused.exit_code == 1
    assert "single-host (SQLite) store, which only ever holds this host" in refused.stderr
    assert "Example" in cli.run("node", "rm", "--help").output


def test_cli_node_ls_and_rm_on_etcd(cluster: Callable[..., Host], harness: Harness) -> None:
    a = cluster("node-aaaa", "192.0.2.1").start()
    b = cluster("node-bbbb", "192.0.2.2").start()
    b.driver.create_network(net(2), {"vni": "303"}, SUBNET)
    cli = CliHarness(harness)
    cli.serve(assemble(a.driver, Settings(host="node-aaaa"), sandboxes=cli.sandboxes))
    lines = cli.run("node", "ls").output.splitlines()
    assert [line.split()[:4] for line in lines[1:]] == [
        ["node-aaaa", "node", "192.0.2.1", "alive"],
        ["node-bbbb", "node", "192.0.2.2", "alive"],
    ]
    refused = cli.run("node", "rm", "node-bbbb")
    assert refused.exit_code == 1 and "is alive" in refused.stderr and "--force" in refused.stderr
    assert cli.run("node", "rm", "bad/name").exit_code == 2
    b.cluster.stop()
    assert eventually(lambda: "expired" in cli.run("node", "ls").output, within=8)
    assert re.search(r"node-bbbb .* expired \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(\d+s ago\)", cli.run("node", "ls").output)
    removed = cli.run("node", "rm", "node-bbbb")
    assert removed.exit_code == 0, removed.stderr
    assert removed.output.startswith("removed host node-bbbb (hostname node): ")
    assert json.loads(cli.run("node", "ls", "--json").output)[0]["id"] == "node-aaaa"


def test_settings_say_whether_vxlanpy_host_was_set() -> None:
    import socket

    assert Settings.from_env({"VXLANPY_HOST": "web1"}).host_explicit is True
    plain = Settings.from_env({})
    assert plain.host_explicit is False and plain.hostname == plain.host == socket.gethostname()
