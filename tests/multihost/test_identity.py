"""Host identity across real hosts (issue 13): the README's tutorial on hosts that share a hostname (the hosts of
this harness are namespaces of one machine: they do), with no VXLANPY_HOST anywhere; a duplicate VXLANPY_HOST
refused at start without touching the first host's keys; `vxlanpy node ls` and `node rm` as an operator runs them.

The plugins are put back with their usual VXLANPY_HOST=<host name> after each test, whatever its outcome, and the
identities they chose meanwhile are removed from etcd with `vxlanpy node rm --force`.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vxlanpy.nodes import IDENTITY_FILE

from .cluster import HOST_NAMES, Cluster, Host, container_address, ping_until

PREFIX = "/vxlanpy"
CreateNetwork = Callable[..., dict[str, Any]]


def vxlanpy(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's `vxlanpy` against this host's plugin."""
    return host.cli(*args)


def node_ls(host: Host) -> list[dict[str, Any]]:
    result = vxlanpy(host, "node", "ls", "--json")
    assert result.returncode == 0, result.stderr
    nodes: list[dict[str, Any]] = json.loads(result.stdout)
    return nodes


def restart_plugins(cluster: Cluster, host_env: Callable[[Host], str | None]) -> None:
    for host in cluster.hosts:
        host.plugin.stop()
    for host in cluster.hosts:
        host.plugin.host_env = host_env(host)
        (host.plugin.state_dir / IDENTITY_FILE).unlink(missing_ok=True)
    cluster._parallel(lambda host: host.plugin.start(), cluster.hosts)


@pytest.fixture
def own_identities(vx_cluster: Cluster) -> Iterator[Cluster]:
    """Every plugin started without VXLANPY_HOST, as in the README's tutorial."""
    restart_plugins(vx_cluster, lambda host: None)
    try:
        yield vx_cluster
    finally:
        problems = vx_cluster.clean()  # while the identities that own the networks still serve them
        chosen = [node["id"] for node in node_ls(vx_cluster.hosts[0]) if node["id"] not in HOST_NAMES]
        restart_plugins(vx_cluster, lambda host: host.name)
        for identity in chosen:  # their plugins are stopped; their leases may still run for a few seconds
            removed = vxlanpy(vx_cluster.hosts[0], "node", "rm", identity, "--force")
            problems += [removed.stderr] if removed.returncode else []
        assert not problems, problems


def test_the_tutorial_just_works_on_hosts_that_share_a_hostname(
    own_identities: Cluster, create_network: CreateNetwork
) -> None:
    cluster = own_identities
    hostname = socket.gethostname()
    nodes = {node["vteps"][0]: node for node in node_ls(cluster.hosts[0]) if node["id"] not in HOST_NAMES}
    assert sorted(nodes) == sorted(host.ip for host in cluster.hosts)
    label = re.sub(r"[^A-Za-z0-9_.-]", "-", hostname)[:50]
    for node in nodes.values():
        assert node["hostname"] == hostname and node["state"] == "alive"
        assert re.fullmatch(re.escape(label) + r"-[0-9a-f]{8}", node["id"]), node["id"]
    assert len({node["id"] for node in nodes.values()}) == 3

    # the README's command on every host: the same VNI, one network across the three
    networks = create_network(subnet="10.73.0.0/24", vni=7001)
    containers = {host.name: host.run_container(networks[host.name]) for host in cluster.hosts}
    addresses = {name: container_address(c, networks[name].name)[0] for name, c in containers.items()}
    assert len(set(addresses.values())) == 3
    for target in ("h2", "h3"):
        ok, output = ping_until(containers["h1"], addresses[target], timeout=10)
        assert ok, f"h1 -> {target} ({addresses[target]}): {output}"

    table = vxlanpy(cluster.hosts[1], "node", "ls")
    assert table.returncode == 0 and "alive (this host)" in table.stdout, table.stdout + table.stderr
    for host in cluster.hosts:
        node = next(n for n in node_ls(host) if host.ip in n["vteps"] and n["id"] not in HOST_NAMES)
        assert node["endpoints"] == 1 and addresses[host.name] in node["addresses"], node


