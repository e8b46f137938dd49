"""vxlanpy benchmark: data plane, control plane and scale, against Docker's drivers and hand-built kernel VXLAN.

Run it through `scripts/bench` (root, a running dockerd):

    sudo ./scripts/bench [--quick] [--json PATH] [--png PATH] [--only SECTION,...]

Sections (in the order they run):

    dataplane-local   iperf3 TCP throughput and ping RTT between two containers on one host:
                      vxlanpy vs Docker's bridge vs a raw veth pair between two namespaces (the limit)
    control           `docker network create`, `docker run --rm` and N parallel `docker run -d`:
                      vxlanpy (and with -o gateway=docker_gwbridge) vs bridge vs macvlan
    calls             plugin call latency over the socket: CreateEndpoint+Join, Leave+DeleteEndpoint
    scale             per-operation cost with 10/100/1000 networks and with 1000+ endpoints (socket calls)
    dataplane-cross   the same between two network-namespace hosts: vxlanpy (multi-host harness, etcd mode) vs
                      the same topology built by hand with iproute2 (veth -> bridge -> vxlan -> underlay)
    convergence       multi-host convergence (docker run on h1 -> first ping reply from h2), etcd mode
    cluster-scale     one real vxlanpy host among N simulated ones (100 endpoints each) in etcd: full resync
                      time, change latency under churn, the plugin's RSS and CPU, netlink writes per change

Everything it makes (the plugin process and its state dir, Docker networks and containers labelled
vxlanpy.bench=1, namespaces vxb-*, the dummy parent, the multi-host cluster) is removed on exit, failure and
Ctrl-C included.  Traffic only goes to container addresses and namespaces made here.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.docker_cleanup import remove_labelled  # noqa: E402
from tests.e2e.helpers import (  # noqa: E402 - needs the repository on sys.path
    HOST_BUSYBOX,
    SOCKET_PATH,
    busybox_rootfs_tar,
    elf_is_static,
    plugin_call,
    plugin_command,
    socket_answers,
)

BENCH_LABEL = "vxlanpy.bench"
BENCH_LABELS = {BENCH_LABEL: "1"}
IMAGE = "vxlanpy-bench/busybox:latest"
NS_PREFIX = "vxb"
# Private ranges used here; none of them is routed anywhere but to the objects this script makes.
SUBNETS = {
    "dp-vxlanpy": "10.231.0.0/24",
    "dp-bridge": "10.232.0.0/24",
    "dp-veth": "10.233.0.0/24",
    "cp-vxlanpy": "10.234.0.0/24",
    "cp-bridge": "10.235.0.0/24",
    "cp-macvlan": "10.236.0.0/24",
    "cp-vxlanpy-run": "10.238.0.0/24",
    "cp-bridge-run": "10.239.0.0/24",
    "cp-macvlan-run": "10.240.0.0/24",
    "cp-vxlanpy-gwbridge": "10.241.0.0/24",
    "cp-vxlanpy-gwbridge-run": "10.242.0.0/24",
    "calls": "10.237.0.0/16",
    "cross-vxlanpy": "10.61.0.0/24",
    "cross-ref": "10.62.0.0/24",
    "cross-ref-docker": "10.63.0.0/24",
}
# Networks made by direct socket calls get VNIs from here (far from VXLANPY_VNI_RANGE's default start).
FAKE_VNI_BASE = 700000
SCALE_POOL = ipaddress.ip_network("10.128.0.0/12")  # /24 per scale network: 4096 of them
CROSS_VNI = 610
REF_VNI = 620
REF_ON_DOCKER = "reference on Docker hosts"  # the same hand-built topology, inside h1 and h2
SANDBOX = "/var/run/docker/netns/vxlanpy-bench-fake"  # never exists: only recorded by Join


_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"bench [{time.monotonic() - _T0:6.1f}s]: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Params:
    repeats: int  # iperf3/ping rounds per case (interleaved)
    iperf_seconds: int
    iperf_omit: int
    ping_count: int
    net_creates: int  # docker network create per driver
    docker_runs: int  # docker run --rm per driver
    parallel_n: int  # containers started at once
    parallel_rounds: int
    call_iters: int  # CreateEndpoint+Join / Leave+DeleteEndpoint pairs
    scale_levels: tuple[int, ...]
    scale_samples: int
    endpoints_total: int  # endpoints for the "1000+ endpoints" case
    convergence_runs: int
    cluster_hosts: tuple[int, ...]  # simulated hosts, one case each
    cluster_endpoints: int  # endpoints per simulated host
    churn_seconds: float
    churn_rate: float  # changes per second


FULL = Params(
    repeats=5,
    iperf_seconds=4,
    iperf_omit=1,
    ping_count=200,
    net_creates=10,
    docker_runs=10,
    parallel_n=10,
    parallel_rounds=3,
    call_iters=300,
    scale_levels=(10, 100, 1000),
    scale_samples=20,
    endpoints_total=1024,
    convergence_runs=20,
    cluster_hosts=(100, 500),
    cluster_endpoints=100,
    churn_seconds=30.0,
    churn_rate=100.0,
)
QUICK = Params(
    repeats=2,
    iperf_seconds=1,
    iperf_omit=0,
    ping_count=20,
    net_creates=2,
    docker_runs=2,
    parallel_n=3,
    parallel_rounds=1,
    call_iters=20,
    scale_levels=(10, 30),
    scale_samples=4,
    endpoints_total=40,
    convergence_runs=3,
    cluster_hosts=(10,),
    cluster_endpoints=100,
    churn_seconds=3.0,
    churn_rate=100.0,
)

SCALE_SETTLE_SECONDS = 30.0  # at most, after filling up to a level, before measuring at it

# The scale section's kernel baseline: the devices of a network, and of an endpoint, made straight with
# netlink by the benchmark (no vxlanpy): how much of vxlanpy's growth the kernel itself shows.
KERNEL_METRICS = ("kernel: bridge+vxlan by hand", "kernel: veth by hand")

GWBRIDGE_CASE = "vxlanpy-gwbridge"  # a vxlanpy network with -o gateway=docker_gwbridge
SECTIONS = ("dataplane-local", "control", "calls", "scale", "dataplane-cross", "convergence", "cluster-scale")
CLUSTER_METRICS = ("full resync", "change latency", "plugin rss", "plugin cpu", "netlink ops per change")
# What each section needs besides root; cluster-scale runs without Docker.
SECTION_TOOLS = {"cluster-scale": ("ip", "iptables", "etcd")}
DOCKER_TOOLS = ("iperf3", "nsenter", "ip", "docker", "iptables")


def expected_cases(params: Params) -> list[tuple[str, str, str]]:
    """(section, case, metric) of every row a complete run produces; the CI test checks them all."""
    rows = []
    for case in ("veth", "bridge", "vxlanpy"):
        rows += [("dataplane-local", case, "throughput"), ("dataplane-local", case, "rtt")]
    for case in ("reference", REF_ON_DOCKER, "vxlanpy"):
        rows += [("dataplane-cross", case, "throughput"), ("dataplane-cross", case, "rtt")]
    for case in ("vxlanpy", GWBRIDGE_CASE, "bridge", "macvlan"):
        rows += [("control", case, "network create"), ("control", case, "docker run --rm")]
        rows.append(("control", case, f"{params.parallel_n} x docker run -d"))
    rows += [("calls", "vxlanpy", "CreateEndpoint+Join"), ("calls", "vxlanpy", "Leave+DeleteEndpoint")]
    for level in params.scale_levels:
        rows += [("scale", f"{level} networks", "network create"), ("scale", f"{level} networks", "endpoint join")]
        rows += [("scale", f"{level} networks", metric) for metric in KERNEL_METRICS]
    rows.append(("scale", f"{params.endpoints_total} endpoints", "endpoint join"))
    rows.append(("convergence", "vxlanpy etcd", "convergence"))
    for hosts in params.cluster_hosts:
        rows += [("cluster-scale", f"hosts={hosts}", metric) for metric in CLUSTER_METRICS]
    return rows


# --------------------------------------------------------------------------------------------- results


@dataclass
class Row:
    section: str
    case: str
    metric: str
    unit: str
    value: float  # the median
    samples: list[float] = field(default_factory=list)
    p99: float | None = None
    baseline: str | None = None  # the case this one is compared with
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str = ""


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the largest one)."""
    ordered = sorted(values)
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.errors: list[dict[str, str]] = []
        self.info: dict[str, Any] = {}

    def add(self, section: str, case: str, metric: str, unit: str, samples: list[float], **kw: Any) -> Row:
        if not samples:
            raise RuntimeError(f"no samples for {section}/{case}/{metric}")
        row = Row(section, case, metric, unit, statistics.median(samples), [round(s, 6) for s in samples], **kw)
        self.rows.append(row)
        shown = f"{row.value:.3f} {unit}" + (f" (p99 {row.p99:.3f})" if row.p99 is not None else "")
        say(f"  {section} / {case} / {metric}: {shown}")
        return row

    def get(self, section: str, case: str, metric: str) -> Row | None:
        for row in self.rows:
            if (row.section, row.case, row.metric) == (section, case, metric):
                return row
        return None

    def compare(self, row: Row, base: Row | None, target: float | None, higher_is_better: bool, label: str) -> None:
        """Set row.ratio = row / base and whether it meets `target` (a ratio)."""
        if base is None or not base.value:
            return
        row.baseline = base.case if base.section == row.section and base.metric == row.metric else label
        row.ratio = row.value / base.value
        if target is not None:
            row.target = f"{'>=' if higher_is_better else '<='} {target:g}x {label}"
            row.met = row.ratio >= target if higher_is_better else row.ratio <= target


