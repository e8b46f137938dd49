"""The benchmark tier: each file's prerequisites, checked at collection.  What is missing is named; the tests
are skipped, or under scripts/test (VXLANPY_FORBID_SKIPS=1) fail (tests/tiers.py).  The quick benchmark runs
vxlanpy in the host namespace: its FORWARD hook is removed from the host's firewall at the end of the session."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.docker_cleanup import remove_forward_hook
from tests.multihost.cluster import missing_prerequisites as multihost_prerequisites
from tests.tiers import first_reason, mark_unavailable, missing_programs, needs_root, tier_of


def docker_answers() -> str | None:
    answer = subprocess.run(["docker", "info"], capture_output=True, check=False)
    return None if answer.returncode == 0 else "no Docker engine answers `docker info`: start dockerd"


# Per test file: its checks, in order.  The quick benchmark runs every section: Docker on this host (the plugin
# on /run/docker/plugins/vxlanpy.sock) and the multi-host cluster; cluster-scale only etcd and one vxlanpy.
PREREQUISITES: dict[str, tuple[Callable[[], str | None], ...]] = {
    "test_bench_quick.py": (
        lambda: needs_root("the benchmark"),
        lambda: missing_programs("iperf3", "nsenter", "docker"),
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


@pytest.fixture(scope="session", autouse=True)
def _forward_hook_removed_at_the_end() -> Iterator[None]:
    """Set up before, so torn down after, every benchmark run of the session (only when one really runs)."""
    yield
    problems = remove_forward_hook()
    assert not problems, "removing vxlanpy's FORWARD hook at the end of the bench session:\n  " + "\n  ".join(problems)
