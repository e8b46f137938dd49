"""IptablesFirewall against the real kernel, inside throwaway network namespaces.

Every test gets its own "host" namespace (FORWARD policy DROP, like a host running dockerd) and reads the
rules back with `iptables -S` there, or sends real packets between "container" namespaces wired to a bridge
named like vxlanpy's.  Nothing is done in the namespace the tests run in.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

import vxlanpy
from vxlanpy.dataplane.iptables import IptablesFirewall
from vxlanpy.errors import DataplaneError
from vxlanpy.models import Endpoint, Network, NetworkConfig, PortMapping, Subnet
from vxlanpy.operator.doctor import FIREWALL_CHECKS, Examination, Finding, LocalProbe

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("iptables", "ip6tables", "iptables-restore", "nsenter", "ip")),
        reason="needs iptables, nsenter and iproute2",
    ),
]

# -- namespaces and commands -------------------------------------------------------------------------------


def run(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", *argv], check=False, capture_output=True, text=True, timeout=30
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} in {ns} failed: {result.stderr}")
    return result


def rules(ns: str, table: str = "filter", family: int = 4, chain: str | None = None) -> list[str]:
    """What a user sees with `iptables [-t table] -S [chain]`, minus the policies."""
    tool = "iptables" if family == 4 else "ip6tables"
    out = run(ns, tool, "-w", "-t", table, "-S", *([chain] if chain else [])).stdout
    return [line for line in out.splitlines() if not line.startswith("-P ")]


def everything(ns: str) -> list[str]:
    return rules(ns) + rules(ns, "nat") + rules(ns, family=6)


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def make() -> str:
        name = "vxt-" + secrets.token_hex(4)
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        created.append(name)
        run(name, "ip", "link", "set", "lo", "up")
        return name

    yield make
    # Deleting a namespace also deletes its bridges, veths (both ends) and its whole firewall.
    for name in created:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def host(make_netns: Callable[[], str]) -> str:
    """A namespace standing in for a Docker host: FORWARD policy DROP, bridged traffic through iptables."""
    ns = make_netns()
    run(ns, "iptables", "-w", "-P", "FORWARD", "DROP")
    run(ns, "ip6tables", "-w", "-P", "FORWARD", "DROP")
    return ns


@pytest.fixture
def fw(host: str) -> IptablesFirewall:
    firewall = IptablesFirewall(netns=host)
    firewall.ensure_base()
    return firewall


# -- model objects -----------------------------------------------------------------------------------------


def network(vni: int, pool: str = "192.168.77.0/25", internal: bool = False) -> Network:
    subnet = ipaddress.IPv4Network(pool)
    gateway = ipaddress.IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")
    return Network(
        network_id=f"{vni:064x}",
        config=NetworkConfig(vni=vni),
        ipv4=(Subnet(pool=subnet, gateway=gateway),),
        internal=internal,
    )


def endpoint(net: Network, address: str, *ports: PortMapping) -> Endpoint:
    iface = ipaddress.IPv4Interface(f"{address}/{net.ipv4[0].pool.prefixlen}")
    return Endpoint(
        endpoint_id=secrets.token_hex(32), network_id=net.network_id, mac="02:42:00:00:00:01", ipv4=iface, ports=ports
    )


def tcp(container: int, host_port: int, host_ip: str | None = None) -> PortMapping:
    return PortMapping("tcp", container, host_port, ipaddress.ip_address(host_ip) if host_ip else None)


# -- rules as the user sees them ---------------------------------------------------------------------------


def test_base_chains_are_hooked_once(host: str, fw: IptablesFirewall) -> None:
    fw.ensure_base()  # the fixture already called it once
    assert rules(host, chain="FORWARD")[0] == "-A FORWARD -j VXLANPY-FORWARD"
    assert rules(host, chain="FORWARD").count("-A FORWARD -j VXLANPY-FORWARD") == 1
    assert rules(host, family=6, chain="FORWARD").count("-A FORWARD -j VXLANPY-FORWARD") == 1
    nat = rules(host, "nat")
    assert nat.count("-A POSTROUTING -j VXLANPY-POSTROUTING") == 1
    assert nat.count("-A PREROUTING -m addrtype --dst-type LOCAL -j VXLANPY-DNAT") == 1
    assert nat.count("-A OUTPUT -m addrtype --dst-type LOCAL -j VXLANPY-DNAT") == 1
    assert run(host, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"


def test_forward_hook_goes_first_before_existing_rules(make_netns: Callable[[], str]) -> None:
    ns = make_netns()
    run(ns, "iptables", "-w", "-A", "FORWARD", "-j", "DROP")
    IptablesFirewall(netns=ns).ensure_base()
    assert rules(ns, chain="FORWARD") == ["-A FORWARD -j VXLANPY-FORWARD", "-A FORWARD -j DROP"]


def test_a_displaced_forward_hook_is_moved_back_first_and_docker_user_gets_one(host: str, fw: IptablesFirewall) -> None:
    # what dockerd does when it (re)starts: its own rules at the top of FORWARD, DOCKER-USER first of all
    run(host, "iptables", "-w", "-N", "DOCKER-USER")
    run(host, "iptables", "-w", "-A", "DOCKER-USER", "-j", "RETURN")
    run(host, "iptables", "-w", "-I", "FORWARD", "1", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT")
    run(host, "iptables", "-w", "-I", "FORWARD", "1", "-j", "DOCKER-USER")
    fw.ensure_base()
    assert rules(host, chain="FORWARD")[0] == "-A FORWARD -j VXLANPY-FORWARD"
    assert rules(host, chain="FORWARD").count("-A FORWARD -j VXLANPY-FORWARD") == 1
    assert rules(host, chain="DOCKER-USER") == [
        "-N DOCKER-USER",
        "-A DOCKER-USER -j VXLANPY-FORWARD",
        "-A DOCKER-USER -j RETURN",
    ]
    fw.ensure_base()
    assert rules(host, chain="DOCKER-USER").count("-A DOCKER-USER -j VXLANPY-FORWARD") == 1


def ebtables_rules(ns: str, chain: str) -> list[str]:
    return [line for line in run(ns, "ebtables", "-L", chain).stdout.splitlines() if line.startswith("-")]


def tx_packets(ns: str, dev: str) -> int:
    stats = run(ns, "ip", "-s", "-j", "link", "show", "dev", dev).stdout
    return int(json.loads(stats)[0]["stats64"]["tx"]["packets"])


GUARD = "-s 02:76:78:00:00:00/ff:ff:ff:00:00:00 -o vxlan-+ -j DROP"


@pytest.mark.skipif(shutil.which("ebtables") is None, reason="needs ebtables")
def test_one_guard_keeps_every_gateways_frames_off_the_vxlan_ports(
    host: str, fw: IptablesFirewall, make_netns: Callable[[], str]
) -> None:
    for vni in (301, 302):
        fw.ensure_network(network(vni), [])
    assert ebtables_rules(host, "VXLANPY-OUT") == [GUARD], "one rule for all networks, none per network"
    assert "-j VXLANPY-OUT" in ebtables_rules(host, "OUTPUT")
    # A network as the links layer builds it: the bridge has the anycast gateway's MAC, the VXLAN port floods
    # to a neighbour namespace on an underlay.
    net = network(301)
    neighbour = make_netns()
    run(host, "ip", "link", "add", "under", "type", "veth", "peer", "name", "eth0", "netns", neighbour)
    run(host, "ip", "addr", "add", "10.99.0.1/24", "dev", "under")
    run(host, "ip", "link", "set", "under", "up")
    run(neighbour, "ip", "addr", "add", "10.99.0.2/24", "dev", "eth0")
    run(neighbour, "ip", "link", "set", "eth0", "up")
    run(host, "ip", "link", "add", net.bridge, "address", net.gateway_mac, "type", "bridge")
    run(host, "ip", "addr", "add", str(net.ipv4[0].gateway), "dev", net.bridge)
    run(host, "ip", "link", "add", "vxlan-301", "type", "vxlan", "id", "301", "dstport", "4789", "local", "10.99.0.1",
        "remote", "10.99.0.2", "dev", "under")  # fmt: skip
    # Without IPv6 on the port: the VXLAN device's own MLD reports (from its own MAC) would count as sent.
    run(host, "sysctl", "-q", "-w", "net.ipv6.conf.vxlan-301.disable_ipv6=1")
    run(host, "ip", "link", "set", "vxlan-301", "master", net.bridge, "up")
    run(host, "ip", "link", "set", net.bridge, "up")
    # The bridge asks for an address nobody has: its ARP broadcast, from the gateway MAC, stays home ...
    ping(host, "192.168.77.5", timeout=0.5)
    assert tx_packets(host, "vxlan-301") == 0
    assert "pcnt = 0 " not in run(host, "ebtables", "-L", "VXLANPY-OUT", "--Lc").stdout, "the guard dropped them"
    # ... while a container's ARP broadcast, from its own MAC, leaves through the VXLAN port.
    container = make_netns()
    run(host, "ip", "link", "add", "vxh-guard", "type", "veth", "peer", "name", "eth0", "netns", container)
    run(host, "ip", "link", "set", "vxh-guard", "master", net.bridge, "up")
    run(container, "ip", "addr", "add", "192.168.77.9/25", "dev", "eth0")
    run(container, "ip", "link", "set", "eth0", "up")
    ping(container, "192.168.77.5", timeout=0.5)
    assert eventually(lambda: tx_packets(host, "vxlan-301") > 0)
    fw.remove_network(301)
    fw.remove_network(302)
    assert ebtables_rules(host, "VXLANPY-OUT") == [GUARD], "the guard stays for the networks to come"


@pytest.mark.skipif(shutil.which("ebtables") is None, reason="needs ebtables")
def test_per_network_guards_of_older_versions_become_the_one_guard(host: str) -> None:
    run(host, "ebtables", "-N", "VXLANPY-OUT")
    run(host, "ebtables", "-A", "OUTPUT", "-j", "VXLANPY-OUT")
    run(host, "ebtables", "-A", "VXLANPY-OUT", "-o", "vxlan-301", "-s", "02:76:78:00:01:2d", "-j", "DROP")
    IptablesFirewall(netns=host).ensure_base()
    assert ebtables_rules(host, "VXLANPY-OUT") == [GUARD]
    assert ebtables_rules(host, "OUTPUT") == ["-j VXLANPY-OUT"]


def test_network_rules_are_installed(host: str, fw: IptablesFirewall) -> None:
    net = network(101)
    fw.ensure_network(net, [endpoint(net, "192.168.77.2", tcp(80, 8080))])
    # Isolation is the same few rules for every network, in both families: nothing per network in filter.
    forward = [
        "-N VXLANPY-FORWARD",
        "-A VXLANPY-FORWARD -i vxbr-+ -o vxbr-+ -m physdev --physdev-is-bridged -j ACCEPT",
        "-A VXLANPY-FORWARD -i vxbr-+ -j VXLANPY-INTERNAL",
        "-A VXLANPY-FORWARD -o vxbr-+ -j VXLANPY-INTERNAL",
        "-A VXLANPY-FORWARD -o vxbr-+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A VXLANPY-FORWARD -o vxbr-+ -m conntrack --ctstate DNAT -j ACCEPT",
        "-A VXLANPY-FORWARD -o vxbr-+ -j DROP",
        "-A VXLANPY-FORWARD -i vxbr-+ -o docker0 -j DROP",
        "-A VXLANPY-FORWARD -i vxbr-+ -o br-+ -j DROP",
        "-A VXLANPY-FORWARD -i vxbr-+ -j ACCEPT",
    ]
    for family in (4, 6):
        assert rules(host, family=family, chain="VXLANPY-FORWARD") == forward
        assert rules(host, family=family, chain="VXLANPY-INTERNAL") == ["-N VXLANPY-INTERNAL"]
        assert not [line for line in rules(host, family=family) if "101" in line]
    assert rules(host, "nat", chain="VXP-101")[1:] == [
        "-A VXP-101 -s 192.168.77.0/25 ! -o vxbr-101 -j MASQUERADE",
        "-A VXP-101 -s 192.168.77.0/25 -o vxbr-101 -m conntrack --ctstate DNAT -j MASQUERADE",
        "-A VXP-101 -o vxbr-101 -m addrtype --src-type LOCAL -j MASQUERADE",
    ]
    assert rules(host, "nat", chain="VXPD-101")[1:] == [
        "-A VXPD-101 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.168.77.2:80"
    ]
    assert "-A VXLANPY-POSTROUTING -j VXP-101" in rules(host, "nat")
    assert "-A VXLANPY-DNAT -j VXPD-101" in rules(host, "nat")


def test_ensure_network_twice_changes_nothing(host: str, fw: IptablesFirewall) -> None:
    net = network(101)
    endpoints = [endpoint(net, "192.168.77.2", tcp(80, 8080))]
    fw.ensure_network(net, endpoints)
    before = everything(host)
    fw.ensure_base()
    fw.ensure_network(net, endpoints)
    assert everything(host) == before


def test_published_ports_follow_the_endpoints(host: str, fw: IptablesFirewall) -> None:
    net = network(101)
    web = endpoint(net, "192.168.77.2", tcp(80, 8080), tcp(443, 8443, "127.0.0.1"), tcp(80, 8080, "::"))
    dns = endpoint(net, "192.168.77.3", PortMapping("udp", 53, 5353, ipaddress.IPv4Address("0.0.0.0")))
    fw.ensure_network(net, [web, dns])
    assert rules(host, "nat", chain="VXPD-101")[1:] == [
        "-A VXPD-101 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.168.77.2:80",
        "-A VXPD-101 -d 127.0.0.1/32 -p tcp -m tcp --dport 8443 -j DNAT --to-destination 192.168.77.2:443",
        "-A VXPD-101 -p udp -m udp --dport 5353 -j DNAT --to-destination 192.168.77.3:53",
    ]
    # What `vxlanpy recover` reads back after the store was lost (the IPv6 binding has no DNAT rule)
    assert fw.published_ports(101) == {
        ipaddress.ip_address("192.168.77.2"): [tcp(80, 8080), tcp(443, 8443, "127.0.0.1")],
        ipaddress.ip_address("192.168.77.3"): [PortMapping("udp", 53, 5353)],
    }
    assert fw.published_ports(999) == {}  # no such network
    fw.ensure_network(net, [web.with_ports((tcp(81, 9090),))])
    assert rules(host, "nat", chain="VXPD-101")[1:] == [
        "-A VXPD-101 -p tcp -m tcp --dport 9090 -j DNAT --to-destination 192.168.77.2:81"
    ]
    fw.ensure_network(net, [])
    assert rules(host, "nat", chain="VXPD-101") == ["-N VXPD-101"]


def test_internal_network_drops_and_never_masquerades(host: str, fw: IptablesFirewall) -> None:
    net = network(102, internal=True)
    fw.ensure_network(net, [endpoint(net, "192.168.77.2", tcp(80, 8080))])
    expected = [
        "-N VXLANPY-INTERNAL",
        "-A VXLANPY-INTERNAL -i vxbr-102 -j DROP",
        "-A VXLANPY-INTERNAL -o vxbr-102 -j DROP",
    ]
    assert rules(host, chain="VXLANPY-INTERNAL") == expected
    assert rules(host, family=6, chain="VXLANPY-INTERNAL") == expected
    nat = rules(host, "nat")
    assert not [line for line in nat if "MASQUERADE" in line or "DNAT --to" in line]


def test_remove_network_leaves_no_trace_and_keeps_the_others(host: str, fw: IptablesFirewall) -> None:
    fw.ensure_network(network(201), [])
    baseline = everything(host)
    doomed = network(202, "192.168.77.128/25")
    fw.ensure_network(doomed, [endpoint(doomed, "192.168.77.130", tcp(80, 8080))])
    fw.remove_network(doomed.vni)
    assert not [line for line in everything(host) if "202" in line]
    assert everything(host) == baseline
    fw.remove_network(doomed.vni)  # already gone: still fine
    assert everything(host) == baseline


def test_removals_in_the_background_are_done_in_order_and_together(host: str) -> None:
    """The plugin's firewall removes chains on a thread of its own (deleting anything costs nf_tables about 10 ms):
    `remove_network` returns at once, and whatever comes next for the same network sees the removal done."""
    fw = IptablesFirewall(netns=host, background_removal=True)
    fw.ensure_base()
    fw.ensure_network(network(201), [])
    baseline = everything(host)
    doomed = [network(202, "192.168.77.128/25"), network(203, "192.168.78.0/25")]
    for net in doomed:
        fw.ensure_network(net, [endpoint(net, str(net.ipv4[0].pool[2]), tcp(80, 8080))])
    for net in doomed:
        fw.remove_network(net.vni)
    assert fw.settle(timeout=30)
    assert everything(host) == baseline
    # Removed and made again at once (a VNI reused): the new chains survive the queued removal.
    again = network(202, "192.168.77.128/25")
    fw.ensure_network(again, [])
    fw.remove_network(again.vni)
    fw.ensure_network(again, [endpoint(again, "192.168.77.130", tcp(80, 8081))])
    assert fw.settle(timeout=30)
    assert "-A VXPD-202 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 192.168.77.130:80" in rules(host, "nat")
    assert fw.owned_vnis() == {201, 202}
    fw.remove_network(202)
    assert fw.owned_vnis() == {201}, "reconciliation's view waits for the queued removal"


def test_a_failed_background_removal_never_takes_the_chains_of_the_network_made_again(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fw = IptablesFirewall(netns=host, background_removal=True)
    fw.ensure_base()
    net = network(202, "192.168.77.128/25")
    fw.ensure_network(net, [])

    def refused(*_: object) -> None:
        raise DataplaneError("iptables-restore: another app holds the xtables lock")

    real = fw._remove_chains
    monkeypatch.setattr(fw, "_remove_chains", refused)  # the removal fails, and stays queued
    fw.remove_network(net.vni)
    assert fw.settle(timeout=30)
    fw.ensure_network(net, [endpoint(net, "192.168.77.130", tcp(80, 8082))])  # the network is made again
    monkeypatch.setattr(fw, "_remove_chains", real)
    assert fw.owned_vnis() == {202}, "the retried removal took the new network's chains"
    assert "-A VXPD-202 -p tcp -m tcp --dport 8082 -j DNAT --to-destination 192.168.77.130:80" in rules(host, "nat")


def test_foreign_rules_survive(host: str, fw: IptablesFirewall) -> None:
    run(host, "iptables", "-w", "-N", "DOCKER-USER")
    run(host, "iptables", "-w", "-A", "DOCKER-USER", "-j", "RETURN")
    run(host, "iptables", "-w", "-A", "FORWARD", "-j", "DOCKER-USER")
    run(host, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "-j", "MASQUERADE")
    foreign = [line for line in everything(host) if "VXLANPY" not in line and "VXP" not in line]
    net = network(101)
    fw.ensure_network(net, [endpoint(net, "192.168.77.2", tcp(80, 8080))])
    fw.remove_network(net.vni)
    assert [line for line in everything(host) if "VXLANPY" not in line and "VXP" not in line] == foreign


def test_owned_vnis_reports_what_is_installed(host: str, fw: IptablesFirewall) -> None:
    assert fw.owned_vnis() == set()
    fw.ensure_network(network(301), [])
    fw.ensure_network(network(16777215, internal=True), [])
    assert fw.owned_vnis() == {301, 16777215}
    fw.remove_network(301)
    assert fw.owned_vnis() == {16777215}
    # A chain left behind in one table only (a crash half-way) still counts, so reconciliation removes it.
    run(host, "iptables", "-w", "-t", "nat", "-N", "VXP-302")
    assert fw.owned_vnis() == {302, 16777215}


IN_OWN_NAMESPACE = r"""
import subprocess
from vxlanpy.dataplane.iptables import IptablesFirewall
from vxlanpy.models import NetworkConfig, Network
subprocess.run(["ip", "link", "add", "vxbr-77", "type", "bridge"], check=True)
firewall = IptablesFirewall()
firewall.ensure_base()
firewall.ensure_network(Network("n" * 64, NetworkConfig(vni=77)), [])
firewall.ensure_network(Network("m" * 64, NetworkConfig(vni=78)), [])  # its bridge does not exist yet
print(sorted(firewall.owned_vnis()))
print(open("/proc/sys/net/ipv4/ip_forward").read().strip())
print(open("/proc/sys/net/ipv4/conf/vxbr-77/route_localnet").read().strip())
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_without_netns_it_works_in_the_current_namespace() -> None:
    """The production path (no nsenter, /proc/sys written directly), run in a private namespace."""
    plugin_dir = os.path.dirname(os.path.dirname(vxlanpy.__file__))
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", IN_OWN_NAMESPACE],
        env={**os.environ, "PYTHONPATH": plugin_dir},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["[77, 78]", "1", "1"]


