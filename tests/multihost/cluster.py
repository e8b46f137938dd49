"""A three-host cluster on one machine: network namespaces, one dockerd per host, etcd, vxlanpy per host.

Layout (every name carries a per-session hex suffix, e.g. ``vxmh-ul-1a2b3c``)::

    vxmh-ul-<hex>            the underlay: Linux bridge ``ul0`` holding 10.250.0.254/24, where etcd listens
      ├─ veth ─ vxmh-h1-<hex> eth0 10.250.0.1/24   dockerd + vxlanpy "h1"
      ├─ veth ─ vxmh-h2-<hex> eth0 10.250.0.2/24   dockerd + vxlanpy "h2"
      └─ veth ─ vxmh-h3-<hex> eth0 10.250.0.3/24   dockerd + vxlanpy "h3"

Each host's dockerd runs in the host's network namespace *and* in a mount namespace of its own
(``ip netns exec NS unshare -m -- script``), where the script mounts the cgroup hierarchies again (``ip netns
exec`` remounts /sys), binds a private directory over ``/run/docker`` (so dockerd finds exactly that host's
vxlanpy at ``/run/docker/plugins/vxlanpy.sock``) and a tmpfs over ``/run/containerd`` (so each dockerd starts
its own containerd, whose shim sockets stay private), then execs dockerd with its own data and exec roots.

Everything lives under one short temporary directory ``/tmp/vxmh-<hex>`` (Unix socket paths must stay short).
Traffic only ever goes to addresses inside the namespaces created here.
"""

from __future__ import annotations

import ctypes
import http.client
import io
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.docker_cleanup import remove_labelled
from tests.engines import dockerd_environment
from tests.etcd_server import wait_until_healthy
from tests.plugin_socket import plugin_call, plugin_get  # noqa: F401  (re-exported for the suites)

try:
    import docker
    import docker.errors
    import docker.types
except ImportError:  # pragma: no cover - the plugin depends on it
    docker = None  # type: ignore[assignment]

MH_DIR = Path(__file__).resolve().parent
REPO_ROOT = MH_DIR.parents[1]

PREFIX = "vxmh"
LABEL = "vxlanpy.test"
LABELS = {LABEL: "1"}
DRIVER = "vxlanpy"
IMAGE = "vxlanpy-test/busybox:latest"
HOST_BUSYBOX = Path("/bin/busybox")

UNDERLAY_PREFIX_LEN = 24
ETCD_IP = "10.250.0.254"
ETCD_PORT = 2379
ETCD_URL = f"etcd://{ETCD_IP}:{ETCD_PORT}"
HOST_NAMES = ("h1", "h2", "h3")
LEASE_TTL = 3
VXLAN_PORT = 4789

REQUIRED_BINARIES = ("dockerd", "containerd", "etcd", "ip", "bridge", "unshare", "iptables", "mount")


def host_ip(index: int) -> str:
    return f"10.250.0.{index}"


# --------------------------------------------------------------------------------------------- small tools


