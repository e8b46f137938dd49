"""startup: the seconds from starting vxlanpy to its first answer to /Plugin.Activate (what dockerd asks first), for
`scripts/run` with .venv already installed and for `vxlanpy serve` itself, started alternately.

Each start runs in a network namespace of the benchmark's, on a socket and a state dir of its own: it touches
neither the host's interfaces and firewall nor the plugin the other sections use.  `scripts/run` is started
once before, not counted, in the host's namespace: it installs .venv when its packaging changed, and pip may
need the network for that."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.e2e.helpers import plugin_command

from .context import Bench
from .plugin import PluginProcess
from .results import percentile
from .runner import REPO, nsenter, say

SECTION = "startup"
RUN_CASE = "scripts/run (installed)"
SERVE_CASE = "vxlanpy serve"
READY_TARGET_SECONDS = 2.0
INSTALL_SECONDS = 600.0  # at most, for the first scripts/run: a pip install
READY_SECONDS = 60.0  # at most, for every other start


def ready_seconds(argv: list[str], extra_env: dict[str, str], run_dir: Path, timeout: float) -> float:
    """Start `argv` on a socket and state dir in `run_dir`; the seconds until it answered /Plugin.Activate."""
    plugin = PluginProcess(run_dir / "vxlanpy.sock", run_dir / "plugin.log")
    env = {**os.environ, **extra_env}
    env.update(VXLANPY_SOCKET=str(plugin.socket_path), VXLANPY_STATE_DIR=str(run_dir / "state"))
    env.pop("VXLANPY_STORE", None)
    started = time.perf_counter()
    try:
        plugin.launch(argv, env, REPO, timeout)
        return time.perf_counter() - started
    finally:
        plugin.stop()


def run_section(bench: Bench) -> None:
    p, results = bench.params, bench.results
    workdir = bench.workdir / "startup"
    scripts_run = [str(REPO / "scripts" / "run")]
    serve, serve_env = plugin_command()
    say("startup: scripts/run once, installing .venv if its packaging changed (not counted)")
    installed = ready_seconds(scripts_run, {}, workdir / "install", INSTALL_SECONDS)
    say(f"  first scripts/run ready in {installed:.1f} s")
    netns = f"/run/netns/{bench.ns.add('start')}"
    say(f"startup: {p.startup_runs} x (scripts/run, vxlanpy serve) until /Plugin.Activate answers")
    samples: dict[str, list[float]] = {RUN_CASE: [], SERVE_CASE: []}
    for index in range(p.startup_runs):
        for case, argv, env in ((RUN_CASE, scripts_run, {}), (SERVE_CASE, serve, serve_env)):
            run_dir = workdir / f"{case.split()[0].replace('/', '-')}-{index}"
            samples[case].append(ready_seconds(nsenter(netns, *argv), env, run_dir, READY_SECONDS))
    serve_row = results.add(SECTION, SERVE_CASE, "ready", "s", samples[SERVE_CASE])
    run_row = results.add(SECTION, RUN_CASE, "ready", "s", samples[RUN_CASE], p99=percentile(samples[RUN_CASE], 0.99))
    results.compare(run_row, serve_row, None, False, SERVE_CASE)
    run_row.target, run_row.met = f"<= {READY_TARGET_SECONDS:g} s", run_row.value <= READY_TARGET_SECONDS
