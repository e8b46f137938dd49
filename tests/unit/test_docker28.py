"""Docker 28 and 29 on the wire: GwAllocCheck, IPv6-only networks, the new endpoint options, and publishing
that follows the container's gateway endpoint (--gw-priority) in the order Docker 28 and 29 call the driver.

No Docker 29 engine is at hand, so its call order is replayed here, from moby's libnetwork (endpoint.go
`updateExternalConnectivity`, `sbLeave`, and drivers/remote/driver.go, which turns "not the gateway any more"
into RevokeExternalConnectivity and passes Join's Options to ProgramExternalConnectivity).
"""

from __future__ import annotations

from typing import Any

import pytest

from vxlanpy.models import PortMapping

from .conftest import EP, EP2, NET, NET2, Harness

V6_POOL = [{"AddressSpace": "LocalDefault", "Pool": "fd00:77::/64", "Gateway": "fd00:77::1/64"}]
V6_ONLY = {"com.docker.network.enable_ipv4": False, "com.docker.network.enable_ipv6": True}
PORTMAP = [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}]
EPHEMERAL = [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 0, "HostPortEnd": 0}]
# What Docker 28/29 send as Join's Options (sb.Labels()), and Docker 29 again in ProgramExternalConnectivity.
SANDBOX_OPTIONS: dict[str, Any] = {
    "com.docker.network.portmap": PORTMAP,
    "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
}


def published_by_network(harness: Harness) -> dict[int, set[tuple[str, int]]]:
    """Per VNI, the (proto, host port) pairs its firewall chains publish now."""
    return {
        vni: {(port.proto, port.host_port) for endpoint in endpoints for port in endpoint.ports}
        for vni, (network, endpoints) in harness.firewall.networks.items()
        if not network.internal
    }


# -- GwAllocCheck -------------------------------------------------------------------------------------------


def test_gw_alloc_check_keeps_every_gateway_and_creates_nothing(harness: Harness) -> None:
    for internal in (False, True):
        body = {
            "Options": {
                "com.docker.network.enable_ipv4": True,
                "com.docker.network.enable_ipv6": True,
                "com.docker.network.generic": {"vni": "42", "mtu": "1400"},
                "com.docker.network.internal": internal,
            }
        }
        assert harness.call("NetworkDriver.GwAllocCheck", body) == (200, {"SkipIPv4": False, "SkipIPv6": False})
    assert harness.store.list_networks() == [] and harness.links.networks == {} and harness.firewall.networks == {}


def test_gw_alloc_check_refuses_a_bad_option_before_docker_allocates_addresses(harness: Harness) -> None:
    status, body = harness.call("NetworkDriver.GwAllocCheck", {"Options": {"com.docker.network.generic": {"vni": "0"}}})
    assert status == 400 and "vni='0' is not valid; use a whole number from 1 to 16777215" in body["Err"]
    assert harness.store.list_networks() == []


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        ({"com.docker.network.enable_ipv4": "false"}, "com.docker.network.enable_ipv4 must be a boolean"),
        ({"com.docker.network.enable_ipv6": 1}, "com.docker.network.enable_ipv6 must be a boolean"),
        ({"com.docker.network.internal": "yes"}, "com.docker.network.internal must be a boolean"),
        ({"com.docker.network.generic": ["vni"]}, "com.docker.network.generic must be an object"),
    ],
)
def test_new_top_level_options_are_checked(harness: Harness, options: dict[str, Any], phrase: str) -> None:
    for method in ("NetworkDriver.GwAllocCheck", "NetworkDriver.CreateNetwork"):
        status, body = harness.call(method, {"NetworkID": NET, "Options": options})
        assert status == 400 and phrase in body["Err"], (method, body)
    assert harness.store.list_networks() == []


