"""The `vxlanpy` CLI with Click's runner, against the real plugin app on fakes (see cli_fakes.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from vxlanpy.models import attachment_id
from vxlanpy.operator.attach import container_target, reservation_holder
from vxlanpy.operator.cli import main
from vxlanpy.operator.client import PluginClient, SdkDocker, discover_socket, vxlanpy_plugin_drivers

from .cli_fakes import HOST, CliHarness, dir_stat, socket_stat
from .conftest import EP, NET, NET2, Harness
from .test_notrack import LISTING as NOTRACK_LISTING

CID = "1" * 64
CID2 = "2" * 64
COMMANDS = ["ls", "inspect", "peers", "doctor", "attach", "detach", "gc", "health", "serve", "node", "rotate-key"]


@pytest.fixture
def cli(harness: Harness) -> CliHarness:
    harness.create_network(NET, generic={"vni": "42"})
    harness.create_endpoint(EP, NET)
    harness.driver.join(NET, EP, "/var/run/docker/netns/web")
    harness.live_sandboxes.add("/var/run/docker/netns/web")
    cli = CliHarness(harness)
    cli.docker_network(NET, "demo", {EP: ("f" * 64, "web")})
    return cli


def one_line_error(result: object) -> str:
    stderr = result.stderr  # type: ignore[attr-defined]
    lines = [line for line in stderr.splitlines() if line.startswith("vxlanpy:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- help -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(cli: CliHarness, command: str) -> None:
    result = cli.run(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output, result.output


def test_main_help_lists_exit_codes(cli: CliHarness) -> None:
    result = cli.run("--help")
    assert result.exit_code == 0 and "Exit codes" in result.output
    for command in COMMANDS:
        assert command in result.output


# -- ls / inspect -----------------------------------------------------------------------------------------------


def test_ls_table_and_json(cli: CliHarness) -> None:
    result = cli.run("ls")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "VNI", "MODE", "SUBNETS", "DEVICES", "MTU", "PEERS", "ENDPOINTS"]
    assert row.split() == ["demo", NET[:12], "42", "local", "10.1.0.0/24", "vxbr-42,vxlan-42", "1450", "-", "1"]

    result = cli.run("ls", "--json")
    rows = json.loads(result.stdout)
    keys = {"name", "id", "vni", "mode", "gateway", "subnets", "devices", "mtu", "peers", "endpoints"}
    assert [set(r) for r in rows] == [keys] and rows[0]["gateway"] == "vxlanpy"
    assert rows[0]["name"] == "demo" and rows[0]["id"] == NET and rows[0]["vni"] == 42
    assert rows[0]["endpoints"][0]["container"] == "web" and rows[0]["endpoints"][0]["kind"] == "docker"


def test_ls_marks_missing_devices_and_mismatches(cli: CliHarness) -> None:
    cli.harness.create_network(NET2, generic={"vni": "43", "peers": "192.0.2.20,192.0.2.21"})
    cli.harness.links.networks.pop("vxbr-42")  # the kernel lost the bridge of vni 42
    cli.docker_network("e" * 64, "ghost")  # Docker knows a network the plugin does not
    result = cli.run("ls")
    assert result.exit_code == 0
    assert "vxbr-42(missing),vxlan-42(missing)" in result.stdout
    assert "192.0.2.20,192.0.2.21" in result.stdout
    assert "ghost" in result.stdout
    assert "Docker network ghost has no state in the plugin" in result.stderr
    assert f"network {NET2[:12]} (vni 43) is unknown to Docker" in result.stderr


def test_ls_without_docker_still_shows_the_plugins_view(cli: CliHarness) -> None:
    cli.docker.down = True
    result = cli.run("ls")
    assert result.exit_code == 0
    assert "warning: cannot reach Docker" in result.stderr
    assert NET[:12] in result.stdout and "42" in result.stdout


def test_ls_when_the_plugin_is_down_exits_3(cli: CliHarness) -> None:
    cli.plugin_up = False
    result = cli.run("ls")
    assert result.exit_code == 3
    assert "does not exist; is it running?" in one_line_error(result)


def test_inspect_shows_detail_and_json(cli: CliHarness) -> None:
    result = cli.run("inspect", "demo")
    assert result.exit_code == 0, result.output
    assert f"id:        {NET}" in result.stdout
    assert "vxlan-42 (vxlan, present; underlay eth0, local 192.0.2.10, port 4789)" in result.stdout
    assert "web" in result.stdout and "10.1.0.2/24" in result.stdout
    rows = json.loads(cli.run("inspect", "--json", "demo").stdout)
    assert len(rows) == 1 and rows[0]["vni"] == 42


def test_inspect_by_plugin_id_prefix_when_docker_does_not_know_it(cli: CliHarness) -> None:
    cli.docker.networks.clear()
    result = cli.run("inspect", NET[:8])
    assert result.exit_code == 0 and "vni:       42" in result.stdout


def test_inspect_unknown_network_is_one_line_exit_1(cli: CliHarness) -> None:
    result = cli.run("inspect", "nosuch")
    assert result.exit_code == 1
    assert "no such network: nosuch" in one_line_error(result)


def test_unexpected_error_is_one_line_not_a_traceback(cli: CliHarness) -> None:
    cli.docker.boom = True
    result = cli.run("inspect", "demo")
    assert result.exit_code == 1
    assert "internal error (RuntimeError: the fake exploded)" in one_line_error(result)


# -- attach / detach --------------------------------------------------------------------------------------------


def test_attach_takes_the_highest_free_address_on_dockers_ipam(cli: CliHarness) -> None:
    cli.container("solo", CID)
    result = cli.run("attach", "solo", "demo")
    assert result.exit_code == 0, result.output
    assert "attached container solo" in result.stdout and "eth0 10.1.0.254/24" in result.stdout
    assert "mtu 1450" in result.stdout and "default via 10.1.0.1 dev eth0" in result.stdout
    assert "attaching container solo" in result.stderr  # progress
    (plumbing,) = cli.sandboxes.plumbed
    assert plumbing.netns == f"/var/run/docker/netns/{CID[:12]}" and plumbing.mtu == 1450
    assert [str(g) for g in plumbing.gateways] == ["10.1.0.1"]
    endpoint = cli.harness.store.get_endpoint(attachment_id(container_target(CID), NET))
    assert endpoint is not None and str(endpoint.ipv4) == "10.1.0.254/24"
    assert endpoint.sandbox_key == plumbing.netns
    assert endpoint.host_veth in cli.harness.links.endpoints
    # ls names the attachment after its container
    rows = json.loads(cli.run("ls", "--json").stdout)
    attached = [e for e in rows[0]["endpoints"] if e["kind"] == "attached"]
    assert [e["container"] for e in attached] == ["solo"]

    result = cli.run("detach", "solo", "demo")
    assert result.exit_code == 0, result.output
    assert "detached container solo" in result.stdout
    assert cli.harness.store.get_endpoint(endpoint.endpoint_id) is None
    assert endpoint.host_veth not in cli.harness.links.endpoints


def test_attach_with_ip_and_second_container_and_ifname(cli: CliHarness) -> None:
    cli.container("solo", CID)
    cli.container("other", CID2)
    assert cli.run("attach", "solo", "demo", "--ip", "10.1.0.50", "--ifname", "vx0").exit_code == 0
    assert cli.sandboxes.plumbed[0].ifname == "vx0"
    result = cli.run("attach", "other", "demo", "--ip", "10.1.0.50")
    assert result.exit_code == 1 and "already used by another endpoint" in one_line_error(result)
    result = cli.run("attach", "other", "demo", "--ip", "10.1.0.2")  # the Docker container's address
    assert result.exit_code == 1
    result = cli.run("attach", "other", "demo", "--ip", "10.9.0.1")
    assert result.exit_code == 2 and "outside the network's subnets" in one_line_error(result)
    result = cli.run("attach", "other", "demo", "--ip", "10.1.0.1")
    assert result.exit_code == 1 and "gateway" in one_line_error(result)
    result = cli.run("attach", "other", "demo", "--ip", "nonsense")
    assert result.exit_code == 2 and "not an IP address" in result.stderr


def test_attach_twice_is_refused_and_refusals_leave_nothing(cli: CliHarness) -> None:
    cli.container("solo", CID)
    assert cli.run("attach", "solo", "demo").exit_code == 0
    result = cli.run("attach", "solo", "demo")
    assert result.exit_code == 1 and "already attached" in one_line_error(result)
    assert len(cli.harness.store.list_endpoints(NET)) == 2


def test_attach_refuses_containers_it_cannot_serve(cli: CliHarness) -> None:
    cli.container("bridged", CID, mode="bridge")
    cli.container("stopped", CID2, running=False)
    result = cli.run("attach", "bridged", "demo")
    assert result.exit_code == 1 and "docker network connect" in one_line_error(result)
    result = cli.run("attach", "stopped", "demo")
    assert result.exit_code == 1 and "is not running" in one_line_error(result)
    result = cli.run("attach", "nosuch", "demo")
    assert result.exit_code == 1 and "no such container" in one_line_error(result)
    result = cli.run("attach", "demo")
    assert result.exit_code == 2 and "give a container and a network" in result.stderr
    assert cli.harness.store.list_endpoints(NET) != [] and len(cli.harness.store.list_endpoints(NET)) == 1


def test_attach_failure_in_the_namespace_rolls_back(cli: CliHarness) -> None:
    cli.container("solo", CID)
    cli.sandboxes.fail = True
    result = cli.run("attach", "solo", "demo")
    assert result.exit_code == 1 and "injected failure in plumb" in one_line_error(result)
    assert [e.endpoint_id for e in cli.harness.store.list_endpoints(NET)] == [EP]
    assert list(cli.harness.links.endpoints) == [cli.harness.store.list_endpoints(NET)[0].host_veth]


def test_attach_failure_in_the_namespace_releases_the_reserved_address(cli: CliHarness) -> None:
    cli.harness.store.claim_pool("10.1.0.0/24", f"{HOST}/abcdef012345", exclusive=False)  # a vxlanpy IPAM pool
    cli.container("solo", CID)
    cli.sandboxes.fail = True
    result = cli.run("attach", "--ip", "10.1.0.9", "solo", "demo")
    assert result.exit_code == 1 and "injected failure in plumb" in one_line_error(result)
    assert "10.1.0.9" not in cli.harness.store.reserved_addresses("10.1.0.0/24")
    assert [e.endpoint_id for e in cli.harness.store.list_endpoints(NET)] == [EP]
    cli.sandboxes.fail = False
    result = cli.run("attach", "--ip", "10.1.0.9", "solo", "demo")  # the address is free again
    assert result.exit_code == 0, result.output


def test_attach_refused_address_leaves_nothing_behind(cli: CliHarness) -> None:
    cli.harness.store.claim_pool("10.1.0.0/24", f"{HOST}/abcdef012345", exclusive=False)
    cli.container("solo", CID)
    result = cli.run("attach", "--ip", "10.1.0.1", "solo", "demo")
    assert result.exit_code == 1 and "is the network's gateway" in one_line_error(result)
    result = cli.run("attach", "--ip", "10.1.0.9", "--ip6", "fd00::9", "solo", "demo")  # the network has no IPv6
    assert result.exit_code != 0 and "has no IPv6 subnet" in one_line_error(result)
    assert "10.1.0.9" not in cli.harness.store.reserved_addresses("10.1.0.0/24"), "the IPv4 reservation stays"
    assert [e.endpoint_id for e in cli.harness.store.list_endpoints(NET)] == [EP]


def test_attach_reserves_in_vxlanpys_ipam_and_detach_releases(cli: CliHarness) -> None:
    cli.harness.store.claim_pool("10.1.0.0/24", f"{HOST}/abcdef012345", exclusive=False)  # a vxlanpy IPAM pool
    cli.harness.store.reserve_address("10.1.0.0/24", "10.1.0.2", f"{HOST}/container-1")
    cli.container("solo", CID)
    result = cli.run("attach", "solo", "demo")
    assert result.exit_code == 0, result.output
    assert "10.1.0.3/24" in result.stdout  # lowest free: Docker asks vxlanpy, so no clash
    endpoint_id = attachment_id(container_target(CID), NET)
    reserved = cli.harness.store.reserved_addresses("10.1.0.0/24")
    assert reserved["10.1.0.3"] == reservation_holder(HOST, endpoint_id)
    assert cli.run("detach", "solo", "demo").exit_code == 0
    assert "10.1.0.3" not in cli.harness.store.reserved_addresses("10.1.0.0/24")


def test_attach_and_detach_a_named_namespace(cli: CliHarness) -> None:
    cli.sandboxes.alive.add("/run/netns/blue")
    cli.namespaces.append("blue")
    result = cli.run("attach", "--netns", "blue", "demo")
    assert result.exit_code == 0, result.output and "attached namespace blue" in result.stdout
    rows = json.loads(cli.run("ls", "--json").stdout)
    assert "netns:blue" in [e["container"] for e in rows[0]["endpoints"]]
    assert cli.run("detach", "--netns", "blue", "demo").exit_code == 0
    result = cli.run("attach", "--netns", "bad/name", "demo")
    assert result.exit_code == 2
    result = cli.run("attach", "--netns", "gone", "demo")
    assert result.exit_code == 1 and "does not exist" in one_line_error(result)


def test_detach_of_something_not_attached(cli: CliHarness) -> None:
    cli.container("solo", CID)
    result = cli.run("detach", "solo", "demo")
    assert result.exit_code == 1 and "is not attached" in one_line_error(result)


# -- gc ---------------------------------------------------------------------------------------------------------


def test_gc_removes_attachments_whose_container_stopped(cli: CliHarness) -> None:
    container = cli.container("solo", CID)
    assert cli.run("attach", "solo", "demo").exit_code == 0
    endpoint_id = attachment_id(container_target(CID), NET)
    result = cli.run("gc", "--dry-run")
    assert result.exit_code == 0 and "nothing to do" in result.stdout
    cli.sandboxes.stop(container.sandbox_key)

    result = cli.run("gc", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would remove attachment solo on demo: its namespace" in result.stdout
    assert "1 actions would be taken" in result.stdout
    assert cli.harness.store.get_endpoint(endpoint_id) is not None  # a dry run changes nothing

    result = cli.run("gc")
    assert "removed attachment solo on demo: its namespace is gone" in result.stdout
    assert "done: 1 actions" in result.stdout
    assert cli.harness.store.get_endpoint(endpoint_id) is None
    assert "nothing to do" in cli.run("gc").stdout


def test_gc_reports_and_removes_orphans_and_stray_reservations(cli: CliHarness) -> None:
    cli.harness.store.claim_pool("10.1.0.0/24", f"{HOST}/abcdef012345", exclusive=False)
    cli.harness.store.reserve_address("10.1.0.0/24", "10.1.0.9", f"{HOST}/attach-0123456789ab")  # a crash left it
    cli.harness.firewall.networks[77] = cli.harness.firewall.networks[42]  # an orphan chain
    result = cli.run("gc", "--dry-run")
    assert "would remove orphan firewall chains of vni 77" in result.stdout
    assert "would release address 10.1.0.9" in result.stdout
    result = cli.run("gc")
    assert "removed orphan firewall chains of vni 77" in result.stdout
    assert "10.1.0.9" not in cli.harness.store.reserved_addresses("10.1.0.0/24")


def test_gc_forget_only_networks_docker_does_not_know(cli: CliHarness) -> None:
    cli.harness.create_network(NET2, generic={"vni": "43"})
    result = cli.run("gc", "--forget", NET[:12])
    assert result.exit_code == 1 and "Docker still knows" in one_line_error(result)
    result = cli.run("gc", "--forget", NET2[:12])
    assert result.exit_code == 0 and f"forgot network {NET2[:12]} (vni 43)" in result.stdout
    assert cli.harness.store.get_network(NET2) is None and "vxbr-43" not in cli.harness.links.networks


# -- peers ------------------------------------------------------------------------------------------------------


def test_peers_match_and_mismatch(cli: CliHarness) -> None:
    cli.harness.create_network(NET2, generic={"vni": "43", "peers": "192.0.2.20,192.0.2.21"})
    cli.docker_network(NET2, "static")
    import ipaddress

    cli.harness.links.remotes[43] = ({ipaddress.ip_address("192.0.2.20"), ipaddress.ip_address("192.0.2.21")}, [])
    result = cli.run("peers", "static")
    assert result.exit_code == 0, result.output
    assert "compared with the static peers config" in result.stdout
    assert "result: the kernel matches the store" in result.stdout

    cli.harness.links.remotes[43] = ({ipaddress.ip_address("192.0.2.20"), ipaddress.ip_address("192.0.2.99")}, [])
    result = cli.run("peers", "static")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert any(line.split()[:1] == ["192.0.2.21"] and line.endswith("missing in kernel") for line in lines)
    assert any(line.split()[:1] == ["192.0.2.99"] and line.endswith("not in store") for line in lines)
    assert json.loads(cli.run("peers", "--json", "static").stdout)["match"] is False


# -- health -----------------------------------------------------------------------------------------------------


def test_health_ok_failing_and_unreachable(cli: CliHarness) -> None:
    result = cli.run("health")
    assert result.exit_code == 0 and result.stdout.startswith("healthy: store ok")
    assert cli.run("health", "-q").output == ""
    cli.harness.links.fail_on.add("owned_links")
    original = cli.harness.links.owned_links

    def broken() -> dict[str, str]:
        from vxlanpy.errors import DataplaneError

        raise DataplaneError("netlink is gone")

    cli.harness.links.owned_links = broken  # type: ignore[method-assign]
    result = cli.run("health")
    assert result.exit_code == 1 and "netlink FAILED (netlink is gone)" in result.stdout
    cli.harness.links.owned_links = original  # type: ignore[method-assign]
    cli.plugin_up = False
    result = cli.run("health")
    assert result.exit_code == 1 and result.stderr.startswith("unhealthy: cannot reach the plugin")


# -- doctor -----------------------------------------------------------------------------------------------------

FILTER_OK = """-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N VXLANPY-FORWARD
-N VXLANPY-INTERNAL
-A FORWARD -j VXLANPY-FORWARD
-A VXLANPY-FORWARD -i vxbr-+ -o vxbr-+ -m physdev --physdev-is-bridged -j ACCEPT
-A VXLANPY-FORWARD -i vxbr-+ -j VXLANPY-INTERNAL
-A VXLANPY-FORWARD -o vxbr-+ -j VXLANPY-INTERNAL
-A VXLANPY-FORWARD -o vxbr-+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A VXLANPY-FORWARD -o vxbr-+ -m conntrack --ctstate DNAT -j ACCEPT
-A VXLANPY-FORWARD -o vxbr-+ -j DROP
-A VXLANPY-FORWARD -i vxbr-+ -o docker0 -j DROP
-A VXLANPY-FORWARD -i vxbr-+ -o br-+ -j DROP
-A VXLANPY-FORWARD -i vxbr-+ -j ACCEPT
"""
NAT_OK = """-P PREROUTING ACCEPT
-N VXLANPY-POSTROUTING
-N VXLANPY-DNAT
-N VXP-42
-N VXPD-42
-A VXLANPY-POSTROUTING -j VXP-42
-A VXLANPY-DNAT -j VXPD-42
"""


def healthy_host(cli: CliHarness) -> None:
    probe = cli.probe
    for path in ("/sys/module/vxlan", "/sys/module/bridge", "/proc/sys/net/bridge"):
        probe.stats[path] = dir_stat()
    probe.stats[cli.socket] = socket_stat()
    probe.files["/proc/sys/net/ipv4/ip_forward"] = "1\n"
    probe.files["/sys/class/net/eth0/mtu"] = "1500\n"
    probe.files["/sys/class/net/vxbr-42/mtu"] = "1450\n"
    probe.commands[("iptables", "-w", "10", "-t", "filter", "-S")] = (0, FILTER_OK, "")
    probe.commands[("iptables", "-w", "10", "-t", "nat", "-S")] = (0, NAT_OK, "")
    probe.commands[("nft", "list", "table", "bridge", "vxlanpy")] = (0, NOTRACK_LISTING, "")


def test_doctor_on_a_healthy_host_exits_0(cli: CliHarness) -> None:
    healthy_host(cli)
    result = cli.run("doctor")
    assert result.exit_code == 0, result.output
    assert "[FAIL]" not in result.stdout and "[warn]" not in result.stdout and "checks: all good" in result.stdout
    for check in (
        "kernel module vxlan",
        "plugin answers dockerd",
        "state store",
        "FORWARD policy",
        "frames switched inside a network",
        "firewall of vni 42",
        "MTU of vni 42",
        "orphans",
        "VXLAN port udp/4789",
    ):
        assert f"] {check}:" in result.stdout, check


def test_doctor_reports_in_its_order_and_reads_each_firewall_table_once(cli: CliHarness) -> None:
    healthy_host(cli)
    result = cli.run("doctor", "--json")
    assert result.exit_code == 0, result.output
    checks = [finding["check"] for finding in json.loads(result.stdout)]
    order = ["kernel module vxlan", "plugin socket", "plugin answers dockerd", "state store", "IPv4 forwarding"]
    order += ["firewall layout", "vxlanpy's FORWARD hook", "vxlanpy's isolation rules", "firewall of vni 42"]
    order += ["MTU of vni 42", "peers of vni 42", "orphans", "VXLAN port udp/4789"]
    assert [checks.index(check) for check in order] == sorted(checks.index(check) for check in order), checks
    assert cli.probe.ran.count(("iptables", "-w", "10", "-t", "filter", "-S")) == 1
    assert cli.probe.ran.count(("nft", "-j", "list", "chains")) == 1


def test_doctor_explains_each_problem_and_exits_1(cli: CliHarness) -> None:
    healthy_host(cli)
    probe = cli.probe
    del probe.stats["/proc/sys/net/bridge"]
    probe.stats[cli.socket] = socket_stat(0o666)
    probe.files["/sys/class/net/eth0/mtu"] = "1400\n"
    probe.commands[("iptables", "-w", "10", "-t", "filter", "-S")] = (
        0,
        FILTER_OK.replace("-A FORWARD -j VXLANPY-FORWARD\n", "").replace("-A VXLANPY-FORWARD -o vxbr-+ -j DROP\n", "")
        + "-A INPUT -p udp -m udp --dport 4789 -j DROP\n",
        "",
    )
    probe.commands[("nft", "list", "table", "bridge", "vxlanpy")] = (1, "", "Error: No such file or directory")
    cli.harness.links.networks.pop("vxbr-42")
    cli.docker_network("e" * 64, "ghost")
    result = cli.run("doctor")
    assert result.exit_code == 1
    out = result.stdout
    assert "[warn] kernel module br_netfilter: not loaded" in out and "fix: modprobe br_netfilter" in out
    assert "has mode 0666" in out
    assert "[FAIL] Docker and plugin agree: Docker network ghost" in out
    assert "[FAIL] vxlanpy's FORWARD hook: missing" in out
    assert "[FAIL] vxlanpy's isolation rules: VXLANPY-FORWARD does not hold them" in out  # one rule deleted
    assert "[FAIL] firewall of vni 42" not in out  # its nat chains and hooks are there
    assert "[FAIL] MTU of vni 42: network MTU 1450 + 50 bytes of VXLAN > underlay eth0 MTU 1400" in out
    assert "fix: raise the MTU of eth0 to 1500, or recreate the network with -o mtu=1350" in out
    assert "[FAIL] orphans: would recreate the devices of vni 42 (demo)" in out
    assert "[FAIL] peers of vni 42: vxlan-42 missing" in out
    assert "VXLAN port udp/4789: dropped by -A INPUT -p udp -m udp --dport 4789 -j DROP" in out
    assert "[warn] frames switched inside a network: go through conntrack: nft table bridge vxlanpy is missing" in out
    assert out.count("fix:") >= 7


def test_doctor_without_the_plugin(cli: CliHarness) -> None:
    healthy_host(cli)
    del cli.probe.stats[cli.socket]
    cli.plugin_up = False
    result = cli.run("doctor", "--json")
    assert result.exit_code == 1
    findings = json.loads(result.stdout)
    socket = next(f for f in findings if f["check"] == "plugin socket")
    assert socket["status"] == "fail" and "does not exist" in socket["summary"] and socket["fix"]
    assert {f["status"] for f in findings if f["check"] in ("state store", "orphans")} == {"skip"}


# -- serve ------------------------------------------------------------------------------------------------------


def test_serve_refuses_a_bad_metrics_address_in_one_line() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["serve"], env={"VXLANPY_METRICS_ADDR": "localhost:notaport"})
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("vxlanpy: VXLANPY_METRICS_ADDR='localhost:notaport' is not valid")


# -- a managed plugin: any driver name, any socket --------------------------------------------------------------


@pytest.fixture
def aliased(cli: CliHarness) -> CliHarness:
    """The plugin installed as `docker plugin install --alias vxadv`: Docker shows the driver as vxadv:latest."""
    cli.docker.networks.clear()
    cli.docker_network(NET, "demo", {EP: ("f" * 64, "web")}, driver="vxadv:latest")
    return cli


def test_ls_and_inspect_recognise_the_plugins_networks_by_id_whatever_the_driver_name(aliased: CliHarness) -> None:
    result = aliased.run("ls")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split()[:3] == ["demo", NET[:12], "42"]
    assert "warning" not in result.stderr, result.stderr
    result = aliased.run("inspect", "demo")
    assert result.exit_code == 0, result.output
    assert f"id:        {NET}" in result.stdout and "web" in result.stdout


def test_peers_gc_and_doctor_on_an_aliased_driver(aliased: CliHarness) -> None:
    result = aliased.run("peers", "demo")
    assert result.exit_code == 0 and "result: the kernel matches the store" in result.stdout, result.output
    result = aliased.run("gc")
    assert result.exit_code == 0 and "nothing to do" in result.stdout, result.output
    assert aliased.harness.store.get_network(NET) is not None
    healthy_host(aliased)
    result = aliased.run("doctor")
    assert "] Docker and plugin agree: 1 vxlanpy networks in both" in result.stdout, result.stdout
    assert result.exit_code == 0, result.stdout


def test_a_network_of_another_driver_is_refused(cli: CliHarness) -> None:
    cli.docker_network("e" * 64, "plain", driver="bridge")
    result = cli.run("inspect", "plain")
    assert result.exit_code == 1
    assert "network plain is not vxlanpy's: it uses the bridge driver" in one_line_error(result)
    assert "plain" not in cli.run("ls").stdout


def test_a_network_of_a_plugin_alias_without_state_is_reported(cli: CliHarness) -> None:
    cli.docker.drivers.add("vxadv:latest")  # `docker plugin ls` shows vxlanpy installed as vxadv
    cli.docker_network("e" * 64, "ghost", driver="vxadv:latest")
    result = cli.run("ls")
    assert "Docker network ghost has no state in the plugin" in result.stderr
    result = cli.run("inspect", "ghost")  # Docker's half of it: not refused as another driver's network
    assert result.exit_code == 0 and "ghost" in result.stdout, result.output


def listening(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def test_without_socket_option_the_managed_plugins_socket_is_used(cli: CliHarness, tmp_path: Path) -> None:
    used: list[str] = []
    env = cli.env()
    env.socket, env.discover, env.plugins_dir = str(tmp_path / "vxlanpy.sock"), True, tmp_path

    def make_plugin(path: str, timeout: float) -> PluginClient:
        used.append(path)
        return PluginClient(path, timeout, transport=cli.transport)

    env.make_plugin = make_plugin
    managed = tmp_path / "a1" / "vxlanpy.sock"
    with listening(managed):
        result = CliRunner().invoke(main, ["ls"], obj=env, catch_exceptions=False)
        assert result.exit_code == 0 and "demo" in result.stdout, result.output
        assert used == [str(managed)]

        with listening(tmp_path / "b2" / "vxlanpy.sock"):
            env._plugin, env.socket = None, str(tmp_path / "vxlanpy.sock")
            result = CliRunner().invoke(main, ["ls"], obj=env, catch_exceptions=False)
            assert result.exit_code == 2
            assert "2 managed vxlanpy plugins run" in one_line_error(result) and "--socket" in result.stderr

        with listening(tmp_path / "vxlanpy.sock"):  # the default socket, when it exists, comes first
            assert discover_socket(env.socket, tmp_path) == env.socket
    assert discover_socket(str(tmp_path / "vxlanpy.sock"), tmp_path / "nothing") == str(tmp_path / "vxlanpy.sock")
    stale = tmp_path / "c3" / "vxlanpy.sock"  # a disabled plugin's socket file, nobody listening
    listening(stale).close()
    assert stale.is_socket() and discover_socket(env.socket, tmp_path) == env.socket


def test_an_explicit_socket_is_never_replaced(tmp_path: Path) -> None:
    with listening(tmp_path / "a1" / "vxlanpy.sock"):
        result = CliRunner().invoke(main, ["--socket", str(tmp_path / "gone.sock"), "health"])
    assert result.exit_code == 1 and f"{tmp_path / 'gone.sock'} does not exist" in result.stderr


MANAGED = {
    "Name": "vxadv:latest",
    "PluginReference": "127.0.0.1:5000/vxlanpy/vxlanpy:test",
    "Config": {"Interface": {"Socket": "vxlanpy.sock", "Types": ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"]}},
}
OTHER = {
    "Name": "weave:latest",
    "PluginReference": "docker.io/weaveworks/net-plugin:latest",
    "Config": {"Interface": {"Socket": "weave.sock", "Types": ["docker.networkdriver/1.0"]}},
}


def test_plugin_drivers_are_the_managed_vxlanpy_plugins_names_and_aliases() -> None:
    assert vxlanpy_plugin_drivers([MANAGED, OTHER]) == {"vxadv:latest"}
    tagged = {**MANAGED, "Name": "vxlanpy/vxlanpy:0.2"}
    assert vxlanpy_plugin_drivers([tagged]) == {"vxlanpy/vxlanpy:0.2"}


class FakeApi:
    """The docker SDK's low-level client, as SdkDocker uses it."""

    def __init__(self, networks: list[dict[str, str]], plugins: list[dict[str, object]]) -> None:
        self.listed, self.installed = networks, plugins
        self.inspected: list[str] = []

    def networks(self) -> list[dict[str, str]]:
        return self.listed

    def plugins(self) -> list[dict[str, object]]:
        return self.installed

    def inspect_network(self, ref: str) -> dict[str, object]:
        self.inspected.append(ref)
        found = next(n for n in self.listed if n["Id"] == ref)
        return {"Id": ref, "Name": found["Name"], "Driver": found["Driver"]}


def test_sdk_docker_takes_the_stores_ids_and_vxlanpys_drivers() -> None:
    api = FakeApi(
        [
            {"Id": "1" * 64, "Name": "held", "Driver": "renamed"},  # in the store, whatever its driver
            {"Id": "2" * 64, "Name": "aliased", "Driver": "vxadv:latest"},  # an installed plugin's alias
            {"Id": "3" * 64, "Name": "tagged", "Driver": "vxlanpy/vxlanpy:latest"},
            {"Id": "4" * 64, "Name": "plain", "Driver": "bridge"},
            {"Id": "5" * 64, "Name": "weave", "Driver": "weave:latest"},
        ],
        [MANAGED, OTHER],
    )
    docker = SdkDocker()
    docker._api = api
    assert [n.name for n in docker.vxlanpy_networks(["1" * 64])] == ["held", "aliased", "tagged"]
    assert api.inspected == ["1" * 64, "2" * 64, "3" * 64]  # the others are not even inspected
    assert docker.is_vxlanpy_driver("vxadv:latest") and not docker.is_vxlanpy_driver("weave:latest")
    assert SdkDocker(drivers=["mine"]).is_vxlanpy_driver("mine")
