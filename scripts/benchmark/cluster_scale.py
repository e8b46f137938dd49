"""cluster-scale: one real vxlanpy host among N simulated ones (100 endpoints each) in etcd: full resync time,
change latency under churn, the plugin's RSS and CPU, netlink writes per change.

    root netns  ── veth ── vxb-cs<N>-<hex> (eth0 10.255.77.2/30)
    etcd on 10.255.77.1     vxlanpy "real" on VNI 7700: bridge + VXLAN device, programmed from etcd

The simulated hosts live in this process (cluster_hosts.py); the real host's kernel is watched through netlink
(neigh_watch.py).
"""

from __future__ import annotations

import json
import secrets
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from vxlanpy.models import Endpoint

from .cluster_hosts import PUBLISH_WORKERS, SIM_KEEPALIVE, UNDERLAY, RealHost, SimHost
from .context import Bench
from .neigh_watch import KernelWatch, NeighEvent, dump_counts
from .params import PLUGIN_RSS
from .results import percentile
from .runner import run, say

SECTION = "cluster-scale"


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


Change = TypeVar("Change")


def churn_plan(churned: list[Change], count: int, lag: int) -> list[tuple[str, Change]]:
    """("del" | "add", item) for `count` changes, then the re-adds still due: every item removed comes back.

    Removals and re-adds alternate: removal k, then the re-add of the item removed `lag` removals before, so that
    the two changes of one endpoint are never in the plugin's queue together (it would rightly do nothing for
    them)."""
    ordered: list[tuple[str, Change]] = []
    removed = 0
    while len(ordered) < count and removed < len(churned):
        ordered.append(("del", churned[removed]))
        if removed >= lag:
            ordered.append(("add", churned[removed - lag]))
        removed += 1
    ordered = ordered[:count]
    readd = {id(item) for what, item in ordered if what == "add"}
    return ordered + [("add", item) for what, item in ordered if what == "del" and id(item) not in readd]


def run_case(
    workdir: Path,
    netns: str,
    store_url: str,
    hosts: int,
    endpoints_per_host: int,
    churn_seconds: float,
    churn_rate: float,
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
        ordered = [(what, sim, endpoint) for what, (sim, endpoint) in churn_plan(churned, count, lag)]
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
        rss_mib, worker_rss_mib = real.rss_mib()
        return CaseResult(
            hosts=hosts,
            endpoints=total,
            resync_seconds=resync,
            resync_ok=resync_ok,
            latencies_ms=latencies,
            lost_changes=lost,
            rss_mib=rss_mib,
            worker_rss_mib=worker_rss_mib,
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


def run_section(bench: Bench) -> None:
    from tests.etcd_server import EtcdServer

    p, results = bench.params, bench.results
    for hosts in p.cluster_hosts:
        case = f"hosts={hosts}"
        say(f"cluster-scale {case}: {hosts} simulated hosts x {p.cluster_endpoints} endpoints, one real vxlanpy")
        with ExitStack() as stack:  # a fresh namespace and etcd per case
            netns = bench.ns.add(f"cs{hosts}")
            stack.callback(bench.ns.cleanup_one, netns)
            outer = f"vxbcs{bench.suffix}"
            run(["ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", netns])
            stack.callback(run, ["ip", "link", "del", outer], check=False)
            prefix = UNDERLAY.prefixlen
            run(["ip", "addr", "add", f"{UNDERLAY[1]}/{prefix}", "dev", outer])
            run(["ip", "link", "set", outer, "up"])
            run(["ip", "-n", netns, "addr", "add", f"{UNDERLAY[2]}/{prefix}", "dev", "eth0"])
            run(["ip", "-n", netns, "link", "set", "eth0", "up"])
            shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # no disk syncs
            etcd = EtcdServer(client_host=str(UNDERLAY[1]), parent=shm)
            stack.callback(etcd.destroy)
            etcd.start()
            workdir = bench.workdir / f"cluster-{hosts}"
            workdir.mkdir(parents=True, exist_ok=True)
            result = run_case(workdir, netns, etcd.url, hosts, p.cluster_endpoints, p.churn_seconds, p.churn_rate)
        results.info[f"cluster_scale_{hosts}"] = describe(result)
        note = "; ".join(result.notes)
        row = results.add(SECTION, case, "full resync", "s", [result.resync_seconds], note=note)
        if hosts == 100:
            row.target, row.met = "<= 10 s", result.resync_ok and result.resync_seconds <= 10.0
        latencies = result.latencies_ms or [float("inf")]
        calls = result.etcd_ms or [0.0]
        note = (f"{result.changes_per_second:.0f}/s, {result.lost_changes} lost; the change's own etcd calls: "
                f"p50 {statistics.median(calls):.1f} ms, p99 {percentile(calls, 0.99):.1f} ms")  # fmt: skip
        row = results.add(SECTION, case, "change latency", "ms", latencies, p99=percentile(latencies, 0.99), note=note)
        row.target = f"p99 <= 100 ms at {p.churn_rate:g}/s"
        row.met = percentile(latencies, 0.99) <= 100.0 and not result.lost_changes
        row = results.add(SECTION, case, PLUGIN_RSS, "MiB", [result.rss_mib],
                          note=f"arbiter + worker; the worker {result.worker_rss_mib:.0f} MiB")  # fmt: skip
        row.target, row.met = "<= 150 MB", result.rss_mib * (1 << 20) <= 150e6
        results.add(SECTION, case, "plugin cpu", "% of a core", [result.cpu_percent], note="during the churn")
        results.add(SECTION, case, "netlink ops per change", "ops", [result.ops_per_change],
                    note="neighbour/FDB writes the kernel notified")  # fmt: skip
