"""State that vanishes or is replaced must never destroy what Docker still uses (issue #12), with the real engine.

VNIs 7500-7519, subnets 10.77.200-219.0/24, host port 18500.  Every test leaves the session's plugin serving on
a good state.db (written back or recovered), so the tests after it are unaffected.
"""

from __future__ import annotations

import sqlite3
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from .helpers import (
    DRIVER,
    PluginProcess,
    container_ip,
    down_plugin_stand_in,
    exec_ok,
    http_get,
    links,
    ping_ok,
    plugin_call,
    serves,
)
from .test_cli import ok, vxlanpy

pytestmark = pytest.mark.e2e

PAGE = "state-safety"
HTTPD = f"mkdir -p /www && echo '{PAGE}' > /www/index.html && exec httpd -f -p 80 -h /www"
HOST_PORT = 18500


def delete_state(plugin: PluginProcess) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{plugin.state_db}{suffix}").unlink(missing_ok=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def vni_of(network: Any) -> int:
    """The VNI of a network whose VNI vxlanpy chose: from its bridge's label in the kernel."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for link in ipr.link("dump"):
            name = str(link.get("ifname"))
            if name.startswith("vxbr-") and link.get_attr("IFLA_IFALIAS") == f"vxlanpy:net:{network.id}":
                return int(name.removeprefix("vxbr-"))
    raise AssertionError(f"no bridge for network {network.name}")


def test_state_is_private(plugin: PluginProcess, create_network: Callable[..., Any]) -> None:
    create_network(vni=7500, subnet="10.77.200.0/24")
    assert mode(plugin.state_dir) == 0o700
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{plugin.state_db}{suffix}")
        if path.exists():
            assert mode(path) == 0o600, path
    assert "install -d -m 0700" in (Path(__file__).parents[2] / "scripts" / "run").read_text()


def test_a_state_db_deleted_while_running_is_noticed_and_written_back(
    docker_client: Any, plugin: PluginProcess, create_network: Callable[..., Any], run_container: Callable[..., Any]
) -> None:
    network = create_network(vni=7501, subnet="10.77.201.0/24")
    first = run_container(network)
    delete_state(plugin)

    health = vxlanpy(plugin, "health")
    assert health.returncode == 1 and "state.db was deleted while the plugin ran" in health.stdout + health.stderr
    with pytest.raises(docker.errors.APIError, match="vxlanpy recover"):  # not "created" into a deleted file
        create_network(vni=7502, subnet="10.77.202.0/24")

    result = ok(vxlanpy(plugin, "recover"))
    assert f"state written back to {plugin.state_db}" in result.stdout
    assert mode(plugin.state_db) == 0o600
    ok(vxlanpy(plugin, "health"))
    plugin.restart(kill9=True)  # what was written back is the state from now on
    second = run_container(network)
    reached, output = ping_ok(second, container_ip(first, network))
    assert reached, output


def test_a_lost_store_keeps_what_docker_uses_and_recover_adopts_it(
    docker_client: Any, plugin: PluginProcess, create_network: Callable[..., Any], run_container: Callable[..., Any]
) -> None:
    chosen = create_network(subnet="10.77.203.0/24")  # vxlanpy picks the VNI: only the kernel's labels keep it
    web = create_network(vni=7504, subnet="10.77.204.0/24")
    client = run_container(chosen)
    server = run_container(web, command=["sh", "-c", HTTPD], ports={"80/tcp": HOST_PORT})
    assert serves("127.0.0.1", HOST_PORT, PAGE)
    vni = vni_of(chosen)
    before = {name for name in links() if name.endswith((f"-{vni}", "-7504"))}
    before |= {
        f"vxh-{c.attrs['NetworkSettings']['Networks'][n.name]['EndpointID'][:11]}"
        for c, n in ((client, chosen), (server, web))
    }

    plugin.kill9()
    delete_state(plugin)  # or an empty file from a bad restore: the same
    plugin.start()

    assert before <= links(), "start-up removed devices Docker still uses"
    assert "Nothing of theirs is removed" in plugin.log_text()
    assert PAGE in http_get("127.0.0.1", HOST_PORT)  # the published port still works
    health = vxlanpy(plugin, "health")
    assert health.returncode == 1 and "vxlanpy recover" in health.stdout + health.stderr
    with pytest.raises(docker.errors.APIError, match="not known to vxlanpy"):
        run_container(chosen)

    result = ok(vxlanpy(plugin, "recover"))
    assert f"adopt network {chosen.name} ({chosen.id[:12]}, vni {vni})" in result.stdout
    assert f"adopt network {web.name} ({web.id[:12]}, vni 7504)" in result.stdout
    assert result.stdout.count("adopt endpoint") == 2
    ok(vxlanpy(plugin, "health"))
    assert before <= links()

    fresh = run_container(chosen)
    reached, output = ping_ok(fresh, container_ip(client, chosen))
    assert reached, output
    assert PAGE in http_get("127.0.0.1", HOST_PORT)
    plugin.restart(kill9=True)  # recovered rows are ordinary rows
    assert PAGE in http_get("127.0.0.1", HOST_PORT)
    reached, output = ping_ok(client, container_ip(fresh, chosen))
    assert reached, output


def request_address(plugin: PluginProcess, pool: str) -> str:
    """Docker's RequestAddress for a container about to start on `pool` (its CreateEndpoint has not come yet)."""
    with sqlite3.connect(f"file:{plugin.state_db}?mode=ro", uri=True) as db:
        (claim,) = db.execute("SELECT holder FROM ipam_pools WHERE pool_id = ?", (pool,)).fetchone()
    pool_id = f"{pool} claim={claim}"
    status, reply = plugin_call(
        str(plugin.socket_path), "/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": {}}
    )
    assert status == 200, reply
    return str(reply["Address"]).partition("/")[0]


