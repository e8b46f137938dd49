"""Static checks of what ships: config.json, the Dockerfile, the systemd units and the Compose examples."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vxlanpy.config import Settings

from .harness import REPO_ROOT

MANIFEST = json.loads((REPO_ROOT / "config.json").read_text())
SYSTEMD = REPO_ROOT / "contrib" / "systemd"


def test_manifest_declares_both_drivers_host_network_and_net_admin_only() -> None:
    assert MANIFEST["interface"] == {
        "types": ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"],
        "socket": "vxlanpy.sock",
    }
    assert MANIFEST["network"] == {"type": "host"}
    assert MANIFEST["linux"]["capabilities"] == ["CAP_NET_ADMIN"]
    assert MANIFEST["entrypoint"] == ["/opt/vxlanpy/bin/vxlanpy", "serve"]
    assert not {"pidhost", "ipchost", "propagatedmount"} & {key.lower() for key in MANIFEST}


def test_manifest_passes_only_the_tun_device_for_wireguard_go() -> None:
    """wireguard-go (encrypted networks where the host's kernel has no WireGuard) makes its interface through
    /dev/net/tun; a managed plugin sees no device its manifest does not list, and needs no other."""
    assert [device["path"] for device in MANIFEST["linux"].get("devices", [])] == ["/dev/net/tun"]
    assert not MANIFEST["linux"].get("allowAllDevices", False)


def test_state_is_a_settable_bind_mount_of_the_state_dir() -> None:
    (mount,) = MANIFEST["mounts"]
    assert mount["name"] == "state" and mount["type"] == "bind" and "source" in mount["settable"]
    assert mount["source"] == mount["destination"] == "/var/lib/vxlanpy"
    env = {item["name"]: item["value"] for item in MANIFEST["env"]}
    assert env["VXLANPY_STORE"].startswith("sqlite:///var/lib/vxlanpy/")


def test_every_manifest_variable_is_one_vxlanpy_reads_and_its_default_is_valid() -> None:
    sources = (path.read_text() for path in (REPO_ROOT / "plugin" / "vxlanpy").glob("*.py"))
    known = {name for source in sources for name in re.findall(r'"(VXLANPY_[A-Z0-9_]+)"', source)}
    names = [item["name"] for item in MANIFEST["env"]]
    assert set(names) <= known, f"unknown to vxlanpy: {set(names) - known}"
    for required in ("VXLANPY_STORE", "VXLANPY_DEV", "VXLANPY_LOG_LEVEL", "VXLANPY_HOST", "VXLANPY_VNI_RANGE"):
        assert required in names
    assert "VXLANPY_SOCKET" not in names, "the socket is fixed by the manifest's interface.socket"
    for item in MANIFEST["env"]:
        assert item["settable"] == ["value"] and item["description"], item
    # A managed plugin always sets every declared variable, empty or not: the defaults must all parse.
    settings = Settings.from_env({item["name"]: item["value"] for item in MANIFEST["env"]})
    assert settings.store_url == "sqlite:///var/lib/vxlanpy/state.db" and settings.default_dev is None


def test_dockerfile_defaults_to_python_slim_and_installs_wheels_only() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.12-slim$", text, re.MULTILINE)
    assert "--no-index" in text and "COPY wheels/" in text
    assert 'ENTRYPOINT ["/opt/vxlanpy/bin/vxlanpy", "serve"]' in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` (ExecStart pointed at an existing vxlanpy: this machine has no pip install)."""
    from .test_service import exec_start

    service = (SYSTEMD / "vxlanpy.service").read_text().replace("/usr/local/bin/vxlanpy", exec_start()[0])
    (tmp_path / "vxlanpy.service").write_text(service)
    shutil.copy(SYSTEMD / "vxlanpy.socket", tmp_path / "vxlanpy.socket")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "vxlanpy.service"), str(tmp_path / "vxlanpy.socket")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
@pytest.mark.parametrize("example", ["web", "two-tier", "encrypted"])
def test_compose_files_default_to_driver_vxlanpy(example: str) -> None:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    result = subprocess.run(
        ["docker-compose", "config"],
        cwd=REPO_ROOT / "examples" / example,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "driver: vxlanpy" in result.stdout and "vni:" in result.stdout, result.stdout
    if example == "encrypted":
        assert 'encrypted: "true"' in result.stdout or "encrypted: 'true'" in result.stdout, result.stdout
    managed = subprocess.run(
        ["docker-compose", "config"],
        cwd=REPO_ROOT / "examples" / example,
        env={**env, "VXLANPY_DRIVER": "vxlanpy/vxlanpy:latest"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "driver: vxlanpy/vxlanpy:latest" in managed.stdout, managed.stdout
