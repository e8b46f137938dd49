"""What Docker 28 added, end to end: IPv6-only networks, --gw-priority, and the endpoint ifname option.
VNIs 7280-7289, subnets 10.77.180-189.0/24 and fd00:77:28N::/64, host ports 18280-18289.

The docker SDK here predates API 1.48, so EnableIPv4 (network create) and GwPriority (endpoint settings) are
sent with raw API calls.  Published ports are read back from the plugin (EndpointOperInfo): Docker shows none
for remote drivers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .helpers import (
    DRIVER,
    LABELS,
    PluginProcess,
    container_ip,
    docker,
    exec_ok,
    http_get,
    ping_ok,
    plugin_call,
    tcp_connect,
    unique_name,
    wait_for,
)

pytestmark = pytest.mark.e2e

CONTAINER_PORT = 8080
PAGE = "hello from the gateway endpoint"
HTTPD = f"mkdir -p /www && echo '{PAGE}' > /www/index.html && exec httpd -f -p {CONTAINER_PORT} -h /www"


@pytest.fixture
def raw_network(docker_client: Any, plugin: PluginProcess) -> Iterator[Callable[..., Any]]:
    """raw_network(**fields) -> docker Network, created with a raw API body (labelled; removed by _cleanup)."""

    def _create(**fields: Any) -> Any:
        body = {"Name": unique_name("vxt-net"), "Driver": DRIVER, "Labels": dict(LABELS), **fields}
        api = docker_client.api
        response = api._post_json(api._url("/networks/create"), data=body)
        created = api._result(response, json=True)
        return docker_client.networks.get(created["Id"])

    yield _create


def connect(docker_client: Any, network: Any, container: Any, **endpoint_config: Any) -> None:
    """`docker network connect` with any EndpointSettings field (GwPriority needs API 1.48)."""
    api = docker_client.api
    url = api._url("/networks/{0}/connect", network.id)
    api._raise_for_status(api._post_json(url, data={"Container": container.id, "EndpointConfig": endpoint_config}))


def default_route(container: Any, family: int = 4) -> str:
    code, output = exec_ok(container, ["ip", f"-{family}", "route", "show", "default"])
    assert code == 0, output
    return output.strip()


def published(plugin: PluginProcess, container: Any, network: Any) -> list[str]:
    """The ports vxlanpy publishes through the container's endpoint on `network`, as EndpointOperInfo says."""
    container.reload()
    endpoint_id = container.attrs["NetworkSettings"]["Networks"][network.name]["EndpointID"]
    status, body = plugin_call(
        str(plugin.socket_path),
        "/NetworkDriver.EndpointOperInfo",
        {"NetworkID": network.id, "EndpointID": endpoint_id},
    )
    assert status == 200, body
    return list(body["Value"]["ports"])


def serves(port: int) -> bool:
    try:
        return PAGE in http_get("127.0.0.1", port, timeout=2)
    except OSError:
        return False


@pytest.mark.min_engine(28)
@pytest.mark.parametrize("ipam_driver", ["default", DRIVER])
def test_ipv6_only_network_containers_ping_over_ipv6(
    raw_network: Callable[..., Any], run_container: Callable[..., Any], ipam_driver: str
) -> None:
    network = raw_network(
        EnableIPv4=False,
        EnableIPv6=True,
        Options={"vni": "7280"},
        IPAM={"Driver": ipam_driver, "Config": [{"Subnet": "fd00:77:280::/64"}]},
    )
    first, second = run_container(network), run_container(network)
    settings = first.attrs["NetworkSettings"]["Networks"][network.name]
    assert not settings["IPAddress"], f"an IPv6-only network gave {first.name} an IPv4 address: {settings}"
    target = container_ip(second, network, family=6)
    assert target.startswith("fd00:77:280:"), target
    ok, output = ping_ok(first, target, family=6)
    assert ok, f"{first.name} cannot ping {second.name} at {target} over IPv6:\n{output}"
    assert "via fd00:77:280::1" in default_route(first, 6)


@pytest.mark.min_engine(28)
def test_published_port_on_an_ipv6_only_network_is_accepted_and_not_published(
    plugin: PluginProcess, raw_network: Callable[..., Any], run_container: Callable[..., Any]
) -> None:
    """vxlanpy publishes over IPv4 only (docs/design.md, Docker 28 and 29): `-p` starts the container, and the
    plugin reports no port published through its IPv6-only endpoint."""
    network = raw_network(
        EnableIPv4=False,
        EnableIPv6=True,
        Options={"vni": "7288"},
        IPAM={"Driver": "default", "Config": [{"Subnet": "fd00:77:288::/64"}]},
    )
    server = run_container(network, command=["sh", "-c", HTTPD], ports={f"{CONTAINER_PORT}/tcp": 18288})
    assert server.status == "running", server.logs()
    assert published(plugin, server, network) == []


