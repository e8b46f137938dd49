"""The plugin's life and the network's: kill -9 and restart, removal that leaves nothing behind.

VNIs 7070-7079, subnets 10.77.70-79.0/24.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .helpers import (
    PluginProcess,
    bridge_ports,
    container_ip,
    links,
    ping_ok,
    state_rows,
    vni_chains,
    wait_for,
)

pytestmark = pytest.mark.e2e


def _owned_links_of(vni: int, endpoint_links: set[str]) -> set[str]:
    return links() & ({f"vxbr-{vni}", f"vxlan-{vni}"} | endpoint_links)


def test_kill9_and_restart_keeps_containers_connected(
    plugin: PluginProcess, create_network: Callable[..., Any], run_container: Callable[..., Any]
) -> None:
    network = create_network(vni=7070, subnet="10.77.70.0/24")
    first, second = run_container(network), run_container(network)
    first_ip, second_ip = container_ip(first, network), container_ip(second, network)
    ok, output = ping_ok(first, second_ip)
    assert ok, output

    plugin.kill9()
    assert not plugin.alive
    # the dataplane lives in the kernel: traffic does not need the plugin process
    ok, output = ping_ok(first, second_ip)
    assert ok, f"traffic stopped while the plugin was down:\n{output}"

    plugin.start()
    ok, output = ping_ok(first, second_ip)
    assert ok, f"{first.name} cannot ping {second.name} after the plugin restarted:\n{output}\n{plugin.log_tail()}"
    ok, output = ping_ok(second, first_ip)
    assert ok, output

    # a new container joins the existing network through the restarted plugin
    third = run_container(network)
    assert container_ip(third, network).startswith("10.77.70.")
    for peer_ip in (first_ip, second_ip):
        ok, output = ping_ok(third, peer_ip)
        assert ok, f"the new container cannot ping {peer_ip}:\n{output}\n{plugin.log_tail()}"

    for container in (first, second, third):
        container.remove(force=True)
    network.remove()
    assert wait_for(lambda: not (links() & {"vxbr-7070", "vxlan-7070"}), 5), sorted(links())
    assert state_rows(plugin.state_db, network.id) == {"networks": 0, "endpoints": 0}


def test_network_removal_leaves_nothing_behind(
    plugin: PluginProcess, create_network: Callable[..., Any], run_container: Callable[..., Any]
) -> None:
    network = create_network(vni=7071, subnet="10.77.71.0/24")
    container = run_container(network, ports={"8080/tcp": 18081})

    # while it exists: the bridge with the VXLAN device and the container's veth, its chains and its rows
    ports = bridge_ports("vxbr-7071")
    endpoint_links = {name for name in ports if name.startswith("vxh-")}
    assert "vxlan-7071" in ports and len(endpoint_links) == 1, ports
    assert any(chain == "VXP-7071" for chain in vni_chains(7071)), sorted(vni_chains(7071))
    assert state_rows(plugin.state_db, network.id) == {"networks": 1, "endpoints": 1}

    container.remove(force=True)
    assert wait_for(lambda: not (links() & endpoint_links), 5), f"container veth left: {sorted(links())}"
    network.remove()

    assert _owned_links_of(7071, endpoint_links) == set()
    assert vni_chains(7071) == set()
    assert state_rows(plugin.state_db, network.id) == {"networks": 0, "endpoints": 0}
