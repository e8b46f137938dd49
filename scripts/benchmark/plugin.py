"""vxlanpy as the benchmark runs it: a child process of its own, and libnetwork calls over its Unix socket."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from tests.e2e.helpers import SOCKET_PATH, plugin_command, socket_answers
from tests.multihost.processes import ManagedProcess, with_descendants
from tests.plugin_socket import PluginNotReady, wait_until_activated

SANDBOX = "/var/run/docker/netns/vxlanpy-bench-fake"  # never exists: only recorded by Join
MIB = float(1 << 20)


class SocketClient:
    """libnetwork-style calls over the plugin's Unix socket on one kept-alive connection (as dockerd's client)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(120)
        sock.connect(self.path)
        conn = http.client.HTTPConnection("localhost", timeout=120)
        conn.sock = sock
        return conn

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body)
        for attempt in range(2):
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request("POST", f"/{method}", body=payload, headers={"Content-Type": "application/json"})
                response = self._conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        reply = json.loads(raw or b"{}")
        if response.status != 200 or reply.get("Err"):
            raise RuntimeError(f"{method} failed: HTTP {response.status}: {reply}")
        return dict(reply)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def fake_id() -> str:
    return secrets.token_hex(32)


def create_network(sock: SocketClient, vni: int, subnet: ipaddress.IPv4Network, **generic: str) -> str:
    """CreateNetwork as dockerd sends it for `docker network create -d vxlanpy -o vni=... [-o key=value ...]`."""
    network_id = fake_id()
    sock.call(
        "NetworkDriver.CreateNetwork",
        {
            "NetworkID": network_id,
            "Options": {"com.docker.network.generic": {"vni": str(vni), **generic}},
            "IPv4Data": [{"AddressSpace": "", "Pool": str(subnet), "Gateway": f"{subnet[1]}/{subnet.prefixlen}"}],
            "IPv6Data": [],
        },
    )
    return network_id


def endpoint_up(sock: SocketClient, network_id: str, address: str) -> tuple[str, float]:
    """CreateEndpoint + Join of a new endpoint at `address`: (its id, the seconds both calls took)."""
    endpoint_id = fake_id()
    started = time.perf_counter()
    sock.call(
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": network_id, "EndpointID": endpoint_id, "Options": {},
         "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""}},
    )  # fmt: skip
    sock.call(
        "NetworkDriver.Join",
        {"NetworkID": network_id, "EndpointID": endpoint_id, "SandboxKey": SANDBOX, "Options": {}},
    )
    return endpoint_id, time.perf_counter() - started


def endpoint_down(sock: SocketClient, network_id: str, endpoint_id: str) -> float:
    """Leave + DeleteEndpoint: the seconds both calls took."""
    started = time.perf_counter()
    sock.call("NetworkDriver.Leave", {"NetworkID": network_id, "EndpointID": endpoint_id})
    sock.call("NetworkDriver.DeleteEndpoint", {"NetworkID": network_id, "EndpointID": endpoint_id})
    return time.perf_counter() - started


def resident_bytes(pid: int) -> int:
    """The RSS of process `pid` (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


class PluginProcess(ManagedProcess):
    """A vxlanpy started in a session of its own, logging to `log_path`, answering on `socket_path`."""

    def __init__(self, socket_path: Path, log_path: Path) -> None:
        super().__init__("vxlanpy", log_path)
        self.socket_path = socket_path

    def launch(self, argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> None:
        """Start `argv` and wait until the plugin answers /Plugin.Activate as a network driver."""
        self._spawn(argv, env, cwd)

        def exited() -> str | None:
            code = None if self.process is None else self.process.poll()
            return None if code is None else f"vxlanpy exited while starting (exit status {code})"

        try:
            wait_until_activated(str(self.socket_path), timeout, gone=exited)
        except PluginNotReady as exc:
            raise PluginNotReady(f"{exc}; see {self.log_path}:\n{self.log_tail()}") from None

    def rss_mib(self) -> tuple[float, float]:
        """The resident memory of gunicorn's arbiter and worker together, and of the worker alone (it serves the
        requests, holds the state and programs the kernel), in MiB.  The worker is the arbiter's largest child:
        a short-lived program the worker runs (iptables-restore) is neither counted nor taken for it."""
        assert self.process is not None
        arbiter = self.process.pid
        children = [pid for pid in with_descendants([arbiter]) if parent_of(pid) == arbiter]
        worker = max((resident_bytes(pid) for pid in children), default=0)
        return (resident_bytes(arbiter) + worker) / MIB, worker / MIB


class BenchPlugin(PluginProcess):
    """vxlanpy serving /run/docker/plugins/vxlanpy.sock with a temporary state dir, at log level info."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(SOCKET_PATH, workdir / "plugin.log")
        self.workdir = workdir
        self.state_dir = workdir / "state"

    def start(self, timeout: float = 30.0) -> None:
        if socket_answers(self.socket_path):
            raise SystemExit(
                f"bench: refusing to start: something already listens on {self.socket_path} (a vxlanpy started by "
                f"scripts/run or by the e2e suite?). Stop it first; `ss -xlp | grep {self.socket_path.name}` shows "
                "its pid. The benchmark needs the socket dockerd discovers vxlanpy on."
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            self.socket_path.unlink()  # stale: nobody answers on it
        command, extra = plugin_command()
        env = {**os.environ, **extra}
        env.update(
            VXLANPY_SOCKET=str(self.socket_path),
            VXLANPY_STATE_DIR=str(self.state_dir),
            VXLANPY_LOG_LEVEL="info",
        )
        env.pop("VXLANPY_STORE", None)
        self.launch(command, env, self.workdir, timeout)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        super().stop(timeout)
        if self.socket_path.exists() and not socket_answers(self.socket_path):
            self.socket_path.unlink()

    def served_times(self, methods: tuple[str, ...]) -> list[float]:
        """Per endpoint (per network for a call naming none), the sum of the handler times the plugin logged for
        `methods`, in log order."""
        pattern = re.compile(r"NetworkDriver\.(\w+) network=(\S+) endpoint=(\S+) ok ([0-9.]+)ms")
        per_key: dict[str, float] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = pattern.search(line)
            if match is None or match[1] not in methods:
                continue
            key = match[2] if match[3] == "-" else match[3]
            per_key[key] = per_key.get(key, 0.0) + float(match[4])  # a dict keeps the first call's order
        return list(per_key.values())
