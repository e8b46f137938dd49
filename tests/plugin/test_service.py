"""vxlanpy as a host service: contrib/systemd's units, run the way systemd would run them (there is no systemd
here): ExecStart with the EnvironmentFile's settings, in the test namespace, with NOTIFY_SOCKET (Type=notify)
or with the socket of vxlanpy.socket passed as LISTEN_FDS (socket activation).  dockerd then finds the driver
by its socket, so Compose uses `driver: vxlanpy` (the examples' default)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.multihost.cluster import ping_until, plugin_call, vxlanpy_command

from .harness import LABELS, REPO_ROOT, TIMINGS, Engine
from .test_compose import compose_web

SYSTEMD = REPO_ROOT / "contrib" / "systemd"

LAUNCHER = r"""
# What systemd does for a socket unit: bind the socket, then start the service with it as fd 3.
import os, socket, sys
path, mode, argv = sys.argv[1], int(sys.argv[2], 8), sys.argv[3:]
if os.path.exists(path):
    os.unlink(path)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
os.chmod(path, mode)
listener.listen(128)
os.dup2(listener.fileno(), 3)
os.set_inheritable(3, True)  # dup2(3, 3) would keep close-on-exec
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(argv[0], argv)
"""


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: {section: {key: [values in order]}}."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def environment_file(path: Path) -> dict[str, str]:
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def exec_start() -> list[str]:
    """The service's ExecStart; its /usr/local/bin/vxlanpy (`pip install .`) is the test venv's when absent."""
    argv = shlex.split(unit(SYSTEMD / "vxlanpy.service")["Service"]["ExecStart"][-1])
    if not Path(argv[0]).exists():
        argv[0] = vxlanpy_command()[0]
    return argv


class HostService:
    """ExecStart of vxlanpy.service in the test namespace, with the settings systemd would give it."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.socket_path = engine.dockerd.plugins_dir / "vxlanpy.sock"  # /run/docker/plugins/ for that dockerd
        self.log_path = engine.workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ)
        self.env.update(environment_file(SYSTEMD / "vxlanpy.default"))  # EnvironmentFile=-/etc/default/vxlanpy
        self.env.update(
            VXLANPY_SOCKET=str(self.socket_path),
            VXLANPY_STATE_DIR=str(engine.workdir / f"state-{name}"),  # StateDirectory= would be /var/lib/vxlanpy
            VXLANPY_LOG_LEVEL="debug",
        )

    def start(self, argv: list[str]) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.engine.netns, *argv],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(line for line in text.splitlines() if "pyroute2" not in line)[-6000:]

    def stop(self, timeout: float) -> int:
        """SIGTERM to the main process only (KillMode=mixed), as `systemctl stop` does; its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture
def service(engine: Engine) -> Iterator[HostService]:
    """No managed plugin enabled (one vxlanpy per namespace), and the service's leftovers removed afterwards."""
    problems = engine.clean(disable_plugins=True)
    assert not problems, problems
    host_service = HostService(engine, "service")
    try:
        yield host_service
    finally:
        cleanup = engine.clean() if host_service.process and host_service.process.poll() is None else []
        host_service.kill()
        host_service.socket_path.unlink(missing_ok=True)
        assert not cleanup, f"{cleanup}\n{host_service.log()}"


def test_unit_files_say_what_systemd_needs() -> None:
    service_unit = unit(SYSTEMD / "vxlanpy.service")
    assert "docker.service" in service_unit["Unit"]["Before"]
    assert service_unit["Service"]["Restart"] == ["always"]
    assert service_unit["Service"]["Type"] == ["notify"]
    assert service_unit["Service"]["EnvironmentFile"] == ["-/etc/default/vxlanpy"]
    assert exec_start()[1:] == ["serve"]
    socket_unit = unit(SYSTEMD / "vxlanpy.socket")
    assert socket_unit["Socket"]["ListenStream"] == ["/run/docker/plugins/vxlanpy.sock"]
    assert "docker.service" in socket_unit["Unit"]["Before"]


def test_exec_start_notifies_ready_and_docker_compose_uses_driver_vxlanpy(engine: Engine, service: HostService) -> None:
    notify_path = engine.workdir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(15)
        service.env["NOTIFY_SOCKET"] = str(notify_path)
        started = time.monotonic()
        service.start(exec_start())
        try:
            message = notify.recv(4096).decode()
        except TimeoutError:
            pytest.fail(f"no sd_notify from the service within 15 s:\n{service.log()}")
    ready = time.monotonic() - started
    assert "READY=1" in message, message
    # READY=1 comes once the socket listens: docker.service (After it) finds the driver.
    status, body = plugin_call(str(service.socket_path), "/Plugin.Activate", timeout=15)
    TIMINGS["host service start (ExecStart -> READY=1)"] = f"{ready:.2f} s"
    assert status == 200 and "NetworkDriver" in body["Implements"], body
    assert stat.S_IMODE(service.socket_path.stat().st_mode) == 0o660

    compose_web(engine, driver=None)  # `driver: vxlanpy`, the Compose files' default

    assert service.stop(timeout=20) == 0, service.log()  # TimeoutStopSec=20
    assert not service.socket_path.exists(), "gunicorn removes its own socket when it stops"


def test_socket_activation(engine: Engine, service: HostService) -> None:
    socket_unit = unit(SYSTEMD / "vxlanpy.socket")["Socket"]
    mode = socket_unit["SocketMode"][0]
    launcher = engine.workdir / "socket-activate.py"
    launcher.write_text(LAUNCHER)
    service.start([sys.executable, str(launcher), str(service.socket_path), mode, *exec_start()])
    deadline = time.monotonic() + 15
    while True:
        try:
            status, body = plugin_call(str(service.socket_path), "/Plugin.Activate", timeout=15)
            break
        except OSError:
            assert time.monotonic() < deadline, f"the socket-activated service did not answer:\n{service.log()}"
            time.sleep(0.05)
    assert status == 200 and "IpamDriver" in body["Implements"], body
    assert stat.S_IMODE(service.socket_path.stat().st_mode) == int(mode, 8)

    network = engine.client.networks.create("vxpl-activated", driver="vxlanpy", options={"vni": "4500"}, labels=LABELS)
    one, two = engine.run_container(network.name), engine.run_container(network.name)
    ok, output = ping_until(one, two.name, timeout=10)
    assert ok, f"{output}\n{service.log()}"
    assert engine.clean() == []

    assert service.stop(timeout=20) == 0, service.log()
    # The socket belongs to systemd (vxlanpy.socket): gunicorn leaves it for the next activation.
    assert service.socket_path.exists()
