"""Talking to a running plugin over its Unix socket from tests, through the plugin's own client transport."""

from __future__ import annotations

import json
from typing import Any

from vxlanpy.operator.client import unix_transport


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
