"""Metrics, the health check, the peers comparison in etcd mode, attachment ids and doctor's rule reading."""

from __future__ import annotations

import http.client
import ipaddress
import json
import threading
from typing import Any

import pytest

from vxlanpy.cluster import SegmentView
from vxlanpy.dataplane.base import RemoteEndpoint
from vxlanpy.dataplane.firewall_rules import Ruleset
from vxlanpy.errors import InvalidOption
from vxlanpy.metrics import Metrics, MetricsServer, parse_metrics_addr
from vxlanpy.models import Subnet, attachment_id, is_attachment_id
from vxlanpy.operator.attach import (
    container_target,
    first_free,
    is_host_address,
    netns_target,
    valid_netns_path,
)
from vxlanpy.operator.doctor.base import parse_nft_chains
from vxlanpy.operator.doctor.rules import (
    firewall_layout,
    hook_precedence,
    input_verdict,
    is_iptables_own,
    rule_matches_vxlan,
)

from .cli_fakes import CliHarness
from .conftest import EP, EP2, NET, NET2, Harness

# -- attachment ids and addresses --------------------------------------------------------------------------------


def test_attachment_ids_are_derived_and_recognisable() -> None:
    first = attachment_id(container_target("a" * 64), NET)
    assert len(first) == 64 and is_attachment_id(first)
    assert first == attachment_id(container_target("a" * 64), NET)
    assert first != attachment_id(container_target("b" * 64), NET) != attachment_id(netns_target("blue"), NET)
    tampered = first[:-1] + ("1" if first[-1] == "0" else "0")
    assert not is_attachment_id("c" * 64) and not is_attachment_id(tampered)
    assert first[:11] != attachment_id(netns_target("blue"), NET)[:11]  # veth names differ


def test_address_helpers() -> None:
    subnet = Subnet(ipaddress.ip_network("10.1.0.0/29"), ipaddress.ip_interface("10.1.0.1/29"))
    taken = {ipaddress.ip_address("10.1.0.6")}
    assert str(first_free(subnet, taken, highest_first=True)) == "10.1.0.5/29"
    assert str(first_free(subnet, taken, highest_first=False)) == "10.1.0.2/29"
    full = {ipaddress.ip_address(f"10.1.0.{i}") for i in range(2, 7)}
    assert first_free(subnet, full, highest_first=True) is None
    assert not is_host_address(ipaddress.ip_address("10.1.0.7"), subnet.pool)  # broadcast
    assert not is_host_address(ipaddress.ip_address("10.1.0.0"), subnet.pool)
    v6 = Subnet(ipaddress.ip_network("fd00::/64"), ipaddress.ip_interface("fd00::1/64"))
    assert str(first_free(v6, set(), highest_first=True)) == "fd00::ffff:ffff:ffff:ffff/64"


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/var/run/docker/netns/0123abcd", True),
        ("/run/netns/blue", True),
        ("/proc/4242/ns/net", True),
        ("/etc/passwd", False),
        ("/run/netns/../../etc", False),
        ("/proc/self/ns/net", False),
    ],
)
def test_only_namespace_paths_are_accepted(path: str, ok: bool) -> None:
    assert valid_netns_path(path) is ok