def test_remove_network_deletes_every_copy_of_a_jump(host: str, fw: IptablesFirewall) -> None:
    baseline = everything(host)
    fw.ensure_network(network(101, internal=True), [])
    # An older version (or a crash between check and add) left a rule twice; a reconciliation reads it.
    run(host, "iptables", "-w", "-A", "VXLANPY-INTERNAL", "-i", "vxbr-101", "-j", "DROP")
    run(host, "iptables", "-w", "-t", "nat", "-A", "VXLANPY-DNAT", "-j", "VXPD-101")
    fw.owned_vnis()
    fw.remove_network(101)
    assert everything(host) == baseline


def test_remove_network_copes_with_rules_removed_behind_its_back(
    host: str, fw: IptablesFirewall, monkeypatch: pytest.MonkeyPatch
) -> None:
    fw.ensure_network(network(201), [])
    baseline = everything(host)
    fw.ensure_network(network(202, "192.168.77.128/25", internal=True), [])
    # Gone since the firewall last read the tables: its first restore fails, the second from a fresh read works.
    run(host, "iptables", "-w", "-D", "VXLANPY-INTERNAL", "-i", "vxbr-202", "-j", "DROP")
    run(host, "iptables", "-w", "-t", "nat", "-D", "VXLANPY-DNAT", "-j", "VXPD-202")
    run(host, "iptables", "-w", "-t", "nat", "-X", "VXPD-202")
    for way in ("-i", "-o"):
        run(host, "ip6tables", "-w", "-D", "VXLANPY-INTERNAL", way, "vxbr-202", "-j", "DROP")
    counts = processes(fw, monkeypatch, lambda: fw.remove_network(202))
    assert everything(host) == baseline
    # IPv4: the restore fails, both tables are read again, the second restore works.  IPv6: read again
    # (the failure forgot everything), and nothing of the network is left there to remove.
    assert iptables_only(counts) == {"iptables-restore": 2, "iptables": 2, "ip6tables": 1}
    fw.remove_network(202)
    assert everything(host) == baseline
    assert fw.owned_vnis() == {201}