def run(argv: list[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Call `predicate` until it returns something truthy (returned) or `timeout` passes (returns the last)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def missing_prerequisites() -> str | None:
    """Why the multi-host suite cannot run here, or None."""
    if os.geteuid() != 0:
        return "the multi-host suite needs root (namespaces, dockerd, etcd): run it with sudo"
    missing = [name for name in REQUIRED_BINARIES if shutil.which(name) is None]
    if missing:
        return f"missing binaries: {', '.join(missing)} (apt-get install docker.io etcd-server iproute2 iptables)"
    if docker is None:
        return "the docker SDK is not installed (pip install -e '.[test]')"
    if not HOST_BUSYBOX.exists():
        return f"{HOST_BUSYBOX} is missing (apt-get install busybox-static)"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    return None


# --------------------------------------------------------------------------------------------- netns sockets

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def netns_path(netns: str) -> str:
    """The namespace file of a named namespace (`ip netns`), or a /proc/PID/ns/net path as is."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


def netns_socket(
    netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A socket created inside network namespace `netns` (a name or a path such as /proc/PID/ns/net).

    A socket belongs to the namespace it was created in, whatever thread uses it afterwards, so it is made in
    a throwaway thread that first enters the namespace (setns only changes the calling thread).
    """
    outcome: dict[str, Any] = {}

    def enter_and_create() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            outcome["socket"] = socket.socket(family, kind, proto)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=enter_and_create, name=f"setns-{netns}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["socket"]


class _NetnsHTTPConnection(http.client.HTTPConnection):
    def __init__(self, netns: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        sock = netns_socket(self._netns)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def netns_http(
    netns: str, method: str, host: str, port: int, path: str, body: Any = None, timeout: float = 3.0
) -> tuple[int, Any]:
    """An HTTP request made from inside `netns`; returns (status, decoded JSON or text)."""
    connection = _NetnsHTTPConnection(netns, host, port, timeout)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        raw = response.read().decode("utf-8", "replace")
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw
    finally:
        connection.close()


def vxlan_packet(vni: int, inner_frame: bytes) -> bytes:
    """A VXLAN payload (RFC 7348): flags with the I bit, 24-bit VNI, then the inner Ethernet frame."""
    return struct.pack("!II", 0x08000000, vni << 8) + inner_frame


def broadcast_arp_frame(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    """An Ethernet broadcast frame carrying an ARP request 'who has target_ip, tell src_ip'."""
    mac = bytes.fromhex(src_mac.replace(":", ""))
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        1,  # Ethernet
        0x0800,  # IPv4
        6,
        4,
        1,  # request
        mac,
        socket.inet_aton(src_ip),
        b"\x00" * 6,
        socket.inet_aton(target_ip),
    )
    return b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp + b"\x00" * 18


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(ident: int, seq: int, payload: bytes = b"vxlanpy-convergence") -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    checksum = _icmp_checksum(header + payload)
    return struct.pack("!BBHHH", 8, 0, checksum, ident, seq) + payload


# --------------------------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def netns_pids(netns: str) -> list[int]:
    result = run(["ip", "netns", "pids", netns], check=False)
    return [int(token) for token in result.stdout.split() if token.isdigit()]


def with_descendants(pids: list[int]) -> list[int]:
    """`pids` and every process below them (e.g. dockerd -> containerd -> shims -> container processes, which
    live in network namespaces of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class ManagedProcess:
    """A child process in its own session (process group), with its output appended to a log file."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"==== harness: starting {' '.join(argv)} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40, drop: tuple[str, ...] = ("pyroute2",)) -> str:
        kept = [line for line in self.log_text().splitlines() if not any(word in line for word in drop)]
        return "\n".join(line[:400] for line in kept[-lines:])

    def signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def kill9(self) -> None:
        """SIGKILL the whole process group and reap it."""
        if self.process is None:
            return
        self.signal_group(signal.SIGKILL)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._wait_group_gone()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process (the group when it does not go), then SIGKILL whatever is left of the group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.process.wait(timeout=30)
        self.signal_group(signal.SIGKILL)
        self._wait_group_gone()

    def _wait_group_gone(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        pgid = self.process.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------- etcd


class Etcd(ManagedProcess):
    """etcd inside the underlay namespace, listening on 10.250.0.254:2379; stop()/start() keep its data dir."""

    def __init__(self, netns: str, workdir: Path) -> None:
        super().__init__("etcd", workdir / "etcd.log")
        self.netns = netns
        self.data_dir = workdir / "etcd-data"
        self.peer_port = 0
        self.client_url = f"http://{ETCD_IP}:{ETCD_PORT}"

    def _pick_peer_port(self) -> int:
        with netns_socket(self.netns) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def start(self, timeout: float = 30.0) -> None:
        if not self.peer_port:
            self.peer_port = self._pick_peer_port()
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            "ip", "netns", "exec", self.netns,
            "etcd",
            "--name", "vxmh",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"vxmh={peer_url}",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
        ]  # fmt: skip
        self._spawn(argv)
        wait_until_healthy("etcd", self.request, lambda: self.alive, self.log_tail, timeout, self.kill9)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 3.0) -> tuple[int, Any]:
        """An HTTP request to etcd's client URL, made from inside the underlay namespace."""
        return netns_http(self.netns, method, ETCD_IP, ETCD_PORT, path, body, timeout)

    # The v3 JSON gateway (base64 keys and values), enough for the harness's own checks.
    def put(self, key: str, value: str) -> None:
        import base64

        body = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value.encode()).decode()}
        status, reply = self.request("POST", "/v3/kv/put", body)
        if status != 200:
            raise RuntimeError(f"etcd put {key}: HTTP {status}: {reply!r}")

    def get_prefix(self, prefix: str) -> dict[str, str]:
        import base64

        raw = prefix.encode()
        end = raw[:-1] + bytes([raw[-1] + 1]) if raw else b"\x00"
        body = {"key": base64.b64encode(raw).decode(), "range_end": base64.b64encode(end).decode()}
        status, reply = self.request("POST", "/v3/kv/range", body)
        if status != 200 or not isinstance(reply, dict):
            raise RuntimeError(f"etcd range {prefix}: HTTP {status}: {reply!r}")
        return {
            base64.b64decode(kv["key"]).decode("utf-8", "replace"): base64.b64decode(kv.get("value", "")).decode(
                "utf-8", "replace"
            )
            for kv in reply.get("kvs", [])
        }


