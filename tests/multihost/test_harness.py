"""The harness itself, proved with plain Docker (bridge driver) containers and etcd: no vxlanpy involved."""

from __future__ import annotations

import secrets
import socket
import time
from typing import Any

import pytest

from tests.engines import engine_name

from .cluster import (
    ETCD_IP,
    ETCD_PORT,
    HOST_BUSYBOX,
    LABELS,
    Cluster,
    container_address,
    exec_text,
    netns_socket,
    ping_until,
)


def bridge_network(host: Any, subnet: str) -> Any:
    return host.docker.networks.create(
        f"vxmh-br-{secrets.token_hex(3)}", driver="bridge", ipam=_ipam(subnet), labels=dict(LABELS)
    )


def _ipam(subnet: str) -> Any:
    import docker.types

    return docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])


@pytest.mark.smoke
def test_every_host_runs_the_engine_asked_for(cluster: Cluster) -> None:
    versions = {host.name: str(host.docker.version()["Version"]) for host in cluster.hosts}
    assert all(version.startswith(engine_name() + ".") for version in versions.values()), versions


def test_each_host_has_its_own_namespace_daemon_and_underlay_address(cluster: Cluster) -> None:
    seen_roots = set()
    for host in cluster.hosts:
        addresses = host.json(["ip", "-j", "-4", "addr", "show", "dev", "eth0"])
        assert [a["local"] for a in addresses[0]["addr_info"]] == [host.ip], addresses
        routes = host.json(["ip", "-j", "route", "show", "default"])
        assert routes and routes[0]["gateway"] == ETCD_IP, routes
        assert host.exec_ip(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
        info = host.docker.info()
        seen_roots.add(info["DockerRootDir"])
        assert info["DockerRootDir"] == str(host.dockerd.data_root)
        assert host.docker.images.get("vxlanpy-test/busybox:latest")
        # dockerd runs in the host's network namespace: its iptables chains are there, not on the machine.
        rules = host.exec_ip(["iptables", "-w", "-S", "FORWARD"]).stdout
        assert "DOCKER-USER" in rules or "DOCKER-ISOLATION" in rules, rules
        # and it sees this host's plugin directory (empty until vxlanpy starts), not the machine's.
        assert host.dockerd.plugins_dir.is_dir()
    assert len(seen_roots) == 3


def test_underlay_connects_hosts_and_etcd(cluster: Cluster) -> None:
    for host in cluster.hosts:
        for other in cluster.hosts:
            result = host.exec_ip([str(HOST_BUSYBOX), "ping", "-c", "1", "-W", "2", other.ip])
            assert result.returncode == 0, f"{host.name} -> {other.name}: {result.stdout}{result.stderr}"
        # etcd answers on the underlay bridge address, from inside each host namespace.
        with host.socket() as sock:
            sock.settimeout(3)
            sock.connect((ETCD_IP, ETCD_PORT))


def test_bridge_containers_on_each_host_reach_other_hosts(cluster: Cluster) -> None:
    """Plain Docker bridge networks: per-host NAT out of eth0 and a published port reached across hosts."""
    containers = {}
    for index, host in enumerate(cluster.hosts, start=1):
        network = bridge_network(host, f"172.31.{index}.0/24")
        containers[host.name] = host.run_container(network.name)
        address, _, gateway = container_address(containers[host.name], network.name)
        assert address.startswith(f"172.31.{index}."), address
        ok, output = ping_until(containers[host.name], gateway, timeout=5)
        assert ok, f"{host.name}: container cannot ping its gateway {gateway}: {output}"
    web_host = cluster["h2"]
    web_net = web_host.docker.networks.list(filters={"label": "vxlanpy.test=1"})[0]
    web_host.run_container(web_net.name, command=["httpd", "-f", "-p", "80", "-h", "/www"], ports={"80/tcp": 8080})
    for host in cluster.hosts:
        for other in cluster.hosts:
            ok, output = ping_until(containers[host.name], other.ip, timeout=5)
            assert ok, f"container on {host.name} cannot reach {other.name} ({other.ip}): {output}"
    client = containers["h1"]
    deadline = time.monotonic() + 10
    while True:
        code, output = exec_text(client, ["wget", "-q", "-O", "-", f"http://{web_host.ip}:8080/"])
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert code == 0 and "vxlanpy-multihost" in output, f"published port on h2 not reached from h1: {output}"


def test_etcd_stop_and_start_keep_the_data(cluster: Cluster) -> None:
    key = f"/vxmh-harness/{secrets.token_hex(4)}"
    cluster.etcd.put(key, "kept")
    cluster.etcd.stop()
    assert not cluster.etcd.alive
    with cluster["h1"].socket() as sock:
        sock.settimeout(2)
        with pytest.raises(OSError):
            sock.connect((ETCD_IP, ETCD_PORT))
    cluster.etcd.start()
    assert cluster.etcd.get_prefix(key) == {key: "kept"}


def _underlay_mac(cluster: Cluster) -> str:
    import json
    import subprocess

    result = subprocess.run(
        ["ip", "-n", cluster.underlay, "-j", "link", "show", cluster.UNDERLAY_BRIDGE], capture_output=True, text=True
    )
    return str(json.loads(result.stdout)[0]["address"])


def test_outsider_namespace_is_on_the_underlay_and_removed(cluster: Cluster) -> None:
    mac = _underlay_mac(cluster)
    with cluster.outsider("10.250.0.99") as netns:
        source, _ = _outsider_said_hello(cluster, netns)
        assert source == "10.250.0.99"
    assert netns not in cluster.namespaces
    # Adding and removing a port must not change the underlay bridge's MAC (the hosts' ARP entry for etcd).
    assert _underlay_mac(cluster) == mac
    assert cluster.underlay in {line.split()[0] for line in _netns_list()}
    assert netns not in {line.split()[0] for line in _netns_list()}


def _netns_list() -> list[str]:
    import subprocess

    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line for line in result.stdout.splitlines() if line.split()]


def _outsider_said_hello(cluster: Cluster, netns: str) -> tuple[str, str]:
    """The outsider sends h1 a datagram (so h1 learns its MAC); returns the source h1 saw and the outsider's MAC."""
    import json
    import subprocess

    receiver = cluster["h1"].socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("10.250.0.1", 0))
    sender = netns_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"hello", ("10.250.0.1", receiver.getsockname()[1]))
        receiver.settimeout(3)
        data, (source, _) = receiver.recvfrom(100)
        assert data == b"hello"
    finally:
        sender.close()
        receiver.close()
    shown = subprocess.run(
        ["ip", "-n", netns, "-j", "link", "show", "eth0"], capture_output=True, text=True, check=True
    )
    return source, str(json.loads(shown.stdout)[0]["address"])


def test_an_outsider_made_again_keeps_its_mac(cluster: Cluster) -> None:
    """Else each test's outsider at 10.250.0.99 has a new MAC, and the hosts' ARP entry from the last one is stale."""
    with cluster.outsider("10.250.0.99") as netns:
        _, first = _outsider_said_hello(cluster, netns)
    with cluster.outsider("10.250.0.99") as netns:
        _, second = _outsider_said_hello(cluster, netns)
    assert first == second