# -- metrics ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ("127.0.0.1:9478", ("127.0.0.1", 9478)),
        ("[::1]:9478", ("::1", 9478)),
        (":9478", ("0.0.0.0", 9478)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_metrics_addr(raw: str | None, expected: tuple[str, int] | None) -> None:
    assert parse_metrics_addr(raw) == expected


@pytest.mark.parametrize("raw", ["9478", "127.0.0.1:0", "127.0.0.1:70000", "example.com:80", "1.2.3.4:x"])
def test_parse_metrics_addr_refuses(raw: str) -> None:
    with pytest.raises(InvalidOption, match="VXLANPY_METRICS_ADDR"):
        parse_metrics_addr(raw)


def _scrape(cli: CliHarness) -> str:
    metrics: Metrics = cli.components.metrics
    return metrics.exposition().decode()


def test_requests_state_and_reconcile_actions_are_counted(harness: Harness) -> None:
    harness.create_network(NET, generic={"vni": "42", "peers": "192.0.2.20"})
    cli = CliHarness(harness)
    cli.flask.post("/NetworkDriver.CreateEndpoint", json={"NetworkID": NET, "EndpointID": EP, "Interface": {}})
    cli.flask.post("/NetworkDriver.CreateEndpoint", json={"NetworkID": "x"})
    cli.flask.post("/NetworkDriver.Nonsense", json={})
    harness.firewall.networks[77] = harness.firewall.networks[42]
    assert cli.run("gc").exit_code == 0
    text = _scrape(cli)
    assert 'vxlanpy_requests_total{method="NetworkDriver.CreateEndpoint",outcome="ok"} 1.0' in text
    assert 'vxlanpy_requests_total{method="NetworkDriver.CreateEndpoint",outcome="bad_request"} 1.0' in text
    assert 'vxlanpy_requests_total{method="unknown",outcome="not_found"} 1.0' in text
    assert 'vxlanpy_requests_total{method="vxlanpy.gc",outcome="ok"} 1.0' in text
    assert 'vxlanpy_request_duration_seconds_bucket{le="0.005",method="NetworkDriver.CreateEndpoint"' in text
    assert "vxlanpy_networks 1.0" in text
    assert 'vxlanpy_endpoints{kind="docker"} 1.0' in text
    assert 'vxlanpy_network_endpoints{vni="42"} 1.0' in text
    assert 'vxlanpy_peers{vni="42"} 1.0' in text
    assert 'vxlanpy_reconcile_actions_total{action="removed_chains"} 1.0' in text
    assert 'vxlanpy_reconcile_runs_total{outcome="ok",trigger="gc"} 1.0' in text
    assert "vxlanpy_store_up 1.0" in text


def test_a_failing_store_shows_as_store_up_0(harness: Harness) -> None:
    cli = CliHarness(harness)

    def broken(*_: Any) -> Any:
        from vxlanpy.errors import StoreError

        raise StoreError("database is on fire")

    harness.store.list_networks = broken  # type: ignore[method-assign]
    assert "vxlanpy_store_up 0.0" in _scrape(cli)
    assert cli.run("health").exit_code == 1


def test_metrics_and_health_over_http(harness: Harness) -> None:
    cli = CliHarness(harness)
    operations = cli.components.operations
    server = MetricsServer(("127.0.0.1", 0), cli.components.metrics, operations.health)
    server.start()
    try:
        assert server.bound.wait(5)

        def get(path: str) -> tuple[int, str]:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()

        status, text = get("/metrics")
        assert status == 200 and "vxlanpy_store_up 1.0" in text and "vxlanpy_start_time_seconds" in text
        status, text = get("/health")
        assert status == 200 and json.loads(text)["status"] == "healthy"
        assert get("/nope")[0] == 404
    finally:
        server.stop()


def test_metrics_server_retries_a_busy_port(harness: Harness) -> None:
    import socket

    cli = CliHarness(harness)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    server = MetricsServer(("127.0.0.1", port), cli.components.metrics, lambda: (True, {}), retry=0.1)
    server.start()
    try:
        assert not server.bound.is_set()
        holder.close()
        assert server.bound.wait(5)
    finally:
        server.stop()


# -- etcd mode: the peers comparison and health use the cluster's view --------------------------------------------


class FakeCluster:
    def __init__(self) -> None:
        self.synced = threading.Event()
        self.view = SegmentView()

    def publish_network(self, network: Any) -> None: ...

    def unpublish_network(self, network: Any) -> None: ...

    def publish_endpoint(self, network: Any, endpoint: Any) -> None: ...

    def unpublish_endpoint(self, network: Any, endpoint: Any) -> None: ...

    def remote_view(self, vni: int) -> SegmentView:
        return self.view


def test_peers_against_the_etcd_view(harness: Harness) -> None:
    harness.create_network(NET, generic={"vni": "42"})
    cluster = FakeCluster()
    harness.driver.cluster = cluster
    cli = CliHarness(harness)
    cli.docker_network(NET, "demo")
    vtep = ipaddress.ip_address("192.0.2.11")
    remote = RemoteEndpoint("02:42:0a:01:00:09", vtep, (ipaddress.ip_address("10.1.0.9"),))
    cluster.view.vteps["hostb"] = vtep
    cluster.view.endpoints[("hostb", "9" * 64)] = remote
    harness.links.remotes[42] = ({vtep}, [remote])
    result = cli.run("peers", "demo")
    assert result.exit_code == 0, result.output
    assert "mode etcd" in result.stdout and "compared with the etcd" in result.stdout
    assert "02:42:0a:01:00:09  192.0.2.11  10.1.0.9   hostb  ok" in result.stdout
    rows = json.loads(cli.run("ls", "--json").stdout)
    assert rows[0]["peers"] == [{"address": "192.0.2.11", "host": "hostb", "source": "etcd"}]

    harness.links.remotes[42] = ({vtep}, [])  # the kernel lost the entry
    result = cli.run("peers", "demo")
    assert result.exit_code == 1 and "missing in kernel" in result.stdout

    result = cli.run("health")
    assert result.exit_code == 1 and "etcd FAILED" in result.stdout
    cluster.synced.set()
    assert cli.run("health").exit_code == 0


def test_attach_on_the_etcd_segment_avoids_remote_addresses(harness: Harness) -> None:
    harness.create_network(NET, generic={"vni": "42"})
    cluster = FakeCluster()
    harness.driver.cluster = cluster
    remote = RemoteEndpoint(
        "02:42:0a:01:00:fe", ipaddress.ip_address("192.0.2.11"), (ipaddress.ip_address("10.1.0.254"),)
    )
    cluster.view.endpoints[("hostb", "9" * 64)] = remote
    cli = CliHarness(harness)
    cli.docker_network(NET, "demo")
    cli.container("solo", "1" * 64)
    result = cli.run("attach", "solo", "demo")
    assert result.exit_code == 0 and "10.1.0.253/24" in result.stdout


# -- doctor's reading of iptables -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("-j DROP", "all"),
        ("-p udp -m udp --dport 4789 -j DROP", "all"),
        ("-p udp -m multiport --dports 4000:5000 -j DROP", "all"),
        ("-p tcp -j DROP", "none"),
        ("-p udp -m udp --dport 53 -j DROP", "none"),
        ("-i lo -j ACCEPT", "none"),
        ("-m conntrack --ctstate INVALID -j DROP", "none"),
        ("-s 10.0.0.0/8 -p udp -j DROP", "some"),
        ("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "some"),
    ],
)
def test_rule_matching(rule: str, expected: str) -> None:
    assert rule_matches_vxlan(rule.split(), 4789) == expected