def test_node_rm_of_a_dead_host_clears_its_entries_on_the_others(
    own_identities: Cluster, create_network: CreateNetwork
) -> None:
    cluster = own_identities
    h1, h3 = cluster["h1"], cluster["h3"]
    networks = create_network(subnet="10.74.0.0/24", vni=7003, hosts=("h1", "h3"))
    h3.run_container(networks["h3"])
    gone = next(node["id"] for node in node_ls(h1) if h3.ip in node["vteps"] and node["id"] not in HOST_NAMES)
    dev = "vxlan-7003"

    def h1_has_h3_entries() -> bool:
        return any(entry.get("dst") == h3.ip for entry in h1.fdb(dev))

    deadline = time.monotonic() + 5
    while not h1_has_h3_entries() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert h1_has_h3_entries()
    refused = vxlanpy(h1, "node", "rm", gone)
    assert refused.returncode == 1 and f"host {gone} (hostname" in refused.stderr and "is alive" in refused.stderr
    # What h3 keeps outside its lease, to give it back afterwards (its kernel and Docker still hold the network):
    # the cleanup then removes everything through its plugin, as after any test.
    kept = cluster.etcd.host_records(gone, PREFIX)
    h3.plugin.kill9()  # the host is gone for good; its lease would expire on its own after the TTL
    try:
        started = time.monotonic()
        removed = vxlanpy(h1, "node", "rm", gone, "--force")
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.startswith(f"removed host {gone} "), removed.stdout
        while h1_has_h3_entries() and time.monotonic() - started < 5:
            time.sleep(0.05)
        took = time.monotonic() - started
        assert not h1_has_h3_entries(), f"h1 still has FDB entries to h3 {took:.1f} s after node rm"
        print(f"\nnode rm --force: h1 dropped h3's FDB entries {took:.2f} s after the command started")
        left = [key for key in cluster.etcd.get_prefix(f"{PREFIX}/") if f"/{gone}" in key]
        assert not left, left
        assert gone not in {node["id"] for node in node_ls(h1)}
    finally:
        for key, value in kept.items():
            cluster.etcd.put(key, value)
        h3.plugin.start()


def h1_keys(cluster: Cluster) -> dict[str, str]:
    """Everything etcd holds of or for h1; of its node record, all but `seen`, which its plugin refreshes."""
    record = f"{PREFIX}/hosts/h1/node"
    return {
        key: json.dumps({**json.loads(value), "seen": None}) if key == record else value
        for key, value in cluster.etcd.get_prefix(f"{PREFIX}/").items()
        if "/h1/" in key or key.endswith("/h1") or value.startswith("h1/")
    }


@pytest.mark.smoke
def test_a_duplicate_vxlanpy_host_is_refused_at_start(vx_cluster: Cluster, create_network: CreateNetwork) -> None:
    h1, h2 = vx_cluster["h1"], vx_cluster["h2"]
    networks = create_network(subnet="10.75.0.0/24", vni=7002, hosts=("h1", "h2"))
    h1.run_container(networks["h1"])
    before = h1_keys(vx_cluster)
    assert any("/live/7002/ep/h1/" in key for key in before) and f"{PREFIX}/nodes/h1" in before
    assert json.loads(before[f"{PREFIX}/hosts/h1/node"])["vtep"] == h1.ip
    h2.plugin.stop()
    h2.plugin.host_env = "h1"
    try:
        with pytest.raises(RuntimeError, match="exited with code 3 while starting"):
            h2.plugin.start()
        log = h2.plugin.log_text()
        assert (
            f"host identity 'h1' is already held by a live vxlanpy with VTEP {h1.ip}, and this host's VTEP is {h2.ip}"
            in log
        ), h2.plugin.log_tail()
        assert "unset VXLANPY_HOST" in log and "Traceback" not in log
        assert h1_keys(vx_cluster) == before
    finally:
        h2.plugin.host_env = "h2"
        h2.plugin.start()
