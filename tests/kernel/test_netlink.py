"""NetlinkLinks against the real kernel, inside throwaway network namespaces.

What the tests check is read back with iproute2 (`ip -j`, `bridge -j`), the tools a user would look with,
so a misreading in pyroute2 cannot hide a wrong write.  Traffic tests wire two "hosts" to one underlay
bridge and ping between "containers" across the VXLAN.  Nothing is done in the namespace pytest runs in.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pyroute2 import IPRoute, netns
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from vxlanpy.dataplane.base import RemoteEndpoint, Underlay
from vxlanpy.dataplane.netlink import NetlinkLinks
from vxlanpy.dataplane.rtnl import set_ipv4_devconf
from vxlanpy.errors import Conflict, DataplaneError, InvalidOption, VniTaken
from vxlanpy.models import Endpoint, Network, NetworkConfig, Subnet, endpoint_mac, gateway_mac

from .conftest import Namespaces, unique_name

PING = ["ping"] if shutil.which("ping") else ["busybox", "ping"]

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces, bridges and VXLAN devices"),
    pytest.mark.skipif(
        not (shutil.which("ip") and shutil.which("bridge") and shutil.which(PING[0])),
        reason="needs iproute2 (ip, bridge) and ping (or busybox) to check the result",
    ),
]

UNDERLAY_A = "10.99.0.1"
UNDERLAY_B = "10.99.0.2"


# -- reading the kernel the way a user would ----------------------------------------------------------------


def run(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {ns} failed: {result.stderr.strip()}")
    return result


def link(ns: str, name: str) -> dict[str, Any] | None:
    """`ip -d link show dev NAME` as JSON, None when there is no such link."""
    result = run(ns, "ip", "-j", "-d", "link", "show", "dev", name, check=False)
    return json.loads(result.stdout)[0] if result.returncode == 0 else None


def must_link(ns: str, name: str) -> dict[str, Any]:
    found = link(ns, name)
    assert found is not None, f"{name} does not exist in {ns}"
    return found


def addresses(ns: str, name: str) -> set[str]:
    """`ip addr show dev NAME` without the IPv6 link-local address."""
    data = json.loads(run(ns, "ip", "-j", "addr", "show", "dev", name).stdout)
    return {f"{a['local']}/{a['prefixlen']}" for a in data[0]["addr_info"] if a.get("scope") != "link"}


def address_info(ns: str, name: str, address: str) -> dict[str, Any]:
    data = json.loads(run(ns, "ip", "-j", "addr", "show", "dev", name).stdout)
    return next(a for a in data[0]["addr_info"] if a["local"] == address)


def default_destinations(ns: str, dev: str) -> list[str]:
    """Remote VTEPs of the all-zero FDB entries (`bridge fdb show dev DEV`), duplicates kept."""
    entries = json.loads(run(ns, "bridge", "-j", "fdb", "show", "dev", dev).stdout)
    return sorted(entry["dst"] for entry in entries if entry["mac"] == "00:00:00:00:00:00")


def neigh_suppress(ns: str, dev: str) -> bool:
    return bool(json.loads(run(ns, "bridge", "-j", "-d", "link", "show", "dev", dev).stdout)[0]["neigh_suppress"])


def rx_packets(ns: str, dev: str) -> int:
    return int(json.loads(run(ns, "ip", "-j", "-s", "link", "show", "dev", dev).stdout)[0]["stats64"]["rx"]["packets"])


def ping(ns: str, address: str, attempts: int = 3) -> bool:
    for _ in range(attempts):
        if run(ns, *PING, "-c", "1", "-W", "1", address, check=False).returncode == 0:
            return True
    return False


def unreachable(ns: str, address: str) -> bool:
    return run(ns, *PING, "-c", "2", "-i", "0.2", "-W", "1", address, check=False).returncode != 0


def fdb(ns: str, *selector: str) -> list[dict[str, Any]]:
    """`bridge -j fdb show SELECTOR...`, e.g. ("dev", "vxlan-42") or ("br", "vxbr-42")."""
    return list(json.loads(run(ns, "bridge", "-j", "fdb", "show", *selector).stdout))


def neighbours(ns: str, *selector: str) -> list[dict[str, Any]]:
    """`ip -j neigh show SELECTOR...` (IPv4 and IPv6)."""
    return list(json.loads(run(ns, "ip", "-j", "neigh", "show", *selector).stdout))


def remote_state(ns: str, net: Network) -> dict[str, set[tuple[str, ...]]]:
    """The kernel entries sync_remotes manages, and the neighbouring ones it must keep, as iproute2 shows them."""
    entries = fdb(ns, "dev", net.vxlan)
    return {
        "vxlan": {(e["mac"], e["dst"], e["state"]) for e in entries if "self" in e["flags"]},
        "bridge": {(e["mac"], e["state"]) for e in entries if e.get("master") == net.bridge},
        "neigh": {
            (n["dst"], n["lladdr"]) for n in neighbours(ns, "dev", net.bridge) if "PERMANENT" in n.get("state", ())
        },
    }


def snapshot(ns: str, net: Network) -> dict[str, Any]:
    """Everything ensure_network manages, minus counters and timers."""
    bridge, vxlan = must_link(ns, net.bridge), must_link(ns, net.vxlan)
    keep = ("ifindex", "mtu", "address", "flags", "master", "ifalias")
    return {
        "bridge": {key: bridge.get(key) for key in keep},
        "stp": bridge["linkinfo"]["info_data"]["stp_state"],
        "vxlan": {key: vxlan.get(key) for key in keep},
        "vxlan_data": vxlan["linkinfo"]["info_data"],
        "addresses": addresses(ns, net.bridge),
        "fdb": default_destinations(ns, net.vxlan),
        "neigh_suppress": neigh_suppress(ns, net.vxlan),
    }


# -- building the objects under test ------------------------------------------------------------------------


def make_network(
    vni: int,
    *,
    gateway4: str | None = "192.168.77.1/24",
    gateway6: str | None = None,
    **config: Any,
) -> Network:
    config.setdefault("mtu", 1400)
    for key in ("local", "remote", "group"):
        if isinstance(config.get(key), str):
            config[key] = ipaddress.ip_address(config[key])
    config["peers"] = tuple(ipaddress.ip_address(peer) for peer in config.get("peers", ()))
    ipv4: tuple[Subnet, ...] = ()
    if gateway4 is not None:
        gw4 = ipaddress.ip_interface(gateway4)
        ipv4 = (Subnet(pool=gw4.network, gateway=gw4),)
    ipv6: tuple[Subnet, ...] = ()
    if gateway6 is not None:
        gw6 = ipaddress.ip_interface(gateway6)
        ipv6 = (Subnet(pool=gw6.network, gateway=gw6),)
    return Network(
        network_id=f"{vni:064x}",
        config=NetworkConfig(vni=vni, **config),
        ipv4=ipv4,
        ipv6=ipv6,
    )


def make_endpoint(net: Network, address: str) -> Endpoint:
    endpoint_id = os.urandom(32).hex()
    ipv4 = ipaddress.IPv4Interface(address)
    return Endpoint(endpoint_id, net.network_id, endpoint_mac(ipv4, endpoint_id), ipv4=ipv4)


def add_underlay_nic(ns: str, address: str, default_route: bool = False) -> None:
    """An `eth0` with an address inside ns; its veth peer stays in ns too, up, so eth0 has carrier."""
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer="eth0p")
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=eth0, address=address, prefixlen=24)
        ipr.link("set", index=eth0, state="up")
        ipr.link("set", ifname="eth0p", state="up")
        if default_route:
            ipr.route("add", dst="default", gateway="10.99.0.254")


@pytest.fixture
def host(namespaces: Namespaces) -> str:
    """A namespace standing in for a Docker host with an underlay NIC eth0 and a default route."""
    ns = namespaces.new()
    add_underlay_nic(ns, UNDERLAY_A, default_route=True)
    return ns


@pytest.fixture
def links(namespaces: Namespaces, host: str) -> NetlinkLinks:
    links = NetlinkLinks(netns=host)
    namespaces.close_later(links.close)
    return links


# -- underlay -----------------------------------------------------------------------------------------------


def test_underlay_defaults_to_the_default_route_interface(host: str, links: NetlinkLinks) -> None:
    with IPRoute(netns=host, flags=0) as ipr:
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=eth0, address="fd99::1", prefixlen=64, flags=IFA_F_NODAD)
        ipr.link("set", index=eth0, mtu=9000)
    expected = Underlay(
        dev="eth0",
        mtu=9000,
        addresses=(ipaddress.ip_address(UNDERLAY_A), ipaddress.ip_address("fd99::1")),
        gateways=(ipaddress.ip_address("10.99.0.254"),),  # a subnet holding them is refused (issue 12)
    )
    assert links.underlay(None) == expected
    assert links.underlay("eth0") == expected


def test_underlay_gateways_follow_the_default_routes(
    host: str, links: NetlinkLinks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateways of the underlay's default routes (multipath too), read again only after a default route
    changed: a subnet holding one is refused (issue 12)."""
    dumps: list[int] = []
    real_dump = links._raw.default_route_gateways
    monkeypatch.setattr(
        links._raw, "default_route_gateways", lambda family, oif: dumps.append(family) or real_dump(family, oif)
    )
    assert links.underlay("eth0").gateways == (ipaddress.ip_address("10.99.0.254"),)
    assert links.underlay(None).gateways == (ipaddress.ip_address("10.99.0.254"),)
    assert len(dumps) == 2, "one dump per family, then the answer is kept"
    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("add", ifname="eth1", kind="veth", peer="eth1p")
        eth0, eth1 = ipr.link_lookup(ifname="eth0")[0], ipr.link_lookup(ifname="eth1")[0]
        ipr.link("set", index=eth1, state="up")
        ipr.link("set", ifname="eth1p", state="up")
        for index, address in ((eth0, "fd99::5"), (eth1, "fd98::5")):
            ipr.addr("add", index=index, address=address, prefixlen=64, flags=IFA_F_NODAD)
        ipr.route(
            "add",
            dst="::/0",
            family=socket.AF_INET6,
            multipath=[{"gateway": "fd99::1", "oif": eth0}, {"gateway": "fd98::1", "oif": eth1}],
        )
    assert links.underlay("eth0").gateways == (ipaddress.ip_address("10.99.0.254"), ipaddress.ip_address("fd99::1"))
    assert links.underlay("eth1").gateways == (ipaddress.ip_address("fd98::1"),)


