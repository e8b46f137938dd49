"""The benchmark tier: each file's prerequisites, checked at collection.  What is missing is named; the tests
are skipped, or under scripts/test (VXLANPY_FORBID_SKIPS=1) fail (tests/tiers.py).  The quick benchmark runs
vxlanpy in the host namespace: its FORWARD hook is removed from the host's firewall at the end of the session.
`run_bench` runs scripts/bench as a user does, its output kept for failure messages."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docker_cleanup import remove_forward_hook
from tests.multihost.cluster import missing_prerequisites as multihost_prerequisites
from tests.tiers import first_reason, mark_unavailable, missing_programs, needs_root, tier_of

REPO = Path(__file__).resolve().parents[2]


def docker_answers() -> str | None:
    answer = subprocess.run(["docker", "info"], capture_output=True, check=False)
    return None if answer.returncode == 0 else "no Docker engine answers `docker info`: start dockerd"


# Per test file: its checks, in order.  The quick benchmark runs every section: Docker on this host (the plugin
# on /run/docker/plugins/vxlanpy.sock) and the multi-host cluster; cluster-scale only etcd and one vxlanpy.
PREREQUISITES: dict[str, tuple[Callable[[], str | None], ...]] = {
    "test_bench_quick.py": (
        lambda: needs_root("the benchmark"),
        lambda: missing_programs("iperf3", "nsenter", "docker", "wg"),  # wg: the encrypted network's counters
        docker_answers,
        multihost_prerequisites,
    ),
    "test_bench_cluster_scale.py": (
        lambda: needs_root("the cluster-scale benchmark (namespaces, iptables)"),
        lambda: missing_programs("ip", "iptables", "etcd"),
    ),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reasons: dict[str, str | None] = {}
    for item in items:
        path = Path(str(item.path))
        if tier_of(path) != "bench" or path.name not in PREREQUISITES:
            continue
        if path.name not in reasons:
            reasons[path.name] = first_reason(*PREREQUISITES[path.name])
        reason = reasons[path.name]
        if reason is not None:
            mark_unavailable([item], reason)


@pytest.fixture(scope="session")
def _forward_hook_removed_at_the_end() -> Iterator[None]:
    """Set up before, so torn down after, every benchmark run of the session (run_bench asks for it: only when
    one really runs, not for the tests that only import the package)."""
    yield
    problems = remove_forward_hook()
    assert not problems, "removing vxlanpy's FORWARD hook at the end of the bench session:\n  " + "\n  ".join(problems)


@dataclass
class BenchRun:
    returncode: int
    stdout: str  # the table
    context: str  # the tails of stdout and stderr, for assertion messages


@pytest.fixture
def run_bench(_forward_hook_removed_at_the_end: None) -> Callable[..., BenchRun]:
    def run(*args: str, timeout: float = 600) -> BenchRun:
        result = subprocess.run(
            [str(REPO / "scripts" / "bench"), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        context = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-6000:]}"
        return BenchRun(result.returncode, result.stdout, context)

    return run
