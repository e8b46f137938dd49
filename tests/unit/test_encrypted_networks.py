"""Encrypted networks (`-o encrypted`) in the options, the driver, the VTEP filter, the segment and reconciliation,
on the in-package fakes and a fake Encryption (the WireGuard mesh is encryption.py's and its own tests')."""

from __future__ import annotations

import ipaddress
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from vxlanpy.cluster import EtcdCluster, SegmentView
from vxlanpy.dataplane.base import Underlay
from vxlanpy.dataplane.fake import FakeFirewall, FakeLinks
from vxlanpy.dataplane.firewall_rules import INPUT_CHAIN, Ruleset, rule_line, vtep_filter_rules
from vxlanpy.driver import Driver
from vxlanpy.encryption_base import NO_WIREGUARD, Tunnel
from vxlanpy.errors import Conflict, DataplaneError, InvalidOption
from vxlanpy.models import IPAddress, Network, NetworkConfig, Subnet
from vxlanpy.operator.doctor import input_verdict, rule_matches_vxlan
from vxlanpy.options import parse_network_options
from vxlanpy.store.base import Store
from vxlanpy.store.etcd import EtcdStore, segment_differences, segment_of
from vxlanpy.store.etcd_kv import EtcdConfig, EtcdKV
from vxlanpy.store.memory import MemoryStore

from ..etcd_server import EtcdServer
from .conftest import NET, NET2, Harness
from .test_cluster import eventually

NET3 = "e" * 64
WG = "vxlanpy-wg"
TUNNEL = Tunnel(WG, ipaddress.ip_address("10.255.0.7"))
SUBNET = (Subnet(ipaddress.ip_network("10.60.0.0/24"), ipaddress.ip_interface("10.60.0.1/24")),)
OTHER_SUBNET = (Subnet(ipaddress.ip_network("10.61.0.0/24"), ipaddress.ip_interface("10.61.0.1/24")),)
V4_UNDERLAY = Underlay("eth0", 1500, (ipaddress.ip_address("192.0.2.10"),))
V6_UNDERLAY = Underlay("eth0", 1500, (ipaddress.ip_address("2001:db8::10"),))


class FakeEncryption:
    """Records what the driver asks of the mesh; `fail` makes ensure() raise as a host without WireGuard does."""

    def __init__(self, store: Store, calls: list[str], tunnel: Tunnel = TUNNEL) -> None:
        self.store = store
        self.calls = calls
        self._tunnel = tunnel
        self.fail = False
        self.rows_at_ensure: list[set[str]] = []  # the store's network ids each time ensure() ran
        self.in_use_answers: list[bool] = []  # what in_use() said at each release_if_unused()

    def tunnel(self) -> Tunnel:
        return self._tunnel

    def ensure(self) -> None:
        self.calls.append("encryption.ensure")
        self.rows_at_ensure.append({network.network_id for network in self.store.list_networks()})
        if self.fail:
            raise DataplaneError(NO_WIREGUARD)

    def release_if_unused(self, in_use: Callable[[], bool]) -> None:
        self.calls.append("encryption.release_if_unused")
        self.in_use_answers.append(in_use())

    def rotate_key(self) -> dict[str, Any]:
        raise AssertionError("not the driver's to call")

    def status(self) -> dict[str, Any]:
        return {}


class RecordingCluster:
    """Just enough of a Cluster for the driver: publications recorded, one other host's tunnel address as VTEP."""

    def __init__(self) -> None:
        self.nodes = None
        self.synced = threading.Event()
        self.published: dict[int, Network] = {}

    def program_through(self, owner: object) -> None:
        pass

    def publish_network(self, network: Network) -> None:
        self.published[network.vni] = network

    def unpublish_network(self, network: Network) -> None:
        self.published.pop(network.vni, None)

    def publish_endpoint(self, network: Network, endpoint: object) -> None:
        pass

    def unpublish_endpoint(self, network: Network, endpoint: object) -> None:
        pass

    def remote_view(self, vni: int) -> SegmentView:
        return SegmentView(vteps={"host-b": ipaddress.ip_address("10.255.0.8")})

    def remote_vteps(self) -> set[IPAddress]:
        return {ipaddress.ip_address("10.255.0.8")}