def test_the_default_route_is_read_again_only_when_a_default_route_changed(
    host: str, links: NetlinkLinks, monkeypatch: pytest.MonkeyPatch
) -> None:
    dumps: list[int] = []
    real_dump = links._raw.default_route_oifs
    monkeypatch.setattr(links._raw, "default_route_oifs", lambda family: dumps.append(family) or real_dump(family))
    assert links.underlay(None).dev == "eth0"
    assert len(dumps) == 1
    links.ensure_network(make_network(611))  # its connected route is no default route
    assert links.underlay(None).dev == "eth0"
    assert len(dumps) == 1, "a network's own route must not make it dump the table again"
    # A second NIC takes over the default route: the next network goes over it.
    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("add", ifname="eth1", kind="veth", peer="eth1p")
        eth1 = ipr.link_lookup(ifname="eth1")[0]
        ipr.addr("add", index=eth1, address="10.98.0.1", prefixlen=24)
        ipr.link("set", index=eth1, state="up")
        ipr.link("set", ifname="eth1p", state="up")
        ipr.route("replace", dst="default", gateway="10.98.0.254")
    assert links.underlay(None).dev == "eth1"
    assert len(dumps) == 2


def test_underlay_falls_back_to_the_ipv6_default_route(namespaces: Namespaces) -> None:
    ns = namespaces.new()
    add_underlay_nic(ns, UNDERLAY_A)
    with IPRoute(netns=ns, flags=0) as ipr:
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=eth0, address="fd99::1", prefixlen=64, flags=IFA_F_NODAD)
        ipr.route("add", dst="::/0", gateway="fd99::fe", oif=eth0)
    links = NetlinkLinks(netns=ns)
    namespaces.close_later(links.close)
    assert links.underlay(None).dev == "eth0"


def test_underlay_errors_tell_the_user_to_set_dev(namespaces: Namespaces, links: NetlinkLinks) -> None:
    with pytest.raises(InvalidOption, match=r"underlay interface 'nosuch0' does not exist: set -o dev=<interface>"):
        links.underlay("nosuch0")
    bare = NetlinkLinks(netns=namespaces.new())
    namespaces.close_later(bare.close)
    with pytest.raises(InvalidOption, match="no default route.*set -o dev=<interface>"):
        bare.underlay(None)


def test_a_missing_namespace_is_an_error_and_is_not_created() -> None:
    name = unique_name()
    with pytest.raises(DataplaneError, match=f"network namespace '{name}' does not exist"):
        NetlinkLinks(netns=name)
    assert not os.path.exists(f"/run/netns/{name}")


# -- networks -----------------------------------------------------------------------------------------------


