"""Encrypted networks through the Driver with the real WireGuardMesh (on FakeWireGuard) and a real throwaway
etcd: two hosts become each other's peers, doctor and rotate-key through the app, and the last network's removal."""

from __future__ import annotations

import ipaddress
import json
import uuid
from pathlib import Path

from vxlanpy.cluster import EtcdCluster
from vxlanpy.config import Settings
from vxlanpy.dataplane.base import Underlay
from vxlanpy.dataplane.fake import FakeFirewall, FakeLinks
from vxlanpy.dataplane.fake_wireguard import FakeWireGuard
from vxlanpy.driver import Driver
from vxlanpy.encryption import WireGuardMesh
from vxlanpy.models import Subnet
from vxlanpy.store.etcd import EtcdStore
from vxlanpy.store.etcd_kv import EtcdConfig, EtcdKV
from vxlanpy.wiring import assemble

from ..etcd_server import EtcdServer
from .cli_fakes import CliHarness
from .conftest import NET, Harness
from .test_cli import healthy_host
from .test_cluster import eventually

SUBNET = (Subnet(ipaddress.ip_network("10.60.0.0/24"), ipaddress.ip_interface("10.60.0.1/24")),)


def test_encrypted_network_across_two_hosts_with_the_mesh(
    etcd_server: EtcdServer, tmp_path: Path, harness: Harness
) -> None:
    prefix = f"/test-{uuid.uuid4().hex[:8]}"
    hosts = []
    for name, address in (("node-a", "192.0.2.1"), ("node-b", "192.0.2.2")):
        kv = EtcdKV(EtcdConfig.from_url(etcd_server.url, prefix=prefix, timeout=2))
        store = EtcdStore(kv, name)
        underlay = Underlay("eth0", 1500, (ipaddress.ip_address(address),))
        links = FakeLinks({"eth0": underlay})
        cluster = EtcdCluster(kv, store, lease_ttl=3)
        wireguard = FakeWireGuard()
        (tmp_path / name).mkdir()
        mesh = WireGuardMesh(kv, cluster, wireguard, name, tmp_path / name, lambda u=underlay: u, watch_idle=1.0)
        driver = Driver(store, links, FakeFirewall(), vni_range=(300, 310), cluster=cluster, encryption=mesh)
        cluster.start()
        mesh.start()
        assert cluster.synced.wait(5) and mesh.synced.wait(5)
        hosts.append((driver, links, cluster, mesh, wireguard))
    try:
        (a, a_links, _, a_mesh, a_wg), (b, b_links, _, b_mesh, b_wg) = hosts
        a.create_network(NET, {"vni": "300", "encrypted": ""}, ipv4=SUBNET)
        b.create_network(NET, {"vni": "300", "encrypted": "true"}, ipv4=SUBNET)
        network = a.store.list_networks()[0]
        assert str(network.config.local) == "10.255.0.1" and network.config.dev == "vxlanpy-wg"
        assert network.config.mtu == 1390
        assert eventually(lambda: a_links.remotes.get(300, (set(), []))[0] == {ipaddress.ip_address("10.255.0.2")})
        assert eventually(
            lambda: set(a_wg.interfaces["vxlanpy-wg"].peers) == {b_wg.interfaces["vxlanpy-wg"].public_key}
        )
        assert eventually(
            lambda: set(b_wg.interfaces["vxlanpy-wg"].peers) == {a_wg.interfaces["vxlanpy-wg"].public_key}
        )
        assert a_wg.interfaces["vxlanpy-wg"].mtu == 1440
        # the operator side on node-a
        cli = CliHarness(harness)
        cli.serve(assemble(a, Settings(host="node-a"), cluster=hosts[0][2], sandboxes=cli.sandboxes, encryption=a_mesh))
        healthy_host(cli)
        findings = [f for f in json.loads(cli.run("doctor", "--json").stdout) if f["check"] == "wireguard"]
        assert findings[0]["summary"].startswith(
            "backend wireguard-go; interface vxlanpy-wg up, tunnel address 10.255.0.1"
        )
        assert all(f["status"] == "ok" for f in findings), findings
        old = a_wg.interfaces["vxlanpy-wg"].public_key
        rotated = cli.run("rotate-key", "--json")
        assert rotated.exit_code == 0, rotated.output
        new = json.loads(rotated.stdout)["public_key"]
        assert json.loads(rotated.stdout)["previous"] == old != new
        assert eventually(lambda: set(b_wg.interfaces["vxlanpy-wg"].peers) == {new})
        private = (tmp_path / "node-a" / "wireguard.key").read_text().strip()
        assert private not in rotated.stdout and private not in cli.run("doctor", "--json").stdout
        # the last encrypted network of node-b goes: its interface and record go, node-a drops the peer
        b.delete_network(NET)
        assert "vxlanpy-wg" not in b_wg.interfaces
        assert eventually(lambda: a_wg.interfaces["vxlanpy-wg"].peers == {})
    finally:
        for _, _, cluster, mesh, _ in hosts:
            mesh.stop()
            cluster.stop()