class Host:
    """A multi-host driver on fakes, with or without the mesh."""

    def __init__(self, with_encryption: bool = True) -> None:
        self.calls: list[str] = []
        self.store = MemoryStore()
        self.links = FakeLinks({"eth0": V4_UNDERLAY})
        self.firewall = FakeFirewall()
        self.cluster = RecordingCluster()
        self.encryption = FakeEncryption(self.store, self.calls) if with_encryption else None
        self.driver = Driver(
            self.store,
            self.links,
            self.firewall,
            vni_range=(300, 310),
            cluster=self.cluster,  # type: ignore[arg-type]
            encryption=self.encryption,
        )

    def create(self, network_id: str, options: dict[str, object], subnet: tuple[Subnet, ...] = SUBNET) -> Network:
        return self.driver.create_network(network_id, options, ipv4=subnet)

    def nothing_left(self) -> None:
        assert self.store.list_networks() == []
        assert self.links.networks == {} and self.firewall.networks == {}
        assert self.cluster.published == {}


@pytest.fixture
def host() -> Host:
    return Host()


def encrypted(**more: object) -> dict[str, object]:
    return {"encrypted": "", **more}


# -- options ---------------------------------------------------------------------------------------------------


def parse(options: dict[str, object], underlay: Underlay = V4_UNDERLAY, multi_host: bool = True) -> NetworkConfig:
    requested = parse_network_options(options, lambda dev: underlay, multi_host=multi_host)
    return requested.config_for(requested.vni or 300)


@pytest.mark.parametrize("value", ["", "true", "yes", "1", "on", "TRUE"])
def test_encrypted_option_values_that_mean_true(value: str) -> None:
    config = parse({"encrypted": value})
    assert config.encrypted is True
    assert config.dstport == 4790  # the inner port, admitted through WireGuard only
    assert config.mtu == 1500 - 50 - 60


@pytest.mark.parametrize("value", ["false", "no", "0", "off"])
def test_encrypted_option_values_that_mean_false(value: str) -> None:
    config = parse({"encrypted": value})
    assert (config.encrypted, config.dstport, config.mtu) == (False, 4789, 1450)


def test_encrypted_mtu_over_an_ipv6_underlay_counts_wireguards_ipv6_header() -> None:
    assert parse(encrypted(), V6_UNDERLAY).mtu == 1500 - 50 - 80


def test_encrypted_keeps_a_chosen_dstport_and_mtu() -> None:
    config = parse(encrypted(dstport="5790", mtu="1300"))
    assert (config.dstport, config.mtu) == (5790, 1300)


@pytest.mark.parametrize(
    ("underlay", "mtu", "phrase"),
    [
        (V4_UNDERLAY, "1391", "once VXLAN adds 50 bytes and WireGuard 60 (110 in all); use at most 1390"),
        (V6_UNDERLAY, "1371", "once VXLAN adds 50 bytes and WireGuard 80 (130 in all); use at most 1370"),
    ],
)
def test_encrypted_mtu_above_the_default_is_refused_naming_both_overheads(
    underlay: Underlay, mtu: str, phrase: str
) -> None:
    with pytest.raises(InvalidOption, match=r"mtu=\d+ is too big for the underlay eth0 \(MTU 1500\)") as refused:
        parse(encrypted(mtu=mtu), underlay)
    assert phrase in str(refused.value)


@pytest.mark.parametrize(
    ("options", "multi_host", "phrase"),
    [
        (encrypted(), False, "encryption needs the etcd store (VXLANPY_STORE=etcd://...)"),
        ({"encrypted": "true"}, False, "WireGuard keys are per host and rotate, and are carried through etcd"),
        (encrypted(remote="192.0.2.20"), False, "option remote does not apply to an encrypted network"),
        (encrypted(peers="192.0.2.20,192.0.2.21"), True, "remove -o peers and use the etcd store"),
        (encrypted(group="239.1.1.1"), True, "encrypted networks find their peers and their WireGuard keys"),
        (encrypted(encap="gretap"), True, "encap=gretap cannot be encrypted"),
        (encrypted(local="192.0.2.10"), True, "option local does not apply to an encrypted network"),
        (encrypted(dev="eth0"), True, "through the WireGuard interface; remove -o dev"),
        ({"encrypted": "maybe"}, True, "encrypted='maybe' is not valid; use true or false"),
    ],
)
def test_encrypted_refusals_say_what_to_do(options: dict[str, object], multi_host: bool, phrase: str) -> None:
    with pytest.raises(InvalidOption) as refused:
        parse(options, multi_host=multi_host)
    assert phrase in str(refused.value)