def test_ensure_network_builds_bridge_and_vxlan(host: str, links: NetlinkLinks) -> None:
    net = make_network(
        42,
        gateway6="fd77::1/64",
        dstport=4790,
        dev="eth0",
        local=UNDERLAY_A,
        ttl=16,
        learning=False,
        remote=UNDERLAY_B,
        peers=("10.99.0.3",),
        mtu=1400,
    )
    links.ensure_network(net)

    bridge = must_link(host, "vxbr-42")
    assert bridge["linkinfo"]["info_kind"] == "bridge"
    assert bridge["mtu"] == 1400
    assert bridge["address"] == gateway_mac(42) == "02:76:78:00:00:2a"
    assert bridge["ifalias"] == net.alias
    assert "UP" in bridge["flags"]
    assert bridge["linkinfo"]["info_data"]["stp_state"] == 0
    assert bridge["linkinfo"]["info_data"]["forward_delay"] == 0
    assert addresses(host, "vxbr-42") == {"192.168.77.1/24", "fd77::1/64"}
    gateway6 = address_info(host, "vxbr-42", "fd77::1")
    assert gateway6.get("nodad") is True and not gateway6.get("tentative")

    vxlan = must_link(host, "vxlan-42")
    data = vxlan["linkinfo"]["info_data"]
    assert vxlan["linkinfo"]["info_kind"] == "vxlan"
    assert (data["id"], data["port"], data["ttl"], data["learning"]) == (42, 4790, 16, False)
    assert (data["local"], data["remote"], data["link"]) == (UNDERLAY_A, UNDERLAY_B, "eth0")
    assert vxlan["mtu"] == 1400
    assert vxlan["master"] == "vxbr-42"
    assert vxlan["ifalias"] == net.alias
    assert "UP" in vxlan["flags"]
    assert neigh_suppress(host, "vxlan-42")
    # The kernel's default destination (remote) plus exactly one entry for the static peer.
    assert default_destinations(host, "vxlan-42") == [UNDERLAY_B, "10.99.0.3"]


def test_multicast_group_and_defaults(host: str, links: NetlinkLinks) -> None:
    net = make_network(7, group="239.1.1.7", dev="eth0", mtu=1450)
    links.ensure_network(net)
    data = must_link(host, "vxlan-7")["linkinfo"]["info_data"]
    assert (data["group"], data["port"], data["learning"], data["link"]) == ("239.1.1.7", 4789, True, "eth0")
    assert "local" not in data and "remote" not in data


def test_ensure_network_twice_changes_nothing(host: str, links: NetlinkLinks) -> None:
    net = make_network(42, gateway6="fd77::1/64", dev="eth0", local=UNDERLAY_A, peers=(UNDERLAY_B, "10.99.0.3"), ttl=8)
    links.ensure_network(net)
    before = snapshot(host, net)
    links.ensure_network(net)
    assert snapshot(host, net) == before


def test_ensure_network_converges_drifted_state(host: str, links: NetlinkLinks) -> None:
    net = make_network(42, dev="eth0", peers=(UNDERLAY_B,))
    links.ensure_network(net)
    before = snapshot(host, net)
    with IPRoute(netns=host, flags=0) as ipr:
        bridge = ipr.link_lookup(ifname="vxbr-42")[0]
        vxlan = ipr.link_lookup(ifname="vxlan-42")[0]
        ipr.brport("set", index=vxlan, neigh_suppress=0)
        ipr.link("set", index=vxlan, state="down")
        ipr.link("set", index=bridge, mtu=1300, ifalias="vxlanpy:net:stale")
        ipr.addr("del", index=bridge, address="192.168.77.1", prefixlen=24)
        ipr.addr("add", index=bridge, address="192.168.99.1", prefixlen=24)
        ipr.fdb("del", ifindex=vxlan, lladdr="00:00:00:00:00:00", dst=UNDERLAY_B)
    links.ensure_network(net)
    assert snapshot(host, net) == before

    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("set", index=vxlan, master=0)
    links.ensure_network(net)
    assert snapshot(host, net) == before


def test_ensure_network_only_adds_peers_and_sync_remotes_removes_them(host: str, links: NetlinkLinks) -> None:
    links.ensure_network(make_network(42, dev="eth0", peers=(UNDERLAY_B, "10.99.0.3")))
    assert default_destinations(host, "vxlan-42") == [UNDERLAY_B, "10.99.0.3"]
    # Reconciliation calls ensure_network again: it adds what is missing and removes nothing, because in
    # multi-host mode the flood list belongs to sync_remotes.
    net = make_network(42, dev="eth0", peers=("10.99.0.3", "10.99.0.4"))
    links.ensure_network(net)
    assert default_destinations(host, "vxlan-42") == [UNDERLAY_B, "10.99.0.3", "10.99.0.4"]
    links.sync_remotes(net, set(net.config.peers), [])
    assert default_destinations(host, "vxlan-42") == ["10.99.0.3", "10.99.0.4"]
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    assert default_destinations(host, "vxlan-42") == ["10.99.0.3", "10.99.0.4"]
    links.sync_remotes(net, set(), [])
    assert default_destinations(host, "vxlan-42") == []


def test_changed_vxlan_parameters_recreate_the_device(host: str, links: NetlinkLinks) -> None:
    links.ensure_network(make_network(42, dev="eth0", peers=(UNDERLAY_B,)))
    old_index = must_link(host, "vxlan-42")["ifindex"]
    net = make_network(42, gateway4="192.168.88.1/24", dstport=8472, peers=(UNDERLAY_B,))
    links.ensure_network(net)
    vxlan = must_link(host, "vxlan-42")
    assert vxlan["ifindex"] != old_index
    assert vxlan["linkinfo"]["info_data"]["port"] == 8472
    assert "link" not in vxlan["linkinfo"]["info_data"]
    assert vxlan["master"] == "vxbr-42"
    assert neigh_suppress(host, "vxlan-42")
    assert default_destinations(host, "vxlan-42") == [UNDERLAY_B]
    assert addresses(host, "vxbr-42") == {"192.168.88.1/24"}


def test_remove_network_removes_both_and_is_idempotent(host: str, links: NetlinkLinks) -> None:
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    links.remove_network(net)
    assert link(host, "vxbr-42") is None and link(host, "vxlan-42") is None
    links.remove_network(net)


def test_an_alien_link_with_our_name_is_a_conflict_and_left_alone(host: str, links: NetlinkLinks) -> None:
    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("add", ifname="vxbr-42", kind="bridge")
    net = make_network(42, dev="eth0")
    with pytest.raises(
        Conflict, match="interface vxbr-42 exists and is not managed by vxlanpy; remove it or choose another vni"
    ):
        links.ensure_network(net)
    links.remove_network(net)
    assert link(host, "vxbr-42") is not None
    assert link(host, "vxlan-42") is None


def test_devices_a_killed_create_left_unlabelled_are_removed_with_the_network(host: str, links: NetlinkLinks) -> None:
    """The kernel ignores the alias in a create, so a kill -9 between the create and its label left a bridge that
    no one removed and whose name blocked the VNI for good (the network-create churn in e2e found it)."""
    net = make_network(42, dev="eth0")
    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("add", ifname="vxbr-42", kind="bridge", address=net.gateway_mac)  # as _ensure_bridge makes it
        ipr.link("add", ifname="vxlan-42", kind="vxlan", vxlan_id=42, vxlan_port=4789)
    links.remove_network(net)  # what the expiry of the pending row does at the next start
    assert link(host, "vxbr-42") is None and link(host, "vxlan-42") is None
    links.ensure_network(net)  # the VNI is usable again
    assert link(host, "vxbr-42") is not None


