"""The vxlanpy IPAM driver through `docker network create --ipam-driver vxlanpy`.  VNIs 7060-7069."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import docker
import pytest

from .helpers import container_ip, ping_ok

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
