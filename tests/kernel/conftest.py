"""Fixtures shared by the kernel tests: throwaway network namespaces that are always removed again.

Everything the tests build lives inside namespaces created here, so tearing the namespaces down removes it
all (bridges, VXLAN devices, both ends of every veth).  Teardown runs whether the test passed or not.
Without root or iproute2/iptables/nsenter the tier is skipped, naming what is missing; under scripts/test
(VXLANPY_FORBID_SKIPS=1) it fails instead (tests/tiers.py).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from tests.tiers import first_reason, mark_unavailable, missing_programs, needs_root, tier_of

NETNS_PREFIX = "vxt-"
KERNEL_PROGRAMS = ("ip", "bridge", "iptables", "ip6tables", "iptables-restore", "nsenter")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ours = [item for item in items if tier_of(Path(str(item.path))) == "kernel"]
    if not ours:
        return
    reason = first_reason(
        lambda: needs_root("the kernel tier (network namespaces, bridges, VXLAN devices, iptables)"),
        lambda: missing_programs(*KERNEL_PROGRAMS),
    )
    if reason is not None:
        mark_unavailable(ours, reason)


def unique_name(prefix: str = NETNS_PREFIX) -> str:
    return prefix + secrets.token_hex(4)


class Namespaces:
    """Creates named network namespaces (and tracks links made in the root namespace) for one test."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.root_links: list[str] = []
        self._closers: list[Callable[[], object]] = []

    def new(self) -> str:
        name = unique_name()
        netns.create(name)
        self.created.append(name)
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("set", index=1, state="up")
        return name

    def track_root_link(self, name: str) -> None:
        """A link the test made in the namespace pytest runs in: deleted at teardown."""
        self.root_links.append(name)

    def close_later(self, close: Callable[[], object]) -> None:
        """Close something holding a socket inside a namespace (which keeps it alive) before removal."""
        self._closers.append(close)

    def cleanup(self) -> None:
        errors: list[str] = []
        for close in reversed(self._closers):
            try:
                close()
            except Exception as error:  # keep tearing down, report at the end
                errors.append(f"close: {error}")
        for name in self.created:
            try:
                netns.remove(name)
            except FileNotFoundError:
                pass
            except OSError as error:
                errors.append(f"remove netns {name}: {error}")
        if self.root_links:
            with IPRoute() as ipr:
                for link in self.root_links:
                    for index in ipr.link_lookup(ifname=link):
                        ipr.link("del", index=index)
        if errors:
            raise RuntimeError("kernel test teardown failed: " + "; ".join(errors))


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        spaces.cleanup()
