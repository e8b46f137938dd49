"""Work done soon after it is asked for, on a background thread of its own, instead of on the request path.

The owner queues the work itself (under its own lock) and calls `wake`; the thread then calls `flush`, which does
everything queued so far in one go.  The owner also flushes before any operation that must see the work done, so
the order of operations is kept.  At exit a last flush runs, so a plugin told to stop leaves nothing queued."""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Deferred:
    """Calls `flush` on a daemon thread after each `wake` (once for all the wakes that came while it worked)."""

    def __init__(self, flush: Callable[[], None], name: str) -> None:
        self._flush = flush
        self._name = name
        self._changed = threading.Condition()
        self._requested = 0  # wakes so far
        self._done = 0  # wakes that a finished flush answered
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        with self._changed:
            self._requested += 1
            self._changed.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
                atexit.register(self._flush_safely)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until a flush has run after the last wake; False if `timeout` ran out first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._done >= self._requested, timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._requested > self._done)
                answering = self._requested
            self._flush_safely()
            with self._changed:
                self._done = answering
                self._changed.notify_all()

    def _flush_safely(self) -> None:
        try:
            self._flush()
        except Exception:  # noqa: BLE001 - a thread has no caller to tell; the owner's next flush tries again
            log.exception("%s failed", self._name)