def test_single_host_plugin_refuses_encrypted_through_docker(harness: Harness) -> None:
    status, body = harness.create_network(generic={"encrypted": ""})
    assert status == 400
    assert "encryption needs the etcd store (VXLANPY_STORE=etcd://...)" in body["Err"]
    assert harness.store.list_networks() == [] and harness.links.networks == {}


def test_network_rows_without_the_key_are_plain_and_encrypted_ones_round_trip() -> None:
    old_row = NetworkConfig(vni=300).to_dict()
    del old_row["encrypted"]
    assert NetworkConfig.from_dict(old_row).encrypted is False
    config = NetworkConfig(vni=300, encrypted=True, local=TUNNEL.address, dev=TUNNEL.interface, dstport=4790)
    assert NetworkConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# -- the driver ------------------------------------------------------------------------------------------------


def test_encrypted_network_sends_from_the_tunnel_and_brings_the_mesh_up_after_its_row(host: Host) -> None:
    network = host.create(NET, encrypted())
    row = host.store.get_network(NET)
    assert row is not None and row.config.encrypted
    assert (row.config.local, row.config.dev, row.config.dstport, row.config.mtu) == (
        TUNNEL.address,
        "vxlanpy-wg",
        4790,
        1390,
    )
    assert host.links.networks[network.bridge].config == row.config  # the VXLAN device as built
    assert host.encryption is not None and host.encryption.rows_at_ensure == [{NET}]
    assert host.cluster.published[network.vni].config.local == TUNNEL.address  # the VTEP it publishes
    # Its port is dropped unless it came through WireGuard; accepted from the other hosts' tunnel addresses.
    assert host.firewall.tunnel_ports == {4790: "vxlanpy-wg"}
    assert host.firewall.vtep_filter == ({4790}, {ipaddress.ip_address("10.255.0.8")})


def test_plain_networks_beside_encrypted_ones_are_unchanged(host: Host) -> None:
    host.create(NET, encrypted())
    plain = host.create(NET2, {}, OTHER_SUBNET)
    assert (plain.config.encrypted, plain.config.dstport, plain.config.local, plain.config.dev) == (
        False,
        4789,
        ipaddress.ip_address("192.0.2.10"),
        "eth0",
    )
    assert host.calls.count("encryption.ensure") == 1
    assert host.firewall.tunnel_ports == {4790: "vxlanpy-wg"}
    assert host.firewall.vtep_filter[0] == {4789, 4790}


def test_a_host_without_wireguard_fails_the_create_and_keeps_nothing(host: Host) -> None:
    assert host.encryption is not None
    host.encryption.fail = True
    with pytest.raises(DataplaneError, match="install wireguard-tools"):
        host.create(NET, encrypted())
    host.nothing_left()
    assert host.encryption.in_use_answers == [False]  # whatever ensure() made is released


def test_a_failure_after_the_mesh_came_up_releases_it_with_the_rest(host: Host) -> None:
    host.links.fail_on.add("ensure_network")
    with pytest.raises(DataplaneError, match="injected failure in ensure_network"):
        host.create(NET, encrypted())
    host.nothing_left()
    assert host.calls == ["encryption.ensure", "encryption.release_if_unused"]
    assert host.encryption is not None and host.encryption.in_use_answers == [False]