# --------------------------------------------------------------------------------------------- small tools


def run(argv: list[str], *, check: bool = True, timeout: float = 120.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[:500]}")
    return result


def timed(argv: list[str], timeout: float = 120.0) -> float:
    started = time.perf_counter()
    run(argv, timeout=timeout)
    return time.perf_counter() - started


def rotate(items: list[Any], by: int) -> list[Any]:
    by %= len(items)
    return items[by:] + items[:by]


def nsenter(netns_path: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={netns_path}", *argv]


def container_netns(container: Any) -> str:
    container.reload()
    return f"/proc/{int(container.attrs['State']['Pid'])}/ns/net"


class SocketClient:
    """libnetwork-style calls over the plugin's Unix socket on one kept-alive connection (as dockerd's client)."""

    def __init__(self, path: str) -> None:
        import http.client

        self.path = path
        self._http = http.client
        self._conn: Any = None

    def _connect(self) -> Any:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(120)
        sock.connect(self.path)
        conn = self._http.HTTPConnection("localhost", timeout=120)
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
            except (OSError, self._http.HTTPException):
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


# --------------------------------------------------------------------------------------------- the plugin


class BenchPlugin:
    """vxlanpy serving /run/docker/plugins/vxlanpy.sock with a temporary state dir, at log level info."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.log_path = workdir / "plugin.log"
        self.socket_path = SOCKET_PATH
        self.process: subprocess.Popen[bytes] | None = None

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
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the plugin exited while starting; see {self.log_path}:\n{self.log_tail()}")
            try:
                status, body = plugin_call(str(self.socket_path), "/Plugin.Activate", timeout=2)
                if status == 200 and "NetworkDriver" in body.get("Implements", []):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the plugin did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # workers that outlived their master
        except ProcessLookupError:
            pass
        if self.socket_path.exists() and not socket_answers(self.socket_path):
            self.socket_path.unlink()
        self.process = None


# --------------------------------------------------------------------------------------------- docker side


def docker_client() -> Any:
    import docker

    client = docker.from_env(version="auto", timeout=300)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no usable engine
        raise SystemExit(f"bench: no Docker engine answers ({exc}); start dockerd (scripts/test starts one)") from None
    return client


def ensure_image(client: Any, stack: ExitStack) -> None:
    """A busybox image made from the host's static busybox with `docker import` (no registry); removed at exit."""
    import docker.errors

    try:
        client.images.get(IMAGE)
        return  # left by an earlier run that was killed: reuse it, and remove it at exit like our own
    except docker.errors.ImageNotFound:
        pass
    finally:
        stack.callback(lambda: _quiet(lambda: client.images.remove(IMAGE, force=True)))
    if not HOST_BUSYBOX.exists() or not elf_is_static(HOST_BUSYBOX.resolve()):
        raise SystemExit("bench: /bin/busybox must be a static busybox: apt-get install busybox-static")
    applets = run([str(HOST_BUSYBOX), "--list"]).stdout.split()
    data = busybox_rootfs_tar(HOST_BUSYBOX.resolve().read_bytes(), applets)
    repository, tag = IMAGE.rsplit(":", 1)
    client.api.import_image_from_data(
        data, repository=repository, tag=tag, changes=["ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin", 'CMD ["/bin/sh"]']
    )


def _quiet(action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


def create_docker_network(client: Any, name: str, driver: str, subnet: str, options: dict[str, str]) -> Any:
    import docker.types

    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
    return client.networks.create(name, driver=driver, options=options, ipam=ipam, labels=dict(BENCH_LABELS))


def start_container(client: Any, network: str) -> Any:
    container = client.containers.run(
        IMAGE, ["sleep", "3600"], detach=True, network=network, labels=dict(BENCH_LABELS),
        name=f"vxbench-{secrets.token_hex(4)}",
    )  # fmt: skip
    container.reload()
    return container


def docker_cli_network_create(name: str, driver: str, subnet: str, options: dict[str, str]) -> list[str]:
    argv = ["docker", "network", "create", "-d", driver, "--subnet", subnet, "--label", f"{BENCH_LABEL}=1"]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    return [*argv, name]


# --------------------------------------------------------------------------------------------- namespaces


class Namespaces:
    """Named network namespaces made here (`ip netns add`), deleted at exit."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.made: list[str] = []

    def add(self, label: str) -> str:
        name = f"{NS_PREFIX}-{label}-{self.suffix}"
        run(["ip", "netns", "add", name])
        self.made.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def cleanup(self) -> None:
        for name in reversed(self.made):
            self._remove(name)
        self.made.clear()

    def cleanup_one(self, name: str) -> None:
        if name in self.made:
            self._remove(name)
            self.made.remove(name)

    @staticmethod
    def _remove(name: str) -> None:
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            _quiet(lambda pid=pid: os.kill(int(pid), signal.SIGKILL))
        run(["ip", "netns", "del", name], check=False)


def remove_stale_namespaces() -> None:
    """Namespaces of an earlier benchmark run that was killed (vxb-*-<hex> whose owner process is gone)."""
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(f"{NS_PREFIX}-"):
            continue
        owner = Path(f"/tmp/vxlanpy-bench-{name.rsplit('-', 1)[-1]}.pid")
        try:
            if Path(f"/proc/{int(owner.read_text().strip())}").exists():
                continue
        except (OSError, ValueError):
            pass
        run(["ip", "netns", "del", name], check=False)


def veth_pair_case(ns: Namespaces, mtu: int) -> tuple[str, str, str]:
    """Two namespaces joined by a veth pair: the limit.  Returns (server netns path, client netns path, server IP)."""
    a, b = ns.add("va"), ns.add("vb")
    run(["ip", "-n", a, "link", "add", "eth0", "mtu", str(mtu), "type", "veth", "peer", "name", "eth0", "netns", b])
    net = ipaddress.ip_network(SUBNETS["dp-veth"])
    for netns, host in ((a, 1), (b, 2)):
        run(["ip", "-n", netns, "addr", "add", f"{net[host]}/{net.prefixlen}", "dev", "eth0"])
        run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    return f"/run/netns/{a}", f"/run/netns/{b}", str(net[1])


# --------------------------------------------------------------------------------------------- iperf3 / ping


class IperfServer:
    def __init__(self, netns_path: str, port: int) -> None:
        self.port = port
        self.process = subprocess.Popen(
            nsenter(netns_path, "iperf3", "-s", "-p", str(port)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@dataclass
class PathCase:
    name: str
    server_ns: str
    client_ns: str
    server_ip: str
    port: int


def iperf_once(case: PathCase, params: Params) -> float:
    """Gbit/s received by the server in one TCP run."""
    argv = nsenter(
        case.client_ns, "iperf3", "-c", case.server_ip, "-p", str(case.port), "-t", str(params.iperf_seconds)
    )
    argv += ["-J", "--connect-timeout", "3000"]
    if (os.cpu_count() or 1) >= 2:
        # Client on CPU 0, server on CPU 1, in every case: where the scheduler put them moved single runs by
        # a fifth on two cores, more than the differences measured.
        argv += ["-A", "0,1"]
    if params.iperf_omit:
        argv += ["-O", str(params.iperf_omit)]
    for _attempt in range(20):  # the server may still be starting, or busy with the previous run
        result = run(argv, check=False, timeout=params.iperf_seconds + params.iperf_omit + 30)
        if result.returncode == 0:
            report = json.loads(result.stdout)
            return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
        time.sleep(0.2)
    raise RuntimeError(
        f"iperf3 to {case.name} ({case.server_ip}) failed: {result.stdout[-400:]} {result.stderr[-400:]}"
    )


_RTT = re.compile(r"time=([0-9.]+) ms")


def ping_rtts(case: PathCase, count: int) -> list[float]:
    """Round-trip times in microseconds: busybox ping -A (the next ping as soon as the reply arrives)."""
    argv = nsenter(case.client_ns, str(HOST_BUSYBOX), "ping", "-A", "-c", str(count), "-W", "2", case.server_ip)
    result = run(argv, check=False, timeout=count + 30)
    rtts = [float(value) * 1000 for value in _RTT.findall(result.stdout)]
    if not rtts:
        raise RuntimeError(f"ping to {case.name} ({case.server_ip}) got no reply: {result.stdout[-300:]}")
    return rtts


def measure_paths(results: Results, section: str, cases: list[PathCase], params: Params, cpu_note: str) -> None:
    """Every case `repeats` times, interleaved (a different case first in each round); medians per case."""
    servers = [IperfServer(case.server_ns, case.port) for case in cases]
    try:
        for case in cases:  # warm-up: ARP, the first connection, the servers being up
            ping_rtts(case, 3)
            iperf_once(case, Params(**{**asdict(params), "iperf_seconds": 1, "iperf_omit": 0}))
        throughput: dict[str, list[float]] = {case.name: [] for case in cases}
        rtt: dict[str, list[float]] = {case.name: [] for case in cases}
        for round_ in range(params.repeats):
            for case in rotate(cases, round_):
                throughput[case.name].append(iperf_once(case, params))
                rtt[case.name] += ping_rtts(case, max(1, params.ping_count // params.repeats))
            say(f"  round {round_ + 1}/{params.repeats}: " + ", ".join(
                f"{name} {values[-1]:.2f} Gbit/s" for name, values in throughput.items()
            ))  # fmt: skip
    finally:
        for server in servers:
            server.stop()
    for case in cases:
        results.add(section, case.name, "throughput", "Gbit/s", throughput[case.name], note=cpu_note)
        results.add(section, case.name, "rtt", "us", rtt[case.name], p99=percentile(rtt[case.name], 0.99))


# --------------------------------------------------------------------------------------------- sections


class Bench:
    def __init__(self, params: Params, stack: ExitStack, workdir: Path) -> None:
        self.params = params
        self.stack = stack
        self.workdir = workdir
        self.results = Results()
        self.suffix = secrets.token_hex(3)
        self.ns = Namespaces(self.suffix)
        pidfile = Path(f"/tmp/vxlanpy-bench-{self.suffix}.pid")
        pidfile.write_text(f"{os.getpid()}\n")
        stack.callback(lambda: pidfile.unlink(missing_ok=True))
        stack.callback(self.ns.cleanup)
        self._client: Any = None
        self._plugin: BenchPlugin | None = None
        self._cluster: Any = None
        self._dummy: str | None = None

    # -- lazily started resources (each registers its own cleanup)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
            self.stack.callback(self._client.close)
            leftovers = remove_labelled(self._client, BENCH_LABEL)  # from a run that was killed
            if leftovers:
                say("WARNING: could not remove objects of an earlier run: " + "; ".join(leftovers))
            self.stack.callback(self._remove_docker_objects)
            ensure_image(self._client, self.stack)
        return self._client

    def _remove_docker_objects(self) -> None:
        problems = remove_labelled(self._client, BENCH_LABEL)
        if problems:
            say("WARNING: cleanup: " + "; ".join(problems))

    @property
    def plugin(self) -> BenchPlugin:
        if self._plugin is None:
            plugin = BenchPlugin(self.workdir / "plugin")
            plugin.workdir.mkdir(parents=True, exist_ok=True)
            self.stack.callback(plugin.stop)
            plugin.start()
            self._plugin = plugin
            _ = self.client  # docker objects on vxlanpy must go before the plugin stops (LIFO)
        return self._plugin

    @property
    def dummy(self) -> str:
        if self._dummy is None:
            # A veth pair rather than a dummy: the dummy module is not available everywhere.
            name, peer = f"vxbmv-{self.suffix}", f"vxbmp-{self.suffix}"
            run(["ip", "link", "add", name, "type", "veth", "peer", "name", peer])
            self.stack.callback(lambda: run(["ip", "link", "del", name], check=False))
            run(["ip", "link", "set", peer, "up"])
            run(["ip", "link", "set", name, "up"])
            self._dummy = name
        return self._dummy

    @property
    def cluster(self) -> Any:
        if self._cluster is None:
            from tests.multihost import cluster as mh

            reason = mh.missing_prerequisites()
            if reason:
                raise RuntimeError(f"the multi-host harness cannot run here: {reason}")
            mh.remove_stale_clusters()
            built = mh.Cluster()
            self._cluster = built

            def teardown() -> None:
                problems = built.teardown()
                if problems:
                    say("WARNING: multi-host teardown: " + "; ".join(problems))

            self.stack.callback(teardown)
            started = time.monotonic()
            say("building the multi-host harness (3 namespaces, 3 dockerd, etcd) ...")
            built.build()
            built.start_plugins()
            built.plugins_wanted = True
            say(f"multi-host harness {built.suffix} up in {time.monotonic() - started:.1f} s")
        return self._cluster

    def stop_plugin(self) -> None:
        """Stop the single-host plugin (after removing what Docker holds on it) before the cluster runs."""
        if self._plugin is not None and self._client is not None:
            self._remove_docker_objects()
            self._plugin.stop()

    # -- data plane, one host

    def dataplane_local(self) -> None:
        p, client = self.params, self.client
        _ = self.plugin
        say("data plane on one host: veth pair vs Docker bridge vs vxlanpy")
        vx = create_docker_network(client, f"vxbench-dp-vx-{self.suffix}", "vxlanpy", SUBNETS["dp-vxlanpy"], {})
        br = create_docker_network(client, f"vxbench-dp-br-{self.suffix}", "bridge", SUBNETS["dp-bridge"], {})
        cases = []
        for port, (name, network) in enumerate((("bridge", br), ("vxlanpy", vx)), start=5301):
            server, client_c = start_container(client, network.name), start_container(client, network.name)
            server.reload()
            ip = server.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
            cases.append(PathCase(name, container_netns(server), container_netns(client_c), ip, port))
        vx_mtu = int(Path("/sys/class/net/eth0/mtu").read_text()) if Path("/sys/class/net/eth0").exists() else 1500
        server_ns, client_ns, ip = veth_pair_case(self.ns, 1500)
        cases.insert(0, PathCase("veth", server_ns, client_ns, ip, 5300))
        self.results.info["dataplane_local_mtu"] = {"veth": 1500, "bridge": 1500, "vxlanpy": vx_mtu - 50}
        measure_paths(self.results, "dataplane-local", cases, p, "")
        veth = self.results.get("dataplane-local", "veth", "throughput")
        bridge = self.results.get("dataplane-local", "bridge", "throughput")
        mine = self.results.get("dataplane-local", "vxlanpy", "throughput")
        if mine is not None:
            self.results.compare(mine, bridge, 0.97, True, "bridge")
        if bridge is not None:
            self.results.compare(bridge, veth, None, True, "veth")
        for case in ("bridge", "vxlanpy"):
            row = self.results.get("dataplane-local", case, "rtt")
            if row is not None:
                self.results.compare(row, self.results.get("dataplane-local", "veth", "rtt"), None, False, "veth")

    # -- control plane

    def control(self) -> None:
        p = self.params
        _ = self.plugin
        say("control plane: docker network create / docker run --rm / parallel docker run, per driver")
        drivers = {
            "vxlanpy": ("vxlanpy", {}),
            # -o gateway=docker_gwbridge: a second interface per container, on Docker's docker_gwbridge.
            GWBRIDGE_CASE: ("vxlanpy", {"gateway": "docker_gwbridge"}),
            "bridge": ("bridge", {}),
            "macvlan": ("macvlan", {"parent": self.dummy}),
        }
        names = list(drivers)
        create: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(p.net_creates + 1):  # round 0 warms up (image, plugin discovery)
            for name in rotate(names, round_):
                driver, options = drivers[name]
                net = f"vxbench-cp-{name}-{self.suffix}"
                seconds = timed(docker_cli_network_create(net, driver, SUBNETS[f"cp-{name}"], options))
                run(["docker", "network", "rm", net])
                if round_:
                    create[name].append(seconds * 1000)
        networks = {}
        for name in names:
            driver, options = drivers[name]
            networks[name] = f"vxbench-run-{name}-{self.suffix}"
            run(docker_cli_network_create(networks[name], driver, SUBNETS[f"cp-{name}-run"], options))
        runs: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(p.docker_runs + 1):
            for name in rotate(names, round_):
                argv = ["docker", "run", "--rm", "--network", networks[name], "--label", f"{BENCH_LABEL}=1"]
                seconds = timed([*argv, IMAGE, "true"])
                if round_:
                    runs[name].append(seconds * 1000)
        parallel: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(p.parallel_rounds):
            for name in rotate(names, round_):
                argv = ["docker", "run", "-d", "--network", networks[name], "--label", f"{BENCH_LABEL}=1", IMAGE]
                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=p.parallel_n) as pool:
                    futures = [pool.submit(run, [*argv, "sleep", "600"]) for _ in range(p.parallel_n)]
                    ids = [future.result().stdout.strip() for future in futures]
                parallel[name].append((time.perf_counter() - started) * 1000)
                run(["docker", "rm", "-f", *ids])
        for name in names:
            run(["docker", "network", "rm", networks[name]], check=False)
        parallel_metric = f"{p.parallel_n} x docker run -d"
        for name in names:
            self.results.add("control", name, "network create", "ms", create[name])
            self.results.add("control", name, "docker run --rm", "ms", runs[name])
            self.results.add("control", name, parallel_metric, "ms", parallel[name])
        for metric, target in (("network create", None), ("docker run --rm", 1.05), (parallel_metric, None)):
            base = self.results.get("control", "bridge", metric)
            for name in ("vxlanpy", GWBRIDGE_CASE, "macvlan"):
                row = self.results.get("control", name, metric)
                if row is not None:
                    self.results.compare(row, base, target if name == "vxlanpy" else None, False, "bridge")

    # -- plugin calls

    def _fake_network(self, sock: SocketClient, vni: int, subnet: ipaddress.IPv4Network) -> str:
        network_id = fake_id()
        gateway = f"{subnet[1]}/{subnet.prefixlen}"
        sock.call(
            "NetworkDriver.CreateNetwork",
            {
                "NetworkID": network_id,
                "Options": {"com.docker.network.generic": {"vni": str(vni)}},
                "IPv4Data": [{"AddressSpace": "", "Pool": str(subnet), "Gateway": gateway}],
                "IPv6Data": [],
            },
        )
        return network_id

    @staticmethod
    def _endpoint_up(sock: SocketClient, network_id: str, address: str) -> tuple[str, float]:
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

    @staticmethod
    def _endpoint_down(sock: SocketClient, network_id: str, endpoint_id: str) -> float:
        started = time.perf_counter()
        sock.call("NetworkDriver.Leave", {"NetworkID": network_id, "EndpointID": endpoint_id})
        sock.call("NetworkDriver.DeleteEndpoint", {"NetworkID": network_id, "EndpointID": endpoint_id})
        return time.perf_counter() - started

    def _served_times(self, methods: tuple[str, ...]) -> list[float]:
        """Per endpoint, the sum of the handler times the plugin logged for `methods`, in log order."""
        pattern = re.compile(r"NetworkDriver\.(\w+) network=\S+ endpoint=(\S+) ok ([0-9.]+)ms")
        per_endpoint: dict[str, float] = {}
        order: list[str] = []
        for line in self.plugin.log_path.read_text(errors="replace").splitlines():
            match = pattern.search(line)
            if match is None or match[1] not in methods:
                continue
            if match[2] not in per_endpoint:
                order.append(match[2])
            per_endpoint[match[2]] = per_endpoint.get(match[2], 0.0) + float(match[3])
        return [per_endpoint[endpoint] for endpoint in order]

    def calls(self) -> None:
        p = self.params
        sock = SocketClient(str(self.plugin.socket_path))
        say(f"plugin calls over the socket: {p.call_iters} x (CreateEndpoint+Join, Leave+DeleteEndpoint)")
        subnet = ipaddress.ip_network(SUBNETS["calls"])
        network_id = self._fake_network(sock, FAKE_VNI_BASE, subnet)
        up: list[float] = []
        down: list[float] = []
        try:
            hosts = subnet.hosts()
            next(hosts)  # the gateway
            for index in range(p.call_iters + 5):
                endpoint_id, seconds = self._endpoint_up(sock, network_id, f"{next(hosts)}/{subnet.prefixlen}")
                down_seconds = self._endpoint_down(sock, network_id, endpoint_id)
                if index >= 5:  # warm-up
                    up.append(seconds * 1000)
                    down.append(down_seconds * 1000)
        finally:
            sock.call("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
            sock.close()
        row = self.results.add("calls", "vxlanpy", "CreateEndpoint+Join", "ms", up, p99=percentile(up, 0.99))
        row.target, row.met = "p99 <= 10 ms", percentile(up, 0.99) <= 10.0
        # The same calls as the plugin itself timed them (its request log): without the client, the socket and
        # the HTTP layer, i.e. what is left when the machine is busy with other work.
        served = self._served_times(("CreateEndpoint", "Join"))
        if len(served) >= p.call_iters:
            served = served[-p.call_iters :]
            self.results.add("calls", "vxlanpy (in plugin)", "CreateEndpoint+Join", "ms", served,
                             p99=percentile(served, 0.99))  # fmt: skip
        self.results.add("calls", "vxlanpy", "Leave+DeleteEndpoint", "ms", down, p99=percentile(down, 0.99))

    # -- scale

    def scale(self) -> None:
        p = self.params
        sock = SocketClient(str(self.plugin.socket_path))
        say(f"scale: networks {', '.join(map(str, p.scale_levels))}, then {p.endpoints_total} endpoints")
        subnets = SCALE_POOL.subnets(new_prefix=24)
        vnis = iter(range(FAKE_VNI_BASE + 1, FAKE_VNI_BASE + 100000))
        made: list[str] = []
        endpoints: list[tuple[str, str]] = []

        def new_network() -> tuple[str, ipaddress.IPv4Network]:
            subnet = next(subnets)
            network_id = self._fake_network(sock, next(vnis), subnet)
            made.append(network_id)
            return network_id, subnet

        def delete_all() -> None:
            started = time.monotonic()
            for network_id, endpoint_id in endpoints:
                _quiet(lambda n=network_id, e=endpoint_id: self._endpoint_down(sock, n, e))
            endpoints.clear()
            deleters = [SocketClient(sock.path) for _ in range(4)]

            def delete(index_and_id: tuple[int, str]) -> None:
                index, network_id = index_and_id
                deleters[index % len(deleters)].call("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})

            with ThreadPoolExecutor(max_workers=len(deleters)) as pool:
                list(pool.map(delete, enumerate(made)))
            for client in deleters:
                client.close()
            say(f"  removed {len(made)} scale networks in {time.monotonic() - started:.1f} s")
            made.clear()

        self.stack.callback(lambda: _quiet(delete_all) if made or endpoints else None)
        create_at: dict[int, list[float]] = {}
        join_at: dict[int, list[float]] = {}
        try:
            for level in p.scale_levels:
                fill_started = time.monotonic()
                while len(made) < level:
                    new_network()
                say(f"  {level} networks present (filled in {time.monotonic() - fill_started:.1f} s)")
                # The kernel finishes bringing a burst of new devices up (or down) in the background (link
                # state events, RCU callbacks, kworkers) for seconds; measure the networks present, not that.
                settled = wait_until_idle(SCALE_SETTLE_SECONDS)
                say(f"  machine idle after {settled:.1f} s")
                create_at[level] = []
                probes = []
                for _ in range(p.scale_samples):
                    started = time.perf_counter()
                    network_id, subnet = new_network()
                    create_at[level].append((time.perf_counter() - started) * 1000)
                    probes.append((network_id, subnet))
                join_at[level] = []
                network_id, subnet = probes[0]
                for index in range(p.scale_samples):
                    endpoint_id, seconds = self._endpoint_up(sock, network_id, f"{subnet[index + 2]}/24")
                    join_at[level].append(seconds * 1000)
                    self._endpoint_down(sock, network_id, endpoint_id)
                for network_id, _ in probes:  # back to `level` networks
                    sock.call("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
                    made.remove(network_id)
                self.results.add("scale", f"{level} networks", "network create", "ms", create_at[level])
                self.results.add("scale", f"{level} networks", "endpoint join", "ms", join_at[level])
                for metric, values in zip(KERNEL_METRICS, kernel_devices(p.scale_samples, next(subnets)), strict=True):
                    self.results.add("scale", f"{level} networks", metric, "ms", values)
            # 1000+ endpoints, spread over networks of at most 256 (a bridge takes 1024 ports at most)
            per_network = 256
            started = time.monotonic()
            targets: list[tuple[str, ipaddress.IPv4Network]] = []
            while len(endpoints) < p.endpoints_total:
                if not targets or sum(1 for n, _ in endpoints if n == targets[-1][0]) >= per_network - 8:
                    targets.append(new_network())
                network_id, subnet = targets[-1]
                used = sum(1 for n, _ in endpoints if n == network_id)
                endpoint_id, _ = self._endpoint_up(sock, network_id, f"{subnet[used + 2]}/24")
                endpoints.append((network_id, endpoint_id))
            say(f"  {len(endpoints)} endpoints present (made in {time.monotonic() - started:.1f} s)")
            network_id, subnet = targets[-1]
            used = sum(1 for n, _ in endpoints if n == network_id)
            samples = []
            for index in range(p.scale_samples):
                endpoint_id, seconds = self._endpoint_up(sock, network_id, f"{subnet[used + 2 + index]}/24")
                samples.append(seconds * 1000)
                self._endpoint_down(sock, network_id, endpoint_id)
            self.results.add("scale", f"{p.endpoints_total} endpoints", "endpoint join", "ms", samples)
        finally:
            delete_all()
            sock.close()
        low = min(p.scale_levels)
        for level in p.scale_levels:
            for metric in ("network create", "endpoint join", *KERNEL_METRICS):
                row = self.results.get("scale", f"{level} networks", metric)
                base = self.results.get("scale", f"{low} networks", metric)
                if row is not None and level != low:
                    target = None if metric in KERNEL_METRICS else 1.2
                    self.results.compare(row, base, target, False, f"{low} networks")
        row = self.results.get("scale", f"{p.endpoints_total} endpoints", "endpoint join")
        if row is not None:
            self.results.compare(row, self.results.get("scale", f"{low} networks", "endpoint join"), 1.2, False,
                                 f"{low} networks")  # fmt: skip

    # -- across two hosts

    def _cross_network(self) -> str:
        """The vxlanpy network on h1 and h2 (vxlanpy IPAM), made once."""
        cluster = self.cluster
        name = getattr(self, "_cross_name", None)
        if name is not None:
            return str(name)
        import docker.types

        name = f"vxbench-x-{self.suffix}"
        for host in (cluster["h1"], cluster["h2"]):
            pool = docker.types.IPAMPool(subnet=SUBNETS["cross-vxlanpy"])
            host.docker.networks.create(
                name, driver="vxlanpy", options={"vni": str(CROSS_VNI)},
                ipam=docker.types.IPAMConfig(driver="vxlanpy", pool_configs=[pool]), labels={"vxlanpy.test": "1"},
            )  # fmt: skip
        self._cross_name = name
        return name

    def _reference_hosts(self) -> tuple[str, str, str]:
        """The seed recipe by hand on two fresh namespaces of the same underlay (no Docker, no vxlanpy):
        container netns -veth-> bridge -> vxlan (remote = the other host) -> eth0 -> underlay bridge."""
        from tests.multihost import cluster as mh

        cluster = self.cluster
        hosts = [("ra", "10.250.0.21"), ("rb", "10.250.0.22")]
        net = ipaddress.ip_network(SUBNETS["cross-ref"])
        paths = []
        for index, (label, underlay_ip) in enumerate(hosts):
            host_ns = f"{mh.PREFIX}-{label}-{cluster.suffix}"
            run(["ip", "netns", "add", host_ns])
            cluster.extra_netns.append(host_ns)  # the harness's teardown deletes it
            cluster._attach(host_ns, f"p-{label}", underlay_ip)
            guest = self.ns.add(f"r{label}")
            build_recipe(host_ns, underlay_ip, hosts[1 - index][1], REF_VNI, guest, f"{net[index + 1]}/{net.prefixlen}")
            paths.append(f"/run/netns/{guest}")
        return paths[0], paths[1], str(net[1])

    def _reference_on_docker_hosts(self) -> tuple[str, str, str]:
        """The same recipe built by hand inside the host namespaces of h1 and h2, next to vxlanpy and dockerd:
        the host's firewall as vxlanpy sees it (br_netfilter on, conntrack, FORWARD policy DROP, so the hand-made
        bridge needs an ACCEPT rule, as it would on any Docker host), without vxlanpy's devices or rules."""
        hosts = [self.cluster["h1"], self.cluster["h2"]]
        net = ipaddress.ip_network(SUBNETS["cross-ref-docker"])
        paths = []
        for index, host in enumerate(hosts):
            guest = self.ns.add(f"d{index}")
            build_recipe(host.netns, host.ip, hosts[1 - index].ip, REF_VNI + 1, guest,
                         f"{net[index + 1]}/{net.prefixlen}", prefix="ref")  # fmt: skip
            run(["nsenter", f"--net=/run/netns/{host.netns}", "iptables", "-w", "10", "-I", "FORWARD", "1", "-i",
                 "refbr0", "-o", "refbr0", "-j", "ACCEPT"])  # fmt: skip
            paths.append(f"/run/netns/{guest}")
        return paths[0], paths[1], str(net[1])

    def dataplane_cross(self) -> None:
        p = self.params
        say("data plane across two namespace hosts: hand-built VXLAN vs vxlanpy (etcd mode)")
        name = self._cross_network()
        h1, h2 = self.cluster["h1"], self.cluster["h2"]
        server, client_c = h1.run_container(name), h2.run_container(name)
        server.reload()
        ip = server.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
        vx = PathCase("vxlanpy", container_netns(server), container_netns(client_c), ip, 5311)
        ref_server, ref_client, ref_ip = self._reference_hosts()
        ref = PathCase("reference", ref_server, ref_client, ref_ip, 5310)
        on_docker = PathCase(REF_ON_DOCKER, *self._reference_on_docker_hosts(), 5312)
        measure_paths(self.results, "dataplane-cross", [ref, on_docker, vx], p, "")
        for metric, target, higher in (("throughput", 0.97, True), ("rtt", None, False)):
            reference = self.results.get("dataplane-cross", "reference", metric)
            row = self.results.get("dataplane-cross", "vxlanpy", metric)
            if row is not None:
                self.results.compare(row, reference, target, higher, "reference")
            row = self.results.get("dataplane-cross", REF_ON_DOCKER, metric)
            if row is not None:
                self.results.compare(row, reference, None, higher, "reference")
        for container in (server, client_c):
            _quiet(lambda container=container: container.remove(force=True))

    # -- convergence

    def convergence(self) -> None:
        from tests.multihost import cluster as mh

        p = self.params
        name = self._cross_network()
        h1, h2 = self.cluster["h1"], self.cluster["h2"]
        say(f"convergence: {p.convergence_runs} x (docker run on h1 -> first ping reply from h2)")
        result = mh.measure_convergence(h1, h2, name, runs=p.convergence_runs, timeout=10.0)
        values = [value * 1000 for value in result.converged]
        if not values:
            raise RuntimeError(f"no run converged: {result.summary()}")
        row = self.results.add("convergence", "vxlanpy etcd", "convergence", "ms", values, p99=percentile(values, 0.99))
        row.target, row.met = "p99 <= 500 ms", percentile(values, 0.99) <= 500 and result.failures == 0
        if result.failures:
            row.note = f"{result.failures} of {len(result.runs)} runs did not converge within 10 s"
        self.results.info["convergence_docker_run_ms"] = [round(t * 1000, 1) for t in result.run_times]

    # -- cluster scale

    def cluster_scale(self) -> None:
        from tests.bench import cluster_scale as cs
        from tests.etcd_server import EtcdServer

        p = self.params
        for hosts in p.cluster_hosts:
            case = f"hosts={hosts}"
            say(f"cluster-scale {case}: {hosts} simulated hosts x {p.cluster_endpoints} endpoints, one real vxlanpy")
            with ExitStack() as stack:  # a fresh namespace and etcd per case
                netns = self.ns.add(f"cs{hosts}")
                stack.callback(self.ns.cleanup_one, netns)
                outer = f"vxbcs{self.suffix}"
                run(["ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", netns])
                stack.callback(run, ["ip", "link", "del", outer], check=False)
                prefix = cs.UNDERLAY.prefixlen
                run(["ip", "addr", "add", f"{cs.UNDERLAY[1]}/{prefix}", "dev", outer])
                run(["ip", "link", "set", outer, "up"])
                run(["ip", "-n", netns, "addr", "add", f"{cs.UNDERLAY[2]}/{prefix}", "dev", "eth0"])
                run(["ip", "-n", netns, "link", "set", "eth0", "up"])
                shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # no disk syncs
                etcd = EtcdServer(client_host=str(cs.UNDERLAY[1]), parent=shm)
                stack.callback(etcd.destroy)
                etcd.start()
                workdir = self.workdir / f"cluster-{hosts}"
                workdir.mkdir(parents=True, exist_ok=True)
                result = cs.run_case(workdir, netns, etcd.url, hosts, p.cluster_endpoints, p.churn_seconds,
                                     p.churn_rate, say)  # fmt: skip
            self.results.info[f"cluster_scale_{hosts}"] = cs.describe(result)
            note = "; ".join(result.notes)
            row = self.results.add("cluster-scale", case, "full resync", "s", [result.resync_seconds], note=note)
            if hosts == 100:
                row.target, row.met = "<= 10 s", result.resync_ok and result.resync_seconds <= 10.0
            latencies = result.latencies_ms or [float("inf")]
            calls = result.etcd_ms or [0.0]
            note = (f"{result.changes_per_second:.0f}/s, {result.lost_changes} lost; the change's own etcd calls: "
                    f"p50 {statistics.median(calls):.1f} ms, p99 {percentile(calls, 0.99):.1f} ms")  # fmt: skip
            row = self.results.add("cluster-scale", case, "change latency", "ms", latencies,
                                   p99=percentile(latencies, 0.99), note=note)  # fmt: skip
            row.target = f"p99 <= 100 ms at {p.churn_rate:g}/s"
            row.met = percentile(latencies, 0.99) <= 100.0 and not result.lost_changes
            row = self.results.add("cluster-scale", case, "plugin rss", "MiB", [result.rss_mib],
                                   note=f"arbiter + worker; the worker {result.worker_rss_mib:.0f} MiB")  # fmt: skip
            row.target, row.met = "<= 150 MB", result.rss_mib * (1 << 20) <= 150e6
            self.results.add("cluster-scale", case, "plugin cpu", "% of a core", [result.cpu_percent],
                             note="during the churn")  # fmt: skip
            self.results.add("cluster-scale", case, "netlink ops per change", "ops", [result.ops_per_change],
                             note="neighbour/FDB writes the kernel notified")  # fmt: skip


# --------------------------------------------------------------------------------------------- output


def build_recipe(host_ns: str, local: str, remote: str, vni: int, guest: str, address: str, prefix: str = "") -> None:
    """The seed recipe with iproute2 in `host_ns`: bridge `<prefix>br0`, VXLAN `<prefix>vx0` (or `vxlan0`) to
    `remote` on eth0, and a veth `<prefix>v0` (or `veth0`) whose other end is eth0 in `guest` with `address`;
    MTU 1450 (the underlay's 1500 minus VXLAN's 50)."""
    bridge, vxlan, veth = (f"{prefix}br0", f"{prefix}vx0", f"{prefix}v0") if prefix else ("br0", "vxlan0", "veth0")
    mtu = str(1500 - 50)
    run(["ip", "-n", host_ns, "link", "add", bridge, "type", "bridge"])
    run(["ip", "-n", host_ns, "link", "add", vxlan, "type", "vxlan", "id", str(vni), "local", local, "remote", remote,
         "dstport", "4789", "dev", "eth0"])  # fmt: skip
    run(["ip", "-n", host_ns, "link", "set", vxlan, "master", bridge, "up"])
    run(["ip", "-n", host_ns, "link", "set", bridge, "up"])
    run(["ip", "-n", host_ns, "link", "add", veth, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "netns", guest])
    run(["ip", "-n", host_ns, "link", "set", veth, "master", bridge, "up"])
    run(["ip", "-n", guest, "addr", "add", address, "dev", "eth0"])
    run(["ip", "-n", guest, "link", "set", "eth0", "mtu", mtu, "up"])


def wait_until_idle(limit: float, busy_below: float = 0.1) -> float:
    """Wait (at most `limit` seconds, at least 2) until the CPUs were less than `busy_below` busy over a second,
    as /proc/stat counts it; returns the seconds waited."""
    started = time.monotonic()

    def busy_and_total() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields) - fields[3] - fields[4], sum(fields)  # all but idle and iowait

    time.sleep(1.0)
    while True:
        busy0, total0 = busy_and_total()
        time.sleep(1.0)
        busy1, total1 = busy_and_total()
        waited = time.monotonic() - started
        if (busy1 - busy0) < busy_below * max(1, total1 - total0) or waited >= limit:
            return waited