def test_enable_options_given_with_dash_o_are_docker_s_not_the_driver_s(harness: Harness) -> None:
    """`docker network create -o com.docker.network.enable_ipv6=true`: Docker applies it and leaves it among the
    driver options too; it is not refused as an unknown vxlanpy option."""
    generic = {"vni": "42", "com.docker.network.enable_ipv4": "true", "com.docker.network.enable_ipv6": "true"}
    body = {"Options": {"com.docker.network.generic": generic, "com.docker.network.enable_ipv6": True}}
    assert harness.call("NetworkDriver.GwAllocCheck", body)[0] == 200
    status, _ = harness.create_network(generic=generic, ipv6=V6_POOL)
    assert status == 200
    network = harness.store.get_network(NET)
    assert network is not None and network.vni == 42 and len(network.ipv6) == 1
    status, body = harness.create_network(NET2, generic={"com.docker.network.enable_ipv4x": "true"})
    assert status == 400 and "unknown option com.docker.network.enable_ipv4x" in body["Err"]


# -- IPv6-only networks -------------------------------------------------------------------------------------


def test_ipv6_only_network_gets_endpoints_and_a_v6_gateway(harness: Harness) -> None:
    assert harness.create_network(generic={"vni": "77"}, options=V6_ONLY, ipv4=[], ipv6=V6_POOL) == (200, {})
    network = harness.store.get_network(NET)
    assert network is not None and network.ipv4 == () and [str(g) for g in network.gateways] == ["fd00:77::1/64"]
    assert harness.links.networks["vxbr-77"] == network and 77 in harness.firewall.networks

    status, body = harness.create_endpoint(Address="", AddressIPv6="fd00:77::2/64")
    assert status == 200 and body == {"Interface": {"MacAddress": "02:cc:cc:cc:cc:cc"}}  # from the endpoint id
    status, body = harness.call(
        "NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x", "Options": SANDBOX_OPTIONS}
    )
    assert status == 200
    assert body == {"InterfaceName": {"SrcName": "vxc-ccccccccccc", "DstPrefix": "eth"}, "GatewayIPv6": "fd00:77::1"}


def test_ports_on_an_ipv6_only_endpoint_are_not_published_nor_reserved(harness: Harness) -> None:
    harness.create_network(generic={"vni": "77"}, options=V6_ONLY, ipv4=[], ipv6=V6_POOL)
    harness.create_endpoint(Address="", AddressIPv6="fd00:77::2/64")
    program = {"NetworkID": NET, "EndpointID": EP, "Options": SANDBOX_OPTIONS}
    # Docker sends the container's ports to its IPv6 gateway too; the IPv4 gateway (elsewhere) publishes them.
    assert harness.call("NetworkDriver.ProgramExternalConnectivity", program) == (200, {})
    assert harness.firewall.published() == set()
    assert harness.driver.get_endpoint(NET, EP).ports == ()
    # nothing holds host port 8080: an IPv4 network can publish it
    harness.create_network(NET2, generic={"vni": "78"}, ipv4=[{"Pool": "10.2.0.0/24", "Gateway": "10.2.0.1/24"}])
    harness.create_endpoint(EP2, NET2, Address="10.2.0.2/24")
    harness.driver.program_external_connectivity(NET2, EP2, [PortMapping("tcp", 80, 8080)])
    assert harness.firewall.published() == {("tcp", 8080)}


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        (
            {"com.docker.network.enable_ipv4": False, "com.docker.network.enable_ipv6": False},
            "--ipv4=false turns IPv4 off and IPv6 is off too; add --ipv6",
        ),
        ({}, "Docker gave the network neither an IPv4 nor an IPv6 subnet; create it with --subnet"),
    ],
)
def test_a_network_without_any_subnet_is_refused(harness: Harness, options: dict[str, Any], phrase: str) -> None:
    status, body = harness.create_network(options=options, ipv4=[], ipv6=[])
    assert status == 400 and phrase in body["Err"]
    assert harness.store.list_networks() == [] and harness.links.networks == {} and harness.firewall.networks == {}


# -- endpoint options ---------------------------------------------------------------------------------------