def test_a_chain_made_behind_its_back_is_taken_over(host: str, fw: IptablesFirewall) -> None:
    fw.owned_vnis()  # the firewall has read the tables: VXP-101 is not there
    run(host, "iptables", "-w", "-t", "nat", "-N", "VXP-101")
    run(host, "iptables", "-w", "-t", "nat", "-A", "VXP-101", "-j", "ACCEPT")
    fw.ensure_network(network(101), [])  # its `-N VXP-101` fails; the retry reads the tables and declares it
    assert rules(host, "nat", chain="VXP-101") == [
        "-N VXP-101",
        "-A VXP-101 -s 192.168.77.0/25 ! -o vxbr-101 -j MASQUERADE",
        "-A VXP-101 -s 192.168.77.0/25 -o vxbr-101 -m conntrack --ctstate DNAT -j MASQUERADE",
        "-A VXP-101 -o vxbr-101 -m addrtype --src-type LOCAL -j MASQUERADE",
    ]


def test_a_jump_is_never_added_twice(host: str, fw: IptablesFirewall) -> None:
    net = network(101, internal=True)
    for _ in range(2):
        fw.ensure_network(net, [])
        fw.ensure_network(net, [])
        fw.owned_vnis()
        fw.ensure_base()
        fw.ensure_network(net, [])
        IptablesFirewall(netns=host).ensure_network(net, [])  # a restarted plugin reads what is there first
    for table, family in (("filter", 4), ("nat", 4), ("filter", 6)):
        jumps = [line for line in rules(host, table, family) if line.startswith("-A VXLANPY-") and "101" in line]
        assert len(jumps) == 2, jumps
        assert len(set(jumps)) == 2, jumps


