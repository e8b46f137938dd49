"""One vxlanpy per host, in the host's network namespace, serving the socket its dockerd discovers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.plugin_socket import PluginNotReady, plugin_call, wait_until_activated

from .layout import LEASE_TTL, REPO_ROOT
from .processes import ManagedProcess


def vxlanpy_command() -> list[str]:
    """`vxlanpy serve` from the venv running the tests, else the repository's .venv."""
    for candidate in (Path(sys.executable).parent / "vxlanpy", REPO_ROOT / ".venv" / "bin" / "vxlanpy"):
        if candidate.exists():
            return [str(candidate), "serve"]
    return [sys.executable, "-m", "vxlanpy", "serve"]


class Plugin(ManagedProcess):
    """One host's vxlanpy, in the host's network namespace, serving on <host>/run/plugins/vxlanpy.sock."""

    def __init__(
        self,
        host_name: str,
        netns: str,
        workdir: Path,
        socket_path: Path,
        store_url: str,
        docker_socket: Path | None = None,
    ) -> None:
        super().__init__(f"vxlanpy@{host_name}", workdir / "vxlanpy.log")
        self.docker_socket = docker_socket  # its own dockerd: the start-up sweep reads Docker's networks there
        self.host_name = host_name
        self.netns = netns
        self.workdir = workdir
        self.socket_path = socket_path
        self.state_dir = workdir / "state"
        self.store_url = store_url
        # VXLANPY_HOST as this plugin gets it: its host's name by default; None leaves it unset, so that the
        # plugin chooses its own identity (tests/multihost/test_identity.py), another host's name makes a duplicate.
        self.host_env: str | None = host_name
        self.extra_env: dict[str, str] = {}  # e.g. the etcd TLS settings of a test's own etcd cluster

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if not (Path(sys.executable).parent / "vxlanpy").exists():
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "plugin"), env.get("PYTHONPATH")]))
        env.update(
            {
                "VXLANPY_SOCKET": str(self.socket_path),
                "VXLANPY_STATE_DIR": str(self.state_dir),
                "VXLANPY_STORE": self.store_url,
                "VXLANPY_LEASE_TTL": str(LEASE_TTL),
                "VXLANPY_LOG_LEVEL": "debug",
                **self.extra_env,
            }
        )
        env.pop("VXLANPY_HOST", None)
        if self.host_env is not None:
            env["VXLANPY_HOST"] = self.host_env
        if self.docker_socket is not None:
            env["DOCKER_HOST"] = f"unix://{self.docker_socket}"
        return env

    def start(self, timeout: float = 30.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            self.socket_path.unlink()  # ours, from a process that was killed
        self._spawn(["ip", "netns", "exec", self.netns, *vxlanpy_command()], env=self.env, cwd=self.workdir)
        process = self.process

        def exited() -> str | None:
            code = None if process is None else process.poll()
            return None if code is None else f"vxlanpy exited with code {code} while starting"

        try:
            wait_until_activated(str(self.socket_path), timeout, gone=exited)
        except PluginNotReady as exc:  # a RuntimeError: vx_cluster reports it as the session's failure
            self.stop()
            raise PluginNotReady(f"vxlanpy on {self.host_name}: {exc}; its log:\n{self.log_tail()}") from None

    def ensure_running(self) -> None:
        if not self.alive:
            self.start()

    def implements(self) -> list[str]:
        status, body = plugin_call(str(self.socket_path), "/Plugin.Activate", timeout=2)
        return list(body.get("Implements", [])) if status == 200 and isinstance(body, dict) else []
