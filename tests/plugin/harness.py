"""The managed-plugin harness: a Docker engine of its own, in a network namespace of its own.

Layout (every name carries a per-session hex suffix)::

    netns vxpl-<hex>    lo (the registry listens on 127.0.0.1:5000), ul0 10.251.0.1/24 with the default route
                        and ul1 10.252.0.1/24: veth pairs whose peers (ul0p, ul1p) stay in the namespace
    /tmp/vxpl-<hex>/    dockerd's data and exec roots, socket, log and private /run/docker (run/), the
                        registry's storage, the plugins' state directories

dockerd runs as in tests/multihost (whose Dockerd this reuses): `ip netns exec NS unshare -m`, the cgroup
hierarchies mounted again, a private directory bound over /run/docker.  A managed plugin with host network
therefore lives in this namespace, and only this dockerd sees its socket: it never meets the vxlanpy the e2e
suite runs in the root namespace on /run/docker/plugins/vxlanpy.sock.  At most one vxlanpy (managed or not)
runs in the namespace at a time: two instances would remove each other's devices when reconciling.

Traffic only goes to addresses inside this namespace (containers, the registry on its loopback).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.engines import compose_command, compose_versions
from tests.multihost.cluster import (
    Dockerd,
    ManagedProcess,
    busybox_rootfs_tar,
    import_image,
    kill_pids,
    netns_pids,
    netns_socket,
    process_name,
    run,
    with_descendants,
)
from tests.plugin_socket import PluginNotReady, wait_until_activated
from tests.tiers import first_reason, missing_programs, needs_root

PLUGIN_TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PLUGIN_TESTS_DIR.parents[1]
PREFIX = "vxpl"
LABEL = "vxlanpy.test"
LABELS = {LABEL: "1"}
IMAGE = "vxlanpy-test/busybox:latest"  # tests/multihost's busybox image, also tagged busybox:latest here
REGISTRY = "127.0.0.1:5000"
LOCAL_PLUGIN = "vxlanpy/vxlanpy:latest"  # scripts/build-plugin's default name
REGISTRY_PLUGIN = f"{REGISTRY}/vxlanpy/vxlanpy:test"
UNDERLAYS = {"ul0": "10.251.0.1/24", "ul1": "10.252.0.1/24"}
DEFAULT_GATEWAY = "10.251.0.254"
VXLANPY_LINK_PREFIXES = ("vxbr-", "vxlan-", "vxh-")
# scripts/build-plugin's caches for the suites: its debootstrap base and the built rootfs, keyed by their inputs.
BUILD_CACHE = Path("/var/cache/vxlanpy-build")
# Startup budget: dockerd gives a managed plugin ~10 s (0.5 s, then 3 dial attempts 3 s apart).
START_BUDGET_SECONDS = 3.0

REQUIRED = ("docker", "dockerd", "containerd", "ip", "unshare", "debootstrap", "docker-registry", "docker-compose")

# Figures for the end-of-session summary (conftest prints them).
TIMINGS: dict[str, str] = {}


def missing_prerequisites() -> str | None:
    """Why the managed-plugin suite cannot run here (naming what to install), or None."""
    return first_reason(
        lambda: needs_root("the managed-plugin suite (namespaces, dockerd, debootstrap)"),
        lambda: missing_programs(*REQUIRED),
        lambda: None if Path("/bin/busybox").exists() else "/bin/busybox not found: apt-get install busybox-static",
    )


# --------------------------------------------------------------------------------------------- registry


class Registry(ManagedProcess):
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1:5000 inside the namespace."""

    def __init__(self, netns: str, workdir: Path) -> None:
        super().__init__("registry", workdir / "registry.log")
        self.netns = netns
        self.storage = workdir / "registry"
        self.config = workdir / "registry.yml"

    def start(self, timeout: float = 30.0) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        host, port = REGISTRY.split(":")
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            f"http:\n  addr: {REGISTRY}\n  secret: {secrets.token_hex(16)}\n"
        )
        self._spawn(["ip", "netns", "exec", self.netns, "docker-registry", "serve", str(self.config)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"docker-registry exited while starting:\n{self.log_tail()}")
            with netns_socket(self.netns) as sock:
                sock.settimeout(1)
                if sock.connect_ex((host, int(port))) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not listen on {REGISTRY} within {timeout:.0f} s:\n{self.log_tail()}")


# --------------------------------------------------------------------------------------------- the engine


@dataclass
class StartTiming:
    """Seconds from the start of `docker plugin enable` until: the plugin socket accepts a connection,
    /Plugin.Activate answers, and the enable command returns (dockerd itself sleeps 0.5 s before dialling)."""

    socket: float
    ready: float
    command: float

    def summary(self) -> str:
        return f"socket {self.socket:.2f} s, ready {self.ready:.2f} s, `docker plugin enable` {self.command:.2f} s"


@dataclass
class Engine:
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    workdir: Path = field(init=False)
    netns: str = field(init=False)
    dockerd: Dockerd = field(init=False)
    registry: Registry = field(init=False)
    # Which docker-compose `compose()` runs: "v1" or "v2" (tests/engines.py); test_compose runs each asked for.
    compose_version: str = field(default_factory=lambda: compose_versions()[0])

    def __post_init__(self) -> None:
        self.workdir = Path(f"/tmp/{PREFIX}-{self.suffix}")  # short: Unix socket paths are limited
        self.netns = f"{PREFIX}-{self.suffix}"
        self.dockerd = Dockerd(self.netns, self.workdir)
        self.registry = Registry(self.netns, self.workdir)

    # -- building and tearing down

    def build(self) -> None:
        self.workdir.mkdir(mode=0o700)
        (self.workdir / "owner.pid").write_text(f"{os.getpid()}\n")
        run(["ip", "netns", "add", self.netns])
        run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        for name, address in UNDERLAYS.items():
            run(["ip", "-n", self.netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p"])
            run(["ip", "-n", self.netns, "addr", "add", address, "dev", name])
            run(["ip", "-n", self.netns, "link", "set", f"{name}p", "up"])
            run(["ip", "-n", self.netns, "link", "set", name, "up"])
        run(["ip", "-n", self.netns, "route", "add", "default", "via", DEFAULT_GATEWAY, "dev", "ul0"])
        self.dockerd.start()
        import_image(self.client, busybox_rootfs_tar())
        self.client.images.get(IMAGE).tag("busybox", "latest")  # what the examples/ Compose files use
        self.registry.start()

    def teardown(self) -> list[str]:
        """Remove everything, whatever state it is in; returns what could not be removed."""
        problems: list[str] = []
        if self.dockerd.alive and self.dockerd.client is not None:
            try:
                problems += self.clean(disable_plugins=True)
                for plugin in self.plugins():
                    self.docker("plugin", "rm", "-f", plugin["Name"], check=False)
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                problems.append(f"cleaning the engine: {exc}")
        self.registry.stop()
        self.dockerd.stop()
        if Path(f"/run/netns/{self.netns}").exists():
            leftovers = with_descendants(netns_pids(self.netns))
            for pid in leftovers:
                problems.append(f"process {pid} ({process_name(pid)}) was still running in {self.netns}: killed")
            kill_pids(leftovers)
            result = run(["ip", "netns", "del", self.netns], check=False)
            if result.returncode != 0:
                problems.append(f"ip netns del {self.netns}: {result.stderr.strip()}")
        mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(self.workdir) in line]
        problems += [f"mount left behind: {line}" for line in mounts]
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.workdir.exists():
            problems.append(f"could not delete {self.workdir}")
        return problems

    # -- docker

    @property
    def client(self) -> Any:
        if self.dockerd.client is None:
            raise RuntimeError("the test dockerd is not running")
        return self.dockerd.client

    @property
    def env(self) -> dict[str, str]:
        """The environment for docker, docker-compose and scripts/build-plugin: this engine, no contexts."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env["DOCKER_HOST"] = f"unix://{self.dockerd.socket_path}"
        return env

    def docker(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def compose(
        self, directory: Path, project: str, *args: str, driver: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """docker-compose -p PROJECT ARGS in `directory`, with VXLANPY_DRIVER=driver (None: the file's default).
        Compose v1 or v2: `compose_version`."""
        env = self.env
        if driver is not None:
            env["VXLANPY_DRIVER"] = driver
        result = subprocess.run(
            [*compose_command(self.compose_version), "-p", project, *args],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker-compose {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def run_container(self, network: str, name: str | None = None, **kw: Any) -> Any:
        kw.setdefault("command", ["sleep", "3600"])
        container = self.client.containers.run(
            IMAGE, detach=True, network=network, labels=dict(LABELS), name=name or f"vxpl-{secrets.token_hex(4)}", **kw
        )
        container.reload()
        return container

    # -- plugins

    def plugins(self) -> list[dict[str, Any]]:
        listing = self.docker("plugin", "ls", "--no-trunc", "--format", "{{json .}}").stdout
        return [json.loads(line) for line in listing.splitlines() if line.strip()]

    def plugin_inspect(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.docker("plugin", "inspect", name).stdout)[0])

    def plugin_socket(self, name: str) -> Path:
        """The plugin's socket as this machine sees it (dockerd's /run/docker is bound from workdir/run)."""
        return self.dockerd.plugins_dir / self.plugin_inspect(name)["Id"] / "vxlanpy.sock"

    def plugin_rootfs(self, name: str) -> Path:
        return self.dockerd.data_root / "plugins" / self.plugin_inspect(name)["Id"] / "rootfs"

    def plugin_log(self, name: str, lines: int = 60) -> str:
        """The plugin's own output, which dockerd copies into its log (one line each, tagged plugin=<id>)."""
        plugin_id = self.plugin_inspect(name)["Id"]
        kept = []
        for line in self.dockerd.log_text().splitlines():
            if f"plugin={plugin_id}" in line and "pyroute2" not in line:
                message = line.partition(' msg="')[2].rpartition('" plugin=')[0] or line
                kept.append(message.replace('\\"', '"')[:400])
        return "\n".join(kept[-lines:])

    def enable(self, name: str) -> StartTiming:
        """`docker plugin enable NAME`, timed from outside: when its socket accepts and when it answers."""
        path = self.plugin_socket(name)
        seen: dict[str, float] = {}
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                if "socket" not in seen:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                        sock.settimeout(1)
                        if sock.connect_ex(str(path)) == 0:
                            seen["socket"] = time.monotonic()
                if "socket" in seen:
                    try:
                        # Until `docker plugin enable` has returned and the join below has waited its 10 s.
                        wait_until_activated(
                            str(path), 70, gone=lambda: "gave up" if done.is_set() else None, interval=0.005,
                            call_timeout=10,
                        )  # fmt: skip
                    except PluginNotReady:
                        return
                    seen["ready"] = time.monotonic()
                    return
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, name="vxpl-enable-watch", daemon=True)
        started = time.monotonic()
        watcher.start()
        result = self.docker("plugin", "enable", name, check=False, timeout=60)
        finished = time.monotonic()
        watcher.join(timeout=10)
        done.set()
        if result.returncode != 0 or "ready" not in seen:
            raise RuntimeError(
                f"docker plugin enable {name} failed ({result.returncode}): {result.stderr.strip()}\n"
                f"plugin log:\n{self.plugin_log(name)}"
            )
        return StartTiming(seen["socket"] - started, seen["ready"] - started, finished - started)

    def disable(self, name: str) -> None:
        if self.plugin_inspect(name)["Enabled"]:
            self.docker("plugin", "disable", "-f", name)

    def configure(self, name: str, *settings: str) -> None:
        self.docker("plugin", "set", name, *settings)

    @contextmanager
    def active(self, name: str, state_dir: Path | None = None, *settings: str) -> Iterator[StartTiming]:
        """The plugin NAME enabled (every other one disabled first) with `settings` applied and, when given,
        its state mount on `state_dir`; on exit everything in the engine is removed and NAME disabled."""
        for plugin in self.plugins():
            if plugin["Enabled"] and plugin["Name"] != name:
                self.clean()
                self.disable(plugin["Name"])
        if self.plugin_inspect(name)["Enabled"]:
            self.disable(name)
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            settings = (f"state.source={state_dir}", *settings)
        if settings:
            self.configure(name, *settings)
        timing = self.enable(name)
        try:
            yield timing
        finally:
            if not self.plugin_inspect(name)["Enabled"]:  # the test left it disabled: networks need it
                self.docker("plugin", "enable", name, check=False, timeout=60)
            problems = self.clean()
            self.disable(name)
            assert not problems, "cleanup failed:\n  " + "\n  ".join(problems) + f"\n{self.plugin_log(name, 20)}"

    def clean(self, disable_plugins: bool = False) -> list[str]:
        """Remove every container and every network of the engine (all of them are the tests'); then check
        that no vxlanpy device is left in the namespace.  Returns the problems."""
        problems: list[str] = []
        for container in self.client.containers.list(all=True):
            try:
                container.remove(force=True)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"container {container.name}: {exc}")
        for network in self.client.networks.list():
            if network.name in ("host", "none", "bridge"):
                continue
            try:
                network.remove()
            except Exception as exc:  # noqa: BLE001
                problems.append(f"network {network.name}: {exc}")
        deadline = time.monotonic() + 5
        while (left := self.links()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left and not problems:
            problems.append(f"vxlanpy devices left behind: {sorted(left)}")
        if disable_plugins:
            for plugin in self.plugins():
                if plugin["Enabled"]:
                    self.docker("plugin", "disable", "-f", plugin["Name"], check=False)
        return problems

    # -- the namespace

    def ip_json(self, *args: str) -> Any:
        result = run(["ip", "-n", self.netns, "-j", *args], check=False)
        if result.returncode != 0:
            return []
        return json.loads(result.stdout) if result.stdout.strip() else []

    def links(self, prefixes: tuple[str, ...] = VXLANPY_LINK_PREFIXES) -> set[str]:
        return {link["ifname"] for link in self.ip_json("link", "show") if link["ifname"].startswith(prefixes)}

    def link(self, name: str) -> dict[str, Any] | None:
        links = self.ip_json("-d", "link", "show", "dev", name)
        return links[0] if links else None

    def sysctl(self, key: str) -> str:
        return run(["ip", "netns", "exec", self.netns, "sysctl", "-n", key]).stdout.strip()

    def nft_table(self, family: str, name: str) -> str:
        """`nft list table FAMILY NAME` on the engine's host, or "" when there is no such table."""
        argv = ["ip", "netns", "exec", self.netns, "nft", "list", "table", family, name]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return result.stdout if result.returncode == 0 else ""

    def plugin_processes(self) -> list[int]:
        """Pids of the managed plugin's processes (gunicorn's master and worker, run from /opt/vxlanpy)."""
        found = []
        for pid in netns_pids(self.netns):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(arg.startswith(b"/opt/vxlanpy/bin/") for arg in argv):
                found.append(pid)
        return found


def run_in_rootfs(rootfs: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` run with `rootfs` as its root (chroot): a program of the plugin's, with the plugin's own libraries."""
    return subprocess.run(
        ["chroot", str(rootfs), *argv],
        env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def capabilities(pid: int) -> set[str]:
    """The effective capabilities of `pid`, by name (CAP_NET_ADMIN, ...)."""
    names = [
        "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
        "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
        "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
        "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
        "CHECKPOINT_RESTORE",
    ]  # fmt: skip
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            mask = int(line.split()[1], 16)
            return {f"CAP_{name}" for bit, name in enumerate(names) if mask >> bit & 1}
    return set()


def remove_stale_engines() -> list[str]:
    """Remove what a killed earlier session left: namespaces vxpl-<hex> whose owner process is gone."""
    removed = []
    listing = run(["ip", "netns", "list"], check=False)
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        suffix = name.removeprefix(f"{PREFIX}-")
        if not name.startswith(f"{PREFIX}-") or len(suffix) != 6 or not all(c in "0123456789abcdef" for c in suffix):
            continue
        try:
            owner = int(Path(f"/tmp/{name}/owner.pid").read_text().strip())
            os.kill(owner, 0)
            continue  # its session is still running
        except (OSError, ValueError):
            pass
        kill_pids(with_descendants(netns_pids(name)))
        run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(f"/tmp/{name}", ignore_errors=True)
        removed.append(name)
    return removed


def build_plugins(engine: Engine, *names: str) -> str:
    """scripts/build-plugin NAMES against the engine; returns its report (stderr).  Its base tarball and the
    plugin's rootfs are cached under BUILD_CACHE (unless the environment names other places), so that a later
    session, a later engine's or a later run's, reuses them while none of their inputs has changed."""
    env = engine.env
    env.setdefault("VXLANPY_BUILD_CACHE", str(BUILD_CACHE))
    env.setdefault("VXLANPY_PLUGIN_CACHE", str(BUILD_CACHE / "plugin"))
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-plugin"), *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    report = "\n".join(line for line in result.stderr.splitlines() if "is ignored: it is neither" not in line)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-plugin failed ({result.returncode}):\n{report[-4000:]}")
    TIMINGS["scripts/build-plugin"] = f"{time.monotonic() - started:.1f} s"
    return report
