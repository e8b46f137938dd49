"""The vxlanpy IPAM driver through `docker network create --ipam-driver vxlanpy`.  VNIs 7060-7069, subnets
10.77.62.0/24 and 10.77.69.0/24, automatic pools."""

from __future__ import annotations

import ipaddress
import sqlite3
from collections.abc import Callable
from typing import Any

import docker
import pytest

from .helpers import DRIVER, LABELS, PluginProcess, container_ip, ping_ok, plugin_call, unique_name

pytestmark = pytest.mark.e2e


def test_automatic_pool_gives_distinct_subnets_and_working_containers(
    create_network: Callable[..., Any], run_container: Callable[..., Any]
) -> None:
    first = create_network(vni=7060, ipam_driver="vxlanpy")
    second = create_network(vni=7061, ipam_driver="vxlanpy")
    first.reload()
    second.reload()
    pools = [ipaddress.ip_network(net.attrs["IPAM"]["Config"][0]["Subnet"]) for net in (first, second)]
    assert pools[0] != pools[1] and all(pool.subnet_of(ipaddress.ip_network("10.200.0.0/16")) for pool in pools)
    one, two = run_container(first), run_container(first)
    assert ipaddress.ip_address(container_ip(one, first)) in pools[0]
    ok, output = ping_ok(one, container_ip(two, first))
    assert ok, output


def test_explicit_subnet_and_static_ip(
    create_network: Callable[..., Any], run_container: Callable[..., Any], docker_client: Any
) -> None:
    network = create_network(vni=7062, subnet="10.77.62.0/24", ipam_driver="vxlanpy")
    first = run_container(network)
    taken = container_ip(first, network)
    assert taken.startswith("10.77.62.") and taken != "10.77.62.1"  # the gateway is never handed out
    # --ip: the address is reserved as asked, and a second claim on it is refused with the holder named
    endpoint = docker_client.api.create_endpoint_config(ipv4_address="10.77.62.50")
    fixed = run_container(network, networking_config={network.name: endpoint})
    assert container_ip(fixed, network) == "10.77.62.50"
    with pytest.raises(docker.errors.APIError) as refused:
        run_container(network, networking_config={network.name: endpoint})
    assert "10.77.62.50" in str(refused.value) and "already in use" in str(refused.value)


def test_a_pool_whose_network_create_never_completed_is_released_at_start_up(
    docker_client: Any, plugin: PluginProcess, create_network: Callable[..., Any]
) -> None:
    """dockerd's RequestPool and gateway RequestAddress, then a kill -9 before CreateNetwork: Docker's ReleasePool
    is lost and the automatic pool was held for good.  The next start releases it (no row, no Docker network
    uses it) and keeps a pool that a network of another driver uses (Docker knows it, vxlanpy has no row)."""
    socket_path = str(plugin.socket_path)
    status, grant = plugin_call(
        socket_path,
        "/IpamDriver.RequestPool",
        {"AddressSpace": "vxlanpy-local", "Pool": "", "SubPool": "", "Options": {}, "V6": False},
    )
    assert status == 200, grant
    status, gateway = plugin_call(
        socket_path,
        "/IpamDriver.RequestAddress",
        {"PoolID": grant["PoolID"], "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}},
    )
    assert status == 200, gateway
    bridged = docker_client.networks.create(
        unique_name("vxt-br"),
        driver="bridge",
        ipam=docker.types.IPAMConfig(driver=DRIVER, pool_configs=[docker.types.IPAMPool(subnet="10.77.69.0/24")]),
        labels=dict(LABELS),
    )
    plugin.kill9()  # the create's CreateNetwork never comes
    plugin.start()

    assert f"released 1 IPAM pool claim(s) of network creates that never completed: {grant['Pool']}" in (
        plugin.log_text()
    )
    again = create_network(vni=7063, ipam_driver=DRIVER)
    again.reload()
    assert again.attrs["IPAM"]["Config"][0]["Subnet"] == grant["Pool"]  # the subnet is free again
    with sqlite3.connect(f"file:{plugin.state_db}?mode=ro", uri=True) as db:
        pools = {row[0] for row in db.execute("SELECT pool_id FROM ipam_pools")}
    assert "10.77.69.0/24" in pools  # the bridge network's pool is Docker's: kept
    bridged.remove()
