"""Convergence time: from `docker run` on one host to the first ping reply from another."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from .containers import container_address, container_pid
from .hosts import Host
from .netns import run
from .packets import first_echo_reply


def median(values: list[float]) -> float:
    return statistics.median(values)


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