def test_ifname_option_is_refused_naming_it(harness: Harness) -> None:
    harness.create_network()
    status, body = harness.call(
        "NetworkDriver.CreateEndpoint",
        {
            "NetworkID": NET,
            "EndpointID": EP,
            "Interface": {"Address": "10.1.0.2/24"},
            "Options": {"com.docker.network.endpoint.ifname": "data0"},
        },
    )
    assert status == 400
    assert body["Err"].startswith("driver option com.docker.network.endpoint.ifname='data0' cannot be honoured")
    assert "Docker names the interfaces of remote network drivers itself (eth0, eth1, ..." in body["Err"]
    assert "remove that driver option" in body["Err"]
    assert harness.store.list_endpoints() == [] and harness.links.endpoints == {}


def test_endpoint_sysctls_are_left_to_docker(harness: Harness) -> None:
    harness.create_network()
    sysctls = "net.ipv4.conf.IFNAME.log_martians=1,net.ipv6.conf.IFNAME.accept_ra=0"
    status, body = harness.call(
        "NetworkDriver.CreateEndpoint",
        {
            "NetworkID": NET,
            "EndpointID": EP,
            "Interface": {"Address": "10.1.0.2/24"},
            "Options": {"com.docker.network.endpoint.sysctls": sysctls, "com.docker.network.endpoint.ifname": ""},
        },
    )
    assert (status, body) == (200, {"Interface": {"MacAddress": "02:42:0a:01:00:02"}})
    assert set(harness.links.endpoints) == {"vxh-ccccccccccc"}


# -- the gateway endpoint: Docker 28 and 29 call orders -----------------------------------------------------


