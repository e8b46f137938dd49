"""The `vxlanpy` CLI and the metrics listener against the real engine.  VNIs 7100-7119, subnets 10.77.100-119.0/24.

Each command runs as its own process (the installed console script), as an operator would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .helpers import (
    LABELS,
    REPO_ROOT,
    PluginProcess,
    TestHost,
    container_ip,
    exec_ok,
    http_get,
    links,
    ping_fails,
    ping_ok,
    unique_name,
    wait_for,
)

pytestmark = pytest.mark.e2e


def vxlanpy(plugin: PluginProcess, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "vxlanpy"
    env = dict(os.environ, VXLANPY_SOCKET=str(plugin.socket_path))
    if script.exists():
        command = [str(script)]
    else:
        command = [sys.executable, "-m", "vxlanpy"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "plugin"), env.get("PYTHONPATH")]))
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture
def lone_container(docker_client: Any, busybox_image: str) -> Callable[[], Any]:
    """A running, labelled busybox started with --network none."""

    def _run() -> Any:
        container = docker_client.containers.run(
            busybox_image,
            ["sleep", "3600"],
            detach=True,
            network_mode="none",
            name=unique_name("vxt-none"),
            labels=dict(LABELS),
        )
        container.reload()
        return container

    return _run


def interfaces(container: Any) -> str:
    code, output = exec_ok(container, ["ip", "-o", "addr", "show"])
    assert code == 0, output
    return output


def test_ls_inspect_peers_and_health(
    plugin: PluginProcess,
    create_network: Callable[..., Any],
    run_container: Callable[..., Any],
    testhost: TestHost,
) -> None:
    local = create_network(vni=7100, subnet="10.77.100.0/24")
    static = create_network(
        vni=7101, subnet="10.77.101.0/24", options={"dev": testhost.host_if, "peers": f"{testhost.ip},{testhost.ip2}"}
    )
    container = run_container(local)

    rows = json.loads(ok(vxlanpy(plugin, "ls", "--json")).stdout)
    by_name = {row["name"]: row for row in rows}
    keys = {"name", "id", "vni", "mode", "gateway", "subnets", "devices", "mtu", "peers", "endpoints"}
    assert set(by_name[local.name]) == keys and by_name[local.name]["gateway"] == "vxlanpy"
    assert by_name[local.name]["id"] == local.id and by_name[local.name]["vni"] == 7100
    assert [e["container"] for e in by_name[local.name]["endpoints"]] == [container.name]
    assert by_name[static.name]["mode"] == "peers"
    assert [p["address"] for p in by_name[static.name]["peers"]] == [testhost.ip, testhost.ip2]
    table = ok(vxlanpy(plugin, "ls")).stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "ID", "VNI"]
    assert any(line.startswith(local.name) and "vxbr-7100,vxlan-7100" in line for line in table.splitlines())

    detail = ok(vxlanpy(plugin, "inspect", local.name)).stdout
    assert f"id:        {local.id}" in detail and container.name in detail
    assert container_ip(container, local) in detail

    peers = ok(vxlanpy(plugin, "peers", static.name)).stdout
    assert "result: the kernel matches the store" in peers
    for address in (testhost.ip, testhost.ip2):
        assert any(line.startswith(address) and line.endswith("ok") for line in peers.splitlines()), peers
    # a flood entry removed behind the plugin's back is reported, and gc puts it back
    subprocess.run(
        ["bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "vxlan-7101", "dst", testhost.ip2],
        check=True,
        capture_output=True,
    )
    broken = vxlanpy(plugin, "peers", static.name)
    assert broken.returncode == 1 and "missing in kernel" in broken.stdout
    ok(vxlanpy(plugin, "gc"))
    ok(vxlanpy(plugin, "peers", static.name))

    health = ok(vxlanpy(plugin, "health"))
    assert health.stdout.startswith("healthy: store ok")


def test_node_ls_and_rm_on_the_single_host_store(
    plugin: PluginProcess, create_network: Callable[..., Any], run_container: Callable[..., Any]
) -> None:
    network = create_network(vni=7103, subnet="10.77.103.0/24")
    container = run_container(network)
    nodes = json.loads(ok(vxlanpy(plugin, "node", "ls", "--json")).stdout)
    assert len(nodes) == 1 and nodes[0]["state"] == "alive" and nodes[0]["this_host"] is True
    assert nodes[0]["networks"] >= 1 and container_ip(container, network) in nodes[0]["addresses"]
    table = ok(vxlanpy(plugin, "node", "ls")).stdout.splitlines()
    assert table[0].split()[:4] == ["HOST", "HOSTNAME", "VTEP", "STATE"] and "alive (this host)" in table[1]
    refused = vxlanpy(plugin, "node", "rm", "elsewhere")
    assert refused.returncode == 1
    assert refused.stderr.startswith("vxlanpy: this plugin keeps its state in a single-host (SQLite) store")


def test_attach_a_network_none_container_then_detach(
    plugin: PluginProcess,
    create_network: Callable[..., Any],
    run_container: Callable[..., Any],
    lone_container: Callable[[], Any],
) -> None:
    network = create_network(vni=7102, subnet="10.77.102.0/24", options={"mtu": "1300"})
    peer = run_container(network)
    lone = lone_container()
    assert "eth0" not in interfaces(lone)

    attached = ok(vxlanpy(plugin, "attach", lone.name, network.name))
    assert f"attached container {lone.name}" in attached.stdout
    assert "eth0 10.77.102.254/24" in attached.stdout and "mtu 1300" in attached.stdout
    assert "attaching" in attached.stderr  # progress
    assert "10.77.102.254/24" in interfaces(lone)
    code, mtu = exec_ok(lone, ["cat", "/sys/class/net/eth0/mtu"])
    assert code == 0 and mtu.strip() == "1300"
    code, routes = exec_ok(lone, ["ip", "route"])
    assert "default via 10.77.102.1" in routes, routes

    good, output = ping_ok(lone, container_ip(peer, network))
    assert good, f"the attached container cannot ping {peer.name}:\n{output}"
    good, output = ping_ok(peer, "10.77.102.254")
    assert good, f"{peer.name} cannot ping the attached container:\n{output}"

    rows = json.loads(ok(vxlanpy(plugin, "ls", "--json")).stdout)
    row = next(row for row in rows if row["id"] == network.id)
    kinds = {endpoint["container"]: endpoint["kind"] for endpoint in row["endpoints"]}
    assert kinds == {peer.name: "docker", lone.name: "attached"}

    again = vxlanpy(plugin, "attach", lone.name, network.name)
    assert again.returncode == 1 and "already attached" in again.stderr

    detached = ok(vxlanpy(plugin, "detach", lone.name, network.name))
    assert f"detached container {lone.name}" in detached.stdout
    assert "10.77.102" not in interfaces(lone)
    refused, output = ping_fails(peer, "10.77.102.254", count=2)
    assert refused, output
    rows = json.loads(ok(vxlanpy(plugin, "ls", "--json")).stdout)
    row = next(row for row in rows if row["id"] == network.id)
    assert [endpoint["container"] for endpoint in row["endpoints"]] == [peer.name]


def test_attach_on_vxlanpy_ipam_reserves_the_address_and_a_named_namespace_works(
    plugin: PluginProcess,
    create_network: Callable[..., Any],
    run_container: Callable[..., Any],
    lone_container: Callable[[], Any],
) -> None:
    network = create_network(vni=7103, subnet="10.77.103.0/24", ipam_driver="vxlanpy")
    lone = lone_container()
    ok(vxlanpy(plugin, "attach", lone.name, network.name, "--ip", "10.77.103.2"))
    # Docker asks vxlanpy's IPAM, which knows the address is taken
    other = run_container(network)
    assert container_ip(other, network) != "10.77.103.2"
    good, output = ping_ok(other, "10.77.103.2")
    assert good, output

    namespace = unique_name("vxt-ns")
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        result = ok(vxlanpy(plugin, "attach", "--netns", namespace, network.name))
        assert f"attached namespace {namespace}" in result.stdout
        address = result.stdout.split(": eth0 ")[1].split("/")[0]
        ping = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                namespace,
                "/bin/busybox",
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                container_ip(other, network),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        good, output = ping_ok(other, address)
        assert good, output
        ok(vxlanpy(plugin, "detach", "--netns", namespace, network.name))
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


def test_gc_removes_the_attachment_of_a_stopped_container_and_repairs_devices(
    plugin: PluginProcess,
    create_network: Callable[..., Any],
    lone_container: Callable[[], Any],
) -> None:
    network = create_network(vni=7104, subnet="10.77.104.0/24", ipam_driver="vxlanpy")
    lone = lone_container()
    ok(vxlanpy(plugin, "attach", lone.name, network.name))
    assert "nothing to do" in ok(vxlanpy(plugin, "gc", "--dry-run")).stdout
    lone.kill()
    assert wait_for(lambda: not any(name.startswith("vxh-") for name in links() - {"vxbr-7104", "vxlan-7104"}), 10)
    subprocess.run(["ip", "link", "del", "vxlan-7104"], check=True)

    dry = ok(vxlanpy(plugin, "gc", "--dry-run")).stdout
    assert "would recreate the devices of vni 7104" in dry
    assert "would remove attachment" in dry
    assert "vxlan-7104" not in links()

    done = ok(vxlanpy(plugin, "gc")).stdout
    assert "recreated the devices of vni 7104" in done and "removed attachment" in done
    assert "vxlan-7104" in links()
    rows = json.loads(ok(vxlanpy(plugin, "ls", "--json")).stdout)
    assert next(row for row in rows if row["id"] == network.id)["endpoints"] == []
    # the attachment's address went back to vxlanpy's IPAM
    lone.start()
    lone.reload()
    assert "10.77.104.2/24" in ok(vxlanpy(plugin, "attach", lone.name, network.name)).stdout


def test_doctor_reports_a_filtered_vxlan_port(
    plugin: PluginProcess, create_network: Callable[..., Any], testhost: TestHost
) -> None:
    create_network(vni=7105, subnet="10.77.105.0/24", options={"dev": testhost.host_if, "remote": testhost.ip})
    findings = json.loads(vxlanpy(plugin, "doctor", "--json").stdout)
    status = {(f["check"], f["status"]) for f in findings}
    for check in ("plugin socket", "plugin answers dockerd", "state store", "firewall of vni 7105", "MTU of vni 7105"):
        assert (check, "ok") in status, findings
    assert not [f for f in findings if f["check"] == "orphans" and f["status"] != "ok"], findings

    rule = ["INPUT", "-p", "udp", "--dport", "4789", "-j", "DROP"]
    subprocess.run(["iptables", "-w", "-I", *rule], check=True)
    try:
        result = vxlanpy(plugin, "doctor")
        assert result.returncode == 1, result.stdout
        line = next(line for line in result.stdout.splitlines() if "VXLAN port udp/4789" in line)
        assert line.startswith("[FAIL]") and "dropped by -A INPUT -p udp" in line
        assert "fix: allow it before that rule" in result.stdout
    finally:
        subprocess.run(["iptables", "-w", "-D", *rule], check=False)


def test_metrics_and_health_over_http(
    plugin: PluginProcess, create_network: Callable[..., Any], run_container: Callable[..., Any]
) -> None:
    address = getattr(plugin, "metrics_addr", None)
    assert address, "the e2e plugin fixture runs the plugin with VXLANPY_METRICS_ADDR"
    host, port = address.rsplit(":", 1)
    network = create_network(vni=7106, subnet="10.77.106.0/24")
    run_container(network)
    assert wait_for(lambda: _answers(host, int(port)), 10), f"nothing serves metrics on {address}"
    text = http_get(host, int(port), "/metrics")
    assert 'vxlanpy_requests_total{method="NetworkDriver.CreateNetwork",outcome="ok"}' in text
    assert 'vxlanpy_request_duration_seconds_bucket{le="0.1",method="NetworkDriver.Join",outcome="ok"}' in text
    assert 'vxlanpy_network_endpoints{vni="7106"} 1.0' in text
    assert "vxlanpy_networks " in text and "vxlanpy_store_up 1.0" in text
    assert 'vxlanpy_reconcile_runs_total{outcome="ok",trigger="startup"}' in text
    health = json.loads(http_get(host, int(port), "/health"))
    assert health["status"] == "healthy" and health["checks"]["store"]["ok"]


def _answers(host: str, port: int) -> bool:
    try:
        http_get(host, port, "/health")
        return True
    except OSError:
        return False


def test_errors_are_one_line_with_exit_codes(
    plugin: PluginProcess, docker_client: Any, lone_container: Callable[[], Any]
) -> None:
    lone = lone_container()
    result = vxlanpy(plugin, "attach", lone.name, "bridge")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "vxlanpy: network bridge is not vxlanpy's: it uses the bridge driver, and the plugin holds no network with its id"
    )
    result = vxlanpy(plugin, "--socket", "/run/docker/plugins/nobody.sock", "ls")
    assert result.returncode == 3 and "does not exist; is it running?" in result.stderr
    result = vxlanpy(plugin, "--socket", "/run/docker/plugins/nobody.sock", "health")
    assert result.returncode == 1 and result.stderr.startswith("unhealthy:")