@pytest.mark.parametrize("how", ["flushed", "wiped"])
def test_rules_changed_behind_its_back_come_back_with_ensure_base_and_ensure_network(
    host: str, fw: IptablesFirewall, how: str
) -> None:
    net = network(101)
    endpoints = [endpoint(net, "192.168.77.2", tcp(80, 8080))]
    fw.ensure_network(net, endpoints)
    fw.ensure_network(network(102, "192.168.77.128/25", internal=True), [])
    before = everything(host)
    if how == "flushed":  # someone flushed vxlanpy's chains
        for tool in ("iptables", "ip6tables"):
            run(host, tool, "-w", "-F", "VXLANPY-FORWARD")
            run(host, tool, "-w", "-F", "VXLANPY-INTERNAL")
        run(host, "iptables", "-w", "-t", "nat", "-F", "VXLANPY-POSTROUTING")
        run(host, "iptables", "-w", "-t", "nat", "-F", "VXPD-101")
    else:  # the host's firewall was reloaded from scratch
        for tool, table in (("iptables", "filter"), ("iptables", "nat"), ("ip6tables", "filter")):
            run(host, tool, "-w", "-t", table, "-F")
            run(host, tool, "-w", "-t", table, "-X")
    fw.ensure_base()  # what the app runs periodically and at every reconciliation
    fw.ensure_network(net, endpoints)
    fw.ensure_network(network(102, "192.168.77.128/25", internal=True), [])
    assert everything(host) == before


# -- what a network costs ----------------------------------------------------------------------------------


