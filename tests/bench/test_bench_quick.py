"""`scripts/bench --quick` end to end, so that the benchmark cannot rot: it must run every case, print the
table and write the JSON and the PNG.  No timing is asserted (CI machines are noisy); the targets are checked
by a person reading docs/benchmarks.md.

Needs root, a Docker engine, iperf3 and what the multi-host harness needs (etcd, containerd, ...), and the
plugin socket /run/docker/plugins/vxlanpy.sock free: run it in a pytest invocation of its own, not in the
one that runs tests/e2e (whose plugin holds the socket until that session ends):

    sudo .venv/bin/python -m pytest -q tests/bench
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from scripts.benchmark.params import QUICK, expected_cases

from tests.bench.conftest import BenchRun

SOCKET = Path("/run/docker/plugins/vxlanpy.sock")


def test_quick_benchmark_runs_every_case(tmp_path: Path, run_bench: Callable[..., BenchRun]) -> None:
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run_bench("--quick", "--json", str(json_path), "--png", str(png_path))
    context = result.context
    assert result.returncode == 0, context
    document = json.loads(json_path.read_text())
    assert document["errors"] == [], context
    assert document["missing"] == [], context
    present = {(row["section"], row["case"], row["metric"]) for row in document["rows"]}
    expected = set(expected_cases(QUICK))
    assert expected <= present, f"missing: {sorted(expected - present)}\n{context}"
    for row in document["rows"]:
        assert row["samples"] and row["value"] >= 0, row
    table = result.stdout
    for section, case, metric in expected:
        assert any(section in line and case in line and metric in line for line in table.splitlines()), (
            f"{section}/{case}/{metric} not in the table:\n{table}"
        )
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Everything the benchmark made is gone: its namespaces and the plugin it started.
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert not [line for line in netns.splitlines() if line.startswith("vxb-")], netns
    if SOCKET.exists():
        probe = subprocess.run(["ss", "-xl"], capture_output=True, text=True, check=False).stdout
        assert str(SOCKET) not in probe, "the benchmark left a plugin listening"
