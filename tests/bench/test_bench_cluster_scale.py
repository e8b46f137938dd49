"""`scripts/bench --quick --only cluster-scale` end to end: the section that needs no Docker (etcd, one real
vxlanpy in a namespace, simulated hosts).  Every row is produced and the kernel got every remote entry; no
timing is asserted (CI machines are noisy), the targets are read in docs/benchmarks.md.

    sudo .venv/bin/python -m pytest -q tests/bench/test_bench_cluster_scale.py
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def _load_bench() -> ModuleType:
    """scripts/ is no package: the benchmark module from its file (once per session, shared with test_bench_quick)."""
    if "vxlanpy_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("vxlanpy_bench", REPO / "scripts" / "bench.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["vxlanpy_bench"] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules["vxlanpy_bench"]


bench = _load_bench()


def test_quick_cluster_scale_produces_every_row_and_cleans_up(tmp_path: Path) -> None:
    json_path = tmp_path / "bench.json"
    result = subprocess.run(
        [str(REPO / "scripts" / "bench"), "--quick", "--only", "cluster-scale", "--json", str(json_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    context = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-6000:]}"
    assert result.returncode == 0, context
    document = json.loads(json_path.read_text())
    assert document["errors"] == [] and document["missing"] == [], context
    rows = {(row["section"], row["case"], row["metric"]): row for row in document["rows"]}
    expected = [case for case in bench.expected_cases(bench.QUICK) if case[0] == "cluster-scale"]
    assert expected and set(expected) <= set(rows), context
    for hosts in bench.QUICK.cluster_hosts:
        case = f"hosts={hosts}"
        info = json.loads(document["info"][f"cluster_scale_{hosts}"])
        # The real host's kernel held every simulated endpoint, and every change of the churn reached it.
        assert info["resync_ok"] and info["endpoints"] == hosts * bench.QUICK.cluster_endpoints, info
        assert info["lost_changes"] == 0, info
        latency = rows[("cluster-scale", case, "change latency")]
        assert len(latency["samples"]) >= bench.QUICK.churn_seconds * bench.QUICK.churn_rate * 0.9, latency
        assert rows[("cluster-scale", case, "plugin rss")]["value"] > 0
        assert rows[("cluster-scale", case, "netlink ops per change")]["value"] > 0
    # Nothing is left: the namespaces, the veth in the host namespace, the plugin.
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert not [line for line in netns.splitlines() if line.startswith("vxb-")], netns
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    assert "vxbcs" not in links, links
