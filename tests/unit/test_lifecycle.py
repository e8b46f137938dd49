"""The plugin's background work (vxlanpy.lifecycle.Lifecycle) on the harness's fakes: started in order, stopped
with no thread left behind, and a host identity held by another live host stops the plugin with exit code 3."""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vxlanpy.config import Settings
from vxlanpy.lifecycle import WORKER_BOOT_ERROR, Lifecycle
from vxlanpy.nodes import IdentityConflict
from vxlanpy.operator.client import DockerListing
from vxlanpy.wiring import assemble

from .conftest import NET, Harness
from .test_cluster import eventually


class FakeThreads:
    """A background component of the lifecycle: records its start and stop in `calls` under `label`, and runs one
    thread named `thread` between them."""

    def __init__(self, calls: list[str], label: str, thread: str) -> None:
        self.calls = calls
        self.label = label
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stop.wait, name=thread, daemon=True)

    def start(self) -> None:
        self.calls.append(f"{self.label}.start")
        self._thread.start()

    def stop(self) -> list[str]:
        self.calls.append(f"{self.label}.stop")
        self._stop.set()
        self._thread.join()
        return []


class FakeCluster(FakeThreads):
    """The cluster's side of the lifecycle: records the calls, and runs one thread between start and stop."""

    def __init__(self, calls: list[str], conflict: str | None = None) -> None:
        super().__init__(calls, "cluster", "vxlanpy-watch")
        self.conflict = conflict
        self.on_reconnect: Callable[[], None] | None = None
        self.on_refused: Callable[[str], None] | None = None

    def resume_lease(self) -> bool:
        self.calls.append("resume_lease")
        return True

    def claim_identity(self) -> None:
        self.calls.append("claim_identity")
        if self.conflict is not None:
            raise IdentityConflict(self.conflict)


def our_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("vxlanpy-")}


def names(threads: set[threading.Thread]) -> set[str]:
    return {thread.name for thread in threads}


def recording(harness: Harness, calls: list[str]) -> None:
    """Record each reconciliation in `calls`, and run it."""
    reconcile = harness.driver.reconcile

    def recorded(**options: Any) -> Any:
        calls.append("reconcile")
        return reconcile(**options)

    harness.driver.reconcile = recorded  # type: ignore[assignment,method-assign]


@pytest.fixture
def lifecycles() -> Iterator[list[Lifecycle]]:
    made: list[Lifecycle] = []
    yield made
    for lifecycle in made:
        lifecycle.stop()


def test_start_runs_each_step_in_order_and_stop_leaves_no_thread(harness: Harness, lifecycles: list[Lifecycle]) -> None:
    harness.create_network(NET, generic={"vni": "42"})
    del harness.links.networks["vxbr-42"]  # the plugin was down while its devices went
    calls: list[str] = []
    recording(harness, calls)
    cluster = FakeCluster(calls)

    def docker_listing() -> DockerListing:
        calls.append("docker_listing")
        return DockerListing(frozenset({NET}), frozenset())

    before = our_threads()
    encryption = FakeThreads(calls, "encryption", "vxlanpy-wg-watch")  # the mesh's peers watch
    components = assemble(
        harness.driver,
        Settings(host="testhost"),
        cluster=cluster,
        docker_listing=docker_listing,
        encryption=encryption,  # type: ignore[arg-type]  # its lifecycle side only
    )
    lifecycle = Lifecycle(components, metrics_addr=("127.0.0.1", 0), hook_check_seconds=0.01)
    lifecycles.append(lifecycle)
    lifecycle.start()

    assert calls == [
        "resume_lease",
        "claim_identity",
        "reconcile",
        "cluster.start",
        "encryption.start",
        "docker_listing",
    ]
    assert "vxbr-42" in harness.links.networks  # reconciled before serving
    assert names(our_threads() - before) == {"vxlanpy-watch", "vxlanpy-wg-watch", "vxlanpy-hooks", "vxlanpy-metrics"}
    assert lifecycle.metrics_server is not None and lifecycle.metrics_server.bound.is_set()
    port = lifecycle.metrics_server.port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/metrics")
    assert (
        'vxlanpy_reconcile_runs_total{outcome="ok",trigger="startup"} 1.0' in connection.getresponse().read().decode()
    )
    connection.close()

    assert cluster.on_reconnect is not None
    cluster.on_reconnect()  # etcd came back: reconciled again
    assert calls[-1] == "reconcile"
    text = components.metrics.exposition().decode()
    assert 'vxlanpy_reconcile_runs_total{outcome="ok",trigger="etcd"} 1.0' in text

    lifecycle.stop()
    assert calls[-2:] == ["encryption.stop", "cluster.stop"]  # the mesh's watch first: it publishes under the lease
    assert not our_threads() - before
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=5).connect()
    lifecycle.stop()  # again: nothing left to stop, and no error