# --------------------------------------------------------------------------------------------- dockerd


def cgroup_mount_script() -> list[str]:
    """Shell lines that mount, again, the cgroup hierarchies this process sees under /sys/fs/cgroup.

    `ip netns exec` mounts a fresh sysfs over /sys, which hides them; dockerd (runc) needs them.  On a
    cgroup v2 host this is `mount -t cgroup2 none /sys/fs/cgroup`; on a v1/hybrid host (tmpfs plus one
    hierarchy per controller) the same layout is rebuilt: mounting a v1 hierarchy again with the same
    controllers attaches to the existing one.
    """
    mounts: list[tuple[str, str, str]] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        point, fstype, superopts = fields[4], rfields[0], rfields[2]
        if point != "/sys/fs/cgroup" and not point.startswith("/sys/fs/cgroup/"):
            continue
        if fstype not in ("tmpfs", "cgroup", "cgroup2"):
            continue
        mounts.append((point, fstype, superopts))
    if not mounts:
        return ["mount -t cgroup2 none /sys/fs/cgroup"]
    lines = []
    for point, fstype, superopts in sorted(mounts, key=lambda item: item[0].count("/")):
        opts = ",".join(
            opt for opt in superopts.split(",") if opt not in ("rw", "ro") and "=" not in opt or opt.startswith("name=")
        )
        if point != "/sys/fs/cgroup":
            lines.append(f"mkdir -p {point}")
        if fstype == "tmpfs":
            lines.append(f"mount -t tmpfs -o mode=755 tmpfs {point}")
        elif fstype == "cgroup":
            lines.append(f"mount -t cgroup -o {opts or 'none'} cgroup {point}")
        else:
            lines.append(f"mount -t cgroup2 {'-o ' + opts + ' ' if opts else ''}none {point}")
    return lines


