"""`scripts/bench --quick --only cluster-scale` end to end: the section that needs no Docker (etcd, one real
vxlanpy in a namespace, simulated hosts).  Every row is produced and the kernel got every remote entry; no
timing is asserted (CI machines are noisy), the targets are read in docs/benchmarks.md.

    sudo .venv/bin/python -m pytest -q tests/bench/test_bench_cluster_scale.py
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from scripts.benchmark.params import QUICK, expected_cases

from tests.bench.conftest import BenchRun


def test_quick_cluster_scale_produces_every_row_and_cleans_up(
    tmp_path: Path, run_bench: Callable[..., BenchRun]
) -> None:
    json_path = tmp_path / "bench.json"
    result = run_bench("--quick", "--only", "cluster-scale", "--json", str(json_path))
    context = result.context
    assert result.returncode == 0, context
    document = json.loads(json_path.read_text())
    assert document["errors"] == [] and document["missing"] == [], context
    rows = {(row["section"], row["case"], row["metric"]): row for row in document["rows"]}
    expected = [case for case in expected_cases(QUICK) if case[0] == "cluster-scale"]
    assert expected and set(expected) <= set(rows), context
    for hosts in QUICK.cluster_hosts:
        case = f"hosts={hosts}"
        info = json.loads(document["info"][f"cluster_scale_{hosts}"])
        # The real host's kernel held every simulated endpoint, and every change of the churn reached it.
        assert info["resync_ok"] and info["endpoints"] == hosts * QUICK.cluster_endpoints, info
        assert info["lost_changes"] == 0, info
        latency = rows[("cluster-scale", case, "change latency")]
        assert len(latency["samples"]) >= QUICK.churn_seconds * QUICK.churn_rate * 0.9, latency
        assert rows[("cluster-scale", case, "plugin rss")]["value"] > 0
        assert rows[("cluster-scale", case, "netlink ops per change")]["value"] > 0
    # Nothing is left: the namespaces, the veth in the host namespace, the plugin.
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert not [line for line in netns.splitlines() if line.startswith("vxb-")], netns
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    assert "vxbcs" not in links, links