def test_a_failed_create_keeps_the_mesh_of_the_other_encrypted_networks(host: Host) -> None:
    host.create(NET, encrypted())
    host.firewall.fail_on.add("ensure_network")
    with pytest.raises(DataplaneError):
        host.create(NET2, encrypted(), OTHER_SUBNET)
    assert host.encryption is not None and host.encryption.in_use_answers == [True]
    assert [network.network_id for network in host.store.list_networks()] == [NET]


def test_an_encrypted_subnet_holding_the_tunnel_address_is_refused(host: Host) -> None:
    tunnel_subnet = (Subnet(ipaddress.ip_network("10.255.0.0/24"), ipaddress.ip_interface("10.255.0.1/24")),)
    with pytest.raises(InvalidOption, match="subnet 10.255.0.0/24 contains this host's WireGuard tunnel address"):
        host.create(NET, encrypted(), tunnel_subnet)
    host.nothing_left()
    assert host.calls == []


def test_without_the_mesh_encrypted_networks_are_refused_before_anything_is_taken() -> None:
    host = Host(with_encryption=False)
    with pytest.raises(InvalidOption, match=r"encryption needs the etcd store \(VXLANPY_STORE=etcd://\.\.\.\)"):
        host.driver.check_gateway_allocation(encrypted(), internal=False)
    with pytest.raises(InvalidOption, match="-o encrypted is not available on this host"):
        host.create(NET, encrypted())
    host.nothing_left()


def test_the_mesh_is_released_only_when_the_last_encrypted_network_goes(host: Host) -> None:
    host.create(NET, encrypted())
    host.create(NET2, encrypted(), OTHER_SUBNET)
    host.create(NET3, {}, (Subnet(ipaddress.ip_network("10.62.0.0/24"), ipaddress.ip_interface("10.62.0.1/24")),))
    assert host.encryption is not None
    host.driver.delete_network(NET3)  # plain: the mesh is not asked
    assert host.encryption.in_use_answers == []
    host.driver.delete_network(NET)
    assert host.encryption.in_use_answers == [True]  # NET2 still needs it
    assert host.firewall.tunnel_ports == {4790: "vxlanpy-wg"}
    host.driver.delete_network(NET2)
    assert host.encryption.in_use_answers == [True, False]
    assert host.firewall.tunnel_ports == {} and host.firewall.vtep_filter[0] == set()


def test_a_release_failure_does_not_fail_the_delete(host: Host) -> None:
    host.create(NET, encrypted())

    def refuse(in_use: Callable[[], bool]) -> None:
        raise DataplaneError("wireguard-go did not stop")

    host.encryption.release_if_unused = refuse  # type: ignore[method-assign,union-attr]
    host.driver.delete_network(NET)
    assert host.store.list_networks() == [] and host.links.networks == {}


def test_an_encrypted_network_is_refused_on_a_port_a_plain_one_uses(host: Host) -> None:
    plain = host.create(NET, {"dstport": "4790"})
    with pytest.raises(Conflict) as refused:
        host.create(NET2, encrypted(), OTHER_SUBNET)
    assert f"dstport 4790 is used by the plain network {NET[:12]} (vni {plain.vni})" in str(refused.value)
    assert "give this encrypted network another -o dstport" in str(refused.value)
    assert [network.network_id for network in host.store.list_networks()] == [NET]
    assert host.calls == []  # refused before the mesh was touched


def test_a_plain_network_is_refused_on_a_port_an_encrypted_one_uses(host: Host) -> None:
    secret = host.create(NET, encrypted(dstport="4789"))
    with pytest.raises(Conflict) as refused:
        host.create(NET2, {}, OTHER_SUBNET)
    assert f"dstport 4789 is used by the encrypted network {NET[:12]} (vni {secret.vni})" in str(refused.value)
    assert "give this plain network another -o dstport" in str(refused.value)
    assert host.create(NET2, {"dstport": "8472"}, OTHER_SUBNET).config.dstport == 8472


# -- the VTEP filter's rules ------------------------------------------------------------------------------------