def test_input_verdicts() -> None:
    def verdict(text: str) -> tuple[str, list[str], list[str]]:
        return input_verdict(Ruleset.parse(text), "INPUT", 4789)

    assert verdict("-P INPUT ACCEPT\n")[0] == "policy:ACCEPT"
    assert verdict("-P INPUT DROP\n-A INPUT -p udp --dport 4789 -j ACCEPT\n")[0] == "accept"
    assert verdict("-P INPUT DROP\n-A INPUT -p tcp --dport 22 -j ACCEPT\n")[0] == "policy:DROP"
    # through a user chain, as ufw does
    dropped = verdict("-P INPUT ACCEPT\n-N ufw-in\n-A INPUT -j ufw-in\n-A ufw-in -p udp -j DROP\n")
    assert dropped[0] == "drop" and dropped[1] == ["-A INPUT -j ufw-in", "-A ufw-in -p udp -j DROP"]
    partial = verdict("-P INPUT ACCEPT\n-A INPUT -s 192.0.2.0/24 -p udp -j DROP\n")
    assert partial[0] == "policy:ACCEPT" and partial[2] == ["-A INPUT -s 192.0.2.0/24 -p udp -j DROP"]
    # vxlanpy's own allow-list is not counted against it
    ours = verdict("-P INPUT ACCEPT\n-N VXLANPY-INPUT\n-A INPUT -j VXLANPY-INPUT\n-A VXLANPY-INPUT -p udp -j DROP\n")
    assert ours[0] == "policy:ACCEPT"


# -- doctor's reading of the firewall layout ---------------------------------------------------------------------

DOCKER_28 = """-P FORWARD DROP
-N DOCKER-USER
-N DOCKER-FORWARD
-N DOCKER-CT
-N VXLANPY-FORWARD
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A FORWARD -j VXLANPY-FORWARD
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -i docker0 -j ACCEPT
"""


def test_hook_precedence_sees_through_docker_user_and_names_what_decides_first() -> None:
    displaced = hook_precedence(Ruleset.parse(DOCKER_28))
    assert displaced.reached and displaced.strangers == ["-A FORWARD -j DOCKER-FORWARD"]
    fixed = hook_precedence(Ruleset.parse(DOCKER_28 + "-A DOCKER-USER -j VXLANPY-FORWARD\n"))
    assert (fixed.strangers, fixed.path) == ([], ["-A FORWARD -j DOCKER-USER", "-A DOCKER-USER -j VXLANPY-FORWARD"])
    # 28.5 without docker0: DOCKER-FORWARD only jumps to empty chains and the isolation stage, deciding nothing
    quiet = (
        DOCKER_28.replace("-A DOCKER-FORWARD -i docker0 -j ACCEPT\n", "")
        + "-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1\n"
    )
    assert hook_precedence(Ruleset.parse(quiet)).strangers == []
    user_rule = hook_precedence(
        Ruleset.parse("-P FORWARD ACCEPT\n-A FORWARD -s 10.0.0.0/8 -j ACCEPT\n-A FORWARD -j VXLANPY-FORWARD\n")
    )
    assert user_rule.strangers == ["-A FORWARD -s 10.0.0.0/8 -j ACCEPT"]
    assert not hook_precedence(Ruleset.parse("-P FORWARD DROP\n-A FORWARD -j DOCKER-FORWARD\n")).reached


