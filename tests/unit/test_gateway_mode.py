"""-o gateway=docker_gwbridge: Join returns no gateway (libnetwork then adds docker_gwbridge), vxlanpy neither
masquerades nor publishes, and `vxlanpy inspect` takes the ports from Docker.  The default stays vxlanpy's own."""

from __future__ import annotations

import ipaddress
import json

import pytest

from vxlanpy.dataplane.iptables import dnat_rules, masquerade_rules
from vxlanpy.models import Endpoint, Network, NetworkConfig, PortMapping, Subnet

from .cli_fakes import CliHarness
from .conftest import EP, EP2, NET, Harness

GWBRIDGE = {"gateway": "docker_gwbridge"}
JOIN = {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/x", "Options": {}}
PORT = PortMapping("tcp", 80, 8080)
V6 = [{"AddressSpace": "LocalDefault", "Pool": "fd00:1::/64", "Gateway": "fd00:1::1/64"}]


def test_join_in_gwbridge_mode_returns_no_gateway_and_keeps_the_gateway_service(harness: Harness) -> None:
    assert harness.create_network(generic=GWBRIDGE, ipv6=V6) == (200, {})
    harness.create_endpoint(AddressIPv6="fd00:1::2/64")
    status, body = harness.call("NetworkDriver.Join", JOIN)
    assert status == 200
    assert body == {
        "InterfaceName": {"SrcName": "vxc-ccccccccccc", "DstPrefix": "eth"},
        "DisableGatewayService": False,
    }


def test_default_mode_join_is_unchanged(harness: Harness) -> None:
    harness.create_network(generic={"gateway": "vxlanpy"})
    harness.create_endpoint()
    status, body = harness.call("NetworkDriver.Join", JOIN)
    assert status == 200 and body["Gateway"] == "10.1.0.1" and "DisableGatewayService" not in body


@pytest.mark.parametrize(
    ("generic", "extra", "message"),
    [
        ({"gateway": "gwbridge"}, {}, "gateway='gwbridge' is not valid; use gateway=vxlanpy"),
        ({"gateway": "Docker_Gwbridge"}, {}, "is not valid"),
        (GWBRIDGE, {"options": {"com.docker.network.internal": True}}, "does not apply to an --internal network"),
        (GWBRIDGE, {"ipv4": [], "ipv6": V6}, "gateway=docker_gwbridge needs an IPv4 subnet"),
    ],
    ids=["unknown", "case", "internal", "ipv6-only"],
)
def test_gateway_option_is_refused_before_anything_is_made(
    harness: Harness, generic: dict[str, str], extra: dict[str, object], message: str
) -> None:
    status, body = harness.create_network(generic=generic, **extra)
    assert status == 400 and message in body["Err"], body
    assert harness.store.list_networks() == [] and harness.links.networks == {}


def test_gw_alloc_check_refuses_gwbridge_on_an_internal_network(harness: Harness) -> None:
    options = {"com.docker.network.generic": GWBRIDGE, "com.docker.network.internal": True}
    status, body = harness.call("NetworkDriver.GwAllocCheck", {"Options": options})
    assert status == 400 and "--internal" in body["Err"]
    status, body = harness.call("NetworkDriver.GwAllocCheck", {"Options": {"com.docker.network.generic": GWBRIDGE}})
    assert (status, body) == (200, {"SkipIPv4": False, "SkipIPv6": False})


def test_gwbridge_mode_publishes_nothing_itself(harness: Harness) -> None:
    harness.create_network(generic=GWBRIDGE)
    harness.create_endpoint()
    endpoint = harness.driver.program_external_connectivity(NET, EP, [PORT])
    assert endpoint.ports == () and harness.firewall.published() == set()


def test_gwbridge_mode_has_no_nat_rules_of_its_own() -> None:
    """Docker's bridge masquerades and DNATs for docker_gwbridge: rules of vxlanpy's too would NAT twice."""
    subnet = (Subnet(ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_interface("10.1.0.1/24")),)
    default = Network(NET, NetworkConfig(vni=5), ipv4=subnet)
    gwbridge = Network(NET, NetworkConfig(vni=5, gateway="docker_gwbridge"), ipv4=subnet)
    ported = Endpoint(EP, NET, "02:42:0a:01:00:02", ipaddress.IPv4Interface("10.1.0.2/24"), ports=(PORT,))
    assert ["-s", "10.1.0.0/24", "!", "-o", "vxbr-5", "-j", "MASQUERADE"] in masquerade_rules(default)
    assert len(dnat_rules(default, [ported])) == 1
    assert masquerade_rules(gwbridge) == [] and dnat_rules(gwbridge, [ported]) == []


def test_the_mode_is_kept_in_the_row_and_old_rows_mean_vxlanpy() -> None:
    config = NetworkConfig(vni=5, gateway="docker_gwbridge")
    assert NetworkConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = config.to_dict()
    del old["gateway"]
    assert NetworkConfig.from_dict(old).gateway == "vxlanpy"


def test_inspect_shows_dockers_ports_in_gwbridge_mode(harness: Harness) -> None:
    harness.create_network(NET, generic={"vni": "42", **GWBRIDGE})
    harness.create_endpoint(EP, NET)
    harness.create_endpoint(EP2, NET, Address="10.1.0.3/24")
    cli = CliHarness(harness)
    cli.docker_network(NET, "demo", {EP: ("f" * 64, "web"), EP2: ("e" * 64, "client")})
    cli.docker.ports = {"f" * 64: ["0.0.0.0:18080->8080/tcp", "[::]:18080->8080/tcp"], "e" * 64: []}
    result = cli.run("inspect", "demo")
    assert result.exit_code == 0, result.output
    assert "gateway:   docker_gwbridge (Docker serves egress and -p through docker_gwbridge)" in result.stdout
    assert "0.0.0.0:18080->8080/tcp,[::]:18080->8080/tcp" in result.stdout
    (row,) = json.loads(cli.run("inspect", "--json", "demo").stdout)
    ports = {endpoint["container"]: (endpoint["ports"], endpoint["ports_by"]) for endpoint in row["endpoints"]}
    assert ports == {
        "web": (["0.0.0.0:18080->8080/tcp", "[::]:18080->8080/tcp"], "docker"),
        "client": ([], "docker"),
    }
    assert row["gateway"] == "docker_gwbridge"


def test_inspect_says_when_docker_cannot_tell_the_ports(harness: Harness) -> None:
    harness.create_network(NET, generic={"vni": "42", **GWBRIDGE})
    harness.create_endpoint(EP, NET)
    cli = CliHarness(harness)
    cli.docker.down = True
    result = cli.run("inspect", NET[:12])
    assert result.exit_code == 0, result.output
    assert "?(published by Docker; Docker does not answer)" in result.stdout


def test_inspect_shows_vxlanpys_own_ports_in_the_default_mode(harness: Harness) -> None:
    harness.create_network(NET, generic={"vni": "42"})
    harness.create_endpoint(EP, NET)
    harness.driver.program_external_connectivity(NET, EP, [PORT, PortMapping("udp", 53, 0)])
    cli = CliHarness(harness)
    cli.docker_network(NET, "demo", {EP: ("f" * 64, "web")})
    cli.docker.ports = {"f" * 64: ["0.0.0.0:9->9/tcp"]}  # not asked for: vxlanpy published these itself
    result = cli.run("inspect", "demo")
    assert result.exit_code == 0, result.output
    assert "gateway:   vxlanpy (gateway on the bridge; vxlanpy masquerades and publishes -p)" in result.stdout
    assert "0.0.0.0:8080->80/tcp,0.0.0.0:49153->53/udp" in result.stdout
    assert "0.0.0.0:9->9/tcp" not in result.stdout


def test_an_attached_namespace_gets_no_default_route_in_gwbridge_mode(harness: Harness) -> None:
    """vxlanpy routes nothing out of such a network and only Docker adds docker_gwbridge: a default route via the
    bridge's address would lead nowhere, so `vxlanpy attach` plumbs the on-link route only."""
    for network_id, generic in ((NET, {"vni": "42", **GWBRIDGE}), ("d" * 64, {"vni": "43"})):
        subnet = "10.1.0.0/24" if network_id == NET else "10.2.0.0/24"
        gateway = "10.1.0.1/24" if network_id == NET else "10.2.0.1/24"
        harness.create_network(network_id, generic=generic, ipv4=[{"Pool": subnet, "Gateway": gateway}])
    cli = CliHarness(harness)
    cli.docker_network(NET, "gw", {})
    cli.docker_network("d" * 64, "own", {})
    cli.sandboxes.alive.add("/run/netns/blue")
    cli.namespaces.append("blue")
    for name in ("gw", "own"):
        result = cli.run("attach", "--netns", "blue", name)
        assert result.exit_code == 0, result.output
    assert [plumbing.gateways for plumbing in cli.sandboxes.plumbed] == [(), (ipaddress.ip_address("10.2.0.1"),)]