def test_an_identity_another_live_host_holds_stops_the_start_with_code_3(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    recording(harness, calls)
    cluster = FakeCluster(calls, conflict="host identity node-a is held by another live host (192.0.2.9)")
    lifecycle = Lifecycle(assemble(harness.driver, Settings(), cluster=cluster), hook_check_seconds=0.01)
    before = our_threads()
    with caplog.at_level(logging.INFO, logger="vxlanpy"), pytest.raises(SystemExit) as stopped:
        lifecycle.start()
    assert stopped.value.code == WORKER_BOOT_ERROR == 3
    assert calls == ["resume_lease", "claim_identity"]  # nothing reconciled, nothing started under the identity
    assert not our_threads() - before
    refusal = [record for record in caplog.records if record.levelno == logging.CRITICAL]
    assert [record.getMessage() for record in refusal] == [
        "refusing to start: host identity node-a is held by another live host (192.0.2.9)"
    ]
    assert refusal[0].exc_info is None  # no traceback
    lifecycle.stop()
    assert "cluster.stop" not in calls  # it never started


def test_an_identity_taken_while_serving_exits_with_code_3(harness: Harness, lifecycles: list[Lifecycle]) -> None:
    exits: list[int] = []
    cluster = FakeCluster([])
    lifecycle = Lifecycle(assemble(harness.driver, Settings(), cluster=cluster), exit_process=exits.append)
    lifecycles.append(lifecycle)
    lifecycle.start()
    assert cluster.on_refused is not None
    cluster.on_refused("host identity node-a is held by another live host")
    assert exits == [WORKER_BOOT_ERROR]


def test_the_firewall_hook_watcher_checks_until_stopped(harness: Harness, lifecycles: list[Lifecycle]) -> None:
    checks: list[float] = []
    ensure_base = harness.firewall.ensure_base

    def counted() -> None:
        checks.append(time.monotonic())
        ensure_base()

    harness.firewall.ensure_base = counted  # type: ignore[method-assign]
    before = our_threads()
    lifecycle = Lifecycle(assemble(harness.driver, Settings()), hook_check_seconds=0.01)
    lifecycles.append(lifecycle)
    lifecycle.start()
    harness.firewall.fail_on.add("ensure_base")  # a failing check is logged, and the watcher keeps checking
    harness.firewall.base_ready = False  # dockerd restarted and put its rules above ours
    failing = len(checks)
    assert eventually(lambda: len(checks) >= failing + 2)
    harness.firewall.fail_on.clear()
    assert eventually(lambda: harness.firewall.base_ready)
    lifecycle.stop()
    assert not our_threads() - before
    stopped_at = len(checks)
    time.sleep(0.05)
    assert len(checks) == stopped_at


def test_without_a_cluster_or_docker_the_start_reconciles_and_watches_only(
    harness: Harness, lifecycles: list[Lifecycle]
) -> None:
    calls: list[str] = []
    recording(harness, calls)
    before = our_threads()
    lifecycle = Lifecycle(assemble(harness.driver, Settings()))
    lifecycles.append(lifecycle)
    lifecycle.start()
    assert calls == ["reconcile"] and names(our_threads() - before) == {"vxlanpy-hooks"}
    started = time.monotonic()
    lifecycle.stop()  # the watcher waits on an event, not a 10 s sleep
    assert time.monotonic() - started < 1.0 and not our_threads() - before
