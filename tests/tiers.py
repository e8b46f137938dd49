"""The test tiers (tests/<tier>/): one pytest marker each, and one way for a tier to say it cannot run here.

A tier whose prerequisite is missing (root, a program, a running engine) has its tests skipped with a reason
naming what is missing and how to install it, e.g. "etcd not found: apt-get install etcd-server".  Under
scripts/test, which installs every prerequisite and sets VXLANPY_FORBID_SKIPS=1, those tests fail with that
reason instead: a machine without a prerequisite must not "pass" a whole tier by skipping it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
# The tiers below tests/unit, which needs nothing but Python; `pytest -m multihost` and so on select one.
TIERS = ("kernel", "e2e", "multihost", "plugin", "bench")
FORBID_SKIPS_ENV = "VXLANPY_FORBID_SKIPS"
UNAVAILABLE = "unavailable"  # the marker carrying why a test's tier cannot run here

# The Debian package of each program a tier runs (scripts/test installs them).
PACKAGES = {
    "bridge": "iproute2",
    "containerd": "containerd",
    "debootstrap": "debootstrap",
    "docker": "docker.io",
    "docker-compose": "docker-compose",
    "docker-registry": "docker-registry",
    "dockerd": "docker.io",
    "etcd": "etcd-server",
    "ip": "iproute2",
    "ip6tables": "iptables",
    "iperf3": "iperf3",
    "iptables": "iptables",
    "iptables-restore": "iptables",
    "mount": "mount",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "wg": "wireguard-tools",
    "wireguard-go": "wireguard-go",
}


def skips_forbidden() -> bool:
    return os.environ.get(FORBID_SKIPS_ENV) == "1"


def tier_of(path: Path) -> str | None:
    """The tier a test file belongs to (the directory below tests/), or None (tests/unit, or not ours)."""
    try:
        first = path.resolve().relative_to(TESTS_DIR).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in TIERS else None


def mark_tiers(items: Iterable[pytest.Item]) -> None:
    """Give every test the marker of its tier, so that `-m` can select or leave out a whole tier."""
    for item in items:
        tier = tier_of(Path(str(item.path)))
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))


def mark_unavailable(items: Iterable[pytest.Item], reason: str) -> None:
    """These tests cannot run here, for `reason`: skipped, or failed under VXLANPY_FORBID_SKIPS=1 (see
    refuse_unavailable), before any of their fixtures is set up."""
    marker = getattr(pytest.mark, UNAVAILABLE)(reason)
    for item in items:
        item.add_marker(marker)


def refuse_unavailable(item: pytest.Item) -> None:
    """At the start of a test's setup: skip it, or fail it, when its tier was marked unavailable."""
    marker = item.get_closest_marker(UNAVAILABLE)
    if marker is None:
        return
    reason = str(marker.args[0])
    if skips_forbidden():
        pytest.fail(f"{reason} ({FORBID_SKIPS_ENV}=1: a tier that cannot run is a failure)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------- prerequisites


def missing_programs(*names: str) -> str | None:
    """What is missing of `names` and its packages (`etcd, iperf3 not found: apt-get install etcd-server iperf3`),
    or None when every program is on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return None
    packages = dict.fromkeys(PACKAGES.get(name, name) for name in missing)  # in order, once each
    return f"{', '.join(missing)} not found: apt-get install {' '.join(packages)}"


def needs_root(what: str) -> str | None:
    """None as root; otherwise that `what` needs root."""
    return None if os.geteuid() == 0 else f"{what} needs root: run it with sudo (sudo ./scripts/test runs every tier)"


def first_reason(*checks: Callable[[], str | None]) -> str | None:
    """The first reason the checks give, in order (a later check may rely on an earlier one passing), or None."""
    for check in checks:
        reason = check()
        if reason is not None:
            return reason
    return None