class Container:
    """One container's endpoints on two vxlanpy networks, driven through the wire protocol."""

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        harness.create_network(NET, generic={"vni": "100"}, ipv4=[{"Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}])
        harness.create_network(NET2, generic={"vni": "101"}, ipv4=[{"Pool": "10.2.0.0/24", "Gateway": "10.2.0.1/24"}])

    def call(self, method: str, network: str, endpoint: str, **extra: Any) -> dict[str, Any]:
        status, body = self.h.call(f"NetworkDriver.{method}", {"NetworkID": network, "EndpointID": endpoint, **extra})
        assert status == 200, (method, body)
        return body

    def connect(self, network: str, endpoint: str, address: str) -> dict[str, Any]:
        self.call("CreateEndpoint", network, endpoint, Interface={"Address": address}, Options={})
        return self.call("Join", network, endpoint, SandboxKey="/var/run/docker/netns/c1", Options=SANDBOX_OPTIONS)

    def program(self, network: str, endpoint: str, portmap: list[dict[str, Any]] = PORTMAP) -> None:
        options = {**SANDBOX_OPTIONS, "com.docker.network.portmap": portmap}
        self.call("ProgramExternalConnectivity", network, endpoint, Options=options)

    def revoke(self, network: str, endpoint: str) -> None:
        self.call("RevokeExternalConnectivity", network, endpoint)

    def disconnect(self, network: str, endpoint: str) -> None:
        self.call("Leave", network, endpoint)
        self.call("DeleteEndpoint", network, endpoint)


def test_docker29_gateway_moves_to_higher_priority_network_and_back(harness: Harness) -> None:
    c = Container(harness)
    # docker run --network A -p 8080:80: A's endpoint is the gateway
    join_a = c.connect(NET, EP, "10.1.0.2/24")
    assert join_a["Gateway"] == "10.1.0.1"  # the default route Docker sets when A is the gateway
    c.program(NET, EP)
    assert published_by_network(harness) == {100: {("tcp", 8080)}, 101: set()}

    # docker network connect --gw-priority 10 B: Docker 29 calls Program(A, gw=B), which the remote driver
    # turns into Revoke(A), then Program(B).  Join still returns B's gateway: Docker picks the default route.
    join_b = c.connect(NET2, EP2, "10.2.0.2/24")
    assert join_b["Gateway"] == "10.2.0.1"
    c.revoke(NET, EP)
    c.program(NET2, EP2)
    assert published_by_network(harness) == {100: set(), 101: {("tcp", 8080)}}

    # docker network disconnect B: Program(B, "", "") -> Revoke(B), Leave(B), then Program(A) again
    c.revoke(NET2, EP2)
    c.disconnect(NET2, EP2)
    c.program(NET, EP)
    assert published_by_network(harness) == {100: {("tcp", 8080)}, 101: set()}
    assert "vxh-ddddddddddd" not in harness.links.endpoints

    # docker rm -f: Revoke(A), Leave(A), DeleteEndpoint(A): nothing is left
    c.revoke(NET, EP)
    c.disconnect(NET, EP)
    assert published_by_network(harness) == {100: set(), 101: set()}
    assert harness.store.list_endpoints() == [] and harness.links.endpoints == {}


def test_docker28_gateway_endpoint_removed_while_it_publishes(harness: Harness) -> None:
    """Docker 28's sbLeave: Revoke and Leave the gateway, then Program the next one."""
    c = Container(harness)
    c.connect(NET, EP, "10.1.0.2/24")
    c.connect(NET2, EP2, "10.2.0.2/24")
    c.program(NET2, EP2)  # B has the higher --gw-priority: only B is programmed
    assert published_by_network(harness) == {100: set(), 101: {("tcp", 8080)}}
    c.revoke(NET2, EP2)
    c.disconnect(NET2, EP2)
    c.program(NET, EP)
    assert published_by_network(harness) == {100: {("tcp", 8080)}, 101: set()}


def test_docker29_programs_again_without_revoke_and_keeps_the_host_port(harness: Harness) -> None:
    c = Container(harness)
    c.connect(NET, EP, "10.1.0.2/24")
    harness.busy_ports.add(49153)
    c.program(NET, EP, EPHEMERAL)
    assert published_by_network(harness)[100] == {("tcp", 49154)}
    harness.busy_ports.discard(49153)  # a lower port is free now: the chosen one must not move anyway
    c.program(NET, EP, EPHEMERAL)  # e.g. it became the IPv6 gateway as well
    assert published_by_network(harness)[100] == {("tcp", 49154)}
    assert harness.driver.get_endpoint(NET, EP).ports == (PortMapping("tcp", 80, 49154),)


def test_new_gateway_failing_leaves_the_old_one_restorable(harness: Harness) -> None:
    """Docker rolls back a failed Program of the new gateway by programming the old one again."""
    c = Container(harness)
    c.connect(NET, EP, "10.1.0.2/24")
    c.program(NET, EP)
    c.connect(NET2, EP2, "10.2.0.2/24")
    c.revoke(NET, EP)
    harness.firewall.fail_on.add("ensure_network")
    status, body = harness.call(
        "NetworkDriver.ProgramExternalConnectivity",
        {"NetworkID": NET2, "EndpointID": EP2, "Options": SANDBOX_OPTIONS},
    )
    assert status == 500 and "injected failure" in body["Err"]
    assert harness.driver.get_endpoint(NET2, EP2).ports == ()  # B claims no host port it does not publish
    harness.firewall.fail_on.clear()
    c.program(NET, EP)
    assert published_by_network(harness) == {100: {("tcp", 8080)}, 101: set()}


def test_vxlanpy_beside_dockers_bridge(harness: Harness) -> None:
    """The container's gateway is Docker's bridge, then vxlanpy (higher --gw-priority on connect), then the
    bridge again: vxlanpy publishes only while Docker has it programmed, after the bridge let the port go."""
    c = Container(harness)
    c.connect(NET, EP, "10.1.0.2/24")  # not the gateway: Docker does not call Program
    assert harness.firewall.published() == set()
    harness.busy_ports.add(8080)  # the bridge's docker-proxy holds the port while the bridge is the gateway
    status, body = harness.call(
        "NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": EP, "Options": SANDBOX_OPTIONS}
    )
    assert status == 409 and "host port 8080/tcp is already allocated" in body["Err"]
    harness.busy_ports.discard(8080)  # Docker revokes the bridge endpoint before it programs ours
    c.program(NET, EP)
    assert harness.firewall.published() == {("tcp", 8080)}
    c.revoke(NET, EP)  # vxlanpy disconnected: Docker revokes it, then programs the bridge again
    assert harness.firewall.published() == set()
    assert harness.driver.get_endpoint(NET, EP).ports == ()