def test_firewall_layouts() -> None:
    assert (
        firewall_layout(Ruleset.parse(DOCKER_28), set()) == "docker iptables with DOCKER-USER and DOCKER-FORWARD (28+)"
    )
    legacy = "-N DOCKER\n-N DOCKER-ISOLATION-STAGE-1\n-N DOCKER-USER\n"
    assert firewall_layout(Ruleset.parse(legacy), set()) == "docker iptables (20.10-27)"
    assert firewall_layout(Ruleset.parse("-P FORWARD ACCEPT\n"), set()) == "no docker chains (--iptables=false)"
    nft = firewall_layout(Ruleset.parse("-P FORWARD ACCEPT\n"), {("ip", "docker-bridges"), ("inet", "filter")})
    assert nft == "docker nftables tables present (ip docker-bridges: 29+, firewall-backend nftables)"


def test_nft_chains_are_read_from_nfts_json() -> None:
    text = json.dumps(
        {
            "nftables": [
                {"metainfo": {"json_schema_version": 1}},
                {
                    "chain": {
                        "family": "inet",
                        "table": "fw",
                        "name": "fwd",
                        "hook": "forward",
                        "prio": -10,
                        "policy": "drop",
                        "type": "filter",
                        "handle": 1,
                    }
                },  # fmt: skip
                {
                    "chain": {
                        "family": "ip",
                        "table": "filter",
                        "name": "FORWARD",
                        "hook": "forward",
                        "prio": 0,
                        "policy": "accept",
                        "type": "filter",
                        "handle": 2,
                    }
                },  # fmt: skip
                {"chain": {"family": "inet", "table": "fw", "name": "helper", "handle": 3}},
            ]
        }
    )
    chains = parse_nft_chains(text)
    assert [(c.label, c.hook, c.priority, c.policy) for c in chains] == [
        ("inet fw fwd", "forward", -10, "drop"),
        ("ip filter FORWARD", "forward", 0, "accept"),
        ("inet fw helper", None, None, None),
    ]
    assert [is_iptables_own(chain) for chain in chains] == [False, True, False]
    assert parse_nft_chains("not json") == [] and parse_nft_chains("[]") == []


# -- state that vanishes or is replaced; unfinished creates; orphan reservations (issue #12) -----------------------

SANDBOX = "/var/run/docker/netns/web"


def _running(harness: Harness) -> None:
    """A network (vni 42) with one joined endpoint, as Docker left it."""
    harness.create_network(NET, generic={"vni": "42"})
    harness.create_endpoint(EP, NET)
    harness.driver.join(NET, EP, SANDBOX)
    harness.live_sandboxes.add(SANDBOX)


def _same_kernel_new_store(old: Harness) -> Harness:
    """The plugin restarted on an empty store (state.db deleted or replaced), over the same kernel."""
    new = Harness()
    new.links = new.driver.links = old.links  # type: ignore[misc]
    new.firewall = new.driver.firewall = old.firewall  # type: ignore[misc]
    new.live_sandboxes |= old.live_sandboxes
    return new


def _recover(cli: CliHarness, body: dict[str, Any]) -> dict[str, Any]:
    response = cli.flask.post("/vxlanpy/recover", data=json.dumps(body))
    assert response.status_code == 200, response.data
    return json.loads(response.data)  # type: ignore[no-any-return]