def test_unlabelled_devices_that_differ_from_what_a_create_makes_are_left_alone(host: str, links: NetlinkLinks) -> None:
    net = make_network(42, dev="eth0")
    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("add", ifname="vxbr-42", kind="bridge", address="02:00:00:00:00:42")  # not the gateway MAC
        ipr.link("add", ifname="vxlan-42", kind="vxlan", vxlan_id=43, vxlan_port=4789)  # another VNI
    links.remove_network(net)
    assert link(host, "vxbr-42") is not None and link(host, "vxlan-42") is not None


def test_an_unknown_dev_is_an_invalid_option(host: str, links: NetlinkLinks) -> None:
    with pytest.raises(InvalidOption, match="underlay interface 'nosuch0' does not exist: set -o dev=<interface>"):
        links.ensure_network(make_network(42, dev="nosuch0"))
    assert link(host, "vxbr-42") is None


def test_a_vni_already_in_use_says_so(host: str, links: NetlinkLinks) -> None:
    """As swarm's ingress network (VNI 4096, port 4789, made by Docker's overlay driver) on every swarm node."""
    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("add", ifname="other42", kind="vxlan", vxlan_id=42, vxlan_port=4789)
        ipr.link("add", ifname="other43", kind="vxlan", vxlan_id=43, vxlan_port=4800)
    links.ensure_network(make_network(7, dev="eth0"))  # vxlanpy's own devices are not foreign
    assert links.foreign_vnis(4789) == {42: "other42"}
    assert links.foreign_vnis(4800) == {43: "other43"}
    with pytest.raises(VniTaken) as raised:
        links.ensure_network(make_network(42, dev="eth0"))
    assert raised.value.vni == 42
    assert str(raised.value) == (
        "VNI 42 on UDP port 4789 is taken on this host by the VXLAN device other42, which is not vxlanpy's "
        "(Docker's overlay networks and swarm's ingress network use 4789); create the network with another -o vni "
        "or -o dstport, or set VXLANPY_VNI_RANGE to a range apart from it"
    )


def test_owned_links_lists_only_vxlanpy_links(host: str, links: NetlinkLinks) -> None:
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    endpoint = make_endpoint(net, "192.168.77.11/24")
    links.ensure_endpoint(net, endpoint)
    assert links.owned_links() == {
        "vxbr-42": net.alias,
        "vxlan-42": net.alias,
        endpoint.host_veth: endpoint.alias,
        endpoint.container_veth: endpoint.alias,
    }


# -- endpoints ----------------------------------------------------------------------------------------------


def test_ensure_endpoint_creates_the_veth_pair(namespaces: Namespaces, host: str, links: NetlinkLinks) -> None:
    net = make_network(42, dev="eth0", mtu=1380)
    links.ensure_network(net)
    endpoint = make_endpoint(net, "192.168.77.11/24")
    links.ensure_endpoint(net, endpoint)

    host_end = must_link(host, endpoint.host_veth)
    container_end = must_link(host, endpoint.container_veth)
    assert host_end["linkinfo"]["info_kind"] == "veth"
    assert host_end["master"] == "vxbr-42"
    assert "UP" in host_end["flags"]
    assert host_end["mtu"] == container_end["mtu"] == 1380
    assert host_end["ifalias"] == container_end["ifalias"] == endpoint.alias
    assert container_end["address"] == endpoint.mac == "02:42:c0:a8:4d:0b"
    assert container_end["link"] == endpoint.host_veth

    links.ensure_endpoint(net, endpoint)
    assert must_link(host, endpoint.host_veth)["ifindex"] == host_end["ifindex"]

    # Docker moves the container end into the sandbox; ensuring again only looks after the host end.
    sandbox = namespaces.new()
    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("set", index=container_end["ifindex"], net_ns_fd=sandbox)
        ipr.link("set", index=host_end["ifindex"], state="down")
    links.ensure_endpoint(net, endpoint)
    assert "UP" in must_link(host, endpoint.host_veth)["flags"]
    assert link(host, endpoint.container_veth) is None
    assert must_link(sandbox, endpoint.container_veth)["address"] == endpoint.mac

    links.remove_endpoint(endpoint)
    assert link(host, endpoint.host_veth) is None
    assert link(sandbox, endpoint.container_veth) is None, "the container end outlived its pair"


def test_remove_endpoint_is_idempotent(host: str, links: NetlinkLinks) -> None:
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    endpoint = make_endpoint(net, "192.168.77.11/24")
    links.ensure_endpoint(net, endpoint)
    links.remove_endpoint(endpoint)
    assert link(host, endpoint.host_veth) is None and link(host, endpoint.container_veth) is None
    links.remove_endpoint(endpoint)


def test_endpoint_without_its_network_says_what_to_do(links: NetlinkLinks) -> None:
    net = make_network(42, dev="eth0")
    with pytest.raises(DataplaneError, match="bridge vxbr-42 does not exist; recreate the network"):
        links.ensure_endpoint(net, make_endpoint(net, "192.168.77.11/24"))


def socket_count() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def test_concurrent_requests_share_one_netlink_socket(host: str, links: NetlinkLinks) -> None:
    net = make_network(42, dev="eth0")
    links.ensure_network(net)
    endpoints = [make_endpoint(net, f"192.168.77.{10 + i}/24") for i in range(12)]
    # Sockets that earlier tests dropped are closed by the collector, which could run
    # mid-test: collect first, and require no growth rather than equality. Count while
    # the worker threads are still alive, so a socket per thread would show.
    gc.collect()
    before = socket_count()
    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(lambda endpoint: links.ensure_endpoint(net, endpoint), endpoints))
        gc.collect()
        during = socket_count()
    assert during <= before
    for endpoint in endpoints:
        assert must_link(host, endpoint.host_veth)["master"] == "vxbr-42"


# -- remote endpoints (multi-host mode) ---------------------------------------------------------------------

MAC_B, MAC_C, MAC_X = "02:42:c0:a8:4d:0c", "02:42:c0:a8:4d:0d", "02:00:00:00:77:50"


def ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(value)


class Recorder:
    """Stands in for NetlinkLinks' pyroute2 socket and records every request that is not a read."""

    READS = ("dump", "get", "show")

    def __init__(self, ipr: Any) -> None:
        self._ipr = ipr
        self.changes: list[tuple[str, str]] = []
        self.dumps = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._ipr, name)
        if name == "nlm_request_batch":
            self.dumps += 1
        elif name in ("fdb", "neigh", "link", "addr", "brport", "route"):

            def record(command: str, *args: Any, **kwargs: Any) -> Any:
                if command not in self.READS:
                    self.changes.append((name, command))
                return method(command, *args, **kwargs)

            return record
        return method


