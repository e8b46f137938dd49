"""A tier that cannot run here: skipped with what is missing, or failed under VXLANPY_FORBID_SKIPS=1 (tests/tiers.py).

The pytest sessions here run in-process on a throwaway test file, through the hooks of tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiers import FORBID_SKIPS_ENV, TESTS_DIR, missing_programs, tier_of

CONFTEST = """
import pytest
from tests.conftest import pytest_runtest_setup  # the real hook: refuses a test whose tier is unavailable
from tests.tiers import mark_unavailable

def pytest_collection_modifyitems(items):
    mark_unavailable([item for item in items if "needs_etcd" in item.name], "etcd not found: apt-get install etcd-server")
"""

TESTS = """
import pytest

@pytest.fixture
def cluster(tmp_path_factory):
    (tmp_path_factory.getbasetemp().parent / "cluster-built").touch()
    return "cluster"

def test_needs_etcd(cluster):
    assert cluster

def test_runs_anywhere():
    assert True
"""


@pytest.fixture
def session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv(FORBID_SKIPS_ENV, raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_tier=TESTS)
    return pytester


def test_an_unavailable_tier_is_skipped_naming_what_is_missing(session: pytest.Pytester) -> None:
    result = session.runpytest_inprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*etcd not found: apt-get install etcd-server*"])
    assert not list(session.path.parent.glob("**/cluster-built")), "the skipped test's fixtures must not run"


def test_under_forbid_skips_an_unavailable_tier_fails_before_its_fixtures(
    session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORBID_SKIPS_ENV, "1")
    result = session.runpytest_inprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*etcd not found: apt-get install etcd-server*VXLANPY_FORBID_SKIPS=1*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert not list(session.path.parent.glob("**/cluster-built")), "no cluster may be built for a refused test"


def test_missing_programs_names_each_one_and_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert missing_programs("etcd", "iperf3", "nsenter", "unshare") == (
        "etcd, iperf3, nsenter, unshare not found: apt-get install etcd-server iperf3 util-linux"
    )
    for name in ("etcd", "iperf3"):
        program = tmp_path / name
        program.write_text("#!/bin/true\n")
        program.chmod(0o755)
    assert missing_programs("etcd", "iperf3") is None
    assert missing_programs("etcd", "ip") == "ip not found: apt-get install iproute2"


def test_each_tier_is_the_directory_below_tests() -> None:
    assert tier_of(TESTS_DIR / "multihost" / "test_cluster.py") == "multihost"
    assert tier_of(TESTS_DIR / "bench" / "test_bench_quick.py") == "bench"
    assert tier_of(TESTS_DIR / "unit" / "test_cli.py") is None  # needs nothing: never unavailable
    assert tier_of(TESTS_DIR.parent / "scripts" / "benchmark" / "cli.py") is None


def test_every_test_of_a_tier_directory_carries_its_marker(pytester: pytest.Pytester) -> None:
    tier_file = str(TESTS_DIR / "multihost" / "test_harness.py")
    selected = pytester.runpytest_inprocess(
        "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "multihost", tier_file
    )
    selected.stdout.fnmatch_lines(["*test_harness.py::test_*", "* tests collected in *"])
    selected.stdout.no_fnmatch_line("*deselected*")
    left_out = pytester.runpytest_inprocess(
        "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "not multihost", tier_file
    )
    left_out.stdout.fnmatch_lines(["no tests collected (* deselected)*"])