class Dockerd(ManagedProcess):
    """One host's dockerd, in the host's network namespace and a private mount namespace."""

    def __init__(self, netns: str, workdir: Path) -> None:
        super().__init__("dockerd", workdir / "dockerd.log")
        self.netns = netns
        self.workdir = workdir
        self.data_root = workdir / "data"
        self.exec_root = workdir / "exec"
        self.run_dir = workdir / "run"  # bound over /run/docker in dockerd's mount namespace
        self.plugins_dir = self.run_dir / "plugins"
        self.socket_path = workdir / "docker.sock"
        self.pidfile = workdir / "docker.pid"
        self.config_file = workdir / "daemon.json"
        self.script = workdir / "dockerd.sh"
        self.client: Any = None
        # The content of daemon.json, written at every start: {} unless a test asks for e.g. live-restore
        # (see restart()).
        self.config: dict[str, Any] = {}
        # Docker's default bridge network (docker0), as on a user's host; the multi-host hosts go without.
        self.default_bridge = False

    def write_script(self) -> None:
        for directory in (self.data_root, self.exec_root, self.plugins_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.write_config()
        lines = [
            "#!/bin/sh",
            "# generated by tests/multihost: run as `ip netns exec NS unshare -m -- THIS`",
            "set -eu",
            "mount --make-rprivate /",
            *cgroup_mount_script(),
            "mkdir -p /run/docker /run/containerd",
            f"mount --bind {self.run_dir} /run/docker",
            "mount -t tmpfs -o mode=711 tmpfs /run/containerd",
            "exec " + " ".join(self.dockerd_argv()),
        ]
        self.script.write_text("\n".join(lines) + "\n")
        self.script.chmod(0o755)

    def write_config(self) -> None:
        """daemon.json from `config`; never /etc/docker/daemon.json: it may set a clashing bridge."""
        self.config_file.write_text(json.dumps(self.config, sort_keys=True) + "\n" if self.config else "{}\n")

    def dockerd_argv(self) -> list[str]:
        return [
            "dockerd",
            "--config-file", str(self.config_file),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "-H", f"unix://{self.socket_path}",
            "--pidfile", str(self.pidfile),
            # unless daemon.json says otherwise (dockerd refuses an option given both ways)
            *[f"--{option}=true" for option in ("iptables", "ip-forward") if option not in self.config],
            "--log-level=info",
            *([] if self.default_bridge else ["--bridge=none"]),
        ]  # fmt: skip

    def start(self, timeout: float = 60.0, mount_namespace: str | None = None) -> None:
        """Start dockerd in a new private mount namespace (see write_script), or, with `mount_namespace` (a
        namespace file such as /proc/PID/fd/N), in that existing one, where the mounts are already in place.
        The engine is the one VXLANPY_TEST_ENGINE names (tests/engines.py), the system's by default."""
        env = dockerd_environment()
        if mount_namespace is None:
            self.write_script()
            # `ip netns exec` execs `unshare`, which execs the script, which execs dockerd: one pid throughout.
            self._spawn(["ip", "netns", "exec", self.netns, "unshare", "-m", "--", str(self.script)], env=env)
        else:
            self.write_config()
            # nsenter (mount namespace only) execs dockerd: one pid throughout here too.
            argv = ["ip", "netns", "exec", self.netns, "nsenter", f"--mount={mount_namespace}", "--"]
            self._spawn([*argv, *self.dockerd_argv()], env=env)
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"dockerd in {self.netns} exited while starting; its log:\n{self.log_tail()}")
            if self.socket_path.exists():
                try:
                    # "auto": the engine's own API version (Docker 29 refuses clients older than 1.44).
                    self.client = docker.DockerClient(
                        base_url=f"unix://{self.socket_path}", version="auto", timeout=120
                    )
                    return
                except Exception as exc:  # noqa: BLE001 - not up yet
                    last = repr(exc)
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"dockerd in {self.netns} did not answer within {timeout:.0f} s ({last}):\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        # dockerd stops its own containerd on SIGTERM: signal dockerd alone first, the group only afterwards.
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        super().stop(timeout=5)
        if self.client is not None:
            self.client.close()
            self.client = None

    def reload(self, config: dict[str, Any]) -> None:
        """Write daemon.json `config` and send SIGHUP, as `systemctl reload docker` does: dockerd applies the
        options it can change live (e.g. live-restore) without a restart.  docker.info() shows when it is done."""
        self.config = dict(config)
        self.write_config()
        if self.process is None or not self.alive:
            raise RuntimeError(f"dockerd in {self.netns} is not running")
        self.process.send_signal(signal.SIGHUP)

    def restart(
        self,
        config: dict[str, Any] | None = None,
        while_down: Callable[[], None] | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        """Stop dockerd (SIGTERM, as an init system does), call `while_down()` if given, and start it again with
        daemon.json `config` (None: unchanged), in the same mount namespace, as on a real host: what it left
        there (containerd's shim sockets in /run/containerd, the sandboxes' namespace mounts) is still there for
        it, which `live-restore` needs.  A dockerd that is not running is just started (in a new namespace)."""
        if config is not None:
            self.config = dict(config)
        if not self.alive or self.pid is None:
            self.stop()
            if while_down is not None:
                while_down()
            self.start()
            return
        # Keep the mount namespace alive while no process is in it (no container left, or no live-restore).
        held = os.open(f"/proc/{self.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.stop(timeout=stop_timeout)
            if while_down is not None:
                while_down()
            self.start(mount_namespace=f"/proc/{os.getpid()}/fd/{held}")
        finally:
            os.close(held)


# --------------------------------------------------------------------------------------------- vxlanpy


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
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.alive:
                assert self.process is not None
                raise RuntimeError(
                    f"vxlanpy on {self.host_name} exited with code {self.process.returncode} while starting; "
                    f"its log:\n{self.log_tail()}"
                )
            if self.socket_path.exists():
                try:
                    status, body = plugin_call(str(self.socket_path), "/Plugin.Activate", timeout=2)
                    if status == 200 and isinstance(body, dict) and "NetworkDriver" in body.get("Implements", []):
                        return
                    last = f"HTTP {status}: {body!r}"
                except OSError as exc:
                    last = repr(exc)
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"vxlanpy on {self.host_name} did not answer /Plugin.Activate within {timeout:.0f} s ({last}); "
            f"its log:\n{self.log_tail()}"
        )

    def ensure_running(self) -> None:
        if not self.alive:
            self.start()

    def implements(self) -> list[str]:
        status, body = plugin_call(str(self.socket_path), "/Plugin.Activate", timeout=2)
        return list(body.get("Implements", [])) if status == 200 and isinstance(body, dict) else []


# --------------------------------------------------------------------------------------------- hosts


@dataclass
class Host:
    name: str
    index: int
    netns: str
    workdir: Path
    dockerd: Dockerd
    plugin: Plugin

    @property
    def ip(self) -> str:
        """The host's underlay address, which is also its VTEP."""
        return host_ip(self.index)

    vtep = ip

    @property
    def docker(self) -> Any:
        if self.dockerd.client is None:
            raise RuntimeError(f"dockerd of {self.name} is not running")
        return self.dockerd.client

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.ip}, {self.netns})"

    # -- commands inside the host namespace

    def exec_ip(self, argv: list[str], timeout: float = 20.0, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `argv` (e.g. ["bridge", "-j", "fdb", "show", "dev", "vxlan-300"]) inside the host namespace."""
        return run(["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout)

    def json(self, argv: list[str]) -> Any:
        """Run a `-j` command inside the host namespace; [] when the device does not exist."""
        result = self.exec_ip(argv)
        if result.returncode != 0:
            if "does not exist" in result.stderr or "Cannot find device" in result.stderr:
                return []
            raise RuntimeError(f"{' '.join(argv)} on {self.name} failed: {result.stderr.strip()}")
        return json.loads(result.stdout) if result.stdout.strip() else []

    def fdb(self, dev: str) -> list[dict[str, Any]]:
        """The VXLAN device's own forwarding entries (those with a `dst`), not the bridge's learnt ones."""
        return [entry for entry in self.json(["bridge", "-j", "fdb", "show", "dev", dev]) if "dst" in entry]

    def neigh(self, dev: str) -> list[dict[str, Any]]:
        return [entry for entry in self.json(["ip", "-j", "neigh", "show", "dev", dev]) if "dst" in entry]

    def link(self, dev: str) -> dict[str, Any] | None:
        links = self.json(["ip", "-d", "-j", "link", "show", dev])
        return links[0] if links else None

    def has_link(self, dev: str) -> bool:
        return self.exec_ip(["ip", "link", "show", dev]).returncode == 0

    def counter(self, dev: str, name: str = "rx_packets") -> int:
        result = self.exec_ip(["cat", f"/sys/class/net/{dev}/statistics/{name}"], check=True)
        return int(result.stdout.strip())

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
        return netns_socket(self.netns, family, kind, proto)

    # -- containers and networks

    def run_container(self, network: Any, *, ip: str | None = None, name: str | None = None, **kw: Any) -> Any:
        """A running, labelled busybox container (`sleep 3600` unless `command=`) on `network` (name or object)."""
        client = self.docker
        network_name = network if isinstance(network, str) else network.name
        kw.setdefault("command", ["sleep", "3600"])
        labels = dict(LABELS)
        labels.update(kw.pop("labels", {}) or {})
        if ip is not None:
            kw["networking_config"] = {network_name: client.api.create_endpoint_config(ipv4_address=ip)}
        container = client.containers.run(
            IMAGE,
            detach=True,
            network=network_name,
            labels=labels,
            name=name or f"vxmh-{self.name}-{secrets.token_hex(4)}",
            **kw,
        )
        container.reload()
        return container

    def kill9(self) -> None:
        """Simulate the host dying, as far as the cluster is concerned: SIGKILL its vxlanpy (workers included)."""
        self.plugin.kill9()

    def remove_labelled(self) -> list[str]:
        return remove_labelled(self.docker)


# --------------------------------------------------------------------------------------------- image


def busybox_rootfs_tar() -> bytes:
    """A root filesystem holding the host's static busybox and a link per applet (as in tests/e2e)."""
    busybox = HOST_BUSYBOX.resolve().read_bytes()
    applets = run([str(HOST_BUSYBOX), "--list"]).stdout.split()
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, kind: bytes, mode: int, content: bytes = b"", linkname: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, now, linkname
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content else None)

        for directory in ("bin", "sbin", "usr", "usr/bin", "etc", "proc", "sys", "dev", "root", "var", "www"):
            add(directory, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, busybox)
        for applet in sorted(set(applets)):
            if applet and applet != "busybox" and "/" not in applet:
                add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n")
        add("www/index.html", tarfile.REGTYPE, 0o644, b"vxlanpy-multihost\n")
    return buffer.getvalue()


