"""The command line of scripts/bench: choose the sections, run them in order, print and write the results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import (
    calls,
    cluster_scale,
    control,
    convergence,
    dataplane_cross,
    dataplane_encrypted,
    dataplane_local,
    scale,
    startup,
)
from .context import Bench
from .output import format_markdown, format_table, write_png
from .params import FULL, QUICK, expected_cases
from .results import Results
from .runner import REPO, remove_stale_namespaces, run, say

# Each section's entry point, in the order they run.
STEPS: dict[str, Callable[[Bench], None]] = {
    "startup": startup.run_section,  # first: no other vxlanpy of the benchmark's runs yet
    "dataplane-local": dataplane_local.run_section,
    "control": control.run_section,
    "calls": calls.run_section,
    "scale": scale.run_section,
    "dataplane-cross": dataplane_cross.run_section,
    "dataplane-encrypted": dataplane_encrypted.run_section,
    "convergence": convergence.run_section,
    "cluster-scale": cluster_scale.run_section,
}
SECTIONS = tuple(STEPS)
# The sections that run vxlanpy on hosts of their own: the single-host plugin stops before them.
OWN_PLUGIN_SECTIONS = ("dataplane-cross", "dataplane-encrypted", "convergence", "cluster-scale")
DOCKER_TOOLS = ("iperf3", "nsenter", "ip", "docker", "iptables")
# What each section needs besides root (DOCKER_TOOLS unless named here); cluster-scale runs without Docker.
SECTION_TOOLS = {
    "cluster-scale": ("ip", "iptables", "etcd"),
    "dataplane-encrypted": (*DOCKER_TOOLS, "wg"),
    "startup": ("ip", "nsenter", "iptables"),
}


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


def parse_args(argv: list[str]) -> argparse.Namespace:
    from . import __doc__ as usage

    parser = argparse.ArgumentParser(prog="scripts/bench", description=(usage or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small repeats and sizes (CI): a few minutes")
    parser.add_argument("--json", type=Path, help="write every result (samples included) as JSON here")
    parser.add_argument("--png", type=Path, help="write the chart (PNG) here")
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--scale-levels", help="override the network counts of the scale section, e.g. 10,100,1000")
    parser.add_argument("--repeats", type=int, help="override the iperf3/ping rounds per case (5; 2 in --quick)")
    return parser.parse_args(argv)


def chosen_sections(only: str | None) -> list[str]:
    if not only:
        return list(SECTIONS)
    sections = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"bench: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return sections


def check_tools(sections: list[str], png: bool) -> None:
    tools = sorted({tool for name in sections for tool in SECTION_TOOLS.get(name, DOCKER_TOOLS)})
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"bench: missing tools: {', '.join(missing)} "
            "(apt-get install iperf3 util-linux iproute2 etcd-server wireguard-tools)"
        )
    if png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("bench: matplotlib is missing: pip install -e '.[bench]' (scripts/bench does)") from None


def run_sections(bench: Bench, sections: list[str]) -> None:
    """Each chosen section in order; one that fails is reported in the results and the next one runs."""
    for name, step in STEPS.items():
        if name not in sections:
            continue
        if name in OWN_PLUGIN_SECTIONS:
            bench.stop_plugin()  # one vxlanpy at a time; the cluster runs its own
        step_started = time.monotonic()
        try:
            step(bench)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - report it, run the other sections
            say(f"ERROR in {name}: {exc}")
            traceback.print_exc()
            bench.results.errors.append({"section": name, "error": f"{type(exc).__name__}: {exc}"})
        say(f"{name} done in {time.monotonic() - step_started:.1f} s")


def write_outputs(args: argparse.Namespace, results: Results, document: dict[str, Any]) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: must run as root (namespaces, iptables, dockerd): sudo ./scripts/bench")
    sections = chosen_sections(args.only)
    check_tools(sections, bool(args.png))

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    params = QUICK if args.quick else FULL
    if args.scale_levels:
        params = replace(params, scale_levels=tuple(int(n) for n in args.scale_levels.split(",")))
    if args.repeats:
        params = replace(params, repeats=args.repeats)
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
        try:
            run_sections(bench, sections)
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
    write_outputs(args, results, document)
    say(f"done in {results.info['seconds']:.0f} s")
    if missing_rows:
        say("missing results: " + ", ".join("/".join(case) for case in missing_rows))
    return 1 if results.errors or missing_rows else 0