def test_start_up_on_a_lost_store_keeps_the_devices_and_recover_adopts_them(harness: Harness) -> None:
    _running(harness)
    harness.create_network(NET2, generic={"vni": "43"}, ipv4=[{"Pool": "10.2.0.0/24", "Gateway": "10.2.0.1/24"}])
    endpoint = harness.store.get_endpoint(EP)
    assert endpoint is not None
    lost = _same_kernel_new_store(harness)

    report = lost.driver.reconcile(unjoined_grace=0.0)  # start-up
    assert report.removed_links == [] and report.removed_chains == []
    assert {"vxbr-42", "vxlan-42", "vxbr-43", endpoint.host_veth} <= set(report.kept_links)
    assert {"vxbr-42", "vxbr-43"} <= set(harness.links.networks) and endpoint.host_veth in harness.links.endpoints
    assert {42, 43} <= harness.firewall.owned_vnis()

    cli = CliHarness(lost)
    health = cli.run("health")
    assert health.exit_code == 1
    assert "holds the devices of 2 network(s) the store does not know" in health.output
    assert "vxlanpy recover" in health.output

    state = _recover(cli, {"step": "state"})
    assert {item["id"] for item in state["lost"]} == {NET, NET2} and state["store_file"] is None
    docker_view = {
        "id": NET,
        "options": {},  # the VNI was chosen by vxlanpy: only the kernel's devices know it
        "internal": False,
        "subnets": [{"pool": "10.1.0.0/24"}],  # inspect shows no gateway unless --gateway was given
        "endpoints": [
            {"id": EP, "mac": endpoint.mac, "ipv4": "10.1.0.2/24", "sandbox": SANDBOX, "ports": []},
            {"id": EP2, "mac": None, "ipv4": "10.1.0.3/24", "sandbox": "/var/run/docker/netns/gone"},
        ],
    }
    dry = _recover(cli, {"step": "adopt", "dry_run": True, "network": docker_view})
    assert dry["adopted"] and dry["vni"] == 42 and lost.store.get_network(NET) is None
    adopted = _recover(cli, {"step": "adopt", "network": docker_view})
    assert adopted["adopted"] and adopted["vni"] == 42 and adopted["endpoints"] == [EP]
    assert [item["id"] for item in adopted["skipped"]] == [EP2] and "veth is gone" in adopted["skipped"][0]["reason"]
    recovered = lost.store.get_endpoint(EP)
    assert recovered is not None and recovered.sandbox_key == SANDBOX and recovered.mac == endpoint.mac
    assert lost.store.get_network(NET).vni == 42  # type: ignore[union-attr]

    finished = _recover(cli, {"step": "finish", "forget": [NET2]})  # Docker no longer knows NET2
    assert [item["vni"] for item in finished["removed_networks"]] == [43]
    assert "vxbr-43" not in harness.links.networks and 43 not in harness.firewall.owned_vnis()
    assert "vxbr-42" in harness.links.networks and endpoint.host_veth in harness.links.endpoints
    assert finished["report"]["kept_links"] == [] and finished["report"]["removed_links"] == []
    assert cli.run("health").exit_code == 0
    assert lost.driver.join(NET, EP, SANDBOX).gateway_v4 == ipaddress.ip_address("10.1.0.1")  # docker run works


def test_recover_reserves_the_addresses_of_a_network_on_vxlanpys_ipam(harness: Harness) -> None:
    cli = CliHarness(harness)
    ipam = cli.components.ipam
    grant = ipam.request_pool("vxlanpy-local", ipaddress.ip_network("10.1.0.0/24"), None, None, {})
    ipam.request_address(grant.pool_id, None, gateway=True)
    harness.create_network(NET, generic={"vni": "42"})
    address = ipam.request_address(grant.pool_id, None)
    harness.create_endpoint(EP, NET, Address=str(address))
    lost = _same_kernel_new_store(harness)
    cli = CliHarness(lost)
    body = {
        "id": NET,
        "options": {"vni": "42"},
        "ipam_vxlanpy": True,
        "subnets": [{"pool": "10.1.0.0/24", "gateway": "10.1.0.1"}],
        "endpoints": [{"id": EP, "ipv4": str(address)}],
    }
    result = _recover(cli, {"step": "adopt", "network": body})
    assert result["ipam"] == ["pool 10.1.0.0/24", "gateway 10.1.0.1", "10.1.0.2"]
    ipam = cli.components.ipam
    assert str(ipam.request_address(grant.pool_id, None)) == "10.1.0.3/24"  # Docker's own PoolID works again
    assert grant.claim in lost.store.pool_holders("10.1.0.0/24")
    ipam.release_pool(grant.pool_id)  # docker network rm forgets the pool, recovered records included
    assert lost.store.pool_holders("10.1.0.0/24") == set() and lost.store.reserved_addresses("10.1.0.0/24") == {}