@pytest.mark.min_engine(28)
def test_ipv4_false_without_ipv6_is_refused(raw_network: Callable[..., Any]) -> None:
    with pytest.raises(docker.errors.APIError) as refused:
        raw_network(EnableIPv4=False, Options={"vni": "7281"})
    message = str(refused.value)
    assert "--ipv4=false turns IPv4 off and IPv6 is off too; add --ipv6" in message, message


@pytest.mark.min_engine(28)
def test_gw_priority_moves_default_route_and_published_port_between_vxlanpy_networks(
    docker_client: Any,
    plugin: PluginProcess,
    create_network: Callable[..., Any],
    run_container: Callable[..., Any],
) -> None:
    first = create_network(vni=7282, subnet="10.77.182.0/24")
    second = create_network(vni=7283, subnet="10.77.183.0/24")
    host_port = 18282
    server = run_container(first, command=["sh", "-c", HTTPD], ports={f"{CONTAINER_PORT}/tcp": host_port})
    assert "via 10.77.182.1" in default_route(server)
    assert wait_for(lambda: serves(host_port), 10), f"port {host_port} is not served through {first.name}"
    assert published(plugin, server, first) == [f"0.0.0.0:{host_port}->{CONTAINER_PORT}/tcp"]

    # the second network takes over as the gateway: Docker revokes the first endpoint, programs the second
    connect(docker_client, second, server, GwPriority=10)
    assert "via 10.77.183.1" in default_route(server)
    assert published(plugin, server, first) == []
    assert published(plugin, server, second) == [f"0.0.0.0:{host_port}->{CONTAINER_PORT}/tcp"]
    assert wait_for(lambda: serves(host_port), 10), f"port {host_port} is not served through {second.name}"

    # and gives it back when it leaves
    second.disconnect(server)
    assert "via 10.77.182.1" in default_route(server)
    assert published(plugin, server, first) == [f"0.0.0.0:{host_port}->{CONTAINER_PORT}/tcp"]
    assert wait_for(lambda: serves(host_port), 10), f"port {host_port} is not served through {first.name} again"

    server.remove(force=True)
    assert wait_for(lambda: not tcp_connect("127.0.0.1", host_port, timeout=1), 10), "the port outlived its container"


@pytest.mark.min_engine(28)
def test_gw_priority_between_dockers_bridge_and_vxlanpy(
    docker_client: Any,
    plugin: PluginProcess,
    create_network: Callable[..., Any],
    run_container: Callable[..., Any],
) -> None:
    bridge = docker_client.networks.create(
        unique_name("vxt-br"),
        driver="bridge",
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="10.77.184.0/24")]),
        labels=dict(LABELS),
    )
    vxlan = create_network(vni=7284, subnet="10.77.185.0/24")
    host_port = 18284
    server = run_container(bridge, command=["sh", "-c", HTTPD], ports={f"{CONTAINER_PORT}/tcp": host_port})
    assert wait_for(lambda: serves(host_port), 10), f"port {host_port} is not served through Docker's bridge"

    connect(docker_client, vxlan, server, GwPriority=10)
    assert "via 10.77.185.1" in default_route(server)
    assert published(plugin, server, vxlan) == [f"0.0.0.0:{host_port}->{CONTAINER_PORT}/tcp"]
    assert wait_for(lambda: serves(host_port), 10), f"port {host_port} is not served through {vxlan.name}"

    vxlan.disconnect(server)
    assert "via 10.77.184.1" in default_route(server)
    assert wait_for(lambda: serves(host_port), 10), f"port {host_port} is not served through the bridge again"


def test_ifname_driver_option_is_refused_with_a_clear_error(
    docker_client: Any, create_network: Callable[..., Any], run_container: Callable[..., Any]
) -> None:
    """Every engine passes endpoint driver options to the driver; Docker 28 gave this one a meaning that a remote
    driver cannot honour, so vxlanpy refuses it rather than give the interface another name."""
    network = create_network(vni=7286, subnet="10.77.186.0/24")
    option = {"com.docker.network.endpoint.ifname": "data0"}
    config = {network.name: docker_client.api.create_endpoint_config(driver_opt=option)}
    with pytest.raises(docker.errors.APIError) as refused:
        run_container(network, networking_config=config)
    message = str(refused.value)
    assert "com.docker.network.endpoint.ifname='data0' cannot be honoured" in message, message
    assert "remove that driver option" in message, message

    container = run_container(network)
    other = create_network(vni=7287, subnet="10.77.187.0/24")
    with pytest.raises(docker.errors.APIError) as refused:
        other.connect(container, driver_opt=option)
    assert "com.docker.network.endpoint.ifname='data0' cannot be honoured" in str(refused.value)
    # nothing joined: one interface besides lo, and no endpoint on the other network (Docker 28 keeps the refused
    # settings in the container's NetworkSettings, with no EndpointID)
    code, output = exec_ok(container, ["ls", "/sys/class/net"])
    assert code == 0 and sorted(output.split()) == ["eth0", "lo"], output
    other.reload()
    assert not other.attrs.get("Containers"), other.attrs["Containers"]