def kernel_devices(samples: int, subnet: ipaddress.IPv4Network) -> tuple[list[float], list[float]]:
    """The kernel's own cost of what vxlanpy builds, made straight with netlink in the host namespace (no
    vxlanpy, no firewall): per sample, a bridge with an address, up, and a VXLAN port on it as vxlanpy makes
    them (ms), then a veth pair on that bridge, up (ms); each removed before the next sample.  Like vxlanpy's,
    the bridge (IPv4 only), the VXLAN port and the host end of the veth get no IPv6 address."""
    from pyroute2 import IPRoute

    no_ipv6 = {"IFLA_AF_SPEC": {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}}

    dev_index = None
    network_times, veth_times = [], []
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET)[:1]:
            dev_index = route.get("oif")
        for sample in range(samples):
            names = [f"vxk-{kind}{sample}" for kind in ("br", "vx", "h", "c")]
            try:
                started = time.perf_counter()
                ipr.link("add", ifname=names[0], kind="bridge", mtu=1450, br_stp_state=0, br_forward_delay=0)
                bridge = ipr.link_lookup(ifname=names[0])[0]
                ipr.link("set", index=bridge, **no_ipv6)
                ipr.addr("add", index=bridge, address=str(subnet[1]), prefixlen=subnet.prefixlen)
                ipr.link("set", index=bridge, state="up")
                vxlan = {"vxlan_id": FAKE_VNI_BASE - 1 - sample, "vxlan_port": 4789, "vxlan_learning": 0}
                if dev_index is not None:
                    vxlan["vxlan_link"] = dev_index
                ipr.link("add", ifname=names[1], kind="vxlan", mtu=1450, master=bridge, **vxlan)
                ipr.link("set", ifname=names[1], state="up", **no_ipv6)
                network_times.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                ipr.link("add", ifname=names[2], kind="veth", mtu=1450, master=bridge, state="up",
                         peer={"ifname": names[3], "mtu": 1450})  # fmt: skip
                ipr.link("set", ifname=names[2], **no_ipv6)
                veth_times.append((time.perf_counter() - started) * 1000)
            finally:
                for name in names[2::-1]:
                    with contextlib.suppress(Exception):
                        ipr.link("del", ifname=name)
    return network_times, veth_times


