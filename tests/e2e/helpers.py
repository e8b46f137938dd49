"""Helpers of the e2e suite: the plugin process, the test host, links, containers, state.db.

Traffic only ever goes to addresses on this machine: container addresses, 127.0.0.1 and the test host
namespace (198.51.100.0/24 on a veth pair).  Tests that give a network a remote, peers or a multicast group
put that network's underlay on the test host's veth (`dev=`) so the encapsulated packets stay here too.
"""

from __future__ import annotations

import http.client
import http.server
import io
import ipaddress
import os
import shutil
import signal
import socket
import socketserver
import sqlite3
import struct
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.docker_cleanup import remove_labelled  # noqa: F401  (re-exported for the suites)
from tests.plugin_socket import PluginNotReady, plugin_call, plugin_get, wait_until_activated  # noqa: F401  (plugin_call, plugin_get: re-exported for the suites)

try:
    import docker
    import docker.errors
    import docker.types
except ImportError:  # pragma: no cover - the test extra installs it
    docker = None  # type: ignore[assignment]

try:
    from pyroute2 import IPRoute
except ImportError:  # pragma: no cover - a dependency of the plugin
    IPRoute = None  # type: ignore[assignment,misc]

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]

LABEL = "vxlanpy.test"
LABELS = {LABEL: "1"}
DRIVER = "vxlanpy"
SOCKET_PATH = Path("/run/docker/plugins/vxlanpy.sock")
IMAGE = "vxlanpy-test/busybox:latest"
HOST_BUSYBOX = Path("/bin/busybox")
OWNED_LINK_PREFIXES = ("vxbr-", "vxlan-", "vxh-")

TESTHOST_HOST_IP = "198.51.100.1"
TESTHOST_IP = "198.51.100.2"
TESTHOST_IP2 = "198.51.100.3"
TESTHOST_PREFIX = 24


# --------------------------------------------------------------------------------------------- links


def links(prefixes: tuple[str, ...] = OWNED_LINK_PREFIXES) -> set[str]:
    """Names of the links in the root namespace that start with one of `prefixes` (via netlink)."""
    with IPRoute() as ipr:
        names = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    return {name for name in names if name and name.startswith(prefixes)}


def link_mtu(name: str) -> int:
    return int(Path(f"/sys/class/net/{name}/mtu").read_text().strip())


def bridge_ports(bridge: str) -> list[str]:
    """The ports enslaved to `bridge` (from sysfs)."""
    path = Path(f"/sys/class/net/{bridge}/brif")
    return sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []


def default_route_dev() -> str:
    """The interface of the IPv4 default route, read from /proc/net/route."""
    lines = Path("/proc/net/route").read_text().splitlines()[1:]
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] != "00000000" or fields[7] != "00000000":
            continue
        metric = int(fields[6])
        if best is None or metric < best[0]:
            best = (metric, fields[0])
    if best is None:
        raise RuntimeError("this machine has no IPv4 default route")
    return best[1]


def ip_details(name: str) -> str:
    """`ip -d link show NAME` as text (tests only; the plugin itself never shells out)."""
    result = subprocess.run(["ip", "-d", "link", "show", name], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"ip -d link show {name} failed: {result.stderr.strip()}"
    return result.stdout


def vni_chains(vni: int) -> set[str]:
    """vxlanpy's per-network chains of `vni` (VXP-<vni>, VXPD-<vni>, ...) in any table, IPv4 or IPv6."""
    return {chain for chain in iptables_chains() if chain.startswith("VXP") and chain.endswith(f"-{vni}")}


def iptables_chains() -> set[str]:
    """Every chain name in the filter and nat tables (IPv4 and IPv6)."""
    chains: set[str] = set()
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat"):
            result = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False)
            for line in result.stdout.splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("-N", "-P"):
                    chains.add(parts[1])
    return chains


