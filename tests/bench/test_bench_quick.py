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
from typing import Any

from scripts.benchmark.dataplane_encrypted import SECTION, THROUGH_WIREGUARD
from scripts.benchmark.params import ENCRYPTED_CASE, QUICK, expected_cases

from tests.bench.conftest import BenchRun
from vxlanpy.encryption_base import BACKEND_KERNEL, BACKEND_USERSPACE

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
    check_encrypted_rows(document, table)
    # Everything the benchmark made is gone: its namespaces and the plugin it started.
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert not [line for line in netns.splitlines() if line.startswith("vxb-")], netns
    if SOCKET.exists():
        probe = subprocess.run(["ss", "-xl"], capture_output=True, text=True, check=False).stdout
        assert str(SOCKET) not in probe, "the benchmark left a plugin listening"


def check_encrypted_rows(document: dict[str, Any], table: str) -> None:
    """The encrypted network's rows: measured, compared with the plain network of the same run, the backend named
    (in the rows, the table and the JSON), and its traffic seen in both hosts' WireGuard counters."""
    rows = {(row["section"], row["case"], row["metric"]): row for row in document["rows"]}
    encryption = document["info"]["encryption"]
    backend = encryption["backend"]
    assert backend in (BACKEND_KERNEL, BACKEND_USERSPACE), encryption
    for metric in ("throughput", "rtt"):
        row = rows[(SECTION, ENCRYPTED_CASE, metric)]
        assert row["value"] > 0 and row["baseline"] == "vxlanpy" and row["ratio"] > 0, row
        assert row["note"] == f"WireGuard backend {backend}", row
        assert f"{SECTION} / {ENCRYPTED_CASE} / {metric}: WireGuard backend {backend}" in table, table
    assert encryption["iperf_bytes"] > 0, encryption
    for name in ("h1", "h2"):
        host = encryption["hosts"][name]
        assert host["backend"] == backend and host["doctor"] == backend, encryption
        moved = host["wg_received"] + host["wg_sent"]
        assert moved >= THROUGH_WIREGUARD * encryption["iperf_bytes"], (name, encryption)
