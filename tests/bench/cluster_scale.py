"""The cluster-scale benchmark (scripts/bench --only cluster-scale): one real vxlanpy host among N simulated ones.

    root netns  ── veth ── vxb-cs-<hex> (eth0 10.255.77.2/30)
    etcd on 10.255.77.1     vxlanpy "real" on VNI 7700: bridge + VXLAN device, programmed from etcd

The simulated hosts live in this process: each is an EtcdStore + EtcdCluster of its own (the plugin's own
publishing code, with no driver and so no kernel objects: they never watch), under a lease of its own,
publishing its VTEP and its endpoints on the same VNI.  The real host's kernel is watched through a netlink
socket subscribed to neighbour and FDB notifications inside its namespace: each entry the plugin writes is
seen as it lands, without dumping tables of tens of thousands of entries while measuring.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.multihost.cluster import netns_socket, vxlanpy_command, with_descendants
from tests.plugin_socket import plugin_call
from vxlanpy.cluster import EtcdCluster
from vxlanpy.models import Endpoint, Network, NetworkConfig, Subnet
from vxlanpy.store.etcd import EtcdConfig, EtcdKV, EtcdStore

VNI = 7700
UNDERLAY = ipaddress.ip_network("10.255.77.0/30")  # root side .1 (etcd), the real host's eth0 .2
OVERLAY = ipaddress.ip_network("10.200.0.0/16")  # 65534 addresses: 500 hosts x 100 endpoints fit
SIM_VTEPS = ipaddress.ip_network("10.201.0.0/16")  # simulated VTEPs: addresses only, nothing answers on them
REAL_HOST = "real"
SIM_MAC_PREFIX = "02:5c:"  # every simulated endpoint's MAC starts so: the kernel's own entries are told apart
PUBLISH_WORKERS = 8
SIM_LEASE_TTL = 120  # seconds; refreshed every SIM_KEEPALIVE from the start: publishing 50,000 endpoints is slow
SIM_KEEPALIVE = 10.0  # concurrent etcd clients while the simulated hosts publish

# netlink (linux/rtnetlink.h, linux/neighbour.h)
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTNLGRP_NEIGH = 3
NDA_DST, NDA_LLADDR = 1, 2
NTF_SELF = 0x02
AF_BRIDGE = 7
SOL_NETLINK = 270
NLMSGHDR = struct.Struct("=IHHII")
NDMSG = struct.Struct("=BxxxiHBB")


@dataclass(frozen=True)
class NeighEvent:
    """One neighbour or FDB message: kind is 'neigh' (IP -> MAC on the bridge), 'vxlan' (MAC -> VTEP on the
    VXLAN device, NTF_SELF) or 'bridge' (the bridge's static entry for a MAC)."""

    added: bool
    kind: str
    key: str  # the IP for neigh, the MAC for vxlan/bridge
    ifindex: int


def parse_neigh(data: bytes) -> Iterator[tuple[int, int, NeighEvent | None]]:
    """(message type, sequence, event or None) for each netlink message in `data`."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, msg_type, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            break
        event = None
        body = offset + NLMSGHDR.size
        if msg_type in (RTM_NEWNEIGH, RTM_DELNEIGH) and length >= NLMSGHDR.size + NDMSG.size:
            family, ifindex, _state, flags, _ = NDMSG.unpack_from(data, body)
            attrs, dst, lladdr = body + NDMSG.size, b"", b""
            while attrs + 4 <= offset + length:
                alen, atype = struct.unpack_from("=HH", data, attrs)
                if alen < 4:
                    break
                value = data[attrs + 4 : attrs + alen]
                if atype == NDA_DST:
                    dst = value
                elif atype == NDA_LLADDR:
                    lladdr = value
                attrs += (alen + 3) & ~3
            mac = ":".join(f"{byte:02x}" for byte in lladdr)
            if family == AF_BRIDGE and len(lladdr) == 6:
                # The VXLAN device's own entries carry NTF_SELF; the bridge's are told by NDA_MASTER instead.
                kind = "vxlan" if flags & NTF_SELF else "bridge"
                event = NeighEvent(msg_type == RTM_NEWNEIGH, kind, mac, ifindex)
            elif family in (socket.AF_INET, socket.AF_INET6) and dst:
                event = NeighEvent(msg_type == RTM_NEWNEIGH, "neigh", str(ipaddress.ip_address(dst)), ifindex)
        yield msg_type, seq, event
        offset += (length + 3) & ~3


class KernelWatch:
    """Neighbour and FDB notifications inside the real host's namespace, on a thread of their own.

    `counts` holds how many of each kind are present (adds minus deletes since the watch began, the kernel
    being empty of remote entries then); `waiters` are called with each event and its arrival time."""

    def __init__(self, netns: str) -> None:
        self.sock = netns_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: bursts of 10^5 messages
        self.sock.bind((0, 1 << (RTNLGRP_NEIGH - 1)))
        self.sock.settimeout(0.2)
        self.lock = threading.Lock()
        self.present: dict[str, set[str]] = {"neigh": set(), "vxlan": set(), "bridge": set()}
        self.events = 0
        self.last_event = 0.0
        self.overflowed = False
        self.waiters: list[Callable[[NeighEvent, float], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kernel-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:  # ENOBUFS: the kernel dropped notifications; the counts are no longer exact
                self.overflowed = True
                continue
            now = time.perf_counter()
            for _, _, event in parse_neigh(data):
                if event is None:
                    continue
                if event.kind != "neigh" and not event.key.startswith(SIM_MAC_PREFIX):
                    continue  # the bridge's own entries, multicast, the flood entries
                with self.lock:
                    self.events += 1
                    self.last_event = now
                    keys = self.present[event.kind]
                    if event.added:
                        keys.add(event.key)
                    else:
                        keys.discard(event.key)
                    waiters = list(self.waiters)
                for waiter in waiters:
                    waiter(event, now)

    def count(self, kind: str) -> int:
        with self.lock:
            return len(self.present[kind])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def dump_counts(netns: str) -> dict[str, int]:
    """One FDB dump and one neighbour dump of the namespace, counted raw (no decoding beyond the header)."""
    counts = {"neigh": 0, "vxlan": 0, "bridge": 0}
    sock = netns_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        for seq, family in ((1, AF_BRIDGE), (2, socket.AF_INET)):
            request = NDMSG.pack(family, 0, 0, 0, 0)
            sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(request), RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                      + request)  # fmt: skip
            done = False
            while not done:
                for msg_type, msg_seq, event in parse_neigh(sock.recv(1 << 20)):
                    if msg_seq != seq:
                        continue
                    if msg_type in (NLMSG_DONE, NLMSG_ERROR):
                        done = True
                    elif event is not None and event.key.startswith(SIM_MAC_PREFIX if event.kind != "neigh" else ""):
                        counts[event.kind] += event.kind != "neigh" or ipaddress.ip_address(event.key) in OVERLAY
    finally:
        sock.close()
    return counts


# --------------------------------------------------------------------------------------------- simulated hosts


def mac_of(host: int, endpoint: int) -> str:
    return f"{SIM_MAC_PREFIX}{host >> 8:02x}:{host & 0xFF:02x}:{endpoint >> 8:02x}:{endpoint & 0xFF:02x}"


@dataclass
class SimHost:
    """One simulated host: the plugin's store and publishing code with fake kernel objects, its own lease."""

    index: int
    url: str
    endpoints_per_host: int
    network: Network = field(init=False)
    cluster: EtcdCluster = field(init=False)
    endpoints: list[Endpoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        kv = EtcdKV(EtcdConfig.from_url(self.url, timeout=10.0))
        store = EtcdStore(kv, f"sim{self.index:03d}")
        self.cluster = EtcdCluster(kv, store, lease_ttl=SIM_LEASE_TTL)
        vtep = SIM_VTEPS[self.index + 1]
        self.network = Network(
            network_id=secrets.token_hex(32),
            config=NetworkConfig(vni=VNI, local=vtep),
            ipv4=(Subnet(OVERLAY, ipaddress.ip_interface(f"{OVERLAY[1]}/{OVERLAY.prefixlen}")),),
        )
        first = 10 + self.index * self.endpoints_per_host  # .1 is the gateway, .2-.9 are the real host's
        for number in range(self.endpoints_per_host):
            address = OVERLAY[first + number]
            self.endpoints.append(
                Endpoint(
                    endpoint_id=secrets.token_hex(32),
                    network_id=self.network.network_id,
                    mac=mac_of(self.index, number),
                    ipv4=ipaddress.IPv4Interface(f"{address}/{OVERLAY.prefixlen}"),
                )
            )

    @property
    def store(self) -> EtcdStore:
        return self.cluster.store

    def publish_network(self) -> None:
        """What CreateNetwork does on a host in etcd mode, but the kernel objects: the store's record, then the
        VTEP under the lease."""
        self.store.add_network(self.network)
        self.cluster.publish_network(self.network)

    def publish(self, endpoint: Endpoint) -> None:
        """What CreateEndpoint does: the store's record and the cluster's announcement."""
        self.store.put_endpoint(endpoint)
        self.cluster.publish_endpoint(self.network, endpoint)

    def unpublish(self, endpoint: Endpoint) -> None:
        """What DeleteEndpoint does."""
        self.cluster.unpublish_endpoint(self.network, endpoint)
        self.store.delete_endpoint(endpoint.endpoint_id)

    def keepalive(self) -> None:
        self.cluster.kv.keepalive(self.cluster.lease())

    def revoke(self) -> None:
        self.cluster.kv.revoke(self.cluster.lease())


# --------------------------------------------------------------------------------------------- the real host


def process_tree_stats(pid: int) -> tuple[int, float]:
    """(RSS in bytes, CPU seconds) summed over `pid` and its descendants (gunicorn's arbiter and worker)."""
    rss, cpu = 0, 0.0
    page, ticks = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    for each in with_descendants([pid]):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            rss += int(Path(f"/proc/{each}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        cpu += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return rss, cpu


class RealHost:
    """The one real vxlanpy, in its own namespace, with etcd on the other end of its veth."""

    def __init__(self, workdir: Path, netns: str, store_url: str) -> None:
        self.workdir = workdir
        self.netns = netns
        self.store_url = store_url
        self.socket_path = workdir / "vxlanpy.sock"
        self.log_path = workdir / "vxlanpy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ)
        env.update(
            VXLANPY_SOCKET=str(self.socket_path),
            VXLANPY_STATE_DIR=str(self.workdir / "state"),
            VXLANPY_STORE=self.store_url,
            VXLANPY_HOST=REAL_HOST,
            VXLANPY_LOG_LEVEL="info",
            VXLANPY_ETCD_TIMEOUT="10",
            # No Docker here: at start-up the plugin removes the networks Docker does not list, and a dockerd of
            # the machine's own (scripts/test runs one) lists none of this benchmark's.
            DOCKER_HOST=f"unix://{self.workdir / 'no-docker.sock'}",
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *vxlanpy_command()], env=env, cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vxlanpy exited while starting; its log:\n{self.log_tail()}")
            if self.socket_path.exists():
                try:
                    status, _ = plugin_call(str(self.socket_path), "/Plugin.Activate", timeout=2)
                    if status == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"vxlanpy did not answer within {timeout:.0f} s; its log:\n{self.log_tail()}")

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        status, reply = plugin_call(str(self.socket_path), f"/{method}", body, timeout=60)
        if status != 200 or not isinstance(reply, dict) or reply.get("Err"):
            raise RuntimeError(f"{method} failed: HTTP {status}: {reply!r}")
        return reply

    def create_network(self) -> str:
        network_id = secrets.token_hex(32)
        self.call(
            "NetworkDriver.CreateNetwork",
            {
                "NetworkID": network_id,
                "Options": {"com.docker.network.generic": {"vni": str(VNI), "dev": "eth0"}},
                "IPv4Data": [
                    {"AddressSpace": "", "Pool": str(OVERLAY), "Gateway": f"{OVERLAY[1]}/{OVERLAY.prefixlen}"}
                ],
                "IPv6Data": [],
            },
        )
        return network_id

    def stats(self) -> tuple[int, float]:
        assert self.process is not None
        return process_tree_stats(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None:
            return
        for signum, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None


# --------------------------------------------------------------------------------------------- one case


@dataclass
class CaseResult:
    hosts: int
    endpoints: int
    resync_seconds: float
    resync_ok: bool
    latencies_ms: list[float]  # every change that reached the kernel
    lost_changes: int  # changes that did not within the timeout
    rss_mib: float  # gunicorn's arbiter and its worker together
    worker_rss_mib: float  # the worker alone: the process that holds the view and programs the kernel
    cpu_percent: float  # of one core, during the churn
    ops_per_change: float  # kernel neighbour/FDB writes per change, as its notifications show them
    changes_per_second: float
    etcd_ms: list[float] = field(default_factory=list)  # each change's publish/unpublish calls, in the bench
    notes: list[str] = field(default_factory=list)


def run_case(
    workdir: Path,
    netns: str,
    store_url: str,
    hosts: int,
    endpoints_per_host: int,
    churn_seconds: float,
    churn_rate: float,
    say: Callable[[str], None],
    resync_timeout: float = 300.0,
) -> CaseResult:
    """Publish `hosts` simulated hosts, (re)start the real plugin and time its resync, then churn."""
    notes: list[str] = []
    real = RealHost(workdir, netns, store_url)
    sims: list[SimHost] = []
    watch: KernelWatch | None = None
    stop_keepalive = threading.Event()
    try:
        # A first run of the real host creates its network (bridge, VXLAN device, the segment in etcd), so
        # that the timed start below is a restart: what a host does after an upgrade or a crash.
        real.start()
        real.create_network()
        real.stop()

        say(f"  cluster-scale hosts={hosts}: publishing {hosts} hosts x {endpoints_per_host} endpoints into etcd")
        started = time.monotonic()
        sims = [SimHost(index, store_url, endpoints_per_host) for index in range(hosts)]

        def keepalive_loop() -> None:
            while not stop_keepalive.wait(SIM_KEEPALIVE):
                for sim in sims:
                    try:
                        sim.keepalive()
                    except Exception as exc:  # noqa: BLE001 - reported; the case fails on missing entries
                        say(f"  keepalive of sim{sim.index:03d} failed: {exc}")

        with ThreadPoolExecutor(max_workers=PUBLISH_WORKERS) as pool:
            list(pool.map(lambda sim: sim.publish_network(), sims))  # each takes its lease here
            threading.Thread(target=keepalive_loop, name="sim-keepalive", daemon=True).start()
            jobs = [(sim, endpoint) for sim in sims for endpoint in sim.endpoints]
            list(pool.map(lambda job: job[0].publish(job[1]), jobs))
        say(f"  published {len(jobs)} endpoints in {time.monotonic() - started:.1f} s")

        # -- full resync: from the real plugin's start until its kernel holds every remote entry
        total = hosts * endpoints_per_host
        watch = KernelWatch(netns)
        before = dump_counts(netns)
        if any(before.values()):
            notes.append(f"remote entries before the start: {before}")
        t0 = time.perf_counter()
        real.start()
        deadline = time.monotonic() + resync_timeout
        while time.monotonic() < deadline:
            if all(watch.count(kind) + before[kind] >= total for kind in ("neigh", "vxlan", "bridge")):
                break
            if watch.overflowed and all(value >= total for value in dump_counts(netns).values()):
                break
            time.sleep(0.01)
        resync = (watch.last_event or time.perf_counter()) - t0
        time.sleep(1.0)  # the flood entries and the VTEP filter, written after the endpoints' entries
        final = dump_counts(netns)
        resync_ok = all(final[kind] >= total for kind in ("neigh", "vxlan", "bridge"))
        if not resync_ok:
            notes.append(f"after {resync_timeout:.0f} s the kernel held {final} of {total} each")
        if watch.overflowed:
            notes.append("netlink notifications overflowed during the resync: timed by dumps")
        say(f"  full resync of {total} remote endpoints: {resync:.2f} s ({final})")

        # -- change latency under churn: remove an endpoint, publish it again, ... at `churn_rate` a second
        pending: dict[tuple[str, str], float] = {}  # (what the kernel must show, key) -> when the change began
        latencies: list[float] = []
        pending_lock = threading.Lock()

        def on_event(event: NeighEvent, now: float) -> None:
            # An add is complete with its neighbour entry (written last), a removal with its VXLAN FDB entry.
            wanted = ("add", event.key) if event.added and event.kind == "neigh" else (
                ("del", event.key) if not event.added and event.kind == "vxlan" else None)  # fmt: skip
            if wanted is None:
                return
            with pending_lock:
                began = pending.pop(wanted, None)
            if began is not None:
                latencies.append((now - began) * 1000)

        watch.waiters.append(on_event)
        rng = secrets.SystemRandom()
        count = max(2, int(churn_seconds * churn_rate))
        lag = max(1, min(count // 4, int(churn_rate / 2)))  # an endpoint comes back about a second after it left
        churned = rng.sample([(sim, endpoint) for sim in sims for endpoint in sim.endpoints], k=min(total, count))
        # Removals and re-adds alternate: removal k, then the re-add of the endpoint removed `lag` removals
        # before, so that the two changes of one endpoint are never in the plugin's queue together (it would
        # rightly do nothing for them), then the re-adds still due.
        ordered: list[tuple[str, SimHost, Endpoint]] = []
        removed = 0
        while len(ordered) < count and removed < len(churned):
            ordered.append(("del", *churned[removed]))
            if removed >= lag:
                ordered.append(("add", *churned[removed - lag]))
            removed += 1
        ordered = ordered[:count]
        readd = {id(endpoint) for what, _, endpoint in ordered if what == "add"}
        ordered += [("add", sim, ep) for what, sim, ep in ordered if what == "del" and id(ep) not in readd]
        etcd_ms: list[float] = []  # how long each change's own etcd calls took (the part no host can speed up)
        events_before = watch.events
        _, cpu_before = real.stats()
        churn_started = time.perf_counter()

        def change(index: int, what: str, sim: SimHost, endpoint: Endpoint) -> None:
            due = churn_started + index / churn_rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            key = str(endpoint.ipv4.ip) if what == "add" and endpoint.ipv4 is not None else endpoint.mac
            began = time.perf_counter()
            with pending_lock:
                pending[(what, key)] = began
            (sim.publish if what == "add" else sim.unpublish)(endpoint)
            etcd_ms.append((time.perf_counter() - began) * 1000)

        with ThreadPoolExecutor(max_workers=4) as pool:
            # Every change is submitted in order; each worker sleeps until its change is due.
            futures = [pool.submit(change, index, what, sim, ep) for index, (what, sim, ep) in enumerate(ordered)]
            for future in futures:
                future.result()
        churn_wall = time.perf_counter() - churn_started
        drain = time.monotonic() + 10.0
        while time.monotonic() < drain:
            with pending_lock:
                if not pending:
                    break
            time.sleep(0.02)
        _, cpu_after = real.stats()
        cpu_window = time.perf_counter() - churn_started
        events = watch.events - events_before
        with pending_lock:
            lost = len(pending)
        if lost:
            notes.append(f"{lost} of {len(ordered)} changes did not reach the kernel within 10 s")
        rss, _ = real.stats()
        assert real.process is not None
        worker = max((pid for pid in with_descendants([real.process.pid]) if pid != real.process.pid), default=0)
        worker_rss, _ = process_tree_stats(worker) if worker else (0, 0.0)
        return CaseResult(
            hosts=hosts,
            endpoints=total,
            resync_seconds=resync,
            resync_ok=resync_ok,
            latencies_ms=latencies,
            lost_changes=lost,
            rss_mib=rss / (1 << 20),
            worker_rss_mib=worker_rss / (1 << 20),
            cpu_percent=(cpu_after - cpu_before) / cpu_window * 100,
            ops_per_change=events / max(1, len(ordered)),
            changes_per_second=len(ordered) / churn_wall,
            etcd_ms=etcd_ms,
            notes=notes,
        )
    finally:
        stop_keepalive.set()
        if watch is not None:
            watch.close()
        real.stop()
        for sim in sims:
            try:
                sim.revoke()
            except Exception:  # noqa: BLE001 - etcd goes away with the case anyway
                pass


def describe(result: CaseResult) -> str:
    return json.dumps({k: v for k, v in result.__dict__.items() if k not in ("latencies_ms", "etcd_ms")})