def recording(links: NetlinkLinks) -> Recorder:
    recorder = Recorder(links._ipr)
    links._ipr = recorder
    write_neighbours = links._raw.write_neighbours

    def record_batch(writes: list[Any]) -> Any:  # the batched neighbour and FDB writes, as the one-call names
        for write in writes:
            command = "del" if write.mode is None else "append" if write.mode & 0x800 else "replace"
            recorder.changes.append(("fdb" if write.family == socket.AF_BRIDGE else "neigh", command))
        return write_neighbours(writes)

    links._raw.write_neighbours = record_batch  # type: ignore[method-assign]
    return recorder


def test_sync_remotes_programs_exactly_the_remotes(host: str, links: NetlinkLinks) -> None:
    net = make_network(42, gateway6="fd77::1/64", dev="eth0", local=UNDERLAY_A, learning=False, remote="10.99.0.9")
    links.ensure_network(net)
    own_mac = must_link(host, net.vxlan)["address"]
    flood = {ip(UNDERLAY_B), ip("10.99.0.3")}
    remotes = [
        RemoteEndpoint(MAC_B, ip(UNDERLAY_B), (ip("192.168.77.12"), ip("fd77::c"))),
        RemoteEndpoint(MAC_C.upper(), ip("10.99.0.3"), (ip("192.168.77.13"),)),
    ]
    links.sync_remotes(net, flood, remotes)

    state = remote_state(host, net)
    assert state == {
        "vxlan": {
            ("00:00:00:00:00:00", "10.99.0.9", "permanent"),  # the kernel's own default destination stays
            ("00:00:00:00:00:00", UNDERLAY_B, "permanent"),
            ("00:00:00:00:00:00", "10.99.0.3", "permanent"),
            (MAC_B, UNDERLAY_B, "permanent"),
            (MAC_C, "10.99.0.3", "permanent"),
        },
        "bridge": {(MAC_B, "static"), (MAC_C, "static"), (own_mac, "permanent")},
        "neigh": {("192.168.77.12", MAC_B), ("fd77::c", MAC_B), ("192.168.77.13", MAC_C)},
    }
    expected_remotes = [
        RemoteEndpoint(MAC_B, ip(UNDERLAY_B), (ip("192.168.77.12"), ip("fd77::c"))),
        RemoteEndpoint(MAC_C, ip("10.99.0.3"), (ip("192.168.77.13"),)),
    ]
    assert links.remote_entries(net) == (flood, expected_remotes)

    # Again: two dumps, not one change, and the kernel exactly as before.
    recorder = recording(links)
    links.sync_remotes(net, flood, remotes)
    assert (recorder.changes, recorder.dumps) == ([], 2)
    assert remote_state(host, net) == state

    # C leaves, B moves to another VTEP and loses its IPv6 address; the flood list shrinks.
    moved = [RemoteEndpoint(MAC_B, ip("10.99.0.4"), (ip("192.168.77.12"),))]
    links.sync_remotes(net, {ip("10.99.0.4")}, moved)
    assert remote_state(host, net) == {
        "vxlan": {
            ("00:00:00:00:00:00", "10.99.0.9", "permanent"),
            ("00:00:00:00:00:00", "10.99.0.4", "permanent"),
            (MAC_B, "10.99.0.4", "permanent"),
        },
        "bridge": {(MAC_B, "static"), (own_mac, "permanent")},
        "neigh": {("192.168.77.12", MAC_B)},
    }
    assert links.remote_entries(net) == ({ip("10.99.0.4")}, moved)
    assert recorder.changes == [
        ("neigh", "del"),  # 192.168.77.13 (C)
        ("neigh", "del"),  # fd77::c (B)
        ("fdb", "del"),  # C's static bridge entry
        ("fdb", "del"),  # C's VXLAN entry
        ("fdb", "del"),  # flood UNDERLAY_B
        ("fdb", "del"),  # flood 10.99.0.3
        ("fdb", "append"),  # flood 10.99.0.4
        ("fdb", "replace"),  # B -> 10.99.0.4; its static entry and 192.168.77.12 stay as they are
    ]

    links.sync_remotes(net, set(), [])
    assert remote_state(host, net) == {
        "vxlan": {("00:00:00:00:00:00", "10.99.0.9", "permanent")},
        "bridge": {(own_mac, "permanent")},
        "neigh": set(),
    }
    assert links.remote_entries(net) == (set(), [])


def test_update_remotes_changes_only_the_given_entries_without_reading_the_tables(
    host: str, links: NetlinkLinks
) -> None:
    net = make_network(43, gateway6="fd77::1/64", dev="eth0", local=UNDERLAY_A, learning=False)
    links.ensure_network(net)
    flood = {ip(UNDERLAY_B), ip("10.99.0.3")}
    b = RemoteEndpoint(MAC_B, ip(UNDERLAY_B), (ip("192.168.77.12"), ip("fd77::c")))
    c = RemoteEndpoint(MAC_C, ip("10.99.0.3"), (ip("192.168.77.13"),))
    links.sync_remotes(net, flood, [b, c])
    try:
        updates_change_only_their_entries(host, links, net, flood, b)
    finally:
        links.remove_network(net)  # no device left sending floods to the underlay addresses of later tests


def updates_change_only_their_entries(
    host: str, links: NetlinkLinks, net: Network, flood: set[Any], b: RemoteEndpoint
) -> None:
    own_mac = must_link(host, net.vxlan)["address"]
    # C leaves; X arrives; B moves to 10.99.0.3 (its addresses are rewritten, none is dropped).
    recorder = recording(links)
    x = RemoteEndpoint(MAC_X, ip(UNDERLAY_B), (ip("192.168.77.50"),))
    moved_b = RemoteEndpoint(MAC_B, ip("10.99.0.3"), b.addresses)
    links.update_remotes(net, {MAC_C}, {ip("192.168.77.13")}, [x, moved_b])
    assert recorder.dumps == 0
    assert recorder.changes == [
        ("neigh", "del"),  # 192.168.77.13 (C), before its forwarding entries
        ("fdb", "del"),  # C's static bridge entry
        ("fdb", "del"),  # C's VXLAN entry
        ("fdb", "replace"),  # B -> 10.99.0.3
        ("fdb", "replace"),  # X -> UNDERLAY_B
        ("fdb", "replace"),  # B's static bridge entry
        ("fdb", "replace"),  # X's
        ("neigh", "replace"),  # 192.168.77.12 -> B
        ("neigh", "replace"),  # fd77::c -> B
        ("neigh", "replace"),  # 192.168.77.50 -> X, after the path to it
    ]
    expected = {
        "vxlan": {
            ("00:00:00:00:00:00", UNDERLAY_B, "permanent"),  # the flood list is not an endpoint's: untouched
            ("00:00:00:00:00:00", "10.99.0.3", "permanent"),
            (MAC_B, "10.99.0.3", "permanent"),
            (MAC_X, UNDERLAY_B, "permanent"),
        },
        "bridge": {(MAC_B, "static"), (MAC_X, "static"), (own_mac, "permanent")},
        "neigh": {("192.168.77.12", MAC_B), ("fd77::c", MAC_B), ("192.168.77.50", MAC_X)},
    }
    assert remote_state(host, net) == expected
    # The same change again, and the removal of what is already gone: nothing fails, nothing changes.
    links.update_remotes(net, {MAC_C}, {ip("192.168.77.13")}, [x, moved_b])
    assert remote_state(host, net) == expected
    # What a full sync would leave is what the updates left: it has nothing to write.
    recorder.changes.clear()
    links.sync_remotes(net, flood, [moved_b, x])
    assert recorder.changes == []


