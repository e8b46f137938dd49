"""`-o encap=gretap` at the driver's door: what is refused by name, the MTU defaults, what the kernel is asked for,
and a kernel without GRE leaving nothing behind (the kernel itself: tests/kernel/test_gretap.py)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from vxlanpy.dataplane.base import Underlay
from vxlanpy.errors import InvalidOption
from vxlanpy.models import Network, NetworkConfig
from vxlanpy.options import parse_network_options

from .cli_fakes import CliHarness
from .conftest import NET, NET2, Harness
from .test_cli import cli, healthy_host  # noqa: F401 - cli: the fixture

GRETAP = {"encap": "gretap"}


def stored(harness: Harness) -> Network:
    network = harness.store.get_network(NET)
    assert network is not None
    return network


@pytest.mark.parametrize(
    ("generic", "phrase"),
    [
        ({**GRETAP, "remote": "10.0.0.2", "group": "239.1.1.1"}, "option group does not apply to encap=gretap"),
        ({**GRETAP, "remote": "10.0.0.2", "dstport": "4790"}, "option dstport does not apply to encap=gretap"),
        ({**GRETAP, "remote": "10.0.0.2", "learning": "off"}, "option learning does not apply to encap=gretap"),
        (GRETAP, "encap=gretap needs remote=IP (point to point) or peers=IP,IP,..."),
        ({"encap": "geneve", "remote": "10.0.0.2"}, "encap='geneve' is not valid; use encap=vxlan (the default)"),
        ({**GRETAP, "remote": "10.0.0.2", "mtu": "1459"}, "once GRE adds 42 bytes; use at most 1458"),
        ({**GRETAP, "remote": "2001:db8::2", "mtu": "1439"}, "once GRE adds 62 bytes; use at most 1438"),
        (
            {**GRETAP, "peers": ",".join(f"10.0.{n // 250}.{n % 250 + 1}" for n in range(101))},
            "peers= lists 101 addresses; with encap=gretap a network can have at most 100 peers",
        ),
    ],
)
def test_what_gretap_cannot_do_is_refused_by_name(harness: Harness, generic: dict[str, str], phrase: str) -> None:
    status, body = harness.create_network(generic=generic)
    assert status == 400
    assert phrase in body["Err"]
    assert harness.store.list_networks() == [] and harness.links.networks == {}


def test_the_etcd_store_refuses_gretap_before_the_peer_options() -> None:
    underlay = Underlay("eth0", 1500, (ipaddress.ip_address("192.0.2.10"),))
    with pytest.raises(InvalidOption) as refused:
        parse_network_options({**GRETAP, "remote": "10.0.0.2"}, lambda dev: underlay, multi_host=True)
    assert "encap=gretap needs remote= or peers=; the etcd store's automatic peers use VXLAN" in str(refused.value)


@pytest.mark.parametrize(
    ("peer_option", "mtu"),
    [({"remote": "10.0.0.2"}, 1458), ({"remote": "2001:db8::2"}, 1438), ({"peers": "10.0.0.2,10.0.0.3"}, 1458)],
)
def test_the_mtu_default_is_the_underlays_minus_the_gretap_overhead(
    harness: Harness, peer_option: dict[str, str], mtu: int
) -> None:
    assert harness.create_network(generic={**GRETAP, **peer_option})[0] == 200
    assert stored(harness).config.mtu == mtu


def test_mtu_overrides_the_default(harness: Harness) -> None:
    assert harness.create_network(generic={**GRETAP, "remote": "10.0.0.2", "mtu": "1400"})[0] == 200
    assert stored(harness).config.mtu == 1400


def test_a_network_gets_one_port_per_peer_named_from_its_vni(harness: Harness) -> None:
    harness.create_network(generic={**GRETAP, "vni": "42", "peers": "10.0.0.2,10.0.0.3,10.0.0.4"})
    network = stored(harness)
    assert network.config.encap == "gretap"
    assert network.tunnels == ("vxg-42-0", "vxg-42-1", "vxg-42-2")
    assert set(harness.links.owned_links()) == {"vxbr-42", "vxg-42-0", "vxg-42-1", "vxg-42-2"}

    harness.create_network("b" * 64, generic={**GRETAP, "vni": "43", "remote": "10.0.0.2"})
    assert "vxg-43" in harness.links.owned_links()


def test_a_kernel_without_gre_fails_the_create_and_leaves_nothing(harness: Harness) -> None:
    harness.links.gre = False
    status, body = harness.create_network(generic={**GRETAP, "remote": "10.0.0.2"})
    assert status == 500
    assert "the kernel lacks GRE support: load ip_gre (modprobe ip_gre" in body["Err"]
    assert "or use encap=vxlan" in body["Err"]
    assert harness.store.list_networks() == []
    assert harness.links.networks == {} and harness.firewall.networks == {}


def test_reconciliation_rebuilds_a_gretap_network_whose_ports_are_gone(harness: Harness) -> None:
    harness.create_network(generic={**GRETAP, "vni": "42", "remote": "10.0.0.2"})
    assert harness.driver.reconcile().recreated_networks == []
    harness.links.networks.clear()  # its bridge and port deleted under the plugin

    assert harness.driver.reconcile().recreated_networks == [42]
    assert set(harness.links.owned_links()) == {"vxbr-42", "vxg-42"}


def test_the_encap_survives_the_store_and_older_rows_are_vxlan() -> None:
    config = NetworkConfig(vni=7, remote=ipaddress.ip_address("10.0.0.2"), encap="gretap", mtu=1458)
    assert NetworkConfig.from_dict(config.to_dict()) == config
    older = {key: value for key, value in config.to_dict().items() if key != "encap"}
    assert NetworkConfig.from_dict(older).encap == "vxlan"


def test_ls_peers_and_doctor_show_the_gretap_ports(cli: CliHarness) -> None:  # noqa: F811 - the fixture
    harness = cli.harness
    harness.create_network(NET2, generic={**GRETAP, "vni": "43", "peers": "192.0.2.20,192.0.2.21"})
    cli.docker_network(NET2, "gre")

    result = cli.run("ls")
    assert result.exit_code == 0, result.output
    assert "vxbr-43,vxg-43-0,vxg-43-1" in result.stdout and "1458" in result.stdout
    inspected = cli.run("inspect", "gre")
    assert "vxg-43-1 (gretap, present; underlay eth0, local 192.0.2.10, to 192.0.2.21)" in inspected.stdout
    peers = cli.run("peers", "gre")
    assert peers.exit_code == 0, peers.output
    assert "gretap ports vxg-43-0, vxg-43-1: all present" in peers.stdout

    healthy_host(cli)
    cli.probe.files["/sys/class/net/eth0/mtu"] = "1490\n"
    harness.links.remove_link("vxg-43-1")  # the fake drops the whole network: every port missing
    peers = cli.run("peers", "--json", "gre")
    assert [(vtep["address"], vtep["kernel"]) for vtep in json.loads(peers.stdout)["vteps"]] == [
        ("192.0.2.20", False),
        ("192.0.2.21", False),
    ]
    assert (
        "gretap ports vxg-43-0, vxg-43-1: MISSING in the kernel: vxg-43-0, vxg-43-1" in cli.run("peers", "gre").stdout
    )
    doctor = cli.run("doctor").stdout
    assert "[FAIL] MTU of vni 43: network MTU 1458 + 42 bytes of GRE > underlay eth0 MTU 1490" in doctor
    assert "[FAIL] peers of vni 43: VTEP 192.0.2.20 missing in kernel" in doctor
    assert "gretap ports vxg-43-1 missing" in doctor
    assert "VXLAN port udp/4789" in doctor  # the VXLAN network's check still runs
