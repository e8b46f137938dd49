"""What applies to every tier: vxlanpy code never starts a shell, nor `ip`, `bridge` or `brctl`; each test carries
its tier's marker; a tier that cannot run here is skipped, or under scripts/test fails (tests/tiers.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.tiers import FORBID_SKIPS_ENV, mark_tiers, refuse_unavailable, skips_forbidden

pytest_plugins = ["pytester"]  # tests/unit/test_tiers.py runs small pytest sessions through these hooks

FORBIDDEN_PROGRAMS = {"sh", "bash", "dash", "zsh", "ip", "bridge", "brctl"}
PLUGIN_DIR = os.sep + os.path.join("plugin", "vxlanpy") + os.sep
_violations: list[str] = []


def _called_from_plugin() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if PLUGIN_DIR in frame.f_code.co_filename:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "subprocess.Popen":
        executable, argv = args[0], args[1]
        first = argv[0] if isinstance(argv, list | tuple) and argv else argv
        names = {os.path.basename(str(executable or "")), os.path.basename(str(first or ""))}
        if names & FORBIDDEN_PROGRAMS and _called_from_plugin():
            _violations.append(f"vxlanpy ran {argv!r}")
    elif event in ("os.system", "os.exec", "os.spawn") and _called_from_plugin():
        _violations.append(f"vxlanpy called {event} {args!r}")


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def no_shell_from_vxlanpy() -> Iterator[None]:
    """Fails the test during which vxlanpy's code started a shell or an iproute2 tool."""
    before = len(_violations)
    yield
    assert _violations[before:] == [], "vxlanpy must use netlink and argv lists, never a shell"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tiers(items)


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test is set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    refuse_unavailable(item)


# Under scripts/test every prerequisite is installed, so a skipped test means a tier did not really run:
# with VXLANPY_FORBID_SKIPS=1 (scripts/test sets it) the session fails, naming each skip and its reason.
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not skips_forbidden():
        return
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    terminalreporter.section(f"{len(skipped)} skipped, and {FORBID_SKIPS_ENV}=1 makes that a failure")
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.write_line(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if skips_forbidden() and reporter is not None and reporter.stats.get("skipped"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
