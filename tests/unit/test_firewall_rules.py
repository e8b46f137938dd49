"""firewall_rules: vxlanpy's rules as data, and the one reader of `iptables -S` that the firewall and doctor share."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from vxlanpy.dataplane import firewall_rules as rules
from vxlanpy.models import Endpoint, Network, NetworkConfig, PortMapping, Subnet

from .conftest import EP, EP2, NET

# `iptables -S` of a filter table with Docker 28's chains and vxlanpy's, spaces as iptables prints them.
FILTER = """\
-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N DOCKER-USER
-N VXLANPY-FORWARD
-N VXLANPY-INTERNAL
-N VXP-42
-A FORWARD -j VXLANPY-FORWARD
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j VXLANPY-FORWARD
-A DOCKER-USER -j RETURN
-A VXLANPY-INTERNAL -i vxbr-7 -j DROP
-A VXLANPY-INTERNAL -i vxbr-7 -j DROP
-A VXLANPY-FORWARD -i vxbr-42 -j VXP-42
"""


def test_ruleset_reads_policies_chains_and_rules_in_order() -> None:
    ruleset = rules.Ruleset.parse(FILTER)
    assert ruleset.policies == {"INPUT": "ACCEPT", "FORWARD": "DROP", "OUTPUT": "ACCEPT"}
    assert ruleset.rules["FORWARD"] == [["-j", "VXLANPY-FORWARD"], ["-j", "DOCKER-USER"]]
    assert ruleset.rules["VXP-42"] == [] and ruleset.rules["INPUT"] == []
    assert ruleset.has("DOCKER-USER", ["-j", "RETURN"]) and not ruleset.has("DOCKER-USER", ["-j", "DROP"])
    assert ruleset.lines("DOCKER-USER") == ["-A DOCKER-USER -j VXLANPY-FORWARD", "-A DOCKER-USER -j RETURN"]
    assert rules.Ruleset.parse(FILTER.splitlines()) == ruleset, "lines and text read alike"


def test_combined_listings_of_single_chains_hold_each_chain() -> None:
    forward = rules.Ruleset.parse("-P FORWARD ACCEPT\n-A FORWARD -j VXLANPY-FORWARD\n")
    docker_user = rules.Ruleset.parse("-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n")
    combined = rules.Ruleset.combine([forward, None, docker_user])
    assert combined.policies == {"FORWARD": "ACCEPT"}
    assert combined.lines("FORWARD") + combined.lines("DOCKER-USER") == [
        "-A FORWARD -j VXLANPY-FORWARD",
        "-A DOCKER-USER -j RETURN",
    ]


def test_known_table_finds_the_network_chains_and_counts_each_jump() -> None:
    known = rules.KnownTable.parse(rules.Ruleset.parse(FILTER), "filter")
    assert known.chains == {"VXP-42"}
    assert known.jumps == {
        "-A VXLANPY-INTERNAL -i vxbr-7 -j DROP": 2,  # added twice by an older version: deleted twice
        "-A VXLANPY-FORWARD -i vxbr-42 -j VXP-42": 1,
    }
    assert (
        rules.deletions(["-A VXLANPY-INTERNAL -i vxbr-7 -j DROP"], known)
        == ["-D VXLANPY-INTERNAL -i vxbr-7 -j DROP"] * 2
    )


def test_known_table_of_nat_counts_only_its_parent_chains() -> None:
    nat = "-N VXLANPY-POSTROUTING\n-N VXP-5\n-N VXPD-5\n-A VXLANPY-POSTROUTING -j VXP-5\n-A POSTROUTING -j MASQ\n"
    known = rules.KnownTable.parse(rules.Ruleset.parse(nat), "nat")
    assert known.chains == {"VXP-5", "VXPD-5"}
    assert known.jumps == {"-A VXLANPY-POSTROUTING -j VXP-5": 1}


@pytest.mark.parametrize(
    ("listing", "commands"),
    [
        ("-P FORWARD DROP\n-A FORWARD -j VXLANPY-FORWARD\n-A FORWARD -j DOCKER-FORWARD\n", []),
        (
            "-P FORWARD DROP\n-A FORWARD -j DOCKER-FORWARD\n-A FORWARD -j VXLANPY-FORWARD\n",
            ["-D FORWARD -j VXLANPY-FORWARD", "-I FORWARD 1 -j VXLANPY-FORWARD"],
        ),
        ("-P FORWARD DROP\n-A FORWARD -j DOCKER-FORWARD\n", ["-I FORWARD 1 -j VXLANPY-FORWARD"]),
    ],
    ids=["first", "displaced", "missing"],
)
def test_hook_first_moves_the_forward_hook_to_the_top_only_when_it_is_not(listing: str, commands: list[str]) -> None:
    assert rules.hook_first(rules.Ruleset.parse(listing), "FORWARD") == commands


def test_forward_chain_in_place_only_with_exactly_vxlanpys_rules() -> None:
    wanted = "\n".join(rules.rule_line(rules.FORWARD_CHAIN, rule) for rule in rules.forward_rules())
    assert rules.forward_chain_in_place(rules.Ruleset.parse(f"-N {rules.FORWARD_CHAIN}\n{wanted}\n"))
    assert not rules.forward_chain_in_place(
        rules.Ruleset.parse(f"-N {rules.FORWARD_CHAIN}\n{wanted}\n-A {rules.FORWARD_CHAIN} -j ACCEPT\n")
    )
    assert not rules.forward_chain_in_place(rules.Ruleset.parse(FILTER))


def test_published_ports_read_back_as_iptables_lists_them() -> None:
    subnet = (Subnet(ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_interface("10.1.0.1/24")),)
    network = Network(NET, NetworkConfig(vni=5), ipv4=subnet)
    web = Endpoint(
        EP,
        NET,
        "02:42:0a:01:00:02",
        ipaddress.IPv4Interface("10.1.0.2/24"),
        ports=(
            PortMapping("tcp", 80, 8080),
            PortMapping("udp", 53, 5353, ipaddress.ip_address("192.0.2.1")),
        ),
    )
    db = Endpoint(
        EP2, NET, "02:42:0a:01:00:03", ipaddress.IPv4Interface("10.1.0.3/24"), ports=(PortMapping("sctp", 9, 9),)
    )
    written = [rules.rule_line("VXPD-5", rule) for rule in rules.dnat_rules(network, [web, db])]
    # What `iptables -t nat -S VXPD-5` shows of them: the protocol match and the address's prefix added.
    listed = [line.replace("-p tcp", "-p tcp -m tcp").replace("-d 192.0.2.1", "-d 192.0.2.1/32") for line in written]
    published = rules.parse_dnat_rules(rules.Ruleset.parse(["-N VXPD-5", *listed, "-A VXPD-5 -j RETURN"]))
    assert published == {
        ipaddress.ip_address("10.1.0.2"): [
            PortMapping("tcp", 80, 8080),
            PortMapping("udp", 53, 5353, ipaddress.ip_address("192.0.2.1")),
        ],
        ipaddress.ip_address("10.1.0.3"): [PortMapping("sctp", 9, 9)],
    }


def test_restore_section_flushes_known_chains_and_creates_new_ones() -> None:
    section = rules.restore_section(
        "nat", {"VXP-5": [["-j", "MASQUERADE"]], "VXPD-5": []}, ["-A X -j VXP-5"], {"VXP-5"}
    )
    assert section == ["*nat", ":VXP-5 - [0:0]", "-N VXPD-5", "-A VXP-5 -j MASQUERADE", "-A X -j VXP-5", "COMMIT"]


def test_internal_networks_and_names() -> None:
    internal = Network(NET, NetworkConfig(vni=7), internal=True)
    assert rules.internal_rules(internal) == [["-i", "vxbr-7", "-j", "DROP"], ["-o", "vxbr-7", "-j", "DROP"]]
    assert rules.internal_rules(Network(NET, NetworkConfig(vni=7))) == []
    assert rules.network_names(7) == ("vxbr-7", "VXP-7", "VXPD-7")
    assert rules.INTERNAL_CHAIN == "VXLANPY-INTERNAL"
    with pytest.raises(ValueError, match="unsafe name"):
        rules.safe_name("vxbr-7; reboot")


def test_command_error_says_what_failed_and_hints_at_the_cause() -> None:
    failed = subprocess.CompletedProcess(["iptables"], 4, "", "iptables: Permission denied (you must be root).\n")
    message = rules.command_error("iptables -S", failed).message
    assert message.startswith("iptables -S failed: iptables: Permission denied (you must be root)")
    assert "Hint: run the plugin as root" in message
