"""The managed-plugin suite: vxlanpy as Docker users install it (see harness.py for the layout).

* Tests that need the engine (or root) are skipped, naming what is missing, when not root or when dockerd,
  debootstrap, docker-registry or docker-compose are missing; under scripts/test, which installs them
  (VXLANPY_FORBID_SKIPS=1), they fail instead (tests/tiers.py).
* `engine` (session): the namespace, its dockerd (with the busybox image) and the registry on its loopback.
* `built` (session): scripts/build-plugin creates vxlanpy/vxlanpy:latest and 127.0.0.1:5000/vxlanpy/vxlanpy:test
  in that engine; the second is pushed to the registry and removed, so that installing it really pulls.  Its
  base and rootfs come from /var/cache/vxlanpy-build while their inputs are unchanged (harness.BUILD_CACHE).
* Each test enables one plugin at a time through `engine.active(...)`, which removes every container and
  network and disables the plugin afterwards, pass or fail.  At the end everything is torn down: plugins,
  containers, networks, dockerd and its containerd, the registry, the namespace and /tmp/vxpl-<hex>.
* `swarm` (module, test_swarm.py): three more hosts (tests/multihost's cluster) in a swarm, the plugin installed on
  each from the registry (swarm.py); torn down, swarm left and all, at the end of the module.
* The timings (build, plugin start, image size) are printed at the end of the session.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.multihost.cluster import missing_prerequisites as cluster_prerequisites
from tests.tiers import first_reason, mark_unavailable, needs_root

from .harness import (
    LOCAL_PLUGIN,
    REGISTRY_PLUGIN,
    TIMINGS,
    Engine,
    build_plugins,
    missing_prerequisites,
    remove_stale_engines,
)
from .swarm import Swarm

PLUGIN_TESTS_DIR = Path(__file__).resolve().parent
ROOT_FIXTURES = {"engine", "built"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if PLUGIN_TESTS_DIR in Path(str(item.path)).resolve().parents]
    if not ours:
        return
    engine_tests = [item for item in ours if ROOT_FIXTURES & set(getattr(item, "fixturenames", ()))]
    reason = missing_prerequisites()
    if reason is not None:
        mark_unavailable(engine_tests, reason)
    swarm_tests = [item for item in ours if "swarm" in getattr(item, "fixturenames", ())]
    swarm_reason = first_reason(missing_prerequisites, cluster_prerequisites)
    if swarm_reason is not None and swarm_tests:
        mark_unavailable(swarm_tests, swarm_reason)
    root_reason = needs_root("this test (namespaces, mounts)")
    if root_reason is not None:
        mark_unavailable([item for item in ours if item.get_closest_marker("needs_root")], root_reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_root: needs root (namespaces, mounts)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("managed plugin (tests/plugin)")
        for key, value in TIMINGS.items():
            terminalreporter.write_line(f"{key}: {value}")


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    remove_stale_engines()
    started = time.monotonic()
    built = Engine()
    try:
        built.build()
    except BaseException:
        problems = built.teardown()
        if problems:
            print("tests/plugin teardown after a failed start:\n  " + "\n  ".join(problems))
        raise
    TIMINGS["test engine up (netns, dockerd, registry)"] = f"{time.monotonic() - started:.1f} s"
    yield built
    problems = built.teardown()
    assert not problems, "tests/plugin teardown:\n  " + "\n  ".join(problems)


@pytest.fixture(scope="session")
def built(engine: Engine) -> str:
    """The plugins, built once; returns scripts/build-plugin's report."""
    report = build_plugins(engine, LOCAL_PLUGIN, REGISTRY_PLUGIN)
    if "reusing the cached rootfs" in report:
        TIMINGS["plugin rootfs"] = "from the cache (no input changed since it was built)"
    else:
        size = int(engine.client.images.get("vxlanpy-plugin-rootfs:latest").attrs["Size"])
        TIMINGS["image vxlanpy-plugin-rootfs:latest"] = f"{size / 1e6:.0f} MB"
    started = time.monotonic()
    engine.docker("plugin", "push", REGISTRY_PLUGIN, timeout=300)
    TIMINGS["docker plugin push (local registry)"] = f"{time.monotonic() - started:.1f} s"
    engine.docker("plugin", "rm", REGISTRY_PLUGIN)
    return report


@pytest.fixture(scope="module")
def swarm(engine: Engine, built: str) -> Iterator[Swarm]:
    """A swarm of three nodes (m1 manager, w1 and w2 workers) with the plugin on each (swarm.py)."""
    made = Swarm()
    try:
        made.build(engine)
    except BaseException:
        problems = made.teardown()
        if problems:
            print("swarm teardown after a failed start:\n  " + "\n  ".join(problems))
        raise
    yield made
    problems = made.teardown()
    assert not problems, "swarm teardown:\n  " + "\n  ".join(problems)
