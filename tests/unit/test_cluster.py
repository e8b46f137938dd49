"""Multi-host mode on a real (throwaway, unprivileged) etcd with fake kernels: two "hosts" in one process."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vxlanpy.cluster import EtcdCluster
from vxlanpy.dataplane.base import RemoteEndpoint, Underlay
from vxlanpy.dataplane.fake import FakeFirewall, FakeLinks
from vxlanpy.driver import Driver
from vxlanpy.errors import Conflict, InvalidOption, StoreError
from vxlanpy.models import IPAddress, Network, NetworkConfig, Subnet
from vxlanpy.store.etcd import EtcdStore
from vxlanpy.store.etcd_kv import EtcdConfig, EtcdKV, KeyValue
from vxlanpy.store.memory import MemoryStore

from ..etcd_server import EtcdServer

SUBNET = (Subnet(ipaddress.ip_network("10.60.0.0/24"), ipaddress.ip_interface("10.60.0.1/24")),)


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> EtcdServer:
    return etcd_server


def underlay(address: str) -> dict[str, Underlay]:
    return {"eth0": Underlay("eth0", 1500, (ipaddress.ip_address(address),))}


class Host:
    def __init__(
        self,
        url: str,
        prefix: str,
        name: str,
        address: str,
        lease_file: Path | None = None,
        links: FakeLinks | None = None,
    ) -> None:
        self.kv = EtcdKV(EtcdConfig.from_url(url, prefix=prefix, timeout=2))
        self.store = EtcdStore(self.kv, name)
        self.links = links or FakeLinks(underlay(address))
        self.firewall = FakeFirewall()
        self.cluster = EtcdCluster(self.kv, self.store, lease_ttl=2, lease_file=lease_file)
        self.resumed = self.cluster.resume_lease()
        self.driver = Driver(
            self.store,
            self.links,
            self.firewall,
            vni_range=(300, 310),
            cluster=self.cluster,
            port_is_free=lambda mapping: True,
        )
        self.cluster.start()
        assert self.cluster.synced.wait(5)


@pytest.fixture
def hosts(etcd: EtcdServer) -> Iterator[Callable[..., Host]]:
    prefix = f"/test-{uuid.uuid4().hex[:8]}"
    made: list[Host] = []

    def make(name: str, address: str, lease_file: Path | None = None, links: FakeLinks | None = None) -> Host:
        made.append(Host(etcd.url, prefix, name, address, lease_file, links))
        return made[-1]

    yield make
    for host in made:
        host.cluster.stop()


def eventually(check: Callable[[], bool], within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def net(n: int) -> str:
    return f"{n:064x}"


def test_endpoints_and_vteps_reach_the_other_host(hosts: Callable[[str, str], Host]) -> None:
    a, b = hosts("ha", "192.0.2.1"), hosts("hb", "192.0.2.2")
    a.driver.create_network(net(1), {"vni": "300"}, SUBNET)
    b.driver.create_network(net(2), {"vni": "300"}, SUBNET)
    a.driver.create_endpoint(net(1), net(11), ipaddress.IPv4Interface("10.60.0.2/24"), None, None)

    def b_sees_a() -> bool:
        flood, remotes = b.links.remote_entries(b.store.list_networks()[0])
        return flood == {ipaddress.ip_address("192.0.2.1")} and [r.mac for r in remotes] == ["02:42:0a:3c:00:02"]

    assert eventually(b_sees_a, within=1.0)
    _, remotes = b.links.remote_entries(b.store.list_networks()[0])
    assert remotes[0].vtep == ipaddress.ip_address("192.0.2.1")
    assert remotes[0].addresses == (ipaddress.ip_address("10.60.0.2"),)
    assert b.firewall.vtep_filter == ({4789}, {ipaddress.ip_address("192.0.2.1")})
    assert b.store.list_networks()[0].config.learning is False  # static FDB: learning off by default

    a.driver.delete_endpoint(net(1), net(11))
    assert eventually(lambda: b.links.remote_entries(b.store.list_networks()[0])[1] == [], within=1.0)


def test_a_different_subnet_for_the_same_vni_is_refused(hosts: Callable[[str, str], Host]) -> None:
    a, b = hosts("ha", "192.0.2.1"), hosts("hb", "192.0.2.2")
    a.driver.create_network(net(1), {"vni": "301"}, SUBNET)
    other = (Subnet(ipaddress.ip_network("10.61.0.0/24"), ipaddress.ip_interface("10.61.0.1/24")),)
    with pytest.raises(Conflict, match=r"subnet 10.60.0.0/24 gateway 10.60.0.1/24 \(this host asked for 10.61.0.0/24"):
        b.driver.create_network(net(2), {"vni": "301"}, other)
    assert b.store.list_networks() == [] and b.links.networks == {}


def test_duplicate_address_names_the_host_that_holds_it(hosts: Callable[[str, str], Host]) -> None:
    a, b = hosts("ha", "192.0.2.1"), hosts("hb", "192.0.2.2")
    a.driver.create_network(net(1), {"vni": "302"}, SUBNET)
    b.driver.create_network(net(2), {"vni": "302"}, SUBNET)
    a.driver.create_endpoint(net(1), net(11), ipaddress.IPv4Interface("10.60.0.2/24"), None, None)
    with pytest.raises(Conflict, match="address 10.60.0.2 is already used on host ha"):
        b.driver.create_endpoint(net(2), net(12), ipaddress.IPv4Interface("10.60.0.2/24"), None, None)
    assert b.store.list_endpoints() == [] and b.links.endpoints == {}


def test_vni_is_allocated_cluster_wide(hosts: Callable[[str, str], Host]) -> None:
    a, b = hosts("ha", "192.0.2.1"), hosts("hb", "192.0.2.2")
    first = a.driver.create_network(net(1), {}, SUBNET)
    other = (Subnet(ipaddress.ip_network("10.62.0.0/24"), ipaddress.ip_interface("10.62.0.1/24")),)
    second = b.driver.create_network(net(2), {}, other)
    assert first.vni != second.vni


def test_a_dead_hosts_entries_expire_with_its_lease(hosts: Callable[[str, str], Host]) -> None:
    a, b = hosts("ha", "192.0.2.1"), hosts("hb", "192.0.2.2")
    a.driver.create_network(net(1), {"vni": "303"}, SUBNET)
    b.driver.create_network(net(2), {"vni": "303"}, SUBNET)
    a.driver.create_endpoint(net(1), net(11), ipaddress.IPv4Interface("10.60.0.2/24"), None, None)
    assert eventually(lambda: len(b.links.remote_entries(b.store.list_networks()[0])[1]) == 1)
    a.cluster.stop()  # no more keepalives: as if the host died
    assert eventually(lambda: b.links.remote_entries(b.store.list_networks()[0]) == (set(), []), within=8.0)


def test_static_peer_modes_are_refused_with_etcd(hosts: Callable[[str, str], Host]) -> None:
    a = hosts("ha", "192.0.2.1")
    with pytest.raises(InvalidOption, match="option remote does not apply with an etcd store"):
        a.driver.create_network(net(1), {"remote": "192.0.2.9"}, SUBNET)


def test_unreachable_etcd_fails_fast_and_clearly() -> None:
    kv = EtcdKV(EtcdConfig.from_url("etcd://127.0.0.1:9", timeout=1))
    store = EtcdStore(kv, "ha")
    started = time.monotonic()
    with pytest.raises(StoreError, match="etcd at 127.0.0.1:9 is unreachable"):
        store.list_networks()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("url", ["etcd://", "etcd://host:port", "etcd://h:70000"])
def test_bad_etcd_url(url: str) -> None:
    with pytest.raises(InvalidOption, match="use etcd://HOST:PORT"):
        EtcdConfig.from_url(url)


def test_a_quick_restart_keeps_the_lease_so_other_hosts_keep_the_entries(
    hosts: Callable[..., Host], tmp_path: Path
) -> None:
    lease_file = tmp_path / "etcd-lease"
    a, b = hosts("ha", "192.0.2.1", lease_file), hosts("hb", "192.0.2.2")
    assert a.resumed is False  # nothing to resume on a first start
    a.driver.create_network(net(1), {"vni": "304"}, SUBNET)
    b.driver.create_network(net(2), {"vni": "304"}, SUBNET)
    a.driver.create_endpoint(net(1), net(11), ipaddress.IPv4Interface("10.60.0.2/24"), None, None)
    assert eventually(lambda: len(b.links.remote_entries(b.store.list_networks()[0])[1]) == 1)
    a.cluster.stop()  # kill -9 ...
    again = hosts("ha", "192.0.2.1", lease_file)  # ... and a restart within the lease TTL
    assert again.resumed is True
    seen = []
    deadline = time.monotonic() + 3  # longer than the TTL of 2 s: a new lease would have meant a gap
    while time.monotonic() < deadline:
        seen.append(len(b.links.remote_entries(b.store.list_networks()[0])[1]))
        time.sleep(0.02)
    assert set(seen) == {1}, "host b dropped host a's endpoint during the restart"


def test_removing_a_network_releases_every_address_claim_of_this_host(hosts: Callable[..., Host]) -> None:
    a, b = hosts("ha", "192.0.2.1"), hosts("hb", "192.0.2.2")
    a.driver.create_network(net(1), {"vni": "305"}, SUBNET)
    b.driver.create_network(net(2), {"vni": "305"}, SUBNET)
    a.driver.create_endpoint(net(1), net(11), ipaddress.IPv4Interface("10.60.0.2/24"), None, None)
    # Docker's DeleteEndpoint never reached us (etcd was down, say); then the network is removed
    a.driver.delete_network(net(1))
    b.driver.create_endpoint(net(2), net(12), ipaddress.IPv4Interface("10.60.0.2/24"), None, None)
    assert [e.endpoint_id for e in b.store.list_endpoints()] == [net(12)]


def test_an_endpoint_change_programs_only_that_endpoints_entries(hosts: Callable[[str, str], Host]) -> None:
    a, b = hosts("ha", "192.0.2.1"), hosts("hb", "192.0.2.2")
    a.driver.create_network(net(1), {"vni": "308"}, SUBNET)
    b.driver.create_network(net(2), {"vni": "308"}, SUBNET)
    a.driver.create_endpoint(net(1), net(11), ipaddress.IPv4Interface("10.60.0.2/24"), None, None)
    network = b.store.list_networks()[0]
    assert eventually(lambda: len(b.links.remote_entries(network)[1]) == 1)
    b.links.calls.clear()
    filter_before = b.firewall.vtep_filter

    a.driver.create_endpoint(net(1), net(12), ipaddress.IPv4Interface("10.60.0.3/24"), None, None)
    a.driver.delete_endpoint(net(1), net(11))

    def only_the_second() -> bool:
        return [r.addresses for r in b.links.remote_entries(network)[1]] == [(ipaddress.ip_address("10.60.0.3"),)]

    assert eventually(only_the_second)
    # No whole-segment programming (it dumps the kernel's tables), no firewall rewrite: the VTEPs did not change.
    assert "update_remotes" in b.links.calls
    assert "sync_remotes" not in b.links.calls
    assert b.firewall.vtep_filter == filter_before


def _offline_cluster() -> tuple[EtcdCluster, FakeLinks, Network]:
    """A cluster that only handles events (etcd is never called) and the driver that programs them."""
    network = Network(net(3), NetworkConfig(vni=309, local=ipaddress.ip_address("192.0.2.9")), SUBNET)
    links = FakeLinks()
    links.ensure_network(network)
    store = MemoryStore()
    store.add_network(network)
    kv = EtcdKV(EtcdConfig.from_url("etcd://127.0.0.1:9"))
    cluster = EtcdCluster(kv, EtcdStore(kv, "me"))
    Driver(store, links, FakeFirewall(), cluster=cluster)
    return cluster, links, network


def _event(cluster: EtcdCluster, kind: str, host: str, endpoint: str, mac: str = "", address: str = "") -> Any:
    prefix = cluster.kv.key("live", "")
    value = json.dumps({"mac": mac, "vtep": f"192.0.2.{len(host)}", "addresses": [address] if address else []})
    with cluster._view_lock:
        return cluster._update_view(kind, KeyValue(f"{prefix}309/ep/{host}/{endpoint}", value, 1, 0), prefix)


def test_changes_queued_together_are_programmed_in_one_update() -> None:
    cluster, links, network = _offline_cluster()
    mac1, mac2 = "02:42:0a:3c:00:02", "02:42:0a:3c:00:03"
    batch = [
        _event(cluster, "PUT", "h1", "e1", mac1, "10.60.0.2"),
        _event(cluster, "PUT", "h1", "e2", mac2, "10.60.0.3"),
        _event(cluster, "DELETE", "h1", "e1"),
    ]
    cluster._apply_changes(batch)
    assert links.calls.count("update_remotes") == 1
    assert links.remote_entries(network)[1] == [
        RemoteEndpoint(mac2, ipaddress.ip_address("192.0.2.2"), (ipaddress.ip_address("10.60.0.3"),))
    ]
    # A host putting the same record back (a new lease), or a removal and re-add within one batch: no kernel work.
    links.calls.clear()
    cluster._apply_changes([_event(cluster, "PUT", "h1", "e2", mac2, "10.60.0.3")])
    cluster._apply_changes(
        [_event(cluster, "DELETE", "h1", "e2"), _event(cluster, "PUT", "h1", "e2", mac2, "10.60.0.3")]
    )
    assert links.calls == []


def test_a_mac_another_host_still_publishes_keeps_its_entries() -> None:
    """A container moved from h1 to h22 with its MAC and address: h1's stale record going away must not take
    the entries that now lead to h22."""
    cluster, links, network = _offline_cluster()
    mac = "02:42:0a:3c:00:02"
    cluster._apply_changes([_event(cluster, "PUT", "h1", "e1", mac, "10.60.0.2")])
    cluster._apply_changes([_event(cluster, "PUT", "h22", "e1", mac, "10.60.0.2")])
    cluster._apply_changes([_event(cluster, "DELETE", "h1", "e1")])
    assert links.remote_entries(network)[1] == [
        RemoteEndpoint(mac, ipaddress.ip_address("192.0.2.3"), (ipaddress.ip_address("10.60.0.2"),))
    ]
    cluster._apply_changes([_event(cluster, "DELETE", "h22", "e1")])
    assert links.remote_entries(network)[1] == []


def test_range_pages_reads_every_key_at_one_revision(etcd: EtcdServer) -> None:
    kv = EtcdKV(EtcdConfig.from_url(etcd.url, prefix=f"/test-{uuid.uuid4().hex[:8]}", timeout=2))
    for index in range(25):
        kv.put(kv.key("live", f"k{index:02d}"), str(index))
    kv.put(kv.key("live-not-under-the-prefix"), "x")
    pages = kv.range_pages(kv.key("live", ""), page=10)
    first, revision = next(pages)
    kv.put(kv.key("live", "k99"), "written after the first page")  # not in this read: its revision is later
    rest = list(pages)
    assert [len(items) for items in (first, *(items for items, _ in rest))] == [10, 10, 5]
    assert {rev for _, rev in rest} == {revision}
    keys = [item.key.rsplit("/", 1)[1] for items in (first, *(items for items, _ in rest)) for item in items]
    assert keys == [f"k{index:02d}" for index in range(25)]


# -- one owner of kernel state: a watch event and a Docker request on one network never interleave --------------

PAUSE = 2.0  # how long the paused call waits for another thread to call in on its network


class PausingLinks(FakeLinks):
    """FakeLinks whose first `pause_in` call waits inside (holding the network's devices, as netlink would be
    halfway through) until another thread calls in on the same network, or PAUSE seconds pass.  Calls that come
    in meanwhile are recorded in `interleaved`."""

    def __init__(self, underlays: dict[str, Underlay], pause_in: str) -> None:
        super().__init__(underlays)
        self.pause_in = pause_in
        self.paused = threading.Event()
        self.interleaved: list[str] = []
        self._paused_vni: int | None = None
        self._someone_came = threading.Event()

    def _call(self, method: str, network: Network) -> None:
        if self._paused_vni == network.vni:
            self.interleaved.append(method)
            self._someone_came.set()
        if method == self.pause_in and not self.paused.is_set():
            self._paused_vni = network.vni
            self.paused.set()
            self._someone_came.wait(PAUSE)
            self._paused_vni = None

    def ensure_network(self, network: Network) -> None:
        self._call("ensure_network", network)
        super().ensure_network(network)

    def remove_network(self, network: Network) -> None:
        self._call("remove_network", network)
        super().remove_network(network)

    def sync_remotes(self, network: Network, flood: set[IPAddress], remotes: list[RemoteEndpoint]) -> None:
        self._call("sync_remotes", network)
        super().sync_remotes(network, flood, remotes)

    def update_remotes(
        self, network: Network, gone_macs: set[str], gone_addresses: set[IPAddress], remotes: list[RemoteEndpoint]
    ) -> None:
        self._call("update_remotes", network)
        super().update_remotes(network, gone_macs, gone_addresses, remotes)


def _in_background(request: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    return thread


def test_a_watch_event_waits_for_a_network_being_removed_and_then_leaves_it_alone(hosts: Callable[..., Host]) -> None:
    a = hosts("ha", "192.0.2.1")
    b = hosts("hb", "192.0.2.2", links=PausingLinks(underlay("192.0.2.2"), pause_in="remove_network"))
    assert isinstance(b.links, PausingLinks)
    a.driver.create_network(net(1), {"vni": "306"}, SUBNET)
    b.driver.create_network(net(2), {"vni": "306"}, SUBNET)
    assert eventually(
        lambda: b.links.remote_entries(b.store.list_networks()[0])[0] == {ipaddress.ip_address("192.0.2.1")}
    )

    removal = _in_background(lambda: b.driver.delete_network(net(2)))  # docker network rm, halfway through
    assert b.links.paused.wait(5)
    b.links.calls.clear()
    a.driver.create_endpoint(net(1), net(11), ipaddress.IPv4Interface("10.60.0.2/24"), None, None)  # b's watch sees it
    removal.join(10)

    assert b.links.interleaved == [], "host b programmed a network while `docker network rm` was removing it"
    assert b.store.list_networks() == []
    time.sleep(0.3)  # the event's turn, once the network's lock was free: nothing of the removed network is touched
    assert "update_remotes" not in b.links.calls and "sync_remotes" not in b.links.calls


def test_a_watch_event_during_a_network_create_is_programmed_after_it(hosts: Callable[..., Host]) -> None:
    a = hosts("ha", "192.0.2.1")
    b = hosts("hb", "192.0.2.2", links=PausingLinks(underlay("192.0.2.2"), pause_in="ensure_network"))
    assert isinstance(b.links, PausingLinks)
    a.driver.create_network(net(1), {"vni": "307"}, SUBNET)

    creation = _in_background(lambda: b.driver.create_network(net(2), {"vni": "307"}, SUBNET))  # halfway through
    assert b.links.paused.wait(5)
    a.driver.create_endpoint(net(1), net(11), ipaddress.IPv4Interface("10.60.0.2/24"), None, None)  # b's watch sees it
    creation.join(10)

    assert b.links.interleaved == [], "host b programmed a network while `docker network create` was making it"
    network = b.store.get_network(net(2))
    assert network is not None
    assert eventually(lambda: [r.mac for r in b.links.remote_entries(network)[1]] == ["02:42:0a:3c:00:02"])


def test_stop_ends_the_clusters_threads(etcd: EtcdServer) -> None:
    """The applier and the lease keep-alive end at once; a watch reading an idle stream ends at its idle timeout,
    and stop() says it is still running rather than waiting for it."""
    kv = EtcdKV(EtcdConfig.from_url(etcd.url, prefix=f"/test-{uuid.uuid4().hex[:8]}", timeout=2))
    cluster = EtcdCluster(kv, EtcdStore(kv, "hs"), lease_ttl=2, watch_idle=1.0)
    cluster.resume_lease()
    before = set(threading.enumerate())  # other tests' watches may still be ending
    cluster.start()
    assert cluster.synced.wait(5)
    ours = set(threading.enumerate()) - before
    assert {thread.name for thread in ours} == {"vxlanpy-watch", "vxlanpy-apply", "vxlanpy-lease"}
    lingering = cluster.stop()  # the applier polls its queue every 0.5 s
    assert set(lingering) <= {"vxlanpy-watch"}
    assert eventually(lambda: not any(thread.is_alive() for thread in ours), within=3.0)
    assert cluster.stop(timeout=0.2) == []


def test_reconciliation_that_recreates_a_network_programs_its_remote_entries(hosts: Callable[[str, str], Host]) -> None:
    """A bridge deleted under the plugin takes the other hosts' entries with it; the reconciliation that makes the
    devices again writes them again, without waiting for a VTEP event or a resync."""
    a, b = hosts("ha", "192.0.2.1"), hosts("hb", "192.0.2.2")
    a.driver.create_network(net(1), {"vni": "300"}, SUBNET)
    b.driver.create_network(net(2), {"vni": "300"}, SUBNET)
    a.driver.create_endpoint(net(1), net(11), ipaddress.IPv4Interface("10.60.0.2/24"), None, None)
    network = b.store.list_networks()[0]
    assert eventually(lambda: len(b.links.remote_entries(network)[1]) == 1, within=2.0)

    b.links.remove_link(network.bridge)  # as `ip link del vxbr-300` would
    assert b.links.remote_entries(network) == (set(), [])
    report = b.driver.reconcile()
    assert report.recreated_networks == [300]
    flood, remotes = b.links.remote_entries(network)
    assert flood == {ipaddress.ip_address("192.0.2.1")}
    assert [remote.mac for remote in remotes] == ["02:42:0a:3c:00:02"]
