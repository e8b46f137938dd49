"""`scripts/bench --quick` end to end, so that the benchmark cannot rot: it must run every case, print the
table and write the JSON and the PNG.  No timing is asserted (CI machines are noisy); the targets are checked
by a person reading docs/benchmarks.md.

Needs root, a Docker engine, iperf3 and what the multi-host harness needs (etcd, containerd, ...), and the
plugin socket /run/docker/plugins/vxlanpy.sock free: run it in a pytest invocation of its own, not in the
one that runs tests/e2e (whose plugin holds the socket until that session ends):

    sudo .venv/bin/python -m pytest -q tests/bench
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# scripts/ is no package: load the benchmark module from its file for its list of cases.
_spec = importlib.util.spec_from_file_location("vxlanpy_bench", REPO / "scripts" / "bench.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["vxlanpy_bench"] = bench  # dataclasses look their module up while the file executes
_spec.loader.exec_module(bench)

SOCKET = Path("/run/docker/plugins/vxlanpy.sock")


def test_quick_benchmark_runs_every_case(tmp_path: Path) -> None:
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = subprocess.run(
        [str(REPO / "scripts" / "bench"), "--quick", "--json", str(json_path), "--png", str(png_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    context = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-6000:]}"
    assert result.returncode == 0, context
    document = json.loads(json_path.read_text())
    assert document["errors"] == [], context
    assert document["missing"] == [], context
    present = {(row["section"], row["case"], row["metric"]) for row in document["rows"]}
    expected = set(bench.expected_cases(bench.QUICK))
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
