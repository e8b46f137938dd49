"""The managed plugin built by scripts/build-plugin: create, enable, use; disable/enable and upgrade keep state."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.types
import pytest

from tests.multihost.cluster import exec_text, ping_until

from .harness import (
    LABELS,
    LOCAL_PLUGIN,
    REGISTRY_PLUGIN,
    START_BUDGET_SECONDS,
    TIMINGS,
    Engine,
    StartTiming,
    capabilities,
    run_in_rootfs,
)

VNI = 4100
SUBNET = "10.41.0.0/24"
GATEWAY = "10.41.0.1"


@dataclass
class Segment:
    network: Any
    first: Any  # a container started before any disable/enable or upgrade
    state_dir: Path
    start: StartTiming  # of the first `docker plugin enable`


def last_reconciliation(engine: Engine) -> str:
    lines = [line for line in engine.plugin_log(LOCAL_PLUGIN, lines=1000).splitlines() if "reconciliation:" in line]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def segment(engine: Engine, built: str) -> Iterator[Segment]:
    """LOCAL_PLUGIN enabled on its own state directory, with one network and one container on it."""
    state_dir = engine.workdir / "state-local"
    with engine.active(LOCAL_PLUGIN, state_dir, "VXLANPY_LOG_LEVEL=debug") as timing:
        TIMINGS["plugin start after `docker plugin enable`"] = timing.summary()
        ipam = docker.types.IPAMConfig(driver=LOCAL_PLUGIN, pool_configs=[docker.types.IPAMPool(subnet=SUBNET)])
        network = engine.client.networks.create(
            f"vxpl-net-{secrets.token_hex(3)}", driver=LOCAL_PLUGIN, options={"vni": str(VNI)}, ipam=ipam, labels=LABELS
        )
        first = engine.run_container(network.name, name="vxpl-first")
        yield Segment(network, first, state_dir, timing)


def test_build_creates_a_disabled_plugin_from_the_manifest(engine: Engine, built: str) -> None:
    assert "created plugin vxlanpy/vxlanpy:latest" in built, built
    plugin = engine.plugin_inspect(LOCAL_PLUGIN)
    config = plugin["Config"]
    assert plugin["Enabled"] is False
    assert config["Interface"]["Types"] == ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"]
    assert config["Interface"]["Socket"] == "vxlanpy.sock"
    assert config["Network"]["Type"] == "host"
    assert config["Linux"]["Capabilities"] == ["CAP_NET_ADMIN"]
    assert (engine.plugin_rootfs(LOCAL_PLUGIN) / config["Entrypoint"][0].lstrip("/")).exists()


def test_rootfs_runs_wg_and_wireguard_go_and_the_manifest_passes_the_tun_device(engine: Engine, built: str) -> None:
    """Encrypted networks: `wg` configures both WireGuard backends, and wireguard-go, the backend where the host's
    kernel has no WireGuard, makes its interface through /dev/net/tun, which a plugin has only when its manifest
    lists it."""
    rootfs = engine.plugin_rootfs(LOCAL_PLUGIN)
    for program, version in (("wg", "wireguard-tools v"), ("wireguard-go", "wireguard-go v")):
        result = run_in_rootfs(rootfs, program, "--version")
        assert result.returncode == 0 and result.stdout.startswith(version), (
            f"`{program} --version` in the plugin's rootfs: exit {result.returncode}\n{result.stdout}{result.stderr}"
        )
    devices = engine.plugin_inspect(LOCAL_PLUGIN)["Settings"]["Devices"]
    assert [device["Path"] for device in devices] == ["/dev/net/tun"], devices


def test_enable_then_two_containers_ping(engine: Engine, segment: Segment) -> None:
    assert segment.start.socket < START_BUDGET_SECONDS, f"the plugin took too long: {segment.start.summary()}"

    second = engine.run_container(segment.network.name)
    for target in ("vxpl-first", segment.first.attrs["NetworkSettings"]["Networks"][segment.network.name]["IPAddress"]):
        ok, output = ping_until(second, target, timeout=10)
        assert ok, f"{second.name} cannot ping {target}: {output}\n{engine.plugin_log(LOCAL_PLUGIN)}"
    ok, output = ping_until(second, GATEWAY, timeout=5)
    assert ok, f"no answer from the gateway {GATEWAY}: {output}"

    vxlan = engine.link(f"vxlan-{VNI}")
    assert vxlan is not None and vxlan["linkinfo"]["info_data"]["id"] == VNI
    # /proc/sys is read-only in a managed plugin: route_localnet went through netlink, ip_forward was left alone.
    assert engine.sysctl(f"net.ipv4.conf.vxbr-{VNI}.route_localnet") == "1"
    # The rootfs's nft wrote the table that keeps frames switched inside a network out of conntrack.
    assert 'iifname "vxh-*" meta pkttype other notrack' in engine.nft_table("bridge", "vxlanpy")
    log = engine.plugin_log(LOCAL_PLUGIN, lines=500)
    assert "Read-only file system" not in log and "Traceback" not in log, log
    assert (segment.state_dir / "state.db").exists(), "the state is not on the host's state directory"

    # Docker's default capabilities plus the one the manifest asks for, nothing more.
    pids = engine.plugin_processes()
    assert pids, "no process runs in the plugin's rootfs"
    for pid in pids:
        caps = capabilities(pid)
        assert "CAP_NET_ADMIN" in caps and "CAP_SYS_ADMIN" not in caps, sorted(caps)
        # wireguard-go's TUN device, which Docker's default /dev has not.
        tun = Path(f"/proc/{pid}/root/dev/net/tun").stat()
        assert stat.S_ISCHR(tun.st_mode) and (os.major(tun.st_rdev), os.minor(tun.st_rdev)) == (10, 200)


def test_disable_enable_keeps_the_network(engine: Engine, segment: Segment) -> None:
    # `docker plugin disable` refuses while a network uses the plugin; -f is how users disable it.
    refused = engine.docker("plugin", "disable", LOCAL_PLUGIN, check=False)
    assert refused.returncode != 0 and "in use" in refused.stderr, refused.stderr
    engine.docker("plugin", "disable", "-f", LOCAL_PLUGIN)
    # The kernel keeps forwarding while the plugin is down.
    ok, output = ping_until(segment.first, GATEWAY, timeout=5)
    assert ok, f"traffic stopped while the plugin was disabled: {output}"

    timing = engine.enable(LOCAL_PLUGIN)
    TIMINGS["plugin start after disable -f / enable"] = timing.summary()
    assert timing.socket < START_BUDGET_SECONDS, timing.summary()

    newcomer = engine.run_container(segment.network.name)
    ok, output = ping_until(newcomer, "vxpl-first", timeout=10)
    assert ok, (
        f"a new container cannot reach one started before the restart: {output}\n{engine.plugin_log(LOCAL_PLUGIN)}"
    )
    reconciliation = last_reconciliation(engine)
    assert "endpoints lost 0" in reconciliation, reconciliation


def test_upgrade_from_the_registry_keeps_the_state(engine: Engine, segment: Segment) -> None:
    engine.docker("plugin", "disable", "-f", LOCAL_PLUGIN)
    engine.docker(
        "plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", LOCAL_PLUGIN, REGISTRY_PLUGIN,
        timeout=300,
    )  # fmt: skip
    plugin = engine.plugin_inspect(LOCAL_PLUGIN)
    assert plugin["PluginReference"] == REGISTRY_PLUGIN
    assert "VXLANPY_LOG_LEVEL=debug" in plugin["Settings"]["Env"], "env settings must survive the upgrade"
    # dockerd 20.10 takes the mount sources from the new manifest on upgrade: a custom state.source has to be
    # set again (the default, /var/lib/vxlanpy, needs nothing).  README says so.
    engine.configure(LOCAL_PLUGIN, f"state.source={segment.state_dir}")
    engine.enable(LOCAL_PLUGIN)

    newcomer = engine.run_container(segment.network.name)
    ok, output = ping_until(newcomer, "vxpl-first", timeout=10)
    assert ok, f"after the upgrade a new container cannot reach an old one: {output}\n{engine.plugin_log(LOCAL_PLUGIN)}"
    code, output = exec_text(newcomer, ["ip", "-4", "-o", "addr", "show", "eth0"])
    assert code == 0 and "10.41.0." in output, output
