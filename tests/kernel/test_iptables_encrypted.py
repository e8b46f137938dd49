"""The VTEP filter of encrypted networks against the real kernel: their VXLAN port is admitted only through the
WireGuard interface, so VXLAN crafted on the underlay never reaches a bridge, even from a tunnel address.

This kernel has no WireGuard: a veth named like vxlanpy's WireGuard interface stands in for its decrypted side
(what arrives on it is what WireGuard let through), which is all the filter looks at."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable

from vxlanpy.dataplane.iptables import IptablesFirewall

from .test_iptables import counters, eventually, fw, host, make_netns, rules, run, vxlan_rx

__all__ = ["fw", "host", "make_netns"]  # the fixtures this module uses

WG = "vxlanpy-wg"
PORT = 4790
TUNNEL_PEER = ipaddress.ip_address("10.255.0.8")
UNDERLAY_VTEP = ipaddress.ip_address("10.99.0.2")

VXLAN_SEND = r"""
import socket, struct, sys
# VXLAN header (I flag, VNI 42) + an Ethernet frame with a local experimental EtherType.
frame = b"\xff" * 6 + bytes.fromhex("020000000099") + struct.pack("!H", 0x88B5) + b"vxlanpy".ljust(46, b".")
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 0))
sock.sendto(struct.pack("!II", 0x08000000, 42 << 8) + frame, (sys.argv[2], int(sys.argv[3])))
"""


def test_encrypted_port_rules_as_iptables_lists_them(host: str, fw: IptablesFirewall) -> None:
    fw.sync_vtep_filter({4789, PORT}, {UNDERLAY_VTEP, TUNNEL_PEER}, {PORT: WG})
    assert rules(host, chain="VXLANPY-INPUT") == [
        "-N VXLANPY-INPUT",
        "-A VXLANPY-INPUT -s 10.99.0.2/32 -p udp -m udp --dport 4789 -j ACCEPT",
        "-A VXLANPY-INPUT -s 10.255.0.8/32 -p udp -m udp --dport 4789 -j ACCEPT",
        "-A VXLANPY-INPUT -p udp -m udp --dport 4789 -j DROP",
        f"-A VXLANPY-INPUT ! -i {WG} -p udp -m udp --dport 4790 -j DROP",
        "-A VXLANPY-INPUT -s 10.99.0.2/32 -p udp -m udp --dport 4790 -j ACCEPT",
        "-A VXLANPY-INPUT -s 10.255.0.8/32 -p udp -m udp --dport 4790 -j ACCEPT",
        "-A VXLANPY-INPUT -p udp -m udp --dport 4790 -j DROP",
    ]
    assert rules(host, family=6, chain="VXLANPY-INPUT") == [
        "-N VXLANPY-INPUT",
        "-A VXLANPY-INPUT -p udp -m udp --dport 4789 -j DROP",
        f"-A VXLANPY-INPUT ! -i {WG} -p udp -m udp --dport 4790 -j DROP",
        "-A VXLANPY-INPUT -p udp -m udp --dport 4790 -j DROP",
    ]
    fw.sync_vtep_filter({4789}, {UNDERLAY_VTEP})  # the last encrypted network went
    assert not [line for line in rules(host, chain="VXLANPY-INPUT") if "4790" in line]
    fw.sync_vtep_filter(set(), set())
    assert not [line for line in rules(host) if "VXLANPY-INPUT" in line]


def test_vxlan_to_an_encrypted_port_gets_in_only_through_the_tunnel(
    host: str, fw: IptablesFirewall, make_netns: Callable[[], str]
) -> None:
    run(host, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0")
    run(host, "ip", "link", "add", "vxlan-42", "type", "vxlan", "id", "42", "dstport", str(PORT), "nolearning")
    run(host, "ip", "link", "set", "vxlan-42", "up")
    # The underlay: a neighbour that is a listed VTEP of plain networks and also forges a tunnel address.
    underlay = make_netns()
    run(host, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", underlay)
    run(host, "ip", "addr", "add", "10.99.0.1/24", "dev", "eth0")
    run(host, "ip", "link", "set", "eth0", "up")
    run(underlay, "ip", "addr", "add", "10.99.0.2/24", "dev", "eth0")
    run(underlay, "ip", "addr", "add", f"{TUNNEL_PEER}/32", "dev", "eth0")
    run(underlay, "ip", "link", "set", "eth0", "up")
    # The tunnel: what WireGuard hands this host, from the peer's tunnel address (and from one not listed).
    peer = make_netns()
    run(host, "ip", "link", "add", WG, "type", "veth", "peer", "name", "wg", "netns", peer)
    run(host, "ip", "addr", "add", "10.255.0.7/16", "dev", WG)
    run(host, "ip", "link", "set", WG, "up")
    run(peer, "ip", "addr", "add", f"{TUNNEL_PEER}/16", "dev", "wg")
    run(peer, "ip", "addr", "add", "10.255.0.9/16", "dev", "wg")
    run(peer, "ip", "link", "set", "wg", "up")

    def send(ns: str, source: str, target: str) -> None:
        run(ns, sys.executable, "-c", VXLAN_SEND, source, target, str(PORT))

    fw.sync_vtep_filter({PORT}, {UNDERLAY_VTEP, TUNNEL_PEER}, {PORT: WG})
    send(underlay, str(TUNNEL_PEER), "10.99.0.1")  # forged tunnel source, on the underlay
    send(underlay, str(UNDERLAY_VTEP), "10.99.0.1")  # a plain VTEP, on the encrypted port
    assert eventually(lambda: counters(host, "VXLANPY-INPUT") == [2, 0, 0, 0]), "the underlay's VXLAN got past"
    send(peer, "10.255.0.9", "10.255.0.7")  # through the tunnel, but not a listed VTEP
    assert eventually(lambda: counters(host, "VXLANPY-INPUT") == [2, 0, 0, 1])
    send(peer, str(TUNNEL_PEER), "10.255.0.7")
    # Packets on one path arrive in order: once the listed one is in, the dropped one would have been too.
    assert eventually(lambda: vxlan_rx(host, "vxlan-42") == 1), "the tunnel's VXLAN did not get through"
    assert counters(host, "VXLANPY-INPUT") == [2, 0, 1, 1]
