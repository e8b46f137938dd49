"""control: `docker network create`, `docker run --rm` and N parallel `docker run -d` (CLI wall time), vxlanpy
(and with -o gateway=docker_gwbridge) vs bridge vs macvlan."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from .context import Bench
from .docker_side import BENCH_LABEL, IMAGE, docker_cli_network_create
from .params import GWBRIDGE_CASE, SUBNETS, parallel_metric
from .runner import rotate, run, say, timed

SECTION = "control"


def run_section(bench: Bench) -> None:
    p, results = bench.params, bench.results
    _ = bench.plugin
    say("control plane: docker network create / docker run --rm / parallel docker run, per driver")
    drivers = {
        "vxlanpy": ("vxlanpy", {}),
        # -o gateway=docker_gwbridge: a second interface per container, on Docker's docker_gwbridge.
        GWBRIDGE_CASE: ("vxlanpy", {"gateway": "docker_gwbridge"}),
        "bridge": ("bridge", {}),
        "macvlan": ("macvlan", {"parent": bench.dummy}),
    }
    names = list(drivers)
    create: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(p.net_creates + 1):  # round 0 warms up (image, plugin discovery)
        for name in rotate(names, round_):
            driver, options = drivers[name]
            net = f"vxbench-cp-{name}-{bench.suffix}"
            seconds = timed(docker_cli_network_create(net, driver, SUBNETS[f"cp-{name}"], options))
            run(["docker", "network", "rm", net])
            if round_:
                create[name].append(seconds * 1000)
    networks = {}
    for name in names:
        driver, options = drivers[name]
        networks[name] = f"vxbench-run-{name}-{bench.suffix}"
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
    in_parallel = parallel_metric(p)
    for name in names:
        results.add(SECTION, name, "network create", "ms", create[name])
        results.add(SECTION, name, "docker run --rm", "ms", runs[name])
        results.add(SECTION, name, in_parallel, "ms", parallel[name])
    for metric, target in (("network create", None), ("docker run --rm", 1.05), (in_parallel, None)):
        base = results.get(SECTION, "bridge", metric)
        for name in ("vxlanpy", GWBRIDGE_CASE, "macvlan"):
            row = results.get(SECTION, name, metric)
            if row is not None:
                results.compare(row, base, target if name == "vxlanpy" else None, False, "bridge")