def elf_is_static(path: Path) -> bool:
    """True when the ELF file has no PT_INTERP program header, i.e. needs no dynamic loader nor libc."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return False
    wide = data[4] == 2  # ELFCLASS64
    endian = "<" if data[5] == 1 else ">"
    if wide:
        (phoff,) = struct.unpack_from(endian + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    else:
        (phoff,) = struct.unpack_from(endian + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x2A)
    for index in range(phnum):
        (p_type,) = struct.unpack_from(endian + "I", data, phoff + index * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def busybox_rootfs_tar(busybox: bytes, applets: list[str]) -> bytes:
    buffer = io.BytesIO()
    now = int(time.time())

    def add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        info.mtime = now
        tar.addfile(info)

    def add_file(tar: tarfile.TarFile, name: str, content: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = mode
        info.mtime = now
        tar.addfile(info, io.BytesIO(content))

    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directories = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "var", "www")
        for directory in directories:
            add_dir(tar, directory)
        add_dir(tar, "tmp", 0o1777)
        add_file(tar, "bin/busybox", busybox, 0o755)
        for applet in sorted(set(applets)):
            if applet == "busybox" or "/" in applet or not applet:
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            link.mode = 0o777
            link.mtime = now
            tar.addfile(link)
        add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        add_file(tar, "www/index.html", b"vxlanpy\n")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------- plugin


def socket_answers(path: Path) -> bool:
    """True when something accepts connections on the Unix socket `path`."""
    if not path.exists():
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


class _FailingHandler(http.server.BaseHTTPRequestHandler):
    """Answers every POST with HTTP 500 and a libnetwork error body, and records which call it was."""

    protocol_version = "HTTP/1.1"  # dockerd keeps its connection to a plugin alive

    def setup(self) -> None:
        super().setup()
        self.server.connections.append(self.request)  # type: ignore[attr-defined]

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.calls.append(self.path)  # type: ignore[attr-defined]
        body = b'{"Err": "vxlanpy is down (a test stand-in)"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # a Unix socket has no client address to log


@contextmanager
def down_plugin_stand_in(socket_path: Path) -> Iterator[list[str]]:
    """While vxlanpy is down, something on its socket that fails each of dockerd's calls at once; yields the
    calls' paths.  vxlanpy hears none of them, as when nothing listens, but dockerd gives up on each at once
    instead of retrying a dead socket for 15 s (60 s for one `docker rm -f`).  The socket is removed on exit."""
    socket_path.unlink(missing_ok=True)
    server = socketserver.ThreadingUnixStreamServer(str(socket_path), _FailingHandler)
    server.daemon_threads = True
    calls: list[str] = []
    server.calls = calls  # type: ignore[attr-defined]
    server.connections = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="vxt-down-plugin", daemon=True)
    thread.start()
    try:
        yield calls
    finally:
        server.shutdown()
        server.server_close()
        for connection in server.connections:  # type: ignore[attr-defined]
            # dockerd must not keep an idle connection to the stand-in: as with a killed plugin, it is closed.
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        thread.join(timeout=10)
        socket_path.unlink(missing_ok=True)


def plugin_command() -> tuple[list[str], dict[str, str]]:
    """How to run `vxlanpy serve` from the interpreter running the tests (its venv's console script if any)."""
    script = Path(sys.executable).parent / "vxlanpy"
    env: dict[str, str] = {}
    if script.exists():
        return [str(script), "serve"], env
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "plugin"), os.environ.get("PYTHONPATH")]))
    return [sys.executable, "-m", "vxlanpy", "serve"], env


class PluginProcess:
    """The vxlanpy plugin as a child process serving the socket dockerd discovers it on."""

    def __init__(self, workdir: Path, socket_path: Path = SOCKET_PATH) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path = socket_path
        self.log_path = workdir / "plugin.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_env: dict[str, str] = {}  # for the plugin only: os.environ is shared with the tests' threads

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the log, without the (very chatty) netlink library debug lines."""
        kept = [line for line in self.log_text().splitlines() if "pyroute2" not in line]
        return "\n".join(line[:400] for line in kept[-lines:])

    def start(self, timeout: float | None = None) -> None:
        """`timeout`: VXLANPY_TEST_PLUGIN_START_SECONDS or 30 (a guest under software emulation needs minutes)."""
        if timeout is None:
            timeout = float(os.environ.get("VXLANPY_TEST_PLUGIN_START_SECONDS", "30"))
        if self.alive:
            raise RuntimeError("the plugin is already running")
        if socket_answers(self.socket_path):
            pytest.fail(
                f"something else already listens on {self.socket_path}: stop that vxlanpy (or whatever it is; "
                f"`ss -xlp | grep {self.socket_path.name}` shows its pid) before running the e2e suite",
                pytrace=False,
            )
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            self.socket_path.unlink()  # stale: nobody answers on it
        command, extra_env = plugin_command()
        env = dict(os.environ)
        env.update(extra_env)
        env.update(self.extra_env)
        env.update(
            {
                "VXLANPY_SOCKET": str(self.socket_path),
                "VXLANPY_STATE_DIR": str(self.state_dir),
                "VXLANPY_LOG_LEVEL": "debug",
            }
        )
        with self.log_path.open("ab") as log:
            log.write(f"==== harness: starting {' '.join(command)} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process

        def exited() -> str | None:
            code = process.poll()
            return None if code is None else f"the plugin exited with code {code} while starting"

        try:
            wait_until_activated(str(self.socket_path), timeout, gone=exited, interval=0.1)
        except PluginNotReady as exc:
            self.stop()
            pytest.fail(f"{exc}; its log:\n{self.log_tail()}", pytrace=False)

    def kill9(self) -> None:
        """SIGKILL the plugin (its whole process group, gunicorn workers included) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)
        self._wait_group_gone(self.process.pid)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        # Workers that outlived their master (they should not) still hold the socket: end them too.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._wait_group_gone(self.process.pid)

    def restart(self, kill9: bool = True) -> None:
        if kill9:
            self.kill9()
        else:
            self.stop()
        self.start()

    def ensure_running(self) -> None:
        if not self.alive:
            self.start()

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                return
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------- test host