def spawned(fw: IptablesFirewall, monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> list[list[str]]:
    """Every command line `action` runs through the firewall (nsenter left out)."""
    commands: list[list[str]] = []
    real_run = fw._run

    def recording(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        commands.append(argv)
        return real_run(argv, stdin)

    with monkeypatch.context() as patch:
        patch.setattr(fw, "_run", recording)
        action()
    return commands


def processes(fw: IptablesFirewall, monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> dict[str, int]:
    """The programs `action` runs through the firewall, by name, and how many times each."""
    return dict(Counter(argv[0] for argv in spawned(fw, monkeypatch, action)))


def iptables_only(counts: dict[str, int]) -> dict[str, int]:
    return {name: count for name, count in counts.items() if name.startswith(("iptables", "ip6tables"))}


def install_directly(ns: str, vnis: range, old_layout: bool = False) -> None:
    """Networks laid out like vxlanpy's, with one restore per family: far faster than one by one.  The old
    layout (vxlanpy < 0.2) adds a filter chain per network, jumped to from VXLANPY-FORWARD."""
    v4, v6 = ["*filter"], ["*filter"]
    nat = ["*nat", ":VXLANPY-POSTROUTING - [0:0]", ":VXLANPY-DNAT - [0:0]"] if old_layout else ["*nat"]
    if old_layout:
        v4 += [":VXLANPY-FORWARD - [0:0]"]
        v6 += [":VXLANPY-FORWARD - [0:0]"]
    for vni in vnis:
        if old_layout:
            chain = [f":VXP-{vni} - [0:0]", f"-A VXP-{vni} -i vxbr-{vni} -o vxbr-{vni} -j ACCEPT"]
            chain += [f"-A VXLANPY-FORWARD -{way} vxbr-{vni} -j VXP-{vni}" for way in "io"]
            v4 += chain
            v6 += chain
        nat += [f":VXP-{vni} - [0:0]", f":VXPD-{vni} - [0:0]", f"-A VXP-{vni} -o vxbr-{vni} -j MASQUERADE"]
        nat += [f"-A VXLANPY-POSTROUTING -j VXP-{vni}", f"-A VXLANPY-DNAT -j VXPD-{vni}"]
    for tool, lines in (("iptables-restore", [*v4, "COMMIT", *nat, "COMMIT"]), ("ip6tables-restore", [*v6, "COMMIT"])):
        result = subprocess.run(
            ["nsenter", f"--net=/run/netns/{ns}", tool, "--noflush", "-w", "10"],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


def test_the_per_network_filter_chains_of_older_versions_are_removed(make_netns: Callable[[], str]) -> None:
    host = make_netns()
    install_directly(host, range(1, 4), old_layout=True)
    fw = IptablesFirewall(netns=host)
    assert fw.owned_vnis() == {1, 2, 3}
    fw.ensure_base()  # at start-up, and at every reconciliation
    for family in (4, 6):
        assert not [line for line in rules(host, family=family) if "VXP-" in line]
        assert rules(host, family=family, chain="VXLANPY-FORWARD")[1] == (
            "-A VXLANPY-FORWARD -i vxbr-+ -o vxbr-+ -m physdev --physdev-is-bridged -j ACCEPT"
        )
    assert fw.owned_vnis() == {1, 2, 3}, "their nat chains are still there, for reconciliation to judge"
    fw.remove_network(2)
    assert fw.owned_vnis() == {1, 3}


def test_a_network_costs_the_same_few_processes_with_10_or_200_networks(
    host: str, fw: IptablesFirewall, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = network(9999)
    web = [endpoint(net, "192.168.77.2", tcp(80, 8080))]

    def lifecycle() -> list[dict[str, int]]:
        before = everything(host)
        costs = [
            processes(fw, monkeypatch, lambda: fw.ensure_network(net, [])),  # docker network create
            processes(fw, monkeypatch, lambda: fw.ensure_network(net, web)),  # a container publishes a port
            processes(fw, monkeypatch, lambda: fw.ensure_network(net, web)),  # reconciliation: nothing changed
            processes(fw, monkeypatch, lambda: fw.remove_network(net.vni)),  # docker network rm
            processes(fw, monkeypatch, lambda: fw.remove_network(net.vni)),  # ... retried
        ]
        assert everything(host) == before
        return costs

    install_directly(host, range(1, 11))
    assert fw.owned_vnis() == set(range(1, 11))  # a reconciliation reads the tables again
    with_10 = lifecycle()
    install_directly(host, range(11, 201))
    assert len(fw.owned_vnis()) == 200
    fw.ensure_base()
    with_200 = lifecycle()

    assert with_200 == with_10, "the cost of a network must not grow with the number of networks"
    create, publish, unchanged, remove, remove_again = (iptables_only(cost) for cost in with_200)
    one_restore = {"iptables-restore": 1}  # nat only: no -C, -A, -D or -S, and nothing in IPv6 at all
    assert create == publish == unchanged == remove == one_restore
    assert remove_again == {}
    # Besides, inside a namespace only: sysctl.  No ebtables: one guard, set up once, serves every network.
    assert with_200[0] == {**one_restore, "sysctl": 1}
    assert with_200[3] == one_restore
    assert with_200[4] == {}


def test_reconciliation_reads_the_tables_and_changes_nothing_in_place(
    host: str, fw: IptablesFirewall, monkeypatch: pytest.MonkeyPatch
) -> None:
    fw.ensure_network(network(101), [])
    # owned_vnis: `-S` of each whole table (filter and nat; filter), which is what it has to report on
    assert processes(fw, monkeypatch, fw.owned_vnis) == {"iptables": 2, "ip6tables": 1}
    # ensure_base: `-S` of the chains it hooks into and of the chains holding the jumps, and nothing else
    # when all is in place (ip_forward is already 1: the sysctl inside a namespace only reads it back)
    base = [argv for argv in spawned(fw, monkeypatch, fw.ensure_base) if argv[0].startswith(("iptables", "ip6"))]
    assert all(argv[-2] == "-S" for argv in base), base
    assert sorted((argv[0], argv[-1]) for argv in base) == sorted(
        [
            (tool, chain)
            for tool in ("iptables", "ip6tables")
            for chain in ("VXLANPY-FORWARD", "VXLANPY-INTERNAL", "FORWARD", "DOCKER-USER")
        ]
        + [
            ("iptables", chain)
            for chain in ("VXLANPY-POSTROUTING", "VXLANPY-DNAT", "POSTROUTING", "PREROUTING", "OUTPUT")
        ]
    )
    fresh = IptablesFirewall(netns=host)  # a restarted plugin: reads each table once, on first use
    counts = processes(fresh, monkeypatch, lambda: fresh.ensure_network(network(101), []))
    assert iptables_only(counts) == {"iptables": 2, "ip6tables": 1, "iptables-restore": 1}


def test_failure_is_a_dataplane_error_with_the_reason(make_netns: Callable[[], str]) -> None:
    firewall = IptablesFirewall(netns=make_netns())  # ensure_base never called: the base chains are missing
    with pytest.raises(DataplaneError, match="VXLANPY-POSTROUTING.*No chain.*Hint: .*restart the plugin"):
        firewall.ensure_network(network(101), [])


def test_unsafe_names_are_refused() -> None:
    with pytest.raises(ValueError):
        IptablesFirewall(netns="x; rm -rf /")


# -- the VTEP filter (multi-host mode) ---------------------------------------------------------------------

VTEP_B, VTEP_C, VTEP_V6 = (ipaddress.ip_address(a) for a in ("10.99.0.2", "10.99.0.3", "fd99::2"))


def test_vtep_filter_rules_are_installed_and_removed(host: str, fw: IptablesFirewall) -> None:
    run(host, "iptables", "-w", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
    fw.sync_vtep_filter({8472, 4789}, {VTEP_C, VTEP_B, VTEP_V6})
    assert rules(host, chain="INPUT") == ["-A INPUT -j VXLANPY-INPUT", "-A INPUT -i lo -j ACCEPT"]
    assert rules(host, family=6, chain="INPUT") == ["-A INPUT -j VXLANPY-INPUT"]
    assert rules(host, chain="VXLANPY-INPUT") == [
        "-N VXLANPY-INPUT",
        "-A VXLANPY-INPUT -s 10.99.0.2/32 -p udp -m udp --dport 4789 -j ACCEPT",
        "-A VXLANPY-INPUT -s 10.99.0.3/32 -p udp -m udp --dport 4789 -j ACCEPT",
        "-A VXLANPY-INPUT -p udp -m udp --dport 4789 -j DROP",
        "-A VXLANPY-INPUT -s 10.99.0.2/32 -p udp -m udp --dport 8472 -j ACCEPT",
        "-A VXLANPY-INPUT -s 10.99.0.3/32 -p udp -m udp --dport 8472 -j ACCEPT",
        "-A VXLANPY-INPUT -p udp -m udp --dport 8472 -j DROP",
    ]
    assert rules(host, family=6, chain="VXLANPY-INPUT") == [
        "-N VXLANPY-INPUT",
        "-A VXLANPY-INPUT -s fd99::2/128 -p udp -m udp --dport 4789 -j ACCEPT",
        "-A VXLANPY-INPUT -p udp -m udp --dport 4789 -j DROP",
        "-A VXLANPY-INPUT -s fd99::2/128 -p udp -m udp --dport 8472 -j ACCEPT",
        "-A VXLANPY-INPUT -p udp -m udp --dport 8472 -j DROP",
    ]
    before = everything(host) + rules(host, family=6, chain="INPUT")
    fw.sync_vtep_filter({4789, 8472}, {VTEP_B, VTEP_C, VTEP_V6})
    assert everything(host) + rules(host, family=6, chain="INPUT") == before, "the hook went in twice"

    fw.sync_vtep_filter({4789}, {VTEP_C})  # B and the IPv6 host left, port 8472 is no longer used
    assert rules(host, chain="VXLANPY-INPUT")[1:] == [
        "-A VXLANPY-INPUT -s 10.99.0.3/32 -p udp -m udp --dport 4789 -j ACCEPT",
        "-A VXLANPY-INPUT -p udp -m udp --dport 4789 -j DROP",
    ]
    assert rules(host, family=6, chain="VXLANPY-INPUT")[1:] == ["-A VXLANPY-INPUT -p udp -m udp --dport 4789 -j DROP"]

    fw.sync_vtep_filter(set(), {VTEP_C})
    assert rules(host, chain="INPUT") == ["-A INPUT -i lo -j ACCEPT"]
    assert not [line for line in everything(host) + rules(host, family=6, chain="INPUT") if "VXLANPY-INPUT" in line]
    fw.sync_vtep_filter(set(), set())  # already gone: still fine


@pytest.mark.parametrize(
    ("ports", "vteps"),
    [
        ({"4789"}, set()),
        ({0}, set()),
        ({65536}, set()),
        ({True}, set()),
        ({4789}, {"10.99.0.2"}),
        ({4789}, {ipaddress.ip_network("10.99.0.0/24")}),
        ({4789}, {ipaddress.ip_address("0.0.0.0")}),
    ],
)
def test_vtep_filter_refuses_unchecked_values(host: str, fw: IptablesFirewall, ports: set, vteps: set) -> None:
    with pytest.raises(ValueError, match="refusing"):
        fw.sync_vtep_filter(ports, vteps)
    assert not [line for line in everything(host) if "VXLANPY-INPUT" in line]


# -- real traffic ------------------------------------------------------------------------------------------

PING = r"""
import os, select, socket, struct, sys, time
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
ident, payload = os.getpid() & 0xFFFF, b"vxlanpy-test"
packet = struct.pack("!BBHHH", 8, 0, checksum(struct.pack("!BBHHH", 8, 0, 0, ident, 1) + payload), ident, 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.sendto(packet + payload, (sys.argv[1], 0))
deadline = time.monotonic() + float(sys.argv[2])
while (left := deadline - time.monotonic()) > 0 and select.select([sock], [], [], left)[0]:
    data, (source, _) = sock.recvfrom(2048)
    kind, _, _, reply_id, _ = struct.unpack("!BBHHH", data[(data[0] & 15) * 4 :][:8])
    if kind == 0 and reply_id == ident and source == sys.argv[1]:
        sys.exit(0)
sys.exit(1)
"""

SERVE = r"""
import socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(b"hello from the container")
    conn.close()
"""

FETCH = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as conn:
    print(conn.recv(100).decode())
"""

UDP_RECEIVE = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 9999))
print("ready", flush=True)
sys.stdin.readline()  # the datagram was sent: the wait counts from then, not from the sender's (slow) start
sock.settimeout(float(sys.argv[1]))
try:
    print(sock.recv(100).decode(), flush=True)
except TimeoutError:
    sys.exit(1)
"""

UDP_SEND = r"""
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"datagram", (sys.argv[1], 9999))
"""


def ping(ns: str, address: str, timeout: float = 1.0) -> bool:
    """One ICMP echo (no ping binary needed): True when the reply came back in time."""
    return run(ns, sys.executable, "-c", PING, address, str(timeout), check=False).returncode == 0


def fetch(ns: str, address: str, port: int, timeout: float = 1.0) -> str | None:
    result = run(ns, sys.executable, "-c", FETCH, address, str(port), str(timeout), check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def udp_arrives(source: str, target: str, address: str, timeout: float = 1.0) -> bool:
    """One datagram sent one way: unlike ping, this needs no reply to be let back in."""
    receiver = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{target}", sys.executable, "-c", UDP_RECEIVE, str(timeout)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdin is not None and receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        run(source, sys.executable, "-c", UDP_SEND, address)
        receiver.stdin.write("sent\n")
        receiver.stdin.flush()
        return receiver.stdout.readline().strip() == "datagram"
    finally:
        receiver.kill()
        receiver.wait()


class Lab:
    """The host namespace with vxlanpy-like bridges and containers plugged into them by veth pairs."""

    def __init__(self, host: str, make_netns: Callable[[], str]) -> None:
        self.host = host
        self.make_netns = make_netns
        bridged = run(host, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1", check=False)
        if bridged.returncode != 0:
            pytest.skip("br_netfilter is not loaded")

    def bridge(self, net: Network) -> None:
        gateway = str(net.ipv4[0].gateway)
        run(self.host, "ip", "link", "add", net.bridge, "type", "bridge")
        run(self.host, "ip", "addr", "add", gateway, "dev", net.bridge)
        run(self.host, "ip", "link", "set", net.bridge, "up")

    def container(self, net: Network, address: str) -> str:
        ns = self.make_netns()
        prefix = net.ipv4[0].pool.prefixlen
        gateway = net.ipv4[0].gateway
        assert gateway is not None
        veth = "vxh-" + ns[4:]
        run(self.host, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run(self.host, "ip", "link", "set", veth, "master", net.bridge, "up")
        run(ns, "ip", "addr", "add", f"{address}/{prefix}", "dev", "eth0")
        run(ns, "ip", "link", "set", "eth0", "up")
        run(ns, "ip", "route", "add", "default", "via", str(gateway.ip))
        return ns

    def outside(self) -> str:
        """A machine on the host's uplink that has no route back to any container subnet."""
        ns = self.make_netns()
        run(self.host, "ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", ns)
        run(self.host, "ip", "addr", "add", "192.168.78.1/24", "dev", "uplink")
        run(self.host, "ip", "link", "set", "uplink", "up")
        run(ns, "ip", "addr", "add", "192.168.78.2/24", "dev", "eth0")
        run(ns, "ip", "link", "set", "eth0", "up")
        return ns


@pytest.fixture
def lab(host: str, make_netns: Callable[[], str]) -> Lab:
    return Lab(host, make_netns)


def test_containers_of_one_network_talk_only_to_each_other(lab: Lab) -> None:
    red, blue = network(101, "192.168.77.0/25"), network(102, "192.168.77.128/25")
    lab.bridge(red)
    lab.bridge(blue)
    red1, red2 = lab.container(red, "192.168.77.2"), lab.container(red, "192.168.77.3")
    blue1 = lab.container(blue, "192.168.77.130")
    assert not ping(red1, "192.168.77.3"), "FORWARD policy DROP should block bridged traffic before vxlanpy's rules"

    fw = IptablesFirewall(netns=lab.host)
    fw.ensure_base()
    fw.ensure_network(red, [])
    fw.ensure_network(blue, [])
    assert ping(red1, "192.168.77.3", timeout=3)
    assert ping(red2, "192.168.77.2")
    assert ping(red1, "192.168.77.1"), "the gateway on the bridge answers"
    assert not ping(red1, "192.168.77.130"), "networks must be isolated from each other"
    assert not ping(blue1, "192.168.77.2"), "networks must be isolated from each other"


def test_egress_and_published_ports(lab: Lab, fw: IptablesFirewall) -> None:
    net = network(101)
    lab.bridge(net)
    web = lab.container(net, "192.168.77.2")
    outside = lab.outside()
    server = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{web}", sys.executable, "-c", SERVE, "80"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        fw.ensure_network(net, [endpoint(net, "192.168.77.2", tcp(80, 8080))])
        assert ping(web, "192.168.78.2", timeout=3), "egress needs MASQUERADE: outside has no route back"
        assert fetch(outside, "192.168.78.1", 8080) == "hello from the container"
        assert fetch(lab.host, "127.0.0.1", 8080) == "hello from the container"
        assert fetch(lab.host, "192.168.78.1", 8080) == "hello from the container"

        fw.ensure_network(net, [])  # the container stopped publishing
        assert fetch(outside, "192.168.78.1", 8080) is None
        assert fetch(lab.host, "127.0.0.1", 8080) is None
    finally:
        server.kill()
        server.wait()


def test_internal_network_cannot_leave_the_host(lab: Lab, fw: IptablesFirewall) -> None:
    net = network(103, internal=True)
    lab.bridge(net)
    box1, box2 = lab.container(net, "192.168.77.2"), lab.container(net, "192.168.77.3")
    outside = lab.outside()
    # With a route back and a FORWARD policy of ACCEPT (a host without dockerd), only vxlanpy's own
    # DROP rules can stop the packets.
    run(outside, "ip", "route", "add", "192.168.77.0/24", "via", "192.168.78.1")
    run(lab.host, "iptables", "-w", "-P", "FORWARD", "ACCEPT")
    fw.ensure_network(net, [])
    assert ping(box1, "192.168.77.3", timeout=3)
    assert not udp_arrives(box2, outside, "192.168.78.2"), "nothing leaves an internal network"
    assert not udp_arrives(outside, box2, "192.168.77.3"), "nothing enters an internal network"
    fw.ensure_network(replace(net, internal=False), [])
    assert udp_arrives(box2, outside, "192.168.78.2"), "the same network, not internal, does reach out"


VXLAN_SEND = r"""
import socket, struct, sys
# VXLAN header (I flag, VNI 42) + an Ethernet frame with a local experimental EtherType.
frame = b"\xff" * 6 + bytes.fromhex("020000000099") + struct.pack("!H", 0x88B5) + b"vxlanpy".ljust(46, b".")
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 0))
sock.sendto(struct.pack("!II", 0x08000000, 42 << 8) + frame, (sys.argv[2], 4789))
"""


def counters(ns: str, chain: str) -> list[int]:
    """The packet counter of every rule of `chain`, in order (`iptables -S CHAIN -v`)."""
    lines = run(ns, "iptables", "-w", "-S", chain, "-v").stdout.splitlines()
    return [int(line.split(" -c ")[1].split()[0]) for line in lines if line.startswith("-A ")]


def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Whether `condition` holds within `timeout`: a packet sent is not yet a packet received."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def vxlan_rx(ns: str, dev: str) -> int:
    stats = run(ns, "ip", "-s", "-j", "link", "show", "dev", dev).stdout
    return int(json.loads(stats)[0]["stats64"]["rx"]["packets"])


def test_vtep_filter_drops_vxlan_from_unknown_sources(
    host: str, fw: IptablesFirewall, make_netns: Callable[[], str]
) -> None:
    # The host receives VXLAN on 10.99.0.1; a neighbour on the underlay sends from a listed VTEP address
    # (10.99.0.2) and from one that is not listed (10.99.0.3).
    run(host, "ip", "link", "add", "vxlan-42", "type", "vxlan", "id", "42", "dstport", "4789", "nolearning")
    run(host, "ip", "link", "set", "vxlan-42", "up")
    sender = make_netns()
    run(host, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", sender)
    run(host, "ip", "addr", "add", "10.99.0.1/24", "dev", "eth0")
    run(host, "ip", "link", "set", "eth0", "up")
    for address in ("10.99.0.2/24", "10.99.0.3/24"):
        run(sender, "ip", "addr", "add", address, "dev", "eth0")
    run(sender, "ip", "link", "set", "eth0", "up")

    def send(source: str) -> None:
        run(sender, sys.executable, "-c", VXLAN_SEND, source, "10.99.0.1")

    send("10.99.0.3")  # no filter yet: anyone's VXLAN gets in
    assert eventually(lambda: vxlan_rx(host, "vxlan-42") == 1)

    fw.sync_vtep_filter({4789}, {VTEP_B})
    send("10.99.0.3")
    assert eventually(lambda: counters(host, "VXLANPY-INPUT") == [0, 1]), "the unknown source was not dropped"
    send("10.99.0.2")
    # Packets on one path arrive in order: once the listed one is in, the dropped one would have been too.
    assert eventually(lambda: vxlan_rx(host, "vxlan-42") == 2), "the listed VTEP's packet did not get through"
    assert counters(host, "VXLANPY-INPUT") == [1, 1]

    fw.sync_vtep_filter(set(), set())
    send("10.99.0.3")
    assert eventually(lambda: vxlan_rx(host, "vxlan-42") == 3)


# -- firewall layouts: Docker 20.10-27, 28+, none (--iptables=false), nftables beside it ---------------------


def iptables(ns: str, *argv: str) -> None:
    run(ns, "iptables", "-w", *argv)


def docker_27_starts(ns: str) -> None:
    """What dockerd 20.10-27 leaves in filter when it (re)starts with docker0: its rules straight in FORWARD,
    above anything already there, DOCKER-USER (ending in RETURN) first."""
    for chain in ("DOCKER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2", "DOCKER-USER"):
        run(ns, "iptables", "-w", "-N", chain, check=False)  # already there after a first start
    for chain in ("DOCKER-ISOLATION-STAGE-1", "DOCKER-USER"):
        if rules(ns, chain=chain) == [f"-N {chain}"]:
            iptables(ns, "-A", chain, "-j", "RETURN")
    for rule in (
        ["-i", "docker0", "-o", "docker0", "-j", "ACCEPT"],
        ["-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"],
        ["-o", "docker0", "-j", "DOCKER"],
        ["-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
        ["-j", "DOCKER-ISOLATION-STAGE-1"],
        ["-j", "DOCKER-USER"],
    ):
        run(ns, "iptables", "-w", "-D", "FORWARD", *rule, check=False)
        iptables(ns, "-I", "FORWARD", "1", *rule)


def docker_28_starts(ns: str) -> None:
    """What dockerd 28 (28.5 as printed by `iptables -S` after its start, plus docker0) leaves in filter: its
    rules in DOCKER-FORWARD, whose jump and then DOCKER-USER's (empty since 28.2.2) it puts at the top of
    FORWARD, each deleted first (libnetwork's EnsureJumpRule)."""
    fresh = run(ns, "iptables", "-w", "-S", "DOCKER-FORWARD", check=False).returncode != 0
    for chain in ("DOCKER", "DOCKER-BRIDGE", "DOCKER-CT", "DOCKER-FORWARD", "DOCKER-ISOLATION-STAGE-1",
                  "DOCKER-ISOLATION-STAGE-2", "DOCKER-USER"):  # fmt: skip
        run(ns, "iptables", "-w", "-N", chain, check=False)
    if fresh:
        for chain, rule in (
            ("DOCKER-FORWARD", ["-j", "DOCKER-CT"]),
            ("DOCKER-FORWARD", ["-j", "DOCKER-ISOLATION-STAGE-1"]),
            ("DOCKER-FORWARD", ["-j", "DOCKER-BRIDGE"]),
            ("DOCKER-FORWARD", ["-i", "docker0", "-j", "ACCEPT"]),
            ("DOCKER-CT", ["-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]),
            ("DOCKER-BRIDGE", ["-o", "docker0", "-j", "DOCKER"]),
            ("DOCKER", ["!", "-i", "docker0", "-o", "docker0", "-j", "DROP"]),
        ):
            iptables(ns, "-A", chain, *rule)
    for chain in ("DOCKER-FORWARD", "DOCKER-USER"):
        run(ns, "iptables", "-w", "-D", "FORWARD", "-j", chain, check=False)
        iptables(ns, "-I", "FORWARD", "1", "-j", chain)


def forward_jumps(ns: str) -> list[str]:
    return [line for line in rules(ns, chain="FORWARD") if line.startswith("-A FORWARD -j ")]


class NetnsProbe(LocalProbe):
    """doctor's view of the host from inside a test namespace (files are the machine's; commands are not)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        return super().run(["nsenter", f"--net=/run/netns/{self.ns}", *argv])


def doctor_sees(ns: str) -> dict[str, list[Finding]]:
    """doctor's firewall findings in `ns`, by check (what `sudo vxlanpy doctor` prints there)."""
    seen: dict[str, list[Finding]] = {}
    examination = Examination(NetnsProbe(ns), None, None)  # type: ignore[arg-type]
    for check in FIREWALL_CHECKS:
        for finding in check(examination):
            seen.setdefault(finding.check, []).append(finding)
    return seen


def one(seen: dict[str, list[Finding]], check: str) -> Finding:
    assert len(seen.get(check, [])) == 1, seen
    return seen[check][0]


@pytest.mark.parametrize(
    ("starts", "layout", "displacing"),
    [
        (docker_27_starts, "docker iptables (20.10-27)", "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT"),
        (docker_28_starts, "docker iptables with DOCKER-USER and DOCKER-FORWARD (28+)", "-A FORWARD -j DOCKER-FORWARD"),
    ],
    ids=["docker-27", "docker-28"],
)
def test_dockerd_starting_above_the_hook_is_put_back_below_it(
    host: str, fw: IptablesFirewall, starts: Callable[[str], None], layout: str, displacing: str
) -> None:
    hook = "-A FORWARD -j VXLANPY-FORWARD"
    # dockerd starts after vxlanpy (a host booting, or dockerd restarted): its jumps go above vxlanpy's hook.
    starts(host)
    assert rules(host, chain="FORWARD")[0] == "-A FORWARD -j DOCKER-USER"
    seen = doctor_sees(host)
    assert one(seen, "firewall layout").summary == layout
    warned = one(seen, "vxlanpy's FORWARD hook")
    assert warned.status == "warn" and displacing in warned.summary, warned
    assert warned.fix.startswith("iptables -D FORWARD -j VXLANPY-FORWARD")

    fw.ensure_base()  # what the plugin's watch does every 10 s
    assert rules(host, chain="FORWARD")[0] == hook and rules(host, chain="FORWARD").count(hook) == 1
    assert rules(host, chain="DOCKER-USER")[1] == "-A DOCKER-USER -j VXLANPY-FORWARD"
    assert rules(host, family=6, chain="FORWARD")[0] == hook
    ok = one(doctor_sees(host), "vxlanpy's FORWARD hook")
    assert (ok.status, ok.summary) == ("ok", "decides first: " + hook)

    # Restarted again: dockerd's jumps go back on top, but DOCKER-USER, first, holds vxlanpy's hook first.
    starts(host)
    assert rules(host, chain="FORWARD")[0] == "-A FORWARD -j DOCKER-USER"
    meanwhile = one(doctor_sees(host), "vxlanpy's FORWARD hook")
    assert meanwhile.status == "ok", meanwhile
    assert meanwhile.summary == "decides first: -A FORWARD -j DOCKER-USER -> -A DOCKER-USER -j VXLANPY-FORWARD"
    fw.ensure_base()
    assert rules(host, chain="FORWARD")[0] == hook and rules(host, chain="FORWARD").count(hook) == 1
    assert rules(host, chain="DOCKER-USER").count("-A DOCKER-USER -j VXLANPY-FORWARD") == 1


@pytest.mark.parametrize("policy", ["ACCEPT", "DROP"])
def test_without_docker_chains_the_hook_is_first_and_no_docker_chain_is_made(
    make_netns: Callable[[], str], policy: str
) -> None:
    ns = make_netns()  # dockerd --iptables=false: not one Docker chain, the policy as the host has it
    iptables(ns, "-P", "FORWARD", policy)
    iptables(ns, "-A", "FORWARD", "-i", "eth9", "-j", "ACCEPT")  # the host's own rule
    IptablesFirewall(netns=ns).ensure_base()
    assert rules(ns, chain="FORWARD") == ["-A FORWARD -j VXLANPY-FORWARD", "-A FORWARD -i eth9 -j ACCEPT"]
    assert run(ns, "iptables", "-w", "-P", "FORWARD", policy).returncode == 0
    assert f"-P FORWARD {policy}" in run(ns, "iptables", "-w", "-S", "FORWARD").stdout, "the policy is left alone"
    assert not [line for line in everything(ns) if "DOCKER" in line]
    seen = doctor_sees(ns)
    assert one(seen, "firewall layout").summary == "no docker chains (--iptables=false)"
    assert one(seen, "FORWARD policy").summary.startswith(policy)
    assert one(seen, "vxlanpy's FORWARD hook").summary == "decides first: -A FORWARD -j VXLANPY-FORWARD"


def test_docker_user_deleted_under_28s_layout(host: str, fw: IptablesFirewall) -> None:
    """No DOCKER-USER, as with Docker 29's nftables backend: ensure_base works without it and makes none."""
    docker_28_starts(host)
    fw.ensure_base()
    iptables(host, "-D", "FORWARD", "-j", "DOCKER-USER")
    iptables(host, "-F", "DOCKER-USER")
    iptables(host, "-X", "DOCKER-USER")
    iptables(host, "-D", "FORWARD", "-j", "DOCKER-FORWARD")
    iptables(host, "-I", "FORWARD", "1", "-j", "DOCKER-FORWARD")  # dockerd's jump above the hook again
    assert one(doctor_sees(host), "vxlanpy's FORWARD hook").status == "warn"
    fw.ensure_base()
    assert forward_jumps(host) == ["-A FORWARD -j VXLANPY-FORWARD", "-A FORWARD -j DOCKER-FORWARD"]
    assert run(host, "iptables", "-w", "-S", "DOCKER-USER", check=False).returncode != 0, "vxlanpy made DOCKER-USER"
    seen = doctor_sees(host)
    assert one(seen, "firewall layout").summary == "docker iptables with DOCKER-FORWARD (28+) but no DOCKER-USER"
    assert one(seen, "vxlanpy's FORWARD hook").status == "ok"


def test_isolation_egress_and_published_ports_hold_with_forward_policy_accept(lab: Lab) -> None:
    """A host without Docker's chains and with the FORWARD policy ACCEPT: only vxlanpy's rules decide."""
    run(lab.host, "iptables", "-w", "-P", "FORWARD", "ACCEPT")
    red, blue = network(101, "192.168.77.0/25"), network(102, "192.168.77.128/25")
    lab.bridge(red)
    lab.bridge(blue)
    web, blue1 = lab.container(red, "192.168.77.2"), lab.container(blue, "192.168.77.130")
    outside = lab.outside()
    run(outside, "ip", "route", "add", "192.168.77.0/24", "via", "192.168.78.1")  # a route back, to be refused
    assert ping(blue1, "192.168.77.2", timeout=3), "the policy ACCEPT alone lets everything through"
    server = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{web}", sys.executable, "-c", SERVE, "80"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        fw = IptablesFirewall(netns=lab.host)
        fw.ensure_base()
        fw.ensure_network(red, [endpoint(red, "192.168.77.2", tcp(80, 8080))])
        fw.ensure_network(blue, [])
        assert not ping(blue1, "192.168.77.2"), "networks must be isolated from each other"
        assert not udp_arrives(outside, web, "192.168.77.2"), "nothing enters a network unpublished"
        assert ping(web, "192.168.78.2", timeout=3), "egress"
        assert fetch(outside, "192.168.78.1", 8080) == "hello from the container"
        assert fetch(outside, "192.168.77.2", 80) is None, "only through the published port"
    finally:
        server.kill()
        server.wait()


needs_nft = pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (apt-get install nftables)")


def nft(ns: str, *argv: str) -> None:
    run(ns, "nft", *argv)


@needs_nft
def test_doctor_names_an_nftables_forward_chain_with_policy_drop_and_its_fix_works(lab: Lab) -> None:
    """An nftables accept only ends its own chain: a forward chain with policy drop, of someone else's, drops what
    vxlanpy accepts, at any priority, and vxlanpy cannot override it; doctor says so and what to add there."""
    net = network(101)
    lab.bridge(net)
    box = lab.container(net, "192.168.77.2")
    outside = lab.outside()
    fw = IptablesFirewall(netns=lab.host)
    fw.ensure_base()
    fw.ensure_network(net, [])
    assert ping(box, "192.168.78.2", timeout=3)
    # What Docker 29's nftables backend makes (its chain accepts by policy), and a host firewall dropping by policy.
    nft(lab.host, "add", "table", "ip", "docker-bridges")
    nft(lab.host, "add", "chain", "ip", "docker-bridges", "filter-FORWARD",
        "{ type filter hook forward priority 0; policy accept; }")  # fmt: skip
    nft(lab.host, "add", "table", "inet", "vxt-host")
    nft(lab.host, "add", "chain", "inet", "vxt-host", "forward",
        "{ type filter hook forward priority -10; policy drop; }")  # fmt: skip
    assert not ping(box, "192.168.78.2"), "vxlanpy's iptables ACCEPT does not win over that chain's drop"
    seen = doctor_sees(lab.host)
    assert "docker nftables tables present (ip docker-bridges" in one(seen, "firewall layout").summary
    chains = {finding.summary: finding for finding in seen["nftables forward chains"]}
    assert set(chains) == {
        "inet vxt-host forward: priority -10 (before iptables'), policy drop",
        "ip docker-bridges filter-FORWARD: priority 0 (at the same priority as iptables'), policy accept: only its"
        " drop rules could stop what vxlanpy accepts",
    }, "iptables-nft's own chains are left out"
    warned = chains["inet vxt-host forward: priority -10 (before iptables'), policy drop"]
    assert warned.status == "warn" and "at any priority" in warned.why
    # The fix doctor gives, as nft argv: vxlanpy's traffic gets out again, and its isolation still holds.
    fixes = warned.fix.split(": ", 1)[1].split(" (")[0].split("; ")
    for fix in fixes:
        words = fix.split()
        assert words[:3] == ["nft", "insert", "rule"], fix
        nft(lab.host, *[word.strip('"') for word in words[1:]])
    assert ping(box, "192.168.78.2", timeout=3)
    run(outside, "ip", "route", "add", "192.168.77.0/24", "via", "192.168.78.1")
    assert not udp_arrives(outside, box, "192.168.77.2"), "vxlanpy's drop still holds"
