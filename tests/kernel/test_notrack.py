"""Frames switched inside a vxlanpy bridge skip conntrack (dataplane/notrack.py), against the real kernel.

Each test has its own host namespace like a Docker host (br_netfilter on, FORWARD policy DROP, conntrack in use
by the nat rules) with vxlanpy-like bridges and containers (tests/kernel/test_iptables.py's Lab)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest

from vxlanpy.dataplane.iptables import IptablesFirewall

from .test_iptables import SERVE, Lab, endpoint, fetch, fw, host, lab, make_netns, network, ping, run, tcp

__all__ = ["fw", "host", "lab", "make_netns"]  # fixtures

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (the nftables package)"),
]

RULES = [
    'iifname "vxh-*" meta pkttype other notrack',
    'iifname "vxlan-*" meta pkttype other notrack',
    'iifname "vxg-*" meta pkttype other notrack',
]


def tracked(ns: str, source: str, destination: str) -> bool:
    """Whether the host's conntrack table holds a connection from `source` to `destination`."""
    table = run(ns, "cat", "/proc/net/nf_conntrack").stdout
    return any(f"src={source} dst={destination} " in line for line in table.splitlines())


def table_rules(ns: str) -> list[str]:
    """The rules of `nft list table bridge vxlanpy`, as a user reads them."""
    listing = run(ns, "nft", "list", "table", "bridge", "vxlanpy").stdout
    return [line.strip() for line in listing.splitlines() if line.strip().startswith("iifname")]


def test_frames_switched_inside_a_network_are_not_tracked_and_routed_ones_are(lab: Lab, fw: IptablesFirewall) -> None:
    red = network(101)
    lab.bridge(red)
    web, client = lab.container(red, "192.168.77.2"), lab.container(red, "192.168.77.3")
    outside = lab.outside()
    fw.ensure_network(red, [])
    assert table_rules(lab.host) == RULES

    assert ping(client, "192.168.77.2", timeout=3)
    assert not tracked(lab.host, "192.168.77.3", "192.168.77.2"), "a frame switched in the bridge was tracked"
    assert ping(client, "192.168.78.2", timeout=3), "egress: masqueraded, so tracked"
    assert tracked(lab.host, "192.168.77.3", "192.168.78.2")
    assert ping(client, "192.168.77.1"), "the gateway answers"
    assert tracked(lab.host, "192.168.77.3", "192.168.77.1"), "what is addressed to the host is tracked"

    # Without vxlanpy's table the same ping is tracked: the host does track bridged frames (br_netfilter).
    run(lab.host, "nft", "delete", "table", "bridge", "vxlanpy")
    assert ping(web, "192.168.77.3", timeout=3)
    assert tracked(lab.host, "192.168.77.2", "192.168.77.3")
    del outside


def test_a_published_port_answers_a_container_of_its_own_network(lab: Lab, fw: IptablesFirewall) -> None:
    """Hairpin: the reply is switched straight back to the client, untracked, so the client is masqueraded to
    reach the server from the gateway, and the reply comes back through the host to be un-DNATed."""
    red = network(101)
    lab.bridge(red)
    web, client = lab.container(red, "192.168.77.2"), lab.container(red, "192.168.77.3")
    server = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{web}", sys.executable, "-c", SERVE, "80"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        fw.ensure_network(red, [endpoint(red, "192.168.77.2", tcp(80, 8080))])
        assert fetch(client, "192.168.77.1", 8080, timeout=3) == "hello from the container"
        assert fetch(lab.host, "192.168.77.1", 8080) == "hello from the container"
    finally:
        server.kill()
        server.wait()


def test_the_table_is_put_back_when_changed_and_nothing_else_is_touched(host: str, fw: IptablesFirewall) -> None:
    run(host, "nft", "add", "table", "bridge", "users")
    run(host, "nft", "add", "chain", "bridge", "users", "in", "{ type filter hook prerouting priority 0; }")
    run(host, "nft", "add", "rule", "bridge", "users", "in", "counter")
    fw.ensure_base()
    assert table_rules(host) == RULES, "written once, not twice"
    run(host, "nft", "flush", "chain", "bridge", "vxlanpy", "switched")
    fw.ensure_base()
    assert table_rules(host) == RULES
    assert "counter" in run(host, "nft", "list", "table", "bridge", "users").stdout


def test_frames_between_two_hosts_are_not_tracked_on_either(make_netns: Callable[[], str]) -> None:
    """Two hosts on an underlay, each with the network's bridge, a VXLAN port to the other and a container: what
    the containers send each other enters each bridge through a veth on one host and the VXLAN port on the other."""
    red = network(101)
    hosts, containers = [make_netns(), make_netns()], []
    run(hosts[0], "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", hosts[1])
    for index, host_ns in enumerate(hosts):
        run(host_ns, "iptables", "-w", "-P", "FORWARD", "DROP")
        lab = Lab(host_ns, make_netns)
        local, remote = f"10.99.0.{index + 1}", f"10.99.0.{2 - index}"
        run(host_ns, "ip", "addr", "add", f"{local}/24", "dev", "eth0")
        run(host_ns, "ip", "link", "set", "eth0", "up")
        lab.bridge(red)
        run(host_ns, "ip", "link", "add", "vxlan-101", "type", "vxlan", "id", "101", "dstport", "4789", "local", local,
            "remote", remote, "dev", "eth0")  # fmt: skip
        run(host_ns, "ip", "link", "set", "vxlan-101", "master", red.bridge, "up")
        containers.append(lab.container(red, f"192.168.77.{index + 2}"))
        firewall = IptablesFirewall(netns=host_ns)
        firewall.ensure_base()
        firewall.ensure_network(red, [])  # its masquerade rules: conntrack is in use on both hosts
    assert ping(containers[0], "192.168.77.3", timeout=3)
    for host_ns in hosts:
        assert not tracked(host_ns, "192.168.77.2", "192.168.77.3"), "a frame switched in the bridge was tracked"
    for host_ns in hosts:
        run(host_ns, "nft", "delete", "table", "bridge", "vxlanpy")
    assert ping(containers[1], "192.168.77.2", timeout=3)
    assert all(tracked(host_ns, "192.168.77.3", "192.168.77.2") for host_ns in hosts), "tracked without the table"