def test_health_notices_a_deleted_and_a_read_only_store(harness: Harness, tmp_path: Any) -> None:
    from vxlanpy.store.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "state.db"))
    harness.store = harness.driver.store = store  # type: ignore[assignment,misc]
    cli = CliHarness(harness)
    assert cli.run("health").exit_code == 0
    store._db.execute("PRAGMA query_only = ON")  # what a read-only file or directory does to every write
    result = cli.run("health")
    assert result.exit_code == 1 and "readonly database; the file or its directory is read-only" in result.output
    store._db.execute("PRAGMA query_only = OFF")
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"state.db{suffix}").unlink(missing_ok=True)
    result = cli.run("health")
    assert result.exit_code == 1 and "state.db was deleted while the plugin ran" in result.output
    status, body = harness.create_network()
    assert status == 503 and "vxlanpy recover" in body["Err"]


def test_a_create_that_never_finished_is_removed_with_its_devices(harness: Harness) -> None:
    from dataclasses import replace

    status, _ = harness.create_network(NET, generic={"vni": "42"})
    assert status == 200 and harness.store.pending_networks() == {}  # a finished create is confirmed
    done = harness.store.get_network(NET)
    assert done is not None
    # The plugin was killed in the middle of another create: row written, devices made, no answer to Docker.
    half = replace(done, network_id=NET2, config=replace(done.config, vni=101))
    harness.store.add_network(half, pending_since=harness.now)
    harness.links.ensure_network(half)
    harness.firewall.ensure_network(half, [])
    cli = CliHarness(harness)

    assert "never finished" not in cli.run("gc").stdout  # while serving: it may still be under way
    harness.now += 61
    dry = cli.run("gc", "--dry-run")
    assert "would remove network of vni 101: its create never finished" in dry.stdout
    result = cli.run("gc")
    assert "removed network of vni 101: its create never finished" in result.stdout
    assert harness.store.get_network(NET2) is None and harness.store.pending_networks() == {}
    assert "vxbr-101" not in harness.links.networks and 101 not in harness.firewall.owned_vnis()
    assert "vxbr-42" in harness.links.networks  # the finished one stays
    status, _ = harness.create_network(NET2)  # its VNI and subnet are free again
    assert status == 200 and harness.store.get_network(NET2).vni == 100  # type: ignore[union-attr]


def test_start_up_removes_every_unfinished_create(harness: Harness) -> None:
    harness.create_network(NET, generic={"vni": "42"})
    network = harness.store.get_network(NET)
    assert network is not None
    harness.store.delete_network(NET)
    harness.store.add_network(network, pending_since=harness.now)  # killed right after the row was written
    report = harness.driver.reconcile(unjoined_grace=0.0)
    assert report.expired_networks == [42] and report.kept_links == [] and report.removed_links == []
    assert harness.store.list_networks() == [] and harness.links.networks == {}


def _ipam_harness(harness: Harness) -> tuple[CliHarness, Any, Any]:
    cli = CliHarness(harness)
    ipam = cli.components.ipam
    operations = cli.components.operations
    ipam.clock = operations.clock = lambda: harness.now
    operations.started = harness.now - 3600  # the plugin has been up for an hour
    operations.sandbox_in_use = lambda path: True  # containers are alive unless a test says otherwise
    grant = ipam.request_pool("vxlanpy-local", ipaddress.ip_network("10.1.0.0/24"), None, None, {})
    ipam.request_address(grant.pool_id, None, gateway=True)
    harness.create_network(NET, generic={"vni": "42"})
    return cli, ipam, grant


def test_gc_releases_reservations_no_endpoint_holds(harness: Harness) -> None:
    cli, ipam, grant = _ipam_harness(harness)
    used = ipam.request_address(grant.pool_id, None)
    harness.create_endpoint(EP, NET, Address=str(used))
    harness.driver.join(NET, EP, SANDBOX)
    harness.live_sandboxes.add(SANDBOX)
    ipam.request_address(grant.pool_id, None)  # 10.1.0.3: its ReleaseAddress was lost (store read-only)
    ipam.request_address(grant.pool_id, ipaddress.ip_address("10.1.0.9"))  # an --aux-address: never an endpoint's
    assert "release" not in cli.run("gc").stdout  # within a minute, Docker's CreateEndpoint may still come
    harness.now += 61
    result = cli.run("gc")
    assert "released address 10.1.0.3 held by testhost/container-" in result.stdout
    reserved = harness.store.reserved_addresses("10.1.0.0/24")
    assert set(reserved) == {"gateway", "10.1.0.1", "10.1.0.2", "10.1.0.9"}
    assert str(ipam.request_address(grant.pool_id, None)) == "10.1.0.3/24"  # back in the pool