def machine() -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    mem = next((int(line.split()[1]) // 1024 for line in read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal")), 0)  # fmt: skip
    versions = {}
    for name, argv in (("docker", ["docker", "version", "-f", "{{.Server.Version}}"]), ("iperf3", ["iperf3", "-v"]),
                       ("iptables", ["iptables", "-V"])):  # fmt: skip
        try:
            versions[name] = run(argv, check=False, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            versions[name] = "?"
    commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = bool(run(["git", "-C", str(REPO), "status", "--porcelain", "--", "plugin"], check=False).stdout.strip())
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit + ("+dirty" if dirty else ""),
    }


def _cells(row: Row, bold_miss: bool = False) -> list[str]:
    value = f"{row.value:.3g} {row.unit}" if row.value < 1000 else f"{row.value:.0f} {row.unit}"
    met = "-" if row.met is None else ("yes" if row.met else ("**no**" if bold_miss else "NO"))
    return [
        row.section, row.case, row.metric, value, "-" if row.p99 is None else f"{row.p99:.3g}", row.baseline or "-",
        "-" if row.ratio is None else f"{row.ratio:.3f}", row.target or "-", met,
    ]  # fmt: skip


TABLE_HEADER = ["section", "case", "metric", "median", "p99", "vs", "ratio", "target", "met"]


def format_table(results: Results) -> str:
    lines = [TABLE_HEADER, *(_cells(row) for row in results.rows)]
    widths = [max(len(cells[i]) for cells in lines) for i in range(len(TABLE_HEADER))]
    out = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip() for cells in lines]
    out.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(out)


def format_markdown(results: Results) -> str:
    lines = [TABLE_HEADER, ["---"] * len(TABLE_HEADER), *(_cells(row, bold_miss=True) for row in results.rows)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def write_png(results: Results, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), dpi=72)
    fig.suptitle(title, fontsize=10)

    def bars(ax: Any, items: list[tuple[str, Row | None]], ylabel: str, subtitle: str, p99: bool = False) -> None:
        items = [(label, row) for label, row in items if row is not None]
        labels = [label for label, _ in items]
        values = [row.value for _, row in items]  # type: ignore[union-attr]
        colors = ["#d62728" if label.startswith("vxlanpy") else "#7f7f7f" for label in labels]
        ax.bar(range(len(values)), values, color=colors, width=0.6, label="median")
        if p99:
            ax.scatter(range(len(values)), [row.p99 or row.value for _, row in items], marker="_", s=300,
                       color="black", label="p99", zorder=3)  # type: ignore[union-attr]  # fmt: skip
            ax.legend(fontsize=7)
        for index, value in enumerate(values):
            ax.text(index, value, f"{value:.3g}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels, fontsize=7, rotation=20, ha="right")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(subtitle, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)

    get = results.get
    bars(axes[0][0], [
        ("veth (1 host)", get("dataplane-local", "veth", "throughput")),
        ("bridge (1 host)", get("dataplane-local", "bridge", "throughput")),
        ("vxlanpy (1 host)", get("dataplane-local", "vxlanpy", "throughput")),
        ("hand-built (2 hosts)", get("dataplane-cross", "reference", "throughput")),
        ("hand-built on Docker hosts", get("dataplane-cross", REF_ON_DOCKER, "throughput")),
        ("vxlanpy (2 hosts)", get("dataplane-cross", "vxlanpy", "throughput")),
    ], "Gbit/s", "iperf3 TCP throughput (median)")  # fmt: skip
    bars(axes[0][1], [
        ("veth (1 host)", get("dataplane-local", "veth", "rtt")),
        ("bridge (1 host)", get("dataplane-local", "bridge", "rtt")),
        ("vxlanpy (1 host)", get("dataplane-local", "vxlanpy", "rtt")),
        ("hand-built (2 hosts)", get("dataplane-cross", "reference", "rtt")),
        ("hand-built on Docker hosts", get("dataplane-cross", REF_ON_DOCKER, "rtt")),
        ("vxlanpy (2 hosts)", get("dataplane-cross", "vxlanpy", "rtt")),
    ], "microseconds", "ping RTT (median, p99)", p99=True)  # fmt: skip
    ax = axes[0][2]
    drivers = ["bridge", "macvlan", "vxlanpy"]
    metrics = [row.metric for row in results.rows if row.section == "control" and row.case == "bridge"]
    for offset, driver in enumerate(drivers):
        values = [(get("control", driver, metric) or Row("", "", "", "", 0.0)).value for metric in metrics]
        color = {"bridge": "#7f7f7f", "macvlan": "#bcbd22", "vxlanpy": "#d62728"}[driver]
        ax.bar([i + (offset - 1) * 0.27 for i in range(len(metrics))], values, width=0.27, label=driver, color=color)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics, fontsize=7)
    ax.set_ylabel("ms (median)", fontsize=8)
    ax.set_title("Docker control plane (CLI wall time)", fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    bars(axes[1][0], [
        ("CreateEndpoint+Join", get("calls", "vxlanpy", "CreateEndpoint+Join")),
        ("Leave+DeleteEndpoint", get("calls", "vxlanpy", "Leave+DeleteEndpoint")),
    ], "ms", "plugin calls over the socket (target p99 <= 10 ms)", p99=True)  # fmt: skip
    axes[1][0].axhline(10, color="#d62728", linestyle="--", linewidth=0.8)
    bars(axes[1][1], [("vxlanpy etcd", get("convergence", "vxlanpy etcd", "convergence"))], "ms",
         "multi-host convergence (target p99 <= 500 ms)", p99=True)  # fmt: skip
    axes[1][1].axhline(500, color="#d62728", linestyle="--", linewidth=0.8)
    ax = axes[1][2]
    levels = sorted({int(row.case.split()[0]) for row in results.rows if row.case.endswith(" networks")})
    for metric, color, style in (
        ("network create", "#1f77b4", "-"),
        ("endpoint join", "#d62728", "-"),
        (KERNEL_METRICS[0], "#1f77b4", ":"),
        (KERNEL_METRICS[1], "#d62728", ":"),
    ):
        points = [(level, get("scale", f"{level} networks", metric)) for level in levels]
        xs = [level for level, row in points if row is not None]
        ys = [row.value for _, row in points if row is not None]
        if xs:
            ax.plot(xs, ys, marker="o", linestyle=style, label=metric, color=color)
    endpoints = [row for row in results.rows if row.section == "scale" and row.case.endswith(" endpoints")]
    for row in endpoints:
        ax.scatter([int(row.case.split()[0])], [row.value], marker="s", color="#ff7f0e", label=f"join, {row.case}")
    if levels:
        ax.set_xscale("log")
    ax.set_xlabel("networks on the host", fontsize=8)
    ax.set_ylabel("ms per operation (median)", fontsize=8)
    ax.set_title("scale: per-operation cost (target <= 1.2x at 10)", fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small repeats and sizes (CI): a few minutes")
    parser.add_argument("--json", type=Path, help="write every result (samples included) as JSON here")
    parser.add_argument("--png", type=Path, help="write the chart (PNG) here")
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--scale-levels", help="override the network counts of the scale section, e.g. 10,100,1000")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: must run as root (namespaces, iptables, dockerd): sudo ./scripts/bench")
    sections = list(SECTIONS)
    if args.only:
        sections = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise SystemExit(f"bench: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    tools = sorted({tool for name in sections for tool in SECTION_TOOLS.get(name, DOCKER_TOOLS)})
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"bench: missing tools: {', '.join(missing)} (apt-get install iperf3 util-linux iproute2 etcd-server)"
        )
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("bench: matplotlib is missing: pip install -e '.[bench]' (scripts/bench does)") from None

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    params = QUICK if args.quick else FULL
    if args.scale_levels:
        params = Params(**{**asdict(params), "scale_levels": tuple(int(n) for n in args.scale_levels.split(","))})
    started = time.monotonic()
    remove_stale_namespaces()
    workdir = Path(tempfile.mkdtemp(prefix="vxlanpy-bench-"))
    with ExitStack() as stack:
        stack.callback(lambda: shutil.rmtree(workdir, ignore_errors=True))
        bench = Bench(params, stack, workdir)
        results = bench.results
        results.info["machine"] = machine()
        results.info["mode"] = "quick" if args.quick else "full"
        results.info["params"] = asdict(params)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("dataplane-local", bench.dataplane_local),
            ("control", bench.control),
            ("calls", bench.calls),
            ("scale", bench.scale),
            ("dataplane-cross", bench.dataplane_cross),
            ("convergence", bench.convergence),
            ("cluster-scale", bench.cluster_scale),
        ]
        try:
            for name, step in steps:
                if name not in sections:
                    continue
                if name in ("dataplane-cross", "convergence", "cluster-scale"):
                    bench.stop_plugin()  # one vxlanpy at a time; the cluster runs its own
                step_started = time.monotonic()
                try:
                    step()
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # noqa: BLE001 - report it, run the other sections
                    say(f"ERROR in {name}: {exc}")
                    traceback.print_exc()
                    results.errors.append({"section": name, "error": f"{type(exc).__name__}: {exc}"})
                say(f"{name} done in {time.monotonic() - step_started:.1f} s")
        finally:
            say("cleaning up ...")
    results.info["seconds"] = round(time.monotonic() - started, 1)
    table = format_table(results)
    print(table)
    if results.errors:
        print("\nerrors:\n" + "\n".join(f"  {e['section']}: {e['error']}" for e in results.errors))
    expected = [case for case in expected_cases(params) if case[0] in sections]
    present = {(row.section, row.case, row.metric) for row in results.rows}
    missing_rows = [case for case in expected if case not in present]
    document = {
        "info": results.info,
        "expected": [list(case) for case in expected],
        "missing": [list(case) for case in missing_rows],
        "errors": results.errors,
        "rows": [asdict(row) for row in results.rows],
        "table": table,
        "markdown": format_markdown(results),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n")
        say(f"wrote {args.json}")
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        info = results.info["machine"]
        title = (f"vxlanpy {info['commit']} - {info['cores']} cores, {info['cpu'][:40]}, kernel {info['kernel']} - "
                 f"{results.info['mode']} run")  # fmt: skip
        write_png(results, args.png, title)
        say(f"wrote {args.png}")
    say(f"done in {results.info['seconds']:.0f} s")
    if missing_rows:
        say("missing results: " + ", ".join("/".join(case) for case in missing_rows))
    return 1 if results.errors or missing_rows else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as interrupt:
        say(f"interrupted ({interrupt}); cleaned up")
        sys.exit(130)
