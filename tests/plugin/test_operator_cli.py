"""The operator's `vxlanpy` on the host, against a managed plugin installed under an alias (issue 12).

`docker plugin install --alias vxadv` names the driver vxadv:latest: networks are created with
`-d vxadv:latest` (Docker resolves a managed driver only with its tag) and Docker shows that name.  The CLI recognises the plugin's networks by the ids in its store, not by the driver's name,
and finds the plugin's socket (/run/docker/plugins/<id>/vxlanpy.sock) without --socket.  It runs as on a real
host: in dockerd's mount namespace (where /run/docker is dockerd's) and network namespace, through nsenter.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.multihost.cluster import ping_until

from .harness import LABEL, REGISTRY_PLUGIN, REPO_ROOT, TIMINGS, Engine

ALIAS = "vxadv"
DRIVER = f"{ALIAS}:latest"  # the plugin's name, and its driver's, as `docker plugin ls` shows them
VNI = 4200
SUBNET = "10.42.0.0/24"
SUBNET_B = "10.43.0.0/24"
GATEWAY = "10.42.0.1"
COMMAND_SECONDS: dict[str, list[float]] = {}  # wall time of each `vxlanpy` run, process start included


def vxlanpy(engine: Engine, *args: str) -> subprocess.CompletedProcess[str]:
    """`vxlanpy ARGS` as the operator runs it on the plugin's host: no --socket, DOCKER_HOST for this engine."""
    pid = engine.dockerd.pidfile.read_text().strip()
    env = {**engine.env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugin"), str(REPO_ROOT)])}
    env.pop("VXLANPY_SOCKET", None)
    started = time.monotonic()
    result = subprocess.run(
        ["nsenter", "-t", pid, "-m", "-n", "--", sys.executable, "-m", "vxlanpy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    COMMAND_SECONDS.setdefault(args[0], []).append(time.monotonic() - started)
    return result


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.fixture(scope="module")
def aliased(engine: Engine, built: str) -> Iterator[str]:
    install = engine.docker(
        "plugin", "install", "--alias", ALIAS, "--grant-all-permissions", "--disable", REGISTRY_PLUGIN, timeout=300
    )
    assert f"Installed plugin {REGISTRY_PLUGIN}" in install.stdout, install.stdout + install.stderr
    try:
        yield DRIVER
    finally:
        engine.docker("plugin", "rm", "-f", DRIVER, check=False)


def test_ls_inspect_peers_doctor_gc_and_recover_on_an_aliased_plugin(engine: Engine, aliased: str) -> None:
    state_dir = engine.workdir / "state-alias"
    with engine.active(aliased, state_dir):
        name = f"vxpl-alias-{secrets.token_hex(3)}"
        engine.docker(
            "network", "create", "-d", aliased, "-o", f"vni={VNI}", "--subnet", SUBNET, "--label", f"{LABEL}=1", name
        )  # fmt: skip
        network = json.loads(engine.docker("network", "inspect", name).stdout)[0]
        assert network["Driver"] == aliased, network["Driver"]  # what used to make inspect refuse it
        container = engine.run_container(name)
        socket_path = str(engine.plugin_socket(aliased)).replace(str(engine.dockerd.run_dir), "/run/docker")

        ls = vxlanpy(engine, "ls")
        assert ls.returncode == 0, output(ls)
        header, row = ls.stdout.splitlines()
        assert row.split()[:3] == [name, network["Id"][:12], str(VNI)], ls.stdout
        assert row.split()[-1] == "1", ls.stdout  # the container's endpoint
        assert "unknown to Docker" not in ls.stderr and "no state" not in ls.stderr, output(ls)
        rows = json.loads(vxlanpy(engine, "ls", "--json").stdout)
        assert [(r["name"], r["endpoints"][0]["container"]) for r in rows] == [(name, container.name)], rows

        inspect = vxlanpy(engine, "inspect", name)
        assert inspect.returncode == 0, output(inspect)
        assert f"id:        {network['Id']}" in inspect.stdout and container.name in inspect.stdout, inspect.stdout

        peers = vxlanpy(engine, "peers", name)
        assert peers.returncode == 0 and "the kernel matches the store" in peers.stdout, output(peers)

        doctor = vxlanpy(engine, "doctor")
        assert f"plugin socket {socket_path}" in doctor.stderr, output(doctor)  # found without --socket
        assert "] Docker and plugin agree: 1 vxlanpy networks in both" in doctor.stdout, output(doctor)

        gc = vxlanpy(engine, "gc")
        assert gc.returncode == 0, output(gc)
        assert "nothing to do: the kernel matches the store" in gc.stdout, output(gc)
        assert engine.link(f"vxlan-{VNI}") is not None and engine.link(f"vxbr-{VNI}") is not None
        ok, pinged = ping_until(container, GATEWAY, timeout=5)
        assert ok, f"the network stopped working after gc: {pinged}"

        # The store lost, and a second network's devices too: the first network's devices say it is vxlanpy's
        # (they are labelled with its id), the second's driver name alone does; recover finds the alias in
        # `docker plugin ls`.
        second = f"{name}-b"
        engine.docker(
            "network", "create", "-d", aliased, "-o", f"vni={VNI + 1}", "--subnet", SUBNET_B, "--label", f"{LABEL}=1",
            second,
        )  # fmt: skip
        second_id = json.loads(engine.docker("network", "inspect", second).stdout)[0]["Id"]
        engine.docker("plugin", "disable", "-f", aliased)
        for path in Path(state_dir).glob("state.db*"):
            path.unlink()
        for device in (f"vxlan-{VNI + 1}", f"vxbr-{VNI + 1}"):
            subprocess.run(["ip", "-n", engine.netns, "link", "del", device], check=True)
        engine.enable(aliased)
        lost = vxlanpy(engine, "ls")
        for lost_name in (name, second):
            assert f"Docker network {lost_name} has no state in the plugin" in lost.stderr, output(lost)
        recover = vxlanpy(engine, "recover")
        assert recover.returncode == 0, output(recover)
        assert f"adopt network {name} ({network['Id'][:12]}, vni {VNI})" in recover.stdout, output(recover)
        assert f"adopt network {second} ({second_id[:12]}, vni {VNI + 1})" in recover.stdout, output(recover)
        endpoint_id = container.attrs["NetworkSettings"]["Networks"][name]["EndpointID"]
        assert f"adopt endpoint {endpoint_id[:12]} on {name}" in recover.stdout, output(recover)  # its veth survived
        after = vxlanpy(engine, "ls")
        assert after.returncode == 0 and "warning" not in after.stderr, output(after)
        assert after.stdout.splitlines()[1].split() == ls.stdout.splitlines()[1].split(), after.stdout
        assert after.stdout.splitlines()[2].split()[:2] == [second, second_id[:12]], after.stdout
        assert engine.link(f"vxlan-{VNI + 1}") is not None, "recover did not make the second network's devices again"
        ok, pinged = ping_until(container, GATEWAY, timeout=5)
        assert ok, f"the network does not work after recover: {pinged}\n{engine.plugin_log(aliased)}"
        TIMINGS["vxlanpy on the host, aliased managed plugin (wall, s)"] = ", ".join(
            f"{command} {max(seconds):.2f}" for command, seconds in COMMAND_SECONDS.items()
        )
