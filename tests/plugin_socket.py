"""Talking to a running plugin over its Unix socket from tests, through the plugin's own client transport, and
the one wait for a starting plugin to answer /Plugin.Activate (tests/e2e, tests/multihost, tests/plugin)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from vxlanpy.operator.client import unix_transport

START_SECONDS_ENV = "VXLANPY_TEST_PLUGIN_START_SECONDS"


def _decoded(status: int, raw: bytes) -> tuple[int, Any]:
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def plugin_call(path: str, endpoint: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """POST a request (a libnetwork call, say) to the plugin; returns (HTTP status, decoded JSON or text)."""
    payload = json.dumps(body if body is not None else {}).encode()
    return _decoded(*unix_transport(path)("POST", endpoint, payload, timeout))


def plugin_get(path: str, endpoint: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET an operator endpoint (e.g. /vxlanpy/peers/NETWORK_ID) from the plugin."""
    return _decoded(*unix_transport(path)("GET", endpoint, None, timeout))


class PluginNotReady(RuntimeError):
    """The plugin did not come to answer /Plugin.Activate as a network driver (the message says why)."""


def activation_problem(path: str, timeout: float = 2.0) -> str | None:
    """None when the plugin on `path` answers /Plugin.Activate as a network driver; else what happened instead."""
    try:
        status, body = plugin_call(path, "/Plugin.Activate", timeout=timeout)
    except OSError as exc:
        return repr(exc)
    if status == 200 and isinstance(body, dict) and "NetworkDriver" in body.get("Implements", []):
        return None
    return f"HTTP {status}: {body!r}"


def wait_until_activated(
    path: str,
    timeout: float,
    *,
    gone: Callable[[], str | None] = lambda: None,
    interval: float = 0.05,
    call_timeout: float = 2.0,
) -> None:
    """Ask the plugin on `path` for /Plugin.Activate, as dockerd does, until it answers as a network driver.

    Raises PluginNotReady after `timeout` seconds with the last answer, or as soon as `gone()` gives a reason to
    stop waiting (e.g. the plugin's process exited).  VXLANPY_TEST_PLUGIN_START_SECONDS, when longer, replaces
    `timeout`: in a guest under software emulation (scripts/vm-run) Python alone takes most of a minute to start."""
    timeout = max(timeout, float(os.environ.get(START_SECONDS_ENV) or 0))
    deadline = time.monotonic() + timeout
    while True:
        reason = gone()
        if reason is not None:
            raise PluginNotReady(reason)
        problem = activation_problem(path, call_timeout)
        if problem is None:
            return
        if time.monotonic() >= deadline:
            raise PluginNotReady(f"no answer to /Plugin.Activate on {path} within {timeout:.0f} s (last: {problem})")
        time.sleep(interval)
