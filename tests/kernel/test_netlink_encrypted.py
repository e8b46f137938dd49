"""An encrypted network's VXLAN device on the real kernel: it sends from the tunnel address through the WireGuard
interface (dev), and the default MTU fits that interface exactly.

This kernel has no WireGuard: a TUN device named like vxlanpy's WireGuard interface stands in for it (wireguard-go's
interface is such a TUN; both are layer-3 devices without a MAC), with the MTU the mesh gives it: the underlay's
minus WireGuard's 60 bytes."""

from __future__ import annotations

import pytest

from vxlanpy.dataplane.base import Underlay
from vxlanpy.dataplane.netlink import NetlinkLinks
from vxlanpy.dataplane.wireguard import ensure_tun_device
from vxlanpy.errors import VxlanpyError
from vxlanpy.options import parse_network_options

from .test_netlink import host, links, make_network, must_link, run

__all__ = ["host", "links"]  # the fixtures this module uses

WG = "vxlanpy-wg"
TUNNEL_ADDRESS = "10.255.0.7"
UNDERLAY_MTU = 1500


def add_wireguard_stand_in(ns: str) -> None:
    ensure_tun_device()  # a guest's minimal /dev (scripts/vm-run) may lack /dev/net/tun
    run(ns, "ip", "tuntap", "add", "dev", WG, "mode", "tun")
    run(ns, "ip", "link", "set", WG, "mtu", str(UNDERLAY_MTU - 60), "up")
    run(ns, "ip", "addr", "add", f"{TUNNEL_ADDRESS}/16", "dev", WG)


def default_encrypted_mtu() -> int:
    underlay = Underlay("eth0", UNDERLAY_MTU, ())
    requested = parse_network_options({"encrypted": ""}, lambda dev: underlay, multi_host=True)
    return requested.config_for(42).mtu


def test_the_vxlan_device_sends_from_the_tunnel_address_through_the_wireguard_interface(
    host: str, links: NetlinkLinks
) -> None:
    add_wireguard_stand_in(host)
    mtu = default_encrypted_mtu()
    net = make_network(42, dstport=4790, dev=WG, local=TUNNEL_ADDRESS, learning=False, mtu=mtu, encrypted=True)
    links.ensure_network(net)
    vxlan = must_link(host, "vxlan-42")
    data = vxlan["linkinfo"]["info_data"]
    assert (data["local"], data["link"], data["port"]) == (TUNNEL_ADDRESS, WG, 4790)
    assert vxlan["mtu"] == mtu == UNDERLAY_MTU - 60 - 50  # the most the WireGuard interface carries

    # One byte more does not fit inside WireGuard: the kernel refuses it, as `-o mtu` refuses it before.
    with pytest.raises(VxlanpyError, match="mtu 1391"):
        links.ensure_network(make_network(43, dstport=4790, dev=WG, local=TUNNEL_ADDRESS, mtu=mtu + 1))


def test_the_device_goes_with_the_wireguard_interface_and_comes_back_with_it(host: str, links: NetlinkLinks) -> None:
    """Why reconciliation brings the mesh up before it rebuilds encrypted networks: the kernel deletes a VXLAN
    device whose lower device goes (wireguard-go killed, the interface removed)."""
    add_wireguard_stand_in(host)
    net = make_network(42, dstport=4790, dev=WG, local=TUNNEL_ADDRESS, learning=False, mtu=1390, encrypted=True)
    links.ensure_network(net)
    run(host, "ip", "link", "del", WG)
    assert "vxlan-42" not in links.owned_links()
    add_wireguard_stand_in(host)
    links.ensure_network(net)
    assert must_link(host, "vxlan-42")["linkinfo"]["info_data"]["link"] == WG
