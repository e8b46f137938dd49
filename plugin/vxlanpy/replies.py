"""The one path from a request on the plugin socket to its JSON reply, for every protocol spoken there.

A handler gets the decoded body and returns a reply with its status.  Whatever it raises becomes an error reply:
a `VxlanpyError` its message and status, anything else a generic 500 whose details go to the log only, so the
client never sees a traceback.  Every request is counted in the metrics and logged on one line:

    <method> <the protocol's description of the request> ok [what it granted] 12.3ms
    <method> <the protocol's description of the request> error 409: <message> 12.3ms

The protocols differ only in their `Dialect`: the key their client reads an error from ("Err" for the network
driver and the operator's endpoints, "Error" for the IPAM driver, as libnetwork reads them), the largest body
they accept, and how a request looks in the log.  Only protocol.py and protocol_ipam.py know libnetwork's
field names; this module knows none.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from flask import Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .errors import BadRequest, PayloadTooLarge, VxlanpyError
from .metrics import Metrics

Body = dict[str, Any]

log = logging.getLogger("vxlanpy.requests")

MAX_BODY = 1 << 20  # the largest body any endpoint accepts (the app's MAX_CONTENT_LENGTH)
MIMETYPE = "application/vnd.docker.plugins.v1+json"
# libnetwork's requests nest at most 4 levels (CreateNetwork's Options, a portmap's bindings); 32 leaves room and
# keeps a hostile body from exhausting the parser's recursion (a RecursionError, once an internal error).
MAX_DEPTH = 32


def _nothing_granted(reply: Body) -> str | None:
    return None


@dataclass(frozen=True)
class Dialect:
    """What sets one protocol's replies and log lines apart from another's."""

    error_key: str  # where the client reads an error message
    body_limit: int  # the largest request body it accepts, at most MAX_BODY
    body_hint: str  # why that is enough, for the 413 message
    describe: Callable[[Body], str]  # the request in the log line ("" for nothing)
    granted: Callable[[Body], str | None] = _nothing_granted  # what a successful reply hands out, for the log


def reply(body: Body, status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype=MIMETYPE)


def answer(
    method: str,
    dialect: Dialect,
    metrics: Metrics,
    handle: Callable[[Body], tuple[Body, int]],
    read_body: bool = True,
    log_success: bool = True,
) -> Response:
    """Answer the current Flask request with `handle(body)`.  `method` names it in the metrics and the log;
    `read_body=False` for a request whose body means nothing (a GET); `log_success=False` for a probe that
    would drown the log."""
    started = time.monotonic()
    body: Body = {}
    try:
        if read_body:
            body = read_json(dialect)
        result, status = handle(body)
    except VxlanpyError as exc:
        result, status = {dialect.error_key: exc.message}, exc.status
    except HTTPException as exc:
        result, status = {dialect.error_key: f"{exc.name}: {exc.description}"}, exc.code or 400
    except Exception as exc:  # a bug: keep the worker alive and tell the user where to look
        log.exception("%s crashed", method)
        result = {dialect.error_key: f"internal error in vxlanpy ({type(exc).__name__}); see the plugin log"}
        status = 500
    seconds = time.monotonic() - started
    metrics.observe_request(method, status, seconds)
    if log_success or status >= 300:
        _log(method, dialect, body if read_body else None, status, result, seconds)
    return reply(result, status)


def _log(method: str, dialect: Dialect, body: Body | None, status: int, result: Body, seconds: float) -> None:
    if status < 300:
        granted = dialect.granted(result)
        outcome = f"ok {granted}" if granted else "ok"
    else:
        # an error's message; a health check's 503 carries its status instead
        outcome = f"error {status}: {result.get(dialect.error_key) or result.get('status')}"
    described = dialect.describe(body) if body is not None else ""
    line = f"{method} {described} {outcome}" if described else f"{method} {outcome}"
    log.log(logging.INFO if status < 500 else logging.ERROR, "%s %.1fms", line, seconds * 1000)


def read_json(dialect: Dialect) -> Body:
    """The current request's JSON object; a body over the dialect's limit is refused (413) without reading it
    whole (reading it whole, as get_data does, let a chunked body through, and its truncated JSON was a 400)."""
    too_large = body_too_large(request.path, dialect.body_limit, dialect.body_hint)
    try:
        raw = read_limited(request.stream, request.content_length, dialect.body_limit)
    except RequestEntityTooLarge:  # over the app's MAX_CONTENT_LENGTH, without a Content-Length
        raise too_large from None
    if raw is None:
        raise too_large
    return decode_body(raw)


def decode_body(raw: bytes) -> Body:
    """dockerd sends no Content-Type, and some calls have an empty body."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if _depth_exceeds(body, MAX_DEPTH):
        raise _too_deep()
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def read_limited(stream: IO[bytes], content_length: int | None, limit: int) -> bytes | None:
    """A request body of at most `limit` bytes, or None when it is larger: a Content-Length says so, or a chunked
    body (no Content-Length) runs past it.  Reads a chunk at a time, since a read may return less than asked."""
    if (content_length or 0) > limit:
        return None
    parts, size = [], 0
    while size <= limit:
        part = stream.read(limit + 1 - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return None if size > limit else b"".join(parts)


def body_too_large(path: str, limit: int, hint: str) -> PayloadTooLarge:
    """The error for a request body over `limit` bytes sent to `path`."""
    size = f"{limit >> 20} MiB" if limit >= 1 << 20 and not limit % (1 << 20) else f"{limit >> 10} KiB"
    return PayloadTooLarge(f"request body is larger than {size}, the most /{path.lstrip('/')[:80]} accepts; {hint}")


def _too_deep() -> BadRequest:
    return BadRequest(
        f"request body nests JSON more than {MAX_DEPTH} levels deep; libnetwork's requests nest a few levels only"
    )


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` levels (iteratively: no recursion to exhaust)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def log_text(body: Body, key: str, length: int = 80) -> str:
    """A request field for the log: at most `length` characters, never a line break of the client's making."""
    value = body.get(key)
    if not isinstance(value, str) or not value:
        return "-"
    return value[:length] if value.isprintable() else repr(value[:length])