def test_update_remotes_refuses_bad_input_and_missing_networks(links: NetlinkLinks) -> None:
    net = make_network(44, dev="eth0", local=UNDERLAY_A, learning=False)
    with pytest.raises(DataplaneError, match="does not exist; recreate the network or restart the plugin"):
        links.update_remotes(net, set(), set(), [RemoteEndpoint(MAC_B, ip(UNDERLAY_B), (ip("192.168.77.12"),))])
    links.ensure_network(net)
    try:
        with pytest.raises(DataplaneError, match="'ff:ff:ff:ff:ff:ff' as a remote endpoint's MAC: not a unicast"):
            links.update_remotes(net, {"ff:ff:ff:ff:ff:ff"}, set(), [])
        with pytest.raises(DataplaneError, match="0.0.0.0"):
            links.update_remotes(net, set(), set(), [RemoteEndpoint(MAC_B, ip("0.0.0.0"), ())])
    finally:
        links.remove_network(net)


def test_sync_remotes_writes_thousands_of_entries_in_batches(host: str, links: NetlinkLinks) -> None:
    """A full resync of a large segment: every entry lands, and a refused write is reported with its reason."""
    net = make_network(45, dev="eth0", local=UNDERLAY_A, learning=False)
    links.ensure_network(net)
    count = 1500  # several batches of writes (3 per endpoint)
    remotes = [
        RemoteEndpoint(f"02:5c:00:00:{i >> 8:02x}:{i & 0xFF:02x}", ip(f"10.99.{1 + i // 250}.1"),
                       (ipaddress.ip_address("192.168.80.0") + i,))
        for i in range(count)
    ]  # fmt: skip
    flood = {remote.vtep for remote in remotes}
    try:
        batches_land(host, links, net, flood, remotes)
    finally:
        links.remove_network(net)


def batches_land(host: str, links: NetlinkLinks, net: Network, flood: set[Any], remotes: list[RemoteEndpoint]) -> None:
    count = len(remotes)
    links.sync_remotes(net, flood, remotes)
    state = remote_state(host, net)
    assert len(state["neigh"]) == count
    assert len([e for e in state["vxlan"] if e[0] != "00:00:00:00:00:00"]) == count
    assert len([e for e in state["bridge"] if e[1] == "static"]) == count
    assert links.remote_entries(net) == (flood, sorted(remotes, key=lambda remote: remote.mac))
    # A VTEP of the other family is refused by the kernel: the error names the entry and what to do.
    broken = [*remotes[:10], RemoteEndpoint(MAC_X, ip("fd00::2"), ())]
    with pytest.raises(DataplaneError, match=r"cannot point 02:00:00:00:77:50 at VTEP fd00::2 .*address family"):
        links.sync_remotes(net, flood, broken)


def foreign_entries(ns: str, net: Network) -> dict[str, list[Any]]:
    """Every FDB and neighbour entry of the namespace except the ones sync_remotes manages for `net`."""
    ours = remote_state(ns, net)
    entries = [
        e
        for e in fdb(ns)
        if not (
            e.get("ifname") == net.vxlan
            and ((e["mac"], e.get("dst"), e["state"]) in ours["vxlan"] or (e["mac"], e["state"]) in ours["bridge"])
        )
    ]
    neigh = [
        (n["dst"], n.get("dev"), n.get("lladdr"), "PERMANENT" in n.get("state", ()))  # dynamic states may age
        for n in neighbours(ns)
        if not (n.get("dev") == net.bridge and (n["dst"], n.get("lladdr")) in ours["neigh"])
    ]
    return {"fdb": sorted(entries, key=json.dumps), "neigh": sorted(neigh, key=str)}


def test_sync_remotes_leaves_everything_else_alone(namespaces: Namespaces, host: str, links: NetlinkLinks) -> None:
    net = make_network(42, dev="eth0", learning=False)
    other = make_network(43, gateway4="192.168.78.1/24", dev="eth0", learning=False)
    links.ensure_network(net)
    links.ensure_network(other)
    links.sync_remotes(other, {ip(UNDERLAY_B)}, [RemoteEndpoint(MAC_C, ip(UNDERLAY_B), (ip("192.168.78.13"),))])
    # A local container the bridge has learned (dynamic FDB entry on its veth, neighbour entry on the bridge),
    # an entry learned on the VXLAN port, and a permanent neighbour entry on the underlay.
    sandbox = namespaces.new()
    endpoint = plug_container(links, host, sandbox, net, "192.168.77.11/24")
    assert ping(sandbox, "192.168.77.1")
    run(host, "bridge", "fdb", "add", "02:00:00:00:00:99", "dev", net.vxlan, "master", "dynamic")
    run(host, "ip", "neigh", "add", "10.99.0.7", "lladdr", "02:00:00:00:00:07", "dev", "eth0", "nud", "permanent")
    learned = [e for e in fdb(host, "dev", endpoint.host_veth) if e["mac"] == endpoint.mac]
    assert learned and learned[0]["state"] == "", "the bridge did not learn the container's MAC"
    assert [n for n in neighbours(host, "dev", net.bridge) if n["dst"] == "192.168.77.11"]
    before = foreign_entries(host, net)

    links.sync_remotes(net, {ip(UNDERLAY_B)}, [RemoteEndpoint(MAC_B, ip(UNDERLAY_B), (ip("192.168.77.12"),))])
    assert remote_state(host, net)["neigh"] == {("192.168.77.12", MAC_B)}
    assert foreign_entries(host, net) == before
    links.sync_remotes(net, set(), [])
    assert foreign_entries(host, net) == before
    assert remote_state(host, other)["neigh"] == {("192.168.78.13", MAC_C)}


def test_reconciling_the_network_keeps_the_flood_list(host: str, links: NetlinkLinks) -> None:
    net = make_network(42, dev="eth0", learning=False)
    links.ensure_network(net)
    links.sync_remotes(net, {ip(UNDERLAY_B)}, [RemoteEndpoint(MAC_B, ip(UNDERLAY_B), (ip("192.168.77.12"),))])
    before = remote_state(host, net)
    links.ensure_network(net)
    assert remote_state(host, net) == before