def import_image(client: Any, rootfs: bytes) -> None:
    repository, tag = IMAGE.rsplit(":", 1)
    client.api.import_image_from_data(
        rootfs,
        repository=repository,
        tag=tag,
        changes=["ENV PATH=/bin:/sbin:/usr/bin", 'CMD ["/bin/sh"]'],
    )
    client.images.get(IMAGE)


# --------------------------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    workdir: Path = field(init=False)
    underlay: str = field(init=False)
    hosts: list[Host] = field(default_factory=list)
    etcd: Etcd = field(init=False)
    extra_netns: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)

    UNDERLAY_BRIDGE = "ul0"

    def __post_init__(self) -> None:
        self.workdir = Path(f"/tmp/{PREFIX}-{self.suffix}")
        self.underlay = f"{PREFIX}-ul-{self.suffix}"
        self.etcd = Etcd(self.underlay, self.workdir)
        for index, name in enumerate(HOST_NAMES, start=1):
            netns = f"{PREFIX}-{name}-{self.suffix}"
            hostdir = self.workdir / name
            dockerd = Dockerd(netns, hostdir)
            plugin = Plugin(
                name, netns, hostdir, dockerd.plugins_dir / "vxlanpy.sock", ETCD_URL, docker_socket=dockerd.socket_path
            )
            self.hosts.append(Host(name, index, netns, hostdir, dockerd, plugin))

    def __getitem__(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    @property
    def namespaces(self) -> list[str]:
        return [self.underlay, *(host.netns for host in self.hosts), *self.extra_netns]

    # -- building

    def build(self) -> None:
        started = time.monotonic()
        self.workdir.mkdir(mode=0o700)
        (self.workdir / "owner.pid").write_text(f"{os.getpid()}\n")
        self._build_underlay()
        for host in self.hosts:
            self._build_host_namespace(host)
        self.timings["namespaces"] = time.monotonic() - started
        self.etcd.start()
        self.timings["etcd"] = time.monotonic() - started
        rootfs = busybox_rootfs_tar()

        def start_host(host: Host) -> None:
            host.dockerd.start()
            import_image(host.docker, rootfs)

        self._parallel(start_host, self.hosts)
        self.timings["dockerd"] = time.monotonic() - started

    def start_plugins(self) -> None:
        started = time.monotonic()
        self._parallel(lambda host: host.plugin.start(), self.hosts)
        self.timings["plugins"] = time.monotonic() - started

    @staticmethod
    def _parallel(action: Callable[[Host], Any], hosts: Iterable[Host]) -> list[Any]:
        hosts = list(hosts)
        with ThreadPoolExecutor(max_workers=len(hosts) or 1) as pool:
            futures = [pool.submit(action, host) for host in hosts]
            return [future.result() for future in futures]

    def _build_underlay(self) -> None:
        ns = self.underlay
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # A fixed MAC: a bridge otherwise takes the lowest MAC of its ports, which changes when a port comes or
        # goes (e.g. the outsider namespace) and blackholes 10.250.0.254 (etcd) until the hosts' ARP caches expire.
        run(["ip", "-n", ns, "link", "add", self.UNDERLAY_BRIDGE, "address", "02:76:6d:68:00:fe", "type", "bridge"])
        run(["ip", "-n", ns, "addr", "add", f"{ETCD_IP}/{UNDERLAY_PREFIX_LEN}", "dev", self.UNDERLAY_BRIDGE])
        run(["ip", "-n", ns, "link", "set", self.UNDERLAY_BRIDGE, "up"])
        # A fresh namespace has no iptables rules; keep bridged underlay frames out of netfilter altogether.
        for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
            run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.bridge.{name}=0"], check=False)

    def _attach(self, netns: str, port: str, address: str) -> None:
        """A veth from the underlay bridge (port `port`) to `netns`, where it is named eth0 and holds `address`."""
        ul = self.underlay
        run(["ip", "-n", ul, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns])
        run(["ip", "-n", ul, "link", "set", port, "master", self.UNDERLAY_BRIDGE, "up"])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        run(["ip", "-n", netns, "addr", "add", f"{address}/{UNDERLAY_PREFIX_LEN}", "dev", "eth0"])
        run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", netns, "route", "add", "default", "via", ETCD_IP])

    def _build_host_namespace(self, host: Host) -> None:
        run(["ip", "netns", "add", host.netns])
        self._attach(host.netns, f"p-{host.name}", host.ip)
        run(["ip", "netns", "exec", host.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])

    @contextmanager
    def outsider(self, address: str = "10.250.0.99", label: str = "out") -> Iterator[str]:
        """A namespace on the underlay that is not a vxlanpy host (for spoofing tests); removed afterwards."""
        netns = f"{PREFIX}-{label}-{self.suffix}"
        port = f"p-{label}"
        run(["ip", "netns", "add", netns])
        self.extra_netns.append(netns)
        try:
            self._attach(netns, port, address)
            yield netns
        finally:
            run(["ip", "-n", self.underlay, "link", "del", port], check=False)
            run(["ip", "netns", "del", netns], check=False)
            self.extra_netns.remove(netns)

    # -- between tests

    def ensure_up(self, with_plugins: bool) -> None:
        """Put back what a test may have stopped: etcd, and (when vxlanpy is in use) every host's plugin."""
        if not self.etcd.alive:
            self.etcd.start()
        if with_plugins:
            self._parallel(lambda host: host.plugin.ensure_running(), self.hosts)

    def clean(self) -> list[str]:
        """Remove every labelled container on every host, then every labelled network."""
        problems: list[str] = []
        for result in self._parallel(lambda host: remove_labelled(host.docker, networks=False), self.hosts):
            problems.extend(result)
        for result in self._parallel(lambda host: remove_labelled(host.docker, containers=False), self.hosts):
            problems.extend(result)
        return problems

    # -- teardown

    def teardown(self) -> list[str]:
        """Remove everything the cluster made, whatever state it is in; returns what could not be removed."""
        problems: list[str] = []
        for host in self.hosts:
            if host.dockerd.client is not None and host.dockerd.alive:
                try:
                    if not host.plugin.alive and self.plugins_wanted:
                        host.plugin.start()  # vxlanpy networks can only be removed while it answers
                except Exception as exc:  # noqa: BLE001 - keep tearing down
                    problems.append(f"restarting vxlanpy on {host.name} for the cleanup: {exc}")
        if not self.etcd.alive and self.plugins_wanted:
            try:
                self.etcd.start()
            except Exception as exc:  # noqa: BLE001
                problems.append(f"restarting etcd for the cleanup: {exc}")
        for host in self.hosts:
            if host.dockerd.client is not None and host.dockerd.alive:
                try:
                    problems.extend(f"{host.name}: {p}" for p in remove_labelled(host.docker))
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"{host.name}: cleanup: {exc}")
        for host in self.hosts:
            host.plugin.stop()
        self._parallel(lambda host: host.dockerd.stop(), self.hosts)
        self.etcd.stop()
        for netns in list(self.extra_netns):
            run(["ip", "netns", "del", netns], check=False)
        # Anything still running in our namespaces was started by us (containerd, shims): end it by pid.
        for netns in self.namespaces:
            pids = netns_pids(netns) if Path(netns_path(netns)).exists() else []
            if pids:
                everything = with_descendants(pids)
                names = ", ".join(f"{pid} ({process_name(pid)})" for pid in everything)
                problems.append(f"processes still running in {netns}, killed: {names}")
                kill_pids(everything)
        for netns in reversed(self.namespaces):
            if Path(netns_path(netns)).exists():
                result = run(["ip", "netns", "del", netns], check=False)
                if result.returncode != 0:
                    problems.append(f"ip netns del {netns}: {result.stderr.strip()}")
        keep = os.environ.get("VXMH_KEEP_LOGS")
        if keep:  # for debugging: keep every log (dockerd, vxlanpy, etcd) of the session
            target = Path(keep) / self.suffix
            for log in self.workdir.glob("**/*.log"):
                destination = target / log.relative_to(self.workdir)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(log, destination)
        mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(self.workdir) in line]
        for line in mounts:
            problems.append(f"mount left behind: {line}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.workdir.exists():
            problems.append(f"could not delete {self.workdir}")
        return problems

    plugins_wanted: bool = False


def remove_stale_clusters() -> list[str]:
    """Remove what an earlier, killed session left: namespaces vxmh-*-<hex> whose owner process is gone."""
    removed: list[str] = []
    listing = run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in listing.stdout.splitlines() if line.split()]
    suffixes = {name.rsplit("-", 1)[1] for name in names if name.startswith(f"{PREFIX}-") and name.count("-") == 2}
    for suffix in sorted(suffixes):
        owner = Path(f"/tmp/{PREFIX}-{suffix}/owner.pid")
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid and _pid_alive(pid):
            continue  # another session is running right now
        for name in names:
            if name.startswith(f"{PREFIX}-") and name.endswith(f"-{suffix}"):
                kill_pids(with_descendants(netns_pids(name)))
                run(["ip", "netns", "del", name], check=False)
                removed.append(name)
        shutil.rmtree(f"/tmp/{PREFIX}-{suffix}", ignore_errors=True)
    return removed


