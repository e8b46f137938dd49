"""Throwaway etcd for tests: one server or a cluster of members, each with its own data dir and ports,
optionally with client TLS (a CA and certificates made here with openssl); stoppable, killable, restartable.

The members may run inside a network namespace: `wrapper` prefixes their command line (e.g. ["ip", "netns",
"exec", NS]) and `connect` makes the sockets the harness itself uses to talk to them (health, status).
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Connect = Callable[[str, int, float], socket.socket]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


@dataclass(frozen=True)
class TlsFiles:
    """A CA, a server certificate/key for `addresses` (also good as a client certificate) and a client pair."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @property
    def env(self) -> dict[str, str]:
        """vxlanpy's settings for a client that trusts the CA and presents the client certificate."""
        return {
            "VXLANPY_ETCD_CA": str(self.ca),
            "VXLANPY_ETCD_CERT": str(self.client_cert),
            "VXLANPY_ETCD_KEY": str(self.client_key),
        }

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def _openssl(argv: list[str]) -> None:
    result = subprocess.run(["openssl", *argv], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(argv[:2])} failed: {result.stderr.strip()[-400:]}")


def make_tls(directory: Path, addresses: Sequence[str] = ("127.0.0.1",), name: str = "vxlanpy-test") -> TlsFiles:
    """A fresh CA and certificates (P-256, valid 2 days) under `directory`; openssl through argv lists."""
    directory.mkdir(parents=True, exist_ok=True)
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    _openssl(
        ["req", "-x509", *curve, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", f"/CN={name}-ca",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    )  # fmt: skip
    san = ",".join(f"IP:{address}" for address in addresses)

    def issue(stem: str, extensions: str) -> tuple[Path, Path]:
        cert, key, csr, ext = (directory / f"{stem}{suffix}" for suffix in (".pem", ".key", ".csr", ".ext"))
        ext.write_text(extensions)
        _openssl(["req", *curve, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}-{stem}"])
        _openssl(
            ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext)]
        )  # fmt: skip
        return cert, key

    server_cert, server_key = issue("server", f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
    client_cert, client_key = issue("client", "extendedKeyUsage=clientAuth\n")
    return TlsFiles(ca, server_cert, server_key, client_cert, client_key)


def wait_until_healthy(
    what: str,
    request: Callable[..., tuple[int, Any]],
    alive: Callable[[], bool],
    log_tail: Callable[[], str],
    timeout: float,
    give_up: Callable[[], None],
) -> None:
    """Poll etcd's /health through `request` until it says healthy; `give_up` (stop it) and raise, with its log,
    when it exits or stays unhealthy for `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited while starting; its log:\n{log_tail()}")
        try:
            status, body = request("GET", "/health", timeout=1)
            if status == 200 and isinstance(body, dict) and body.get("health") == "true":
                return
            last = f"HTTP {status}: {body!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.05)
    give_up()
    raise RuntimeError(f"{what} did not become healthy within {timeout:.0f} s ({last}); its log:\n{log_tail()}")


class _Connection(http.client.HTTPSConnection):
    """HTTP or HTTPS over a socket from `connect` (e.g. one made inside a network namespace)."""

    def __init__(self, host: str, port: int, timeout: float, connect: Connect, tls: ssl.SSLContext | None) -> None:
        super().__init__(host, port, timeout=timeout, context=tls)
        self._make = connect
        self._tls = tls

    def connect(self) -> None:
        sock = self._make(self.host, self.port, self.timeout or 3.0)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host) if self._tls else sock


class EtcdServer:
    """One etcd member.  Alone (the default) or one of an EtcdCluster's (`initial_cluster`)."""

    def __init__(
        self,
        name: str = "test",
        *,
        root: Path | None = None,
        client_host: str = "127.0.0.1",
        client_port: int | None = None,
        tls: TlsFiles | None = None,
        wrapper: Sequence[str] = (),
        connect: Connect = _connect,
        parent: str | None = None,
    ) -> None:
        """`root`: a cluster's directory (the data dir is root/name); else a new one under `parent` (e.g.
        /dev/shm, for no disk syncs in a benchmark)."""
        self.binary = shutil.which("etcd")
        if self.binary is None:
            raise FileNotFoundError("etcd is not installed (Debian package etcd-server)")
        self.name = name
        self.data_dir = Path(tempfile.mkdtemp(prefix="vxlanpy-etcd-", dir=parent)) if root is None else root / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.client_host = client_host
        self.client_port = client_port or free_port()
        self.peer_port = free_port()
        self.tls = tls
        self.wrapper = list(wrapper)
        self._connect = connect
        self.initial_cluster = f"{name}={self.peer_url}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log = self.data_dir / "etcd.log"

    @property
    def url(self) -> str:
        return f"etcd://{self.client_host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.client_host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"  # peers talk over loopback, in the clear

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        """Start the process; `start` also waits until it is healthy (a cluster member waits for its peers)."""
        argv = [
            *self.wrapper,
            str(self.binary),
            "--name", self.name,
            "--data-dir", str(self.data_dir / "data"),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--log-level", "warn",
        ]  # fmt: skip
        if self.tls is not None:
            argv += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
            ]  # fmt: skip
        with self._log.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout: float = 20.0) -> None:
        self.spawn()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        wait_until_healthy(f"etcd {self.name}", self.request, lambda: self.alive, self.log_tail, timeout, self.stop)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 3.0) -> tuple[int, Any]:
        """A request to the client URL (with the client certificate under TLS): (status, JSON or text)."""
        tls = self.tls.client_context() if self.tls else None
        connection = _Connection(self.client_host, self.client_port, timeout, self._connect, tls)
        try:
            payload = None if body is None else json.dumps(body)
            connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            raw = response.read().decode("utf-8", "replace")
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        """/v3/maintenance/status: this member's id ("header"."member_id") and the leader's ("leader")."""
        code, body = self.request("POST", "/v3/maintenance/status", {}, timeout)
        if code != 200 or not isinstance(body, dict):
            raise RuntimeError(f"etcd {self.name} status: HTTP {code}: {body!r}")
        return body

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to the peers."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, signum: int) -> None:
        if self.process is not None:
            self.process.send_signal(signum)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class EtcdCluster:
    """`size` members (3 by default) forming one cluster; `url` lists every member for VXLANPY_STORE."""

    def __init__(
        self,
        size: int = 3,
        *,
        root: Path | None = None,
        client_host: str = "127.0.0.1",
        tls: TlsFiles | None = None,
        wrapper: Sequence[str] = (),
        connect: Connect = _connect,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vxlanpy-etcd-cluster-")) if root is None else root
        self._own_root = root is None
        self.members = [
            EtcdServer(f"m{index}", root=self.root, client_host=client_host, tls=tls, wrapper=wrapper, connect=connect)
            for index in range(1, size + 1)
        ]
        initial = ",".join(f"{member.name}={member.peer_url}" for member in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(f"{m.client_host}:{m.client_port}" for m in self.members)

    def start(self, timeout: float = 30.0) -> None:
        for member in self.members:  # together: each waits for a quorum of its peers
            member.spawn()
        try:
            with ThreadPoolExecutor(len(self.members)) as pool:
                list(pool.map(lambda member: member.wait_healthy(timeout), self.members))
        except BaseException:
            self.destroy()
            raise

    def leader(self, timeout: float = 15.0) -> EtcdServer:
        """The member every living member names as leader (waits for an election to settle)."""
        deadline = time.monotonic() + timeout
        seen: object = "no answer"
        while time.monotonic() < deadline:
            try:
                statuses = [(member, member.status()) for member in self.members if member.alive]
                leaders = {int(status["leader"]) for _, status in statuses}
                if len(leaders) == 1 and 0 not in leaders:
                    (leader_id,) = leaders
                    for member, status in statuses:
                        if int(status["header"]["member_id"]) == leader_id:
                            return member
                seen = leaders
            except (OSError, RuntimeError, KeyError, ValueError) as exc:
                seen = exc
            time.sleep(0.1)
        raise RuntimeError(f"the etcd cluster has no agreed leader after {timeout:.0f} s ({seen!r})")

    def make_leader(self, target: EtcdServer, timeout: float = 15.0) -> None:
        """Move the leadership to `target` (MoveLeader, asked of the current leader)."""
        leader = self.leader(timeout)
        if leader is not target:
            target_id = int(target.status()["header"]["member_id"])
            code, body = leader.request("POST", "/v3/maintenance/transfer-leadership", {"targetID": target_id})
            if code != 200:
                raise RuntimeError(f"etcd transfer-leadership to {target.name}: HTTP {code}: {body!r}")
        deadline = time.monotonic() + timeout
        while self.leader(timeout) is not target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd {target.name} did not become the leader within {timeout:.0f} s")
            time.sleep(0.1)

    def destroy(self) -> None:
        for member in self.members:
            member.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            for member in self.members:
                shutil.rmtree(member.data_dir, ignore_errors=True)