def test_encrypted_ports_are_dropped_unless_they_come_through_wireguard_before_any_accept() -> None:
    vteps = {ipaddress.ip_address(a) for a in ("192.0.2.20", "10.255.0.8", "2001:db8::20")}
    rules = vtep_filter_rules({4789, 4790}, vteps, 4, {4790: "vxlanpy-wg"})
    assert [" ".join(rule) for rule in rules] == [
        "-p udp --dport 4789 -s 10.255.0.8 -j ACCEPT",
        "-p udp --dport 4789 -s 192.0.2.20 -j ACCEPT",
        "-p udp --dport 4789 -j DROP",
        "! -i vxlanpy-wg -p udp --dport 4790 -j DROP",
        "-p udp --dport 4790 -s 10.255.0.8 -j ACCEPT",
        "-p udp --dport 4790 -s 192.0.2.20 -j ACCEPT",
        "-p udp --dport 4790 -j DROP",
    ]
    # IPv6: no VTEP of that family on 4790 here, so everything on it is dropped, through WireGuard or not.
    assert [" ".join(rule) for rule in vtep_filter_rules(set(), vteps, 6, {4790: "vxlanpy-wg"})] == [
        "! -i vxlanpy-wg -p udp --dport 4790 -j DROP",
        "-p udp --dport 4790 -s 2001:db8::20 -j ACCEPT",
        "-p udp --dport 4790 -j DROP",
    ]


def test_doctor_reads_the_encrypted_ports_rules_and_does_not_count_them_against_vxlan() -> None:
    rules = vtep_filter_rules({4790}, {ipaddress.ip_address("10.255.0.8")}, 4, {4790: "vxlanpy-wg"})
    listing = "\n".join(
        ["-P INPUT ACCEPT", f"-N {INPUT_CHAIN}", f"-A INPUT -j {INPUT_CHAIN}"]
        + [rule_line(INPUT_CHAIN, rule) for rule in rules]
    )
    ruleset = Ruleset.parse(listing + "\n")
    assert ruleset.rules[INPUT_CHAIN][0] == ["!", "-i", "vxlanpy-wg", "-p", "udp", "--dport", "4790", "-j", "DROP"]
    assert rule_matches_vxlan(ruleset.rules[INPUT_CHAIN][0], 4790) == "some"  # a drop for some interfaces only
    assert input_verdict(ruleset, "INPUT", 4790)[0] == "policy:ACCEPT"  # vxlanpy's own allow-list, as before


@pytest.mark.parametrize("interface", ["-j", "bad name", "x" * 16, "", "wg0;x", "! wg0"])
def test_an_invalid_interface_never_reaches_a_rule(interface: str) -> None:
    with pytest.raises(ValueError, match="refusing"):
        vtep_filter_rules({4790}, set(), 4, {4790: interface})


# -- the segment ------------------------------------------------------------------------------------------------


def segment(encrypted: bool) -> dict[str, Any]:
    return segment_of(Network(NET, NetworkConfig(vni=300, encrypted=encrypted), SUBNET))


def test_segment_records_encryption_and_names_a_disagreement() -> None:
    assert segment(True)["encrypted"] is True
    assert segment_differences(segment(False), segment(True)) == ["encrypted False (this host asked for True)"]
    older = {key: value for key, value in segment(False).items() if key != "encrypted"}  # before the key existed
    assert segment_differences(older, segment(False)) == []
    assert segment_differences(older, segment(True)) == ["encrypted False (this host asked for True)"]


def test_a_host_that_disagrees_on_encryption_is_refused_through_etcd(etcd_server: EtcdServer) -> None:
    prefix = f"/test-{uuid.uuid4().hex[:8]}"
    stores = [EtcdStore(EtcdKV(EtcdConfig.from_url(etcd_server.url, prefix=prefix, timeout=2)), h) for h in "ab"]
    config = NetworkConfig(vni=300, dstport=4790, mtu=1390)
    stores[0].add_network(Network(NET, replace(config, encrypted=True), SUBNET))
    with pytest.raises(Conflict) as refused:
        stores[1].add_network(Network(NET, config, SUBNET))
    assert "vni 300 is already defined in the cluster with encrypted True (this host asked for False)" in str(
        refused.value
    )


# -- reconciliation ---------------------------------------------------------------------------------------------