def test_gc_releases_the_address_of_a_container_removed_while_the_plugin_was_down(
    plugin: PluginProcess, create_network: Callable[..., Any], run_container: Callable[..., Any]
) -> None:
    """Docker's ReleaseAddress for a container removed while vxlanpy is down is lost; `vxlanpy gc` releases that
    address, and keeps the address of a running container and one reserved a moment ago for a container that is
    starting (RequestAddress done, CreateEndpoint still to come)."""
    subnet = "10.77.205.0/24"
    network = create_network(vni=7505, subnet=subnet, ipam_driver=DRIVER)
    running = run_container(network)
    doomed = run_container(network)
    address = container_ip(doomed, network)
    plugin.kill9()
    with down_plugin_stand_in(plugin.socket_path) as calls:
        doomed.remove(force=True)  # Docker ignores the failed DeleteEndpoint and ReleaseAddress
    assert "/IpamDriver.ReleaseAddress" in calls, calls
    plugin.start()
    starting = request_address(plugin, subnet)

    result = ok(vxlanpy(plugin, "gc"))
    assert f"released address {address} held by" in result.stdout, result.stdout
    for kept in (container_ip(running, network), starting):
        assert f"released address {kept} held by" not in result.stdout, result.stdout
    assert "lost endpoint" not in result.stdout
    again = run_container(network)
    assert container_ip(again, network) == address  # the lowest free address is free again
    code, output = exec_ok(again, ["ip", "-4", "addr", "show", "eth0"])
    assert code == 0 and address in output
    assert container_ip(run_container(network), network) != starting  # still reserved for its container


def test_a_store_made_read_only_under_the_running_plugin_fails_health_and_creates_clearly(
    plugin: PluginProcess, create_network: Callable[..., Any]
) -> None:
    """The issue's read-only store: `vxlanpy health` said healthy while every write failed.  As root chmod does
    not stop a write, so the file and its WAL get the immutable attribute (what a read-only mount does to an open
    file too: each write fails).  Not the -shm file: SQLite maps it, and a write to an immutable mapping is a
    SIGBUS that would kill the plugin."""
    create_network(vni=7506, subnet="10.77.206.0/24")  # the WAL file exists
    files = [str(plugin.state_db), f"{plugin.state_db}-wal"]
    subprocess.run(["chattr", "+i", *files], check=True, capture_output=True)
    try:
        health = vxlanpy(plugin, "health")
        text = health.stdout + health.stderr
        assert health.returncode == 1, text
        assert (
            f"{plugin.state_db}, {plugin.state_db}-wal cannot be written (a read-only mount, or the immutable" in text
        )
        assert "`chattr -i` clears it" in text, text
        with pytest.raises(docker.errors.APIError) as refused:
            create_network(vni=7507, subnet="10.77.207.0/24")
        assert f"{plugin.state_db}-wal cannot be written" in str(refused.value), refused.value
    finally:
        subprocess.run(["chattr", "-i", *files], check=True, capture_output=True)
    ok(vxlanpy(plugin, "health"))  # writable again: healthy again, with no restart
    create_network(vni=7507, subnet="10.77.207.0/24")


def test_recover_keeps_the_host_port_vxlanpy_chose_for_a_bare_p_port(
    plugin: PluginProcess, create_network: Callable[..., Any], run_container: Callable[..., Any]
) -> None:
    """`-p 80` leaves the host port to vxlanpy and Docker records none (HostPort "", and its inspect shows a
    remote driver's ports only while the driver knows them).  After a lost store, recover keeps the port the
    kernel's DNAT rule still has, instead of dropping it (a client of that port would lose the service)."""
    web = create_network(vni=7508, subnet="10.77.208.0/24")
    server = run_container(web, command=["sh", "-c", HTTPD], ports={"80/tcp": None})
    endpoint_id = server.attrs["NetworkSettings"]["Networks"][web.name]["EndpointID"]
    status, info = plugin_call(
        str(plugin.socket_path), "/NetworkDriver.EndpointOperInfo", {"NetworkID": web.id, "EndpointID": endpoint_id}
    )
    assert status == 200, info
    (published,) = info["Value"]["ports"]  # "0.0.0.0:PORT->80/tcp"
    port = int(published.split("->")[0].rpartition(":")[2])
    assert serves("127.0.0.1", port, PAGE)

    plugin.kill9()
    delete_state(plugin)
    plugin.start()
    ok(vxlanpy(plugin, "recover"))
    assert PAGE in http_get("127.0.0.1", port)  # the same host port, right after recover
    plugin.restart(kill9=True)  # and from the recovered row, not only from rules left in the kernel
    assert PAGE in http_get("127.0.0.1", port)