def test_sync_remotes_refuses_bad_input_and_missing_networks(links: NetlinkLinks) -> None:
    net = make_network(42, dev="eth0", local=UNDERLAY_A)
    assert links.remote_entries(net) == (set(), [])
    with pytest.raises(DataplaneError, match="vxlan-42 or vxbr-42 does not exist; recreate the network"):
        links.sync_remotes(net, set(), [])
    links.ensure_network(net)
    for mac in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "02:42:c0:a8:4d", "x; rm -rf /"):
        with pytest.raises(DataplaneError, match="not a unicast MAC"):
            links.sync_remotes(net, set(), [RemoteEndpoint(mac, ip(UNDERLAY_B))])
    with pytest.raises(DataplaneError, match="not an IP address"):
        links.sync_remotes(net, {UNDERLAY_B}, [])  # type: ignore[arg-type]
    with pytest.raises(DataplaneError, match="address family differs"):
        links.sync_remotes(net, set(), [RemoteEndpoint(MAC_B, ip("fd99::2"))])
    assert links.remote_entries(net) == (set(), [])


# -- traffic ------------------------------------------------------------------------------------------------


class Lab:
    """Two hosts on one underlay bridge, each running NetlinkLinks in its own namespace, plus containers.

    Nothing may cross the VXLAN on its own, so that the packet counters only move for the traffic a test
    sends: IPv6 is off (no router solicitations, MLD reports), bridges do not report their link-local IGMP
    groups, and a neighbour entry is not re-probed over the VXLAN 5 s after it was used.
    """

    QUIET = (
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
        "net.ipv4.igmp_link_local_mcast_reports=0",
    )

    def __init__(self, namespaces: Namespaces) -> None:
        self.namespaces = namespaces
        self.underlay = self._namespace()
        with IPRoute(netns=self.underlay, flags=0) as ipr:
            ipr.link("add", ifname="ul", kind="bridge", br_mcast_snooping=0, br_forward_delay=0, br_stp_state=0)
            ipr.link("set", ifname="ul", state="up")
        self.links: dict[str, NetlinkLinks] = {}
        self.endpoints: dict[str, Endpoint] = {}  # sandbox -> the endpoint in it

    def _namespace(self) -> str:
        ns = self.namespaces.new()
        run(ns, "sysctl", "-q", "-w", *self.QUIET)
        return ns

    def host(self, address: str) -> str:
        ns = self._namespace()
        port = f"ul{len(self.links)}"
        with IPRoute(netns=ns, flags=0) as ipr:
            ipr.link("add", ifname="eth0", kind="veth", peer=port)
            ipr.link("set", ifname=port, net_ns_fd=self.underlay)
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=address, prefixlen=24)
            ipr.link("set", index=eth0, state="up")
        with IPRoute(netns=self.underlay, flags=0) as ipr:
            ipr.link("set", ifname=port, master=ipr.link_lookup(ifname="ul")[0], state="up")
        self.links[ns] = NetlinkLinks(netns=ns)
        self.namespaces.close_later(self.links[ns].close)
        return ns

    def container(self, host: str, net: Network, address: str) -> str:
        sandbox = self._namespace()
        self.endpoints[sandbox] = plug_container(self.links[host], host, sandbox, net, address)
        return sandbox


def plug_container(links: NetlinkLinks, host: str, sandbox: str, net: Network, address: str) -> Endpoint:
    """What Docker does with an endpoint: move the container end into the sandbox, address it, up."""
    endpoint = make_endpoint(net, address)
    links.ensure_endpoint(net, endpoint)
    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("set", ifname=endpoint.container_veth, net_ns_fd=sandbox)
    with IPRoute(netns=sandbox, flags=0) as ipr:
        index = ipr.link_lookup(ifname=endpoint.container_veth)[0]
        interface = ipaddress.IPv4Interface(address)
        ipr.addr("add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)
        ipr.link("set", index=index, state="up")
    # Only the root namespace has neigh.default, so this is per device.
    run(sandbox, "sysctl", "-q", "-w", f"net.ipv4.neigh.{endpoint.container_veth}.delay_first_probe_time=120")
    return endpoint


@pytest.fixture
def lab(namespaces: Namespaces) -> Iterator[Lab]:
    yield Lab(namespaces)


PEER_MODES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "remote": ({"remote": UNDERLAY_B}, {"remote": UNDERLAY_A}),
    "peers": ({"peers": (UNDERLAY_B,)}, {"peers": (UNDERLAY_A,)}),
    "group": ({"group": "239.1.1.42"}, {"group": "239.1.1.42"}),
}


@pytest.mark.parametrize("mode", sorted(PEER_MODES))
def test_containers_on_two_hosts_reach_each_other(lab: Lab, mode: str) -> None:
    options_a, options_b = PEER_MODES[mode]
    host_a, host_b = lab.host(UNDERLAY_A), lab.host(UNDERLAY_B)
    net_a = make_network(4242, dev="eth0", local=UNDERLAY_A, **options_a)
    net_b = make_network(4242, dev="eth0", local=UNDERLAY_B, **options_b)
    lab.links[host_a].ensure_network(net_a)
    lab.links[host_b].ensure_network(net_b)
    container_a = lab.container(host_a, net_a, "192.168.77.11/24")
    container_b = lab.container(host_b, net_b, "192.168.77.12/24")

    assert ping(container_a, "192.168.77.12"), f"no reply across the VXLAN in {mode} mode"
    assert ping(container_b, "192.168.77.11")


def test_gateway_traffic_never_crosses_the_vxlan(lab: Lab) -> None:
    host_a, host_b = lab.host(UNDERLAY_A), lab.host(UNDERLAY_B)
    net_a = make_network(4242, dev="eth0", local=UNDERLAY_A, remote=UNDERLAY_B)
    net_b = make_network(4242, dev="eth0", local=UNDERLAY_B, remote=UNDERLAY_A)
    lab.links[host_a].ensure_network(net_a)
    lab.links[host_b].ensure_network(net_b)
    container_a = lab.container(host_a, net_a, "192.168.77.11/24")
    lab.container(host_b, net_b, "192.168.77.12/24")

    # The counter does move for container traffic, so a still counter below means something.
    received = rx_packets(host_b, "vxlan-4242")
    assert ping(container_a, "192.168.77.12")
    assert rx_packets(host_b, "vxlan-4242") > received

    received = rx_packets(host_b, "vxlan-4242")
    gateway = run(container_a, *PING, "-c", "3", "-i", "0.2", "-W", "1", "192.168.77.1", check=False)
    assert gateway.returncode == 0, "the local anycast gateway did not answer"
    assert rx_packets(host_b, "vxlan-4242") == received, "ARP or ICMP for the anycast gateway crossed the VXLAN"


