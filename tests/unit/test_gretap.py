"""`-o encap=gretap` at the driver's door: what is refused by name, the MTU defaults, what the kernel is asked for,
and a kernel without GRE leaving nothing behind (the kernel itself: tests/kernel/test_gretap.py)."""

from __future__ import annotations

import ipaddress

import pytest

from vxlanpy.dataplane.base import Underlay
from vxlanpy.errors import InvalidOption
from vxlanpy.models import Network, NetworkConfig
from vxlanpy.options import parse_network_options

from .conftest import NET, Harness

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