@dataclass
class TestHost:
    """The 'outside world': a namespace on a veth pair, 198.51.100.1 (root side) <-> 198.51.100.2 (+ .3)."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    netns: str
    host_if: str
    host_ip: str = TESTHOST_HOST_IP
    ip: str = TESTHOST_IP
    ip2: str = TESTHOST_IP2

    def run(self, argv: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the namespace (`ip netns exec`)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def http_get(self, url: str, timeout: int = 3) -> subprocess.CompletedProcess[str]:
        """Fetch `url` from inside the namespace with busybox wget (its own -T crashes busybox 1.35: use timeout)."""
        busybox = str(HOST_BUSYBOX)
        return self.run([busybox, "timeout", str(timeout), busybox, "wget", "-q", "-O", "-", url], timeout=timeout + 10)


def remove_stale_testhosts() -> None:
    """Delete test host namespaces and veths that a killed earlier session left (only our own prefixes)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("vxe-out-"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    for name in links(("vxeo-",)):
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def addresses_in(network: str) -> list[str]:
    """'ADDRESS on IFNAME' for each IPv4 address of the root namespace inside `network`."""
    subnet = ipaddress.ip_network(network, strict=False)
    found = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr(family=socket.AF_INET):
            address = addr.get_attr("IFA_ADDRESS")
            if address and ipaddress.ip_address(address) in subnet:
                found.append(f"{address} on {names.get(addr['index'], addr['index'])}")
    return found


def ip_cmd(*argv: str) -> None:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)} failed: {result.stderr.strip()}")


# --------------------------------------------------------------------------------------------- cleanup


# --------------------------------------------------------------------------------------------- helpers


def unique_name(prefix: str = "vxt") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def exec_ok(container: Any, cmd: list[str] | str) -> tuple[int, str]:
    """Run `cmd` in the container; returns (exit code, combined output as text)."""
    result = container.exec_run(cmd)
    output = result.output.decode("utf-8", "replace") if isinstance(result.output, bytes) else str(result.output)
    return int(result.exit_code), output


def container_ip(container: Any, network: Any, family: int = 4) -> str:
    container.reload()
    settings = container.attrs["NetworkSettings"]["Networks"][network.name]
    address = settings["IPAddress"] if family == 4 else settings["GlobalIPv6Address"]
    assert address, f"{container.name} has no IPv{family} address on {network.name}: {settings}"
    return str(address)


def ping_ok(container: Any, target: str, *, tries: int = 10, family: int = 4) -> tuple[bool, str]:
    """Ping `target` from the container until one answer comes back or `tries` single pings (1 s) failed."""
    argv = ["ping", "-c", "1", "-W", "1"]
    if family == 6:
        argv.insert(1, "-6")
    output = ""
    for _ in range(tries):
        code, output = exec_ok(container, [*argv, target])
        if code == 0:
            return True, output
        time.sleep(0.2)
    return False, output


def ping_fails(container: Any, target: str, *, count: int = 3) -> tuple[bool, str]:
    """True when none of `count` pings (1 s each) gets an answer."""
    code, output = exec_ok(container, ["ping", "-c", str(count), "-W", "1", target])
    return code != 0, output


def state_rows(db_path: Path, network_id: str) -> dict[str, int]:
    """How many rows of `networks` and `endpoints` belong to `network_id` (read-only view of state.db)."""
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        counts = {}
        for table in ("networks", "endpoints"):
            (count,) = connection.execute(
                f"SELECT COUNT(*) FROM {table} WHERE network_id = ?",
                (network_id,),  # noqa: S608 - fixed names
            ).fetchone()
            counts[table] = int(count)
        return counts
    finally:
        connection.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tcp_connect(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def serves(host: str, port: int, text: str, within: float = 15.0) -> bool:
    """Whether GET / on host:port answers with `text` within `within` seconds: a server just started in a
    container listens a moment after `docker run` returns (refused until then)."""

    def answered() -> bool:
        try:
            return text in http_get(host, port, timeout=2.0)
        except OSError:
            return False

    return wait_for(answered, within)


def http_get(host: str, port: int, path: str = "/", timeout: float = 3.0) -> str:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        if response.status != 200:
            raise OSError(f"HTTP {response.status}: {body[:200]}")
        return body
    finally:
        connection.close()
