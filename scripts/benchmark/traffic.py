"""iperf3 throughput and ping RTT between two network namespaces: what both data-plane sections measure."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, replace

from tests.e2e.helpers import HOST_BUSYBOX

from .params import Params
from .results import Results, percentile
from .runner import nsenter, rotate, run, say


@dataclass
class PathCase:
    name: str
    server_ns: str
    client_ns: str
    server_ip: str
    port: int


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
            # a run the server cut short (busy with the previous one) exits 0 with no totals: try again
            received = json.loads(result.stdout).get("end", {}).get("sum_received")
            if received:
                return float(received["bits_per_second"]) / 1e9
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
            iperf_once(case, replace(params, iperf_seconds=1, iperf_omit=0))
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