def test_networks_with_different_vnis_are_isolated(lab: Lab) -> None:
    host_a, host_b = lab.host(UNDERLAY_A), lab.host(UNDERLAY_B)
    nets: dict[tuple[str, int], Network] = {}
    for vni in (101, 102):
        gateway = "192.168.77.1/24" if vni == 101 else None
        for ns, remote in ((host_a, UNDERLAY_B), (host_b, UNDERLAY_A)):
            nets[ns, vni] = make_network(vni, gateway4=gateway, dev="eth0", remote=remote)
            lab.links[ns].ensure_network(nets[ns, vni])
    a101 = lab.container(host_a, nets[host_a, 101], "192.168.77.11/24")
    b101 = lab.container(host_b, nets[host_b, 101], "192.168.77.12/24")
    a102 = lab.container(host_a, nets[host_a, 102], "192.168.77.13/24")
    b102 = lab.container(host_b, nets[host_b, 102], "192.168.77.14/24")

    assert ping(a101, "192.168.77.12") and ping(a102, "192.168.77.14")
    assert unreachable(a101, "192.168.77.14") and unreachable(a102, "192.168.77.12")
    assert unreachable(b101, "192.168.77.13") and unreachable(b102, "192.168.77.11")


def test_multi_host_mode_without_static_peers(lab: Lab) -> None:
    """learning off, no remote/peers/group: sync_remotes alone makes the hosts reach each other."""
    host_a, host_b = lab.host(UNDERLAY_A), lab.host(UNDERLAY_B)
    net_a = make_network(4242, dev="eth0", local=UNDERLAY_A, learning=False)
    net_b = make_network(4242, dev="eth0", local=UNDERLAY_B, learning=False)
    lab.links[host_a].ensure_network(net_a)
    lab.links[host_b].ensure_network(net_b)
    container_a = lab.container(host_a, net_a, "192.168.77.11/24")
    container_b = lab.container(host_b, net_b, "192.168.77.12/24")

    def remote(sandbox: str, vtep: str) -> RemoteEndpoint:
        endpoint = lab.endpoints[sandbox]
        assert endpoint.ipv4 is not None
        return RemoteEndpoint(endpoint.mac, ip(vtep), (endpoint.ipv4.ip,))

    lab.links[host_a].sync_remotes(net_a, {ip(UNDERLAY_B)}, [remote(container_b, UNDERLAY_B)])
    lab.links[host_b].sync_remotes(net_b, {ip(UNDERLAY_A)}, [remote(container_a, UNDERLAY_A)])
    assert ping(container_a, "192.168.77.12"), "no reply across the VXLAN in multi-host mode"
    assert ping(container_b, "192.168.77.11")

    # A remote that exists nowhere: the bridge on host A answers the ARP request for it from the entries
    # sync_remotes made, and the broadcast is not flooded to host B although B is in the flood list.
    phantom = RemoteEndpoint(MAC_X, ip("10.99.0.77"), (ip("192.168.77.50"),))
    lab.links[host_a].sync_remotes(net_a, {ip(UNDERLAY_B)}, [remote(container_b, UNDERLAY_B), phantom])
    received = rx_packets(host_b, "vxlan-4242")
    assert run(container_a, *PING, "-c", "1", "-W", "1", "192.168.77.50", check=False).returncode != 0
    resolved = neighbours(container_a, "192.168.77.50")
    assert [entry.get("lladdr") for entry in resolved] == [MAC_X], "the ARP request was not answered locally"
    assert rx_packets(host_b, "vxlan-4242") == received, "the ARP request crossed the VXLAN"


# -- IPv6 addresses ----------------------------------------------------------------------------------------


def ipv6_addresses(ns: str, name: str) -> list[str]:
    data = json.loads(run(ns, "ip", "-j", "-6", "addr", "show", "dev", name).stdout)
    return [a["local"] for entry in data for a in entry.get("addr_info", [])]


def test_only_a_bridge_with_an_ipv6_gateway_gets_ipv6_addresses(
    namespaces: Namespaces, host: str, links: NetlinkLinks
) -> None:
    # An address on every bridge port and every bridge meant per device a link-local address, its DAD, its
    # fe80::/64 route and MLD reports: kernel work that grows with the devices of the host.
    v4_only, dual = make_network(601), make_network(602, gateway4="192.168.78.1/24", gateway6="fd00:602::1/64")
    for net in (v4_only, dual):
        links.ensure_network(net)
    endpoint = make_endpoint(v4_only, "192.168.77.2/24")
    links.ensure_endpoint(v4_only, endpoint)
    # The container end comes up in its sandbox, which gives the host end carrier: the moment the kernel
    # would make the link-local address.
    sandbox = namespaces.new()
    run(host, "ip", "link", "set", endpoint.container_veth, "netns", sandbox)
    run(sandbox, "ip", "addr", "add", "192.168.77.2/24", "dev", endpoint.container_veth)
    run(sandbox, "ip", "link", "set", endpoint.container_veth, "up")
    for name in (v4_only.bridge, v4_only.vxlan, dual.vxlan, endpoint.host_veth):
        assert must_link(host, name)["inet6_addr_gen_mode"] == "none", name
    assert "fd00:602::1" in ipv6_addresses(host, dual.bridge)
    assert must_link(host, dual.bridge)["inet6_addr_gen_mode"] == "eui64"

    def link_locals() -> list[str]:
        names = (v4_only.bridge, v4_only.vxlan, dual.vxlan, endpoint.host_veth)
        return [address for name in names for address in ipv6_addresses(host, name)]

    assert ping(sandbox, "192.168.77.1")  # everything up and forwarding, and still no IPv6 address on them
    assert link_locals() == []
    assert [a for a in ipv6_addresses(sandbox, endpoint.container_veth) if a.startswith("fe80:")]


# -- IPv4 devconf through netlink (the firewall's way round a read-only /proc/sys) ----------------------------


def route_localnet(ns: str, dev: str) -> str:
    return run(ns, "cat", f"/proc/sys/net/ipv4/conf/{dev}/route_localnet").stdout.strip()


def test_route_localnet_is_set_through_netlink(host: str) -> None:
    """set_ipv4_devconf works on the namespace of the calling thread: a thread of its own enters `host`."""
    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("add", ifname="vxbr-77", kind="bridge")

    def in_host(value: int, dev: str = "vxbr-77") -> None:
        netns.setns(host, flags=0)  # this thread only; it ends with the pool
        set_ipv4_devconf(dev, "route_localnet", value)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(in_host, 1).result()
        assert route_localnet(host, "vxbr-77") == "1"
        pool.submit(in_host, 0).result()
        assert route_localnet(host, "vxbr-77") == "0"
        pool.submit(in_host, 1, "vxbr-78").result()  # no such device: nothing to do, as for the sysctl
