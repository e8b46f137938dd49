"""Every bad option value is refused with a message that names it, before any kernel change."""

from __future__ import annotations

import pytest

from .conftest import NET, Harness


@pytest.mark.parametrize(
    ("generic", "phrase"),
    [
        ({"colour": "blue"}, "unknown option colour; valid options are: vni, dstport"),
        ({"vni": "0"}, "vni='0' is not valid; use a whole number from 1 to 16777215"),
        ({"vni": "16777216"}, "vni='16777216' is not valid"),
        ({"vni": "abc"}, "vni='abc' is not valid"),
        ({"vni": "-5"}, "vni='-5' is not valid"),
        ({"dstport": "0"}, "dstport='0' is not valid; use a whole number from 1 to 65535"),
        ({"dstport": "70000"}, "dstport='70000'"),
        ({"ttl": "300"}, "ttl='300' is not valid; use a whole number from 1 to 255"),
        ({"learning": "maybe"}, "learning='maybe' is not valid; use true or false"),
        ({"remote": "not-an-ip"}, "remote='not-an-ip' is not an IP address"),
        ({"remote": "239.1.1.1"}, "must be a unicast address; for multicast use group=239.1.1.1"),
        ({"group": "10.0.0.1"}, "group=10.0.0.1 is not a multicast address"),
        ({"peers": ""}, "peers is empty"),
        ({"peers": "10.0.0.1,10.0.0.1"}, "lists an address twice"),
        ({"peers": "10.0.0.1,bogus"}, "peers='bogus' is not an IP address"),
        ({"remote": "10.0.0.1", "group": "239.1.1.1"}, "options remote and group cannot be combined"),
        ({"remote": "10.0.0.1", "peers": "10.0.0.2"}, "options remote and peers cannot be combined"),
        ({"remote": "10.0.0.1", "local": "2001:db8::10"}, "all be IPv4 or all be IPv6"),
        ({"local": "198.51.100.9"}, "local=198.51.100.9 is not an address of the underlay interface eth0"),
        ({"dev": "nosuchdev"}, "underlay interface 'nosuchdev' does not exist"),
        ({"dev": "bad name;rm"}, "is not a valid interface name"),
        (
            {"mtu": "1451"},
            "mtu=1451 is too big for the underlay eth0 (MTU 1500) once VXLAN adds 50 bytes; use at most 1450",
        ),
        ({"mtu": "100"}, "mtu=100 is too small"),
        ({"mtu": "big"}, "mtu='big' is not valid"),
        ({"com.docker.network.driver.mtu": "9000"}, "com.docker.network.driver.mtu=9000 is too big"),
        ({"mtu": "1400", "com.docker.network.driver.mtu": "1300"}, "disagree"),
        ({"remote": "2001:db8::99", "mtu": "1431"}, "once VXLAN adds 70 bytes; use at most 1430"),
        ({"vni": ["1"]}, "option vni must be a string"),
    ],
)
def test_bad_option_is_refused_and_nothing_is_left(harness: Harness, generic: dict[str, object], phrase: str) -> None:
    status, body = harness.create_network(generic=generic)
    assert status == 400
    assert phrase in body["Err"]
    assert harness.store.list_networks() == []
    assert harness.links.networks == {} and harness.firewall.networks == {}


def test_duplicate_vni_is_refused(harness: Harness) -> None:
    assert harness.create_network(generic={"vni": "42"})[0] == 200
    status, body = harness.create_network("b" * 64, generic={"vni": "42"})
    assert status == 409
    assert "vni 42 is already used by vxlanpy network aaaaaaaaaaaa" in body["Err"]
    assert [network.network_id for network in harness.store.list_networks()] == [NET]


def test_defaults(harness: Harness) -> None:
    harness.create_network()
    network = harness.store.get_network(NET)
    assert network is not None
    config = network.config
    assert (config.vni, config.dstport, config.dev, str(config.local), config.mtu, config.learning) == (
        100,
        4789,
        "eth0",
        "192.0.2.10",
        1450,
        True,
    )


def test_ipv6_peers_pick_ipv6_local_and_overhead(harness: Harness) -> None:
    harness.create_network(generic={"peers": "2001:db8::1,2001:db8::2", "learning": "off", "ttl": "64"})
    network = harness.store.get_network(NET)
    assert network is not None
    assert str(network.config.local) == "2001:db8::10" and network.config.mtu == 1430
    assert network.config.learning is False and network.config.ttl == 64


def test_docker_mtu_option_is_honoured(harness: Harness) -> None:
    harness.create_network(generic={"com.docker.network.driver.mtu": "1300"})
    network = harness.store.get_network(NET)
    assert network is not None and network.config.mtu == 1300
