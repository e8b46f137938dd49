"""`-o encap=gretap` against the real kernel, inside throwaway network namespaces.

Which tests run depends on the kernel: with GRE (ip_gre, as Debian's kernels ship it; scripts/test runs this tier
in such a guest) the ports, traffic across two and three hosts, split horizon, isolation and MTU; without it (this
project's development machine) the clear refusal that leaves nothing behind.  Both sets are real tests, and the
first one checks that the choice matches what the kernel ships, so neither set is ever silently skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from vxlanpy.dataplane.netlink import NetlinkLinks
from vxlanpy.errors import DataplaneError
from vxlanpy.models import GRETAP_OVERHEAD_V4, GRETAP_OVERHEAD_V6, Network

from .conftest import Namespaces
from .kernel_modules import kernel_ships, module_loads
from .test_netlink import (
    PING,
    UNDERLAY_A,
    UNDERLAY_B,
    Lab,
    add_underlay_nic,
    link,
    make_network,
    must_link,
    ping,
    plug_container,
    run,
    rx_packets,
    unreachable,
)
from .test_netlink import pytestmark as netlink_marks

pytestmark = netlink_marks
UNDERLAY_C = "10.99.0.3"


GRE = module_loads("ip_gre", "ip6_gre")  # built in or loadable


def test_gre_support_is_found_exactly_when_the_kernel_ships_it() -> None:
    assert GRE == kernel_ships("ip_gre"), (
        f"ip_gre {'loads' if GRE else 'does not load'} but the kernel's module lists "
        f"{'do not list' if GRE else 'list'} it"
    )


def gretap_network(vni: int, local: str, gateway4: str | None = "192.168.77.1/24", **peers: Any) -> Network:
    return make_network(vni, gateway4=gateway4, encap="gretap", dev="eth0", local=local, **peers)


def gretap_links(ns: str) -> list[dict[str, Any]]:
    shown = json.loads(run(ns, "ip", "-j", "-d", "link", "show").stdout)
    # Not the fallback devices (gretap0, ip6gre0 ...) the kernel makes in each namespace once ip_gre is loaded.
    return [
        entry
        for entry in shown
        if entry.get("linkinfo", {}).get("info_kind") in ("gretap", "ip6gretap") and entry["ifname"].startswith("vxg-")
    ]


def vxlanpy_links(ns: str) -> list[str]:
    shown = json.loads(run(ns, "ip", "-j", "link", "show").stdout)
    return sorted(entry["ifname"] for entry in shown if entry["ifname"].startswith(("vxbr-", "vxlan-", "vxg-")))


if not GRE:

    def test_without_gre_the_create_fails_at_once_and_leaves_nothing(namespaces: Namespaces) -> None:
        host = namespaces.new()
        add_underlay_nic(host, UNDERLAY_A)
        links = NetlinkLinks(netns=host)
        namespaces.close_later(links.close)
        net = gretap_network(4242, UNDERLAY_A, remote=UNDERLAY_B)

        with pytest.raises(DataplaneError) as refused:
            links.ensure_network(net)

        message = str(refused.value)
        assert "the kernel lacks GRE support" in message and "modprobe ip_gre" in message, message
        assert "encap=vxlan" in message, message
        assert vxlanpy_links(host) == [], "a refused gretap network left devices behind"

else:

    def test_remote_mode_makes_one_keyed_isolated_port(namespaces: Namespaces) -> None:
        lab = Lab(namespaces)
        host = lab.host(UNDERLAY_A)
        net = gretap_network(4242, UNDERLAY_A, remote=UNDERLAY_B, ttl=32)
        lab.links[host].ensure_network(net)

        port = must_link(host, "vxg-4242")
        data = port["linkinfo"]["info_data"]
        assert port["linkinfo"]["info_kind"] == "gretap"
        assert (data["local"], data["remote"], data["ttl"]) == (UNDERLAY_A, UNDERLAY_B, 32)
        assert data["ikey"] in ("0.0.16.146", 4242) and data["okey"] == data["ikey"], data  # the key is the VNI
        assert port["master"] == "vxbr-4242" and "UP" in port["flags"] and port["mtu"] == 1400
        assert port["ifalias"] == net.alias
        brport = json.loads(run(host, "bridge", "-j", "-d", "link", "show", "dev", "vxg-4242").stdout)[0]
        assert brport["isolated"] and brport["neigh_suppress"]
        assert link(host, "vxlan-4242") is None
        lab.links[host].ensure_network(net)
        assert must_link(host, "vxg-4242")["ifindex"] == port["ifindex"], "a second ensure re-created the port"

        lab.links[host].remove_network(net)
        assert vxlanpy_links(host) == []

    def test_unconfigured_ports_get_the_overheads_options_assume(namespaces: Namespaces) -> None:
        """The kernel's own MTU for a keyed port on a 1500-byte underlay: 42 bytes less for gretap, 62 for
        ip6gretap without the encapsulation limit option (which vxlanpy's ports leave out; with it, 70)."""
        ns = namespaces.new()
        add_underlay_nic(ns, UNDERLAY_A)
        run(ns, "ip", "addr", "add", "fd00:99::1/64", "dev", "eth0", "nodad")
        run(ns, "ip", "link", "add", "g4", "type", "gretap", "local", UNDERLAY_A, "remote", UNDERLAY_B, "key", "7",
            "dev", "eth0")  # fmt: skip
        run(ns, "ip", "link", "add", "g6", "type", "ip6gretap", "local", "fd00:99::1", "remote", "fd00:99::2",
            "key", "7", "encaplimit", "none", "dev", "eth0")  # fmt: skip
        assert must_link(ns, "g4")["mtu"] == 1500 - GRETAP_OVERHEAD_V4
        assert must_link(ns, "g6")["mtu"] == 1500 - GRETAP_OVERHEAD_V6

    def test_two_hosts_ping_and_tcp_with_a_full_size_datagram(namespaces: Namespaces) -> None:
        lab = Lab(namespaces)
        host_a, host_b = lab.host(UNDERLAY_A), lab.host(UNDERLAY_B)
        mtu = 1500 - GRETAP_OVERHEAD_V4
        net_a = gretap_network(4242, UNDERLAY_A, remote=UNDERLAY_B, mtu=mtu)
        net_b = gretap_network(4242, UNDERLAY_B, remote=UNDERLAY_A, mtu=mtu)
        lab.links[host_a].ensure_network(net_a)
        lab.links[host_b].ensure_network(net_b)
        container_a = lab.container(host_a, net_a, "192.168.77.11/24")
        container_b = lab.container(host_b, net_b, "192.168.77.12/24")

        assert must_link(container_a, lab.endpoints[container_a].container_veth)["mtu"] == mtu
        assert ping(container_a, "192.168.77.12"), "no reply across gretap"
        assert full_size_datagram_crosses(container_b, container_a, "192.168.77.12", mtu)
        assert tcp_echo(container_b, container_a, "192.168.77.12") == b"hello over gre"

    def test_three_peers_reach_each_other_and_never_loop_a_broadcast(namespaces: Namespaces) -> None:
        lab = Lab(namespaces)
        underlays = (UNDERLAY_A, UNDERLAY_B, UNDERLAY_C)
        hosts, containers = [], []
        for index, address in enumerate(underlays):
            host = lab.host(address)
            net = gretap_network(4242, address, peers=tuple(peer for peer in underlays if peer != address))
            lab.links[host].ensure_network(net)
            hosts.append(host)
            containers.append(lab.container(host, net, f"192.168.77.{11 + index}/24"))
        assert sorted(entry["ifname"] for entry in gretap_links(hosts[0])) == ["vxg-4242-0", "vxg-4242-1"]
        assert ping(containers[0], "192.168.77.12") and ping(containers[0], "192.168.77.13")
        assert ping(containers[1], "192.168.77.13")

        ports = [(host, port) for host in hosts for port in ("vxg-4242-0", "vxg-4242-1")]
        before = {where: rx_packets(*where) for where in ports}
        # One ARP request for an address nobody has: without split horizon B and C would pass it on to each other
        # and back for ever; with it, each of them receives it once, and A never gets it back.
        sender = lab.endpoints[containers[0]].container_veth
        run(containers[0], "sysctl", "-q", "-w", f"net.ipv4.neigh.{sender}.mcast_solicit=1")
        run(containers[0], *PING, "-c", "1", "-W", "1", "192.168.77.99", check=False)
        time.sleep(1)
        received = {where: rx_packets(*where) - before[where] for where in ports}
        by_host = [sum(count for (host, _), count in received.items() if host == which) for which in hosts]
        assert by_host == [0, 1, 1], f"frames received per host after one broadcast: {received}"

    def test_gretap_networks_stay_apart_by_key_and_from_vxlan(namespaces: Namespaces) -> None:
        lab = Lab(namespaces)
        host_a, host_b = lab.host(UNDERLAY_A), lab.host(UNDERLAY_B)
        nets: dict[tuple[str, int], Network] = {}
        for vni in (101, 102, 103):
            gateway = "192.168.77.1/24" if vni == 101 else None
            for ns, local, remote in ((host_a, UNDERLAY_A, UNDERLAY_B), (host_b, UNDERLAY_B, UNDERLAY_A)):
                if vni == 102:  # VXLAN between the same hosts
                    nets[ns, vni] = make_network(vni, gateway4=gateway, dev="eth0", local=local, remote=remote)
                else:
                    nets[ns, vni] = gretap_network(vni, local, gateway4=gateway, remote=remote)
                lab.links[ns].ensure_network(nets[ns, vni])
        sandboxes = {}
        for vni, last in ((101, 11), (102, 13), (103, 15)):
            sandboxes["a", vni] = lab.container(host_a, nets[host_a, vni], f"192.168.77.{last}/24")
            sandboxes["b", vni] = lab.container(host_b, nets[host_b, vni], f"192.168.77.{last + 1}/24")

        assert ping(sandboxes["a", 101], "192.168.77.12") and ping(sandboxes["a", 103], "192.168.77.16")
        assert ping(sandboxes["a", 102], "192.168.77.14")
        assert unreachable(sandboxes["a", 101], "192.168.77.16"), "two gretap networks leak into each other"
        assert unreachable(sandboxes["a", 101], "192.168.77.14"), "gretap leaks into VXLAN"
        assert unreachable(sandboxes["a", 102], "192.168.77.12"), "VXLAN leaks into gretap"

    def test_ensure_network_rebuilds_deleted_ports_and_removes_unwanted_ones(namespaces: Namespaces) -> None:
        lab = Lab(namespaces)
        host = lab.host(UNDERLAY_A)
        net = gretap_network(4242, UNDERLAY_A, peers=(UNDERLAY_B, UNDERLAY_C))
        links = lab.links[host]
        links.ensure_network(net)
        run(host, "ip", "link", "del", "vxg-4242-1")
        # A port of a peer the network no longer has (a restored store, `vxlanpy recover`): labelled as the network's.
        run(host, "ip", "link", "add", "vxg-4242-2", "type", "gretap", "remote", "10.99.0.9", "key", "4242")
        run(host, "ip", "link", "set", "vxg-4242-2", "alias", net.alias)
        # One of the same shape and key that is not vxlanpy's (no label, not a name the network has) stays.
        run(host, "ip", "link", "add", "vxg-4242-3", "type", "gretap", "remote", "10.99.0.8", "key", "4242")

        links.ensure_network(net)

        assert sorted(entry["ifname"] for entry in gretap_links(host)) == ["vxg-4242-0", "vxg-4242-1", "vxg-4242-3"]
        rebuilt = must_link(host, "vxg-4242-1")
        assert rebuilt["master"] == "vxbr-4242" and rebuilt["linkinfo"]["info_data"]["remote"] == UNDERLAY_C
        assert {name for name, alias in links.owned_links().items() if alias == net.alias} == {
            "vxbr-4242",
            "vxg-4242-0",
            "vxg-4242-1",
        }
        links.remove_network(net)
        assert vxlanpy_links(host) == ["vxg-4242-3"]

    def test_an_ipv6_underlay_uses_ip6gretap(namespaces: Namespaces) -> None:
        host_a, host_b = namespaces.new(), namespaces.new()
        run(host_a, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", host_b)
        links, containers = {}, {}
        sides = ((host_a, "fd00:99::1", "fd00:99::2", 11), (host_b, "fd00:99::2", "fd00:99::1", 12))
        for ns, own, other, last in sides:
            run(ns, "ip", "addr", "add", f"{own}/64", "dev", "eth0", "nodad")
            run(ns, "ip", "link", "set", "eth0", "up")
            links[ns] = NetlinkLinks(netns=ns)
            namespaces.close_later(links[ns].close)
            net = gretap_network(4242, own, remote=other, mtu=1500 - GRETAP_OVERHEAD_V6)
            links[ns].ensure_network(net)
            sandbox = namespaces.new()
            plug_container(links[ns], ns, sandbox, net, f"192.168.77.{last}/24")
            containers[ns] = sandbox
        port = must_link(host_a, "vxg-4242")
        assert port["linkinfo"]["info_kind"] == "ip6gretap" and port["mtu"] == 1438
        links[host_a].ensure_network(gretap_network(4242, "fd00:99::1", remote="fd00:99::2", mtu=1438))
        assert must_link(host_a, "vxg-4242")["ifindex"] == port["ifindex"], "a second ensure re-created the port"
        assert port["linkinfo"]["info_data"]["remote"] == "fd00:99::2"
        assert ping(containers[host_a], "192.168.77.12"), "no reply across ip6gretap"
        assert full_size_datagram_crosses(containers[host_b], containers[host_a], "192.168.77.12", 1438)


UDP_SERVER = """
import socket, sys
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("0.0.0.0", 7777))
server.settimeout(5)
print("ready", flush=True)
print(len(server.recv(65535)))
"""
UDP_CLIENT = """
import socket, sys
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER, IP_PMTUDISC_DO: DF, never fragmented
client.sendto(bytes(int(sys.argv[2])), (sys.argv[1], 7777))
"""
TCP_SERVER = """
import socket, sys
server = socket.create_server(("0.0.0.0", 7777))
print("ready", flush=True)
connection, _ = server.accept()
connection.sendall(connection.recv(100))
"""
TCP_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], 7777), timeout=5) as connection:
    connection.sendall(b"hello over gre")
    sys.stdout.write(connection.recv(100).decode())
"""


def full_size_datagram_crosses(server_ns: str, client_ns: str, address: str, mtu: int) -> bool:
    """Whether one UDP datagram of the network's full MTU, sent with DF, reaches server_ns whole."""
    size = mtu - 28  # IPv4 and UDP headers
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-c", UDP_SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        run(client_ns, sys.executable, "-c", UDP_CLIENT, address, str(size))
        received, _ = server.communicate(timeout=10)
        return received.strip() == str(size)
    finally:
        server.kill()
        server.wait(timeout=10)


def tcp_echo(server_ns: str, client_ns: str, address: str) -> bytes:
    """One TCP round trip from client_ns to a one-shot echo server in server_ns."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-c", TCP_SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = run(client_ns, sys.executable, "-c", TCP_CLIENT, address)
        return client.stdout.encode()
    finally:
        server.kill()
        server.wait(timeout=10)
