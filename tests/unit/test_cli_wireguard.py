"""`vxlanpy rotate-key` and doctor's "wireguard" check, through the real plugin app on fakes (the mesh's own
behaviour is test_encryption.py's)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from vxlanpy.config import Settings
from vxlanpy.encryption_base import NO_WIREGUARD
from vxlanpy.wiring import assemble

from .cli_fakes import HOST, CliHarness
from .test_cli import cli, healthy_host  # noqa: F401 - the fixture

OLD = "o" * 43 + "="
NEW = "n" * 43 + "="
PEER_B = "b" * 43 + "="


class FakeMesh:
    """What the operator asks of the mesh: its status and rotation."""

    def __init__(self) -> None:
        self.rotations = 0
        self.state: dict[str, Any] = {
            "interface": "vxlanpy-wg",
            "subnet": "10.255.0.0/16",
            "port": 51820,
            "up": True,
            "tunnel": "10.255.0.1",
            "public_key": OLD,
            "endpoint": "192.0.2.1:51820",
            "underlay": {"dev": "eth0", "mtu": 1500},
            "overhead": 60,
            "backend": "wireguard-go",
            "backend_error": None,
            "interface_present": True,
            "listen_port": 51820,
            "peers": [
                {"public_key": PEER_B, "tunnel": "10.255.0.2", "endpoint": "192.0.2.2:51820", "latest_handshake": 1}
            ],
            "expected": [
                {"host": "node-b", "public_key": PEER_B, "tunnel": "10.255.0.2", "endpoint": "192.0.2.2:51820"}
            ],
            "missing": [],
            "extra": [],
        }

    def status(self) -> dict[str, Any]:
        return dict(self.state)

    def rotate_key(self) -> dict[str, Any]:
        self.rotations += 1
        return {"public_key": NEW, "previous": OLD}

    def start(self) -> None: ...

    def stop(self) -> list[str]:
        return []


@pytest.fixture
def mesh(cli: CliHarness) -> FakeMesh:  # noqa: F811
    mesh = FakeMesh()
    cli.serve(assemble(cli.harness.driver, Settings(host=HOST), sandboxes=cli.sandboxes, encryption=mesh))  # type: ignore[arg-type]
    return mesh


@pytest.fixture
def encrypted(cli: CliHarness) -> None:  # noqa: F811
    """The network of `cli` is an encrypted one."""
    store = cli.harness.driver.store
    for network in store.list_networks():
        store.delete_network(network.network_id)
        store.add_network(replace(network, config=replace(network.config, encrypted=True)))


# -- rotate-key ------------------------------------------------------------------------------------------------


def test_rotate_key_prints_the_new_public_key(cli: CliHarness, mesh: FakeMesh, encrypted: None) -> None:  # noqa: F811
    result = cli.run("rotate-key")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"new public key {NEW} (was {OLD}); the other hosts switch to it when they see it in etcd\n"
    as_json = cli.run("rotate-key", "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == {"public_key": NEW, "previous": OLD}
    assert mesh.rotations == 2


def test_rotate_key_is_refused_on_a_single_host_store(cli: CliHarness) -> None:  # noqa: F811
    result = cli.run("rotate-key")
    assert result.exit_code == 1 and result.stdout == ""
    assert "single-host (SQLite) store" in result.stderr and "need the etcd store" in result.stderr


def test_rotate_key_is_refused_without_an_encrypted_network(cli: CliHarness, mesh: FakeMesh) -> None:  # noqa: F811
    result = cli.run("rotate-key", "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert "no encrypted network on this host" in result.stderr and "nothing to rotate" in result.stderr
    assert mesh.rotations == 0


# -- doctor ----------------------------------------------------------------------------------------------------


def wireguard_findings(cli: CliHarness) -> list[dict[str, Any]]:  # noqa: F811
    healthy_host(cli)
    result = cli.run("doctor", "--json")
    return [finding for finding in json.loads(result.stdout) if finding["check"] == "wireguard"]


def test_doctor_says_wireguard_is_not_in_use_without_an_encrypted_network(cli: CliHarness) -> None:  # noqa: F811
    findings = wireguard_findings(cli)
    assert [(f["status"], f["summary"]) for f in findings] == [("ok", "not in use (no encrypted network on this host)")]


def test_doctor_names_the_backend_the_interface_the_peers_and_the_mtu(
    cli: CliHarness,  # noqa: F811
    mesh: FakeMesh,
    encrypted: None,
) -> None:
    mesh.state["underlay"] = {"dev": "eth0", "mtu": 1560}  # room for the network's 1450 inside WireGuard
    findings = wireguard_findings(cli)
    assert [(f["status"], f["summary"]) for f in findings] == [
        (
            "ok",
            f"backend wireguard-go; interface vxlanpy-wg up, tunnel address 10.255.0.1, UDP port 51820, public key {OLD}",
        ),
        ("ok", "1 peers, the hosts published in etcd"),
        ("ok", "MTU of encrypted vni 42: 1450 <= 1450 (eth0 1560 - 50 - 60)"),
    ]


def test_doctor_finds_an_mtu_too_big_for_wireguard(cli: CliHarness, mesh: FakeMesh, encrypted: None) -> None:  # noqa: F811
    # the network of `cli` has the plain default MTU (1450): too big inside WireGuard over a 1500 underlay
    mtu = wireguard_findings(cli)[-1]
    assert mtu["status"] == "fail"
    assert mtu["summary"] == "MTU of encrypted vni 42: 1450 + 50 (VXLAN) + 60 (WireGuard) > underlay eth0 MTU 1500"
    assert mtu["fix"] == "recreate the network with -o mtu=1390, or raise the MTU of eth0"


def test_doctor_names_the_hosts_missing_from_the_peers_and_the_extra_peers(
    cli: CliHarness,  # noqa: F811
    mesh: FakeMesh,
    encrypted: None,
) -> None:
    mesh.state.update(missing=["node-c"], extra=[PEER_B])
    (peers,) = [f for f in wireguard_findings(cli) if "peers" in f["summary"]]
    assert peers["status"] == "fail"
    assert peers["summary"] == (
        f"peers differ from etcd: host node-c published in etcd but not a peer; peer {PEER_B} published by no host"
    )


def test_doctor_without_a_wireguard_backend_says_what_to_install(
    cli: CliHarness,  # noqa: F811
    mesh: FakeMesh,
    encrypted: None,
) -> None:
    mesh.state.update(backend=None, backend_error=NO_WIREGUARD, interface_present=False, up=False)
    findings = wireguard_findings(cli)
    assert findings[0]["status"] == "fail"
    assert findings[0]["summary"] == "no WireGuard backend: neither kernel WireGuard nor wireguard-go"
    assert findings[0]["fix"] == NO_WIREGUARD
    healthy_host(cli)
    assert cli.run("doctor").exit_code == 1


def test_doctor_with_the_interface_gone(cli: CliHarness, mesh: FakeMesh, encrypted: None) -> None:  # noqa: F811
    mesh.state.update(interface_present=False)
    findings = wireguard_findings(cli)
    assert findings[0]["status"] == "fail"
    assert findings[0]["summary"] == "backend wireguard-go, but interface vxlanpy-wg does not exist"
    assert not any("peers" in f["summary"] for f in findings)