def test_reconcile_brings_the_mesh_up_before_rebuilding_encrypted_networks(host: Host) -> None:
    secret = host.create(NET, encrypted())
    plain = host.create(NET2, {}, OTHER_SUBNET)
    host.links.networks.clear()  # a reboot: every device gone
    host.calls.clear()
    host.links.calls.clear()
    host.links.calls = host.calls  # one log for both, to see the order
    report = host.driver.reconcile()
    assert host.calls.count("encryption.ensure") == 1
    assert host.calls.index("encryption.ensure") < host.calls.index("ensure_network")
    assert sorted(report.recreated_networks) == sorted([secret.vni, plain.vni])
    assert secret.bridge in host.links.networks and report.encrypted_not_rebuilt == []


def test_reconcile_reports_a_mesh_failure_and_still_repairs_plain_networks(host: Host) -> None:
    secret = host.create(NET, encrypted())
    plain = host.create(NET2, {}, OTHER_SUBNET)
    host.links.networks.clear()
    assert host.encryption is not None
    host.encryption.fail = True
    report = host.driver.reconcile()  # not raised
    assert report.encrypted_not_rebuilt == [secret.vni]
    assert "encrypted networks not rebuilt (no WireGuard) 1" in report.summary()
    assert plain.bridge in host.links.networks and secret.bridge not in host.links.networks
    host.encryption.fail = False
    assert host.driver.reconcile().encrypted_not_rebuilt == []
    assert secret.bridge in host.links.networks


def test_reconcile_without_encrypted_networks_leaves_the_mesh_alone(host: Host) -> None:
    host.create(NET, {})
    host.driver.reconcile()
    assert host.calls == []


# -- two hosts through etcd -------------------------------------------------------------------------------------


def test_two_hosts_send_an_encrypted_segment_to_each_others_tunnel_addresses(etcd_server: EtcdServer) -> None:
    prefix = f"/test-{uuid.uuid4().hex[:8]}"
    hosts = []
    for name, underlay, tunnel in (
        ("a", "192.0.2.1", "10.255.0.1"),
        ("b", "192.0.2.2", "10.255.0.2"),
        ("c", "192.0.2.3", "10.255.0.3"),
    ):
        kv = EtcdKV(EtcdConfig.from_url(etcd_server.url, prefix=prefix, timeout=2))
        store = EtcdStore(kv, name)
        links = FakeLinks({"eth0": Underlay("eth0", 1500, (ipaddress.ip_address(underlay),))})
        firewall = FakeFirewall()
        cluster = EtcdCluster(kv, store, lease_ttl=2)
        cluster.resume_lease()
        encryption = FakeEncryption(store, [], Tunnel(WG, ipaddress.ip_address(tunnel)))
        driver = Driver(store, links, firewall, vni_range=(300, 310), cluster=cluster, encryption=encryption)
        cluster.start()
        assert cluster.synced.wait(5)
        hosts.append((driver, links, firewall, cluster))
    try:
        (a, a_links, _, _), (b, b_links, b_firewall, _), (c, c_links, _, _) = hosts
        a.create_network(NET, encrypted(vni="300"), ipv4=SUBNET)
        b.create_network(NET, encrypted(vni="300"), ipv4=SUBNET)
        tunnel_a, tunnel_b = ipaddress.ip_address("10.255.0.1"), ipaddress.ip_address("10.255.0.2")
        assert eventually(lambda: b_links.remotes.get(300, (set(), []))[0] == {tunnel_a})
        assert eventually(lambda: a_links.remotes.get(300, (set(), []))[0] == {tunnel_b})
        assert eventually(lambda: b_firewall.vtep_filter == ({4790}, {tunnel_a}))
        assert b_firewall.tunnel_ports == {4790: WG}
        # A host may not join the segment in clear, even with the encrypted network's port and MTU.
        with pytest.raises(Conflict, match=r"vni 300 is already defined in the cluster with encrypted True \(this"):
            c.create_network(NET, {"vni": "300", "mtu": "1390", "dstport": "4790"}, ipv4=SUBNET)
        assert c.store.list_networks() == [] and c_links.networks == {}
    finally:
        for _, _, _, cluster in hosts:
            cluster.stop()
