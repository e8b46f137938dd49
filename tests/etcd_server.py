"""A throwaway etcd server for tests: its own data dir and free loopback ports; stoppable and restartable."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EtcdServer:
    def __init__(self, host: str = "127.0.0.1", parent: str | None = None) -> None:
        """`host`: the address it listens on; `parent`: where its data dir goes (e.g. /dev/shm: no disk syncs)."""
        self.binary = shutil.which("etcd")
        if self.binary is None:
            raise FileNotFoundError("etcd is not installed (Debian package etcd-server)")
        self.host = host
        self.data_dir = Path(tempfile.mkdtemp(prefix="vxlanpy-etcd-", dir=parent))
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://{self.host}:{self.client_port}"

    def start(self) -> None:
        client = f"http://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [
            str(self.binary),
            "--name",
            "test",
            "--data-dir",
            str(self.data_dir / "data"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"test={peer}",
        ]
        log = open(self.data_dir / "etcd.log", "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self.process = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as response:
                    if b"true" in response.read():
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"etcd did not start; see {self.data_dir / 'etcd.log'}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
