"""HTTP/1.x request framing for the worker's event loop (server.PluginWorker): where a request in a connection's
buffer ends, judged from the bytes alone, so that a thread gets only a request that has fully arrived.  Only the
framing is judged here (the end of the headers, Content-Length, a chunked body); every other check is gunicorn's
parser's, which gets these bytes next.
"""

from __future__ import annotations

from dataclasses import dataclass

from .replies import MAX_BODY  # the app's MAX_CONTENT_LENGTH: a longer body is handed over as is, for its 413

MAX_HEAD = 64 * 1024  # request line and headers; gunicorn's own limits (limit_request_*) still apply


@dataclass(frozen=True)
class Framed:
    """The first request in a buffer: its first `length` bytes.  `last` when the connection must close after it:
    the framing is malformed or too large, so gunicorn's parser or the app answers it with an error, and where
    a next request would start is unknown."""

    length: int
    last: bool = False


@dataclass(frozen=True)
class _Head:
    body_start: int
    lengths: frozenset[bytes]
    codings: tuple[bytes, ...]
    expects_continue: bool


def _head(buffer: bytes | bytearray) -> _Head | None:
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    expects_continue = False
    for line in bytes(buffer[:head_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            lengths.add(value)
        elif name == b"transfer-encoding":
            codings.extend(coding.strip().lower() for coding in value.split(b","))
        elif name == b"expect":
            expects_continue = value.lower() == b"100-continue"
    return _Head(head_end + 4, frozenset(lengths), tuple(codings), expects_continue)


def frame_request(buffer: bytes | bytearray) -> Framed | None:
    """Where the first HTTP/1.x request in `buffer` ends, or None while it is incomplete.

    Only the framing is judged here (the end of the headers, Content-Length, a chunked body); every other check
    is gunicorn's parser's, which gets these bytes next."""
    head = _head(buffer)
    if head is None:
        return Framed(len(buffer), last=True) if len(buffer) > MAX_HEAD else None
    if head.codings:
        if head.lengths or head.codings[-1] != b"chunked":
            return Framed(head.body_start, last=True)  # gunicorn refuses it (400 or 501)
        return _frame_chunked(buffer, head.body_start)
    if not head.lengths:
        return Framed(head.body_start)
    (length, *others) = head.lengths
    if others or not (length.isascii() and length.isdigit()):
        return Framed(head.body_start, last=True)  # gunicorn refuses it (400)
    if int(length) > MAX_BODY:  # the app answers 413 from the header alone
        return Framed(min(head.body_start + int(length), len(buffer)), last=True)
    end = head.body_start + int(length)
    return Framed(end) if len(buffer) >= end else None


def expects_continue(buffer: bytes | bytearray) -> bool:
    """Whether the client waits for `100 Continue` before it sends the body (curl does, for large bodies)."""
    head = _head(buffer)
    return head is not None and head.expects_continue


def _frame_chunked(buffer: bytes | bytearray, position: int) -> Framed | None:
    decoded = 0
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return Framed(len(buffer), last=True) if len(buffer) - position > MAX_HEAD else None
        size_text = bytes(buffer[position:line_end]).partition(b";")[0].strip()
        if not (size_text.isascii() and size_text.isalnum()):
            return Framed(len(buffer), last=True)  # gunicorn refuses it (400)
        try:
            size = int(size_text, 16)
        except ValueError:
            return Framed(len(buffer), last=True)
        position = line_end + 2
        if size == 0:  # the last chunk, then trailer fields up to an empty line
            if buffer[position : position + 2] == b"\r\n":
                return Framed(position + 2)
            trailers_end = buffer.find(b"\r\n\r\n", position)
            if trailers_end < 0:
                return Framed(len(buffer), last=True) if len(buffer) - position > MAX_HEAD else None
            return Framed(trailers_end + 4)
        position += size + 2
        if len(buffer) < position:
            return None  # a huge chunk runs into BUFFER_BUDGET or the request's deadline
        if buffer[position - 2 : position] != b"\r\n":
            return Framed(len(buffer), last=True)
        decoded += size
        if decoded > MAX_BODY:
            return Framed(position, last=True)  # the app answers 413 once it has read past MAX_BODY
