"""dataplane/deferred.py: work done on a background thread soon after it is asked for."""

from __future__ import annotations

import logging
import threading

import pytest

from vxlanpy.dataplane.deferred import Deferred


def test_a_wake_is_answered_by_a_flush_and_wakes_meanwhile_by_one_more() -> None:
    started, release, flushes = threading.Event(), threading.Event(), []

    def flush() -> None:
        flushes.append(1)
        started.set()
        release.wait(10)

    deferred = Deferred(flush, "test-deferred")
    assert deferred.settle(timeout=0), "nothing asked, nothing to wait for"
    deferred.wake()
    assert started.wait(10)
    for _ in range(5):  # while the first flush runs
        deferred.wake()
    assert not deferred.settle(timeout=0.05)
    release.set()
    assert deferred.settle(timeout=10)
    assert len(flushes) == 2


def test_a_failing_flush_is_logged_and_the_next_wake_still_flushes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    calls: list[int] = []

    def flush() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("iptables-restore failed")

    deferred = Deferred(flush, "test-deferred")
    deferred.wake()
    assert deferred.settle(timeout=10)
    deferred.wake()
    assert deferred.settle(timeout=10)
    assert len(calls) == 2
    assert "test-deferred failed" in caplog.text and "iptables-restore failed" in caplog.text