def test_gc_removes_the_endpoint_of_a_dead_container_and_releases_its_address(harness: Harness) -> None:
    cli, ipam, grant = _ipam_harness(harness)
    address = ipam.request_address(grant.pool_id, ipaddress.ip_address("10.1.0.7"))  # docker run --ip
    harness.create_endpoint(EP, NET, Address=str(address))
    harness.driver.join(NET, EP, SANDBOX)
    harness.live_sandboxes.add(SANDBOX)  # Docker kept the sandbox file: its endpoint delete failed
    endpoint = harness.store.get_endpoint(EP)
    assert endpoint is not None
    del harness.links.endpoints[endpoint.host_veth]  # the container died, its veth with it
    operations = cli.components.operations
    operations.sandbox_in_use = lambda path: None  # cannot tell: only reported
    assert "lost endpoint" in cli.run("gc").stdout and harness.store.get_endpoint(EP) is not None
    operations.sandbox_in_use = lambda path: False  # no process in it: the container is gone
    result = cli.run("gc")
    assert "lost endpoint" not in result.stdout
    assert f"removed stale endpoint {EP[:12]}" in result.stdout and "released address 10.1.0.7" in result.stdout
    assert harness.store.get_endpoint(EP) is None and "10.1.0.7" not in harness.store.reserved_addresses("10.1.0.0/24")


def test_gc_removes_a_dead_containers_endpoint_whose_veth_survived(harness: Harness) -> None:
    cli, ipam, grant = _ipam_harness(harness)
    address = ipam.request_address(grant.pool_id, None)
    harness.create_endpoint(EP, NET, Address=str(address))
    harness.driver.join(NET, EP, SANDBOX)
    harness.live_sandboxes.add(SANDBOX)  # Docker kept the sandbox, with the veth in it: its Leave failed
    operations = cli.components.operations
    operations.sandbox_in_use = lambda path: False
    harness.now += 30  # a docker run may still be between Join and its container's start
    assert "removed" not in cli.run("gc").stdout and harness.store.get_endpoint(EP) is not None
    harness.now += 31
    result = cli.run("gc")
    assert f"removed stale endpoint {EP[:12]}" in result.stdout and f"released address {address.ip}" in result.stdout
    assert harness.store.get_endpoint(EP) is None and harness.links.endpoints == {}


def test_gc_releases_the_pool_of_a_create_that_never_completed(harness: Harness) -> None:
    """RequestPool and the gateway's RequestAddress came, CreateNetwork never did (the plugin was killed in
    between): once no row and no Docker network uses the pool, gc releases it, and the subnet is free again."""
    from vxlanpy.operator.client import DockerNetwork

    cli, ipam, grant = _ipam_harness(harness)  # 10.1.0.0/24 is NET's pool
    lost = ipam.request_pool("vxlanpy-local", None, None, None, {})  # an automatic pool: 10.200.0.0/24
    ipam.request_address(lost.pool_id, None, gateway=True)
    foreign = ipam.request_pool("vxlanpy-local", ipaddress.ip_network("10.5.0.0/24"), None, None, {})
    cli.docker.networks["b"] = DockerNetwork("b" * 64, "other", "bridge", "vxlanpy", ["10.5.0.0/24"])
    assert "release" not in cli.run("gc").stdout  # within a minute, Docker's CreateNetwork may still come
    harness.now += 61
    cli.docker.down = True
    down = cli.run("gc")
    assert "release" not in down.stdout and "keeping every IPAM pool claim" in down.stderr  # only on Docker's word
    cli.docker.down = False
    result = cli.run("gc")
    assert result.stdout.count("released pool") == 1, result.stdout
    assert f"released pool 10.200.0.0/24 claimed by {lost.claim} (its network create never completed)" in result.stdout
    assert harness.store.claimed_pools() == {"10.1.0.0/24": {grant.claim}, "10.5.0.0/24": {foreign.claim}}
    assert harness.store.reserved_addresses("10.200.0.0/24") == {}  # its gateway went with it
    assert ipam.request_pool("vxlanpy-local", None, None, None, {}).pool == lost.pool  # free again


