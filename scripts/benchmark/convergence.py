"""convergence: multi-host convergence in etcd mode, from `docker run` on h1 to the first ping reply from h2."""

from __future__ import annotations

from .context import Bench
from .dataplane_cross import cross_network
from .results import percentile
from .runner import say

SECTION = "convergence"
TIMEOUT = 10.0  # seconds a run may take to converge before it counts as a failure


def run_section(bench: Bench) -> None:
    from tests.multihost import cluster as mh

    p, results = bench.params, bench.results
    name = cross_network(bench)
    h1, h2 = bench.cluster["h1"], bench.cluster["h2"]
    say(f"convergence: {p.convergence_runs} x (docker run on h1 -> first ping reply from h2)")
    result = mh.measure_convergence(h1, h2, name, runs=p.convergence_runs, timeout=TIMEOUT)
    values = [value * 1000 for value in result.converged]
    if not values:
        raise RuntimeError(f"no run converged: {result.summary()}")
    row = results.add(SECTION, "vxlanpy etcd", "convergence", "ms", values, p99=percentile(values, 0.99))
    row.target, row.met = "p99 <= 500 ms", percentile(values, 0.99) <= 500 and result.failures == 0
    if result.failures:
        row.note = f"{result.failures} of {len(result.runs)} runs did not converge within {TIMEOUT:.0f} s"
    results.info["convergence_docker_run_ms"] = [round(t * 1000, 1) for t in result.run_times]