# --------------------------------------------------------------------------------------------- assertions


def container_address(container: Any, network_name: str) -> tuple[str, str, str]:
    """(IPv4 address, MAC address, gateway) of `container` on `network_name`, as Docker reports them."""
    container.reload()
    settings = container.attrs["NetworkSettings"]["Networks"][network_name]
    return str(settings["IPAddress"]), str(settings["MacAddress"]).lower(), str(settings["Gateway"])


def exec_text(container: Any, argv: list[str]) -> tuple[int, str]:
    result = container.exec_run(argv)
    output = result.output.decode("utf-8", "replace") if isinstance(result.output, bytes) else str(result.output)
    return int(result.exit_code), output


def ping(container: Any, target: str, count: int = 1, wait: int = 1) -> tuple[bool, str]:
    code, output = exec_text(container, ["ping", "-c", str(count), "-W", str(wait), target])
    return code == 0, output


def ping_until(container: Any, target: str, timeout: float = 10.0) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout
    while True:
        ok, output = ping(container, target)
        if ok or time.monotonic() >= deadline:
            return ok, output
        time.sleep(0.1)


def container_pid(container: Any) -> int:
    container.reload()
    return int(container.attrs["State"]["Pid"])


def first_echo_reply(netns: str, target: str, timeout: float, interval: float = 0.01) -> float | None:
    """Ping `target` from inside `netns` (e.g. /proc/PID/ns/net) every `interval` s; the monotonic time of
    the first echo reply from it, or None after `timeout` s."""
    sock = netns_socket(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = secrets.randbelow(0xFFFF)
    deadline = time.monotonic() + timeout
    seq = 0
    try:
        sock.setblocking(False)
        while time.monotonic() < deadline:
            seq = (seq + 1) & 0xFFFF
            try:
                sock.sendto(icmp_echo(ident, seq), (target, 0))
            except OSError:
                pass  # e.g. EHOSTUNREACH while ARP fails: keep trying
            until = time.monotonic() + interval
            while True:
                try:
                    packet, (source, _) = sock.recvfrom(2048)
                except BlockingIOError:
                    packet, source = b"", ""
                except OSError:
                    packet, source = b"", ""
                if packet and source == target:
                    header_len = (packet[0] & 0x0F) * 4
                    kind, _, _, reply_ident, _ = struct.unpack_from("!BBHHH", packet, header_len)
                    if kind == 0 and reply_ident == ident:
                        return time.monotonic()
                if not packet:
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    time.sleep(min(remaining, 0.002))
    finally:
        sock.close()
    return None


def median(values: list[float]) -> float:
    return statistics.median(values)


def in_subnet(address: str, subnet: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(subnet)


# --------------------------------------------------------------------------------------------- convergence


@dataclass
class ConvergenceResult:
    source: str
    observer: str
    runs: list[float | None]
    run_times: list[float]

    @property
    def converged(self) -> list[float]:
        return [value for value in self.runs if value is not None]

    @property
    def failures(self) -> int:
        return sum(1 for value in self.runs if value is None)

    @property
    def median(self) -> float:
        return statistics.median(self.converged) if self.converged else float("inf")

    def summary(self) -> str:
        runs = ", ".join("timeout" if value is None else f"{value * 1000:.0f}" for value in self.runs)
        return (
            f"convergence (docker run on {self.source} -> first ping reply on {self.observer}): "
            f"median {self.median * 1000:.0f} ms over {len(self.runs)} runs [{runs}] ms; "
            f"docker run itself took median {statistics.median(self.run_times) * 1000:.0f} ms"
        )


def prepare_observer(container: Any) -> str:
    """The observer's namespace path, with its neighbour cache flushed and fast ARP retries (20 ms), so that
    ARP timers (1 s by default) do not hide the plugin's own convergence."""
    pid = container_pid(container)
    path = f"/proc/{pid}/ns/net"
    run(["nsenter", f"--net={path}", "sysctl", "-qw", "net.ipv4.neigh.eth0.retrans_time_ms=20"])
    run(["nsenter", f"--net={path}", "ip", "neigh", "flush", "dev", "eth0"], check=False)
    return path


def measure_convergence(
    source: Host, observer: Host, network: str, runs: int = 5, timeout: float = 15.0
) -> ConvergenceResult:
    """For each run: `docker run` a container on `source`, and ping it every 10 ms from a container already
    running on `observer` (from inside that container's namespace); the time from the start of `docker run`
    to the first echo reply.  Each new container is removed after its run."""
    watcher = observer.run_container(network)
    values: list[float | None] = []
    run_times: list[float] = []
    for _ in range(runs):
        netns = prepare_observer(watcher)
        started = time.monotonic()
        container = source.run_container(network)
        run_times.append(time.monotonic() - started)
        address, _, _ = container_address(container, network)
        replied = first_echo_reply(netns, address, timeout=timeout)
        values.append(None if replied is None else replied - started)
        container.remove(force=True)
    return ConvergenceResult(source.name, observer.name, values, run_times)


# --------------------------------------------------------------------------------------------- capture

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class Sniffer:
    """Frames received on device `dev` inside `netns` (an AF_PACKET socket, like tcpdump), from opening to
    `frames()`; outgoing frames are left out.  Each frame is (source MAC, destination MAC, raw bytes)."""

    def __init__(self, netns: str, dev: str) -> None:
        self.netns = netns
        self.dev = dev
        self.sock = netns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((dev, ETH_P_ALL))  # the name is resolved in the socket's own namespace
        self.sock.setblocking(False)
        self._frames: list[tuple[str, str, bytes]] = []

    @staticmethod
    def _mac(raw: bytes) -> str:
        return ":".join(f"{byte:02x}" for byte in raw)

    def frames(self) -> list[tuple[str, str, bytes]]:
        while True:
            try:
                data, address = self.sock.recvfrom(65535)
            except BlockingIOError:
                break
            if address[2] == PACKET_OUTGOING or len(data) < 14:
                continue
            self._frames.append((self._mac(data[6:12]), self._mac(data[0:6]), data))
        return list(self._frames)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Sniffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