def test_start_up_releases_the_pools_of_creates_an_earlier_process_never_completed(harness: Harness) -> None:
    from vxlanpy.ipam import Ipam

    ipam = Ipam(harness.store, "testhost", clock=lambda: harness.now - 5)  # before this start
    lost = ipam.request_pool("vxlanpy-local", None, None, None, {})
    kept = ipam.request_pool("vxlanpy-local", ipaddress.ip_network("10.5.0.0/24"), None, None, {})
    _start_plugin(harness, lambda: _listing(subnets={"10.5.0.0/24"}))
    assert harness.store.claimed_pools() == {"10.5.0.0/24": {kept.claim}}
    unknown = ipam.request_pool("vxlanpy-local", None, None, None, {})
    assert unknown.pool == lost.pool
    _start_plugin(harness, lambda: None)  # Docker not asked: kept
    assert unknown.pool.exploded in {str(ipaddress.ip_network(p)) for p in harness.store.claimed_pools()}


def test_recover_keeps_the_host_port_vxlanpy_chose_for_a_port_docker_left_to_it(harness: Harness) -> None:
    """`-p 80`: Docker records no host port (HostPort ""), and its inspect shows a remote driver's ports only
    while the driver answers; the kernel's DNAT rule still has it, and recover keeps it."""
    from vxlanpy.models import PortMapping

    _running(harness)
    harness.driver.port_is_free = lambda mapping: True
    chosen = harness.driver.program_external_connectivity(NET, EP, [PortMapping("tcp", 80, 0)]).ports
    explicit = harness.driver.program_external_connectivity(NET, EP, [*chosen, PortMapping("udp", 53, 5353)]).ports
    assert chosen[0].host_port and harness.firewall.published() == {("tcp", chosen[0].host_port), ("udp", 5353)}
    endpoint = harness.store.get_endpoint(EP)
    lost = _same_kernel_new_store(harness)
    lost.driver.port_is_free = lambda mapping: True
    lost.driver.reconcile(unjoined_grace=0.0)
    cli = CliHarness(lost)
    ports = [
        {"proto": "tcp", "container_port": 80, "host_port": 0},  # what the CLI sends for HostPort ""
        {"proto": "udp", "container_port": 53, "host_port": 5353},
        {"proto": "tcp", "container_port": 443, "host_port": 0},  # never published: nothing to keep
    ]
    view = {
        "id": NET,
        "options": {},
        "internal": False,
        "subnets": [{"pool": "10.1.0.0/24"}],
        "endpoints": [{"id": EP, "mac": endpoint.mac, "ipv4": "10.1.0.2/24", "sandbox": SANDBOX, "ports": ports}],  # type: ignore[union-attr]
    }
    assert _recover(cli, {"step": "adopt", "network": view})["endpoints"] == [EP]
    recovered = lost.store.get_endpoint(EP)
    assert recovered is not None and set(recovered.ports) == set(explicit)
    assert harness.firewall.published() == {("tcp", chosen[0].host_port), ("udp", 5353)}


def _start_plugin(harness: Harness, docker_listing: Any) -> None:
    """The plugin's start-up (and stop) on the harness's driver, with Docker's networks as `docker_listing` says."""
    from vxlanpy.config import Settings
    from vxlanpy.lifecycle import Lifecycle
    from vxlanpy.wiring import assemble

    lifecycle = Lifecycle(assemble(harness.driver, Settings(host="testhost"), docker_listing=docker_listing))
    lifecycle.start()
    lifecycle.stop()


def _listing(ids: set[str] | None = None, subnets: set[str] | None = None) -> Any:
    from vxlanpy.operator.client import DockerListing

    return DockerListing(frozenset(ids or ()), frozenset(subnets or ()))


def test_start_up_removes_a_network_whose_create_docker_never_completed(harness: Harness) -> None:
    """The create succeeded here, but the plugin was killed before dockerd read the answer: Docker does not know
    the network, so `docker network rm` never comes (the long network-create churn left such networks)."""
    _running(harness)  # NET, with an endpoint: Docker knows it
    harness.create_network(NET2, generic={"vni": "43"}, ipv4=[{"Pool": "10.2.0.0/24", "Gateway": "10.2.0.1/24"}])
    _start_plugin(harness, lambda: _listing(ids={"f" * 64}))  # another dockerd's
    assert harness.store.get_network(NET2) is not None and "vxbr-43" in harness.links.networks
    _start_plugin(harness, lambda: None)  # Docker not asked
    assert harness.store.get_network(NET2) is not None
    _start_plugin(harness, lambda: _listing(ids={NET}))
    assert harness.store.get_network(NET2) is None
    assert "vxbr-43" not in harness.links.networks and 43 not in harness.firewall.owned_vnis()
    assert harness.store.get_network(NET) is not None and "vxbr-42" in harness.links.networks
