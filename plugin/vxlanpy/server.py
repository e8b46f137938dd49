"""Serving: gunicorn on the plugin's Unix socket, in the foreground.

One worker process with threads: dockerd sends concurrent requests, and a single process lets the driver
serialise work per network with in-process locks and share one netlink socket and one SQLite connection.
Several processes would each need their own and would race on the same devices.

A stuck client must never hang the plugin, or dockerd hangs with it.  gunicorn's gthread worker gives a thread
to a connection as soon as it is accepted and reads the request with blocking calls and no deadline: eight
clients that sent half a request held all eight threads for good, and idle connections queued every request
behind them.  `PluginWorker` (below) instead reads requests in its event loop, without blocking, and hands a
thread only a request that has fully arrived.  An idle or half-sent connection costs a file descriptor and its
buffered bytes, never a thread, and is closed when its request is not complete within `REQUEST_SECONDS`, or
once idle for gunicorn's `keepalive`.  At most `max_connections` are open: past that, the one that has waited
longest for a request is closed to make room.  Writing a response gets `IO_SECONDS` in all.  It is still
gunicorn (the arbiter, systemd's socket from LISTEN_FDS, READY=1 to NOTIFY_SOCKET, graceful stop), and
gunicorn's own parser, WSGI environ and error answers; the worker only decides when a request is complete
(framing.py).

The background work (lifecycle.py: reconciliation, the cluster's threads, the firewall-hook watcher, metrics)
starts in the worker process, after the fork, when gunicorn loads the app (PluginServer.load), before the socket
accepts requests; it stops when the worker exits, however it exits.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import resource
import selectors
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunicorn import http, util
from gunicorn.app.base import BaseApplication
from gunicorn.http import wsgi
from gunicorn.workers.base import Worker

from .config import Settings
from .framing import expects_continue, frame_request

if TYPE_CHECKING:
    from .lifecycle import Lifecycle
    from .wiring import Components

SOCKET_UMASK = 0o117  # socket mode 0660: root and the docker group only

REQUEST_SECONDS = 10.0  # from a connection's first byte (or its accept) until its request has fully arrived
IO_SECONDS = 10.0  # for writing one response (and for the rare blocking read a thread does)
BUFFER_BUDGET = 64 << 20  # bytes buffered across all connections before the largest waiting one is closed
RESERVED_FDS = 64  # kept for the store, netlink, iptables' children and the log when capping connections
READ_SIZE = 64 * 1024
TICK_SECONDS = 0.25  # the loop wakes at least this often (the arbiter's heartbeat)
EXPIRY_SECONDS = 0.1  # and closes what expired at most this often
EVICTION_LOG_SECONDS = 10.0

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
)


def configure_logging(level: str) -> None:
    # pyroute2 resets its logger to NOTSET (inherit the root's level) when it is first imported: import it before
    # setting the level below, or at debug level every netlink message is formatted and logged (repr of every
    # attribute), which doubled the latency of each request.
    import pyroute2  # noqa: F401

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Their debug output is per netlink message: far too much even when debugging vxlanpy.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


# -- the worker ------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    client: Any
    server: Any
    deadline: float  # closed when its request is not complete by then
    since: float  # when it began waiting for its current request: at the limit, the longest waiting goes first
    buffer: bytearray = field(default_factory=bytearray)
    busy: bool = False  # a thread is answering its request
    continued: bool = False  # `100 Continue` sent for the current request


class PluginWorker(Worker):  # type: ignore[misc]
    """gunicorn worker: one event loop reads requests without blocking; `threads` threads answer complete ones.

    Only the loop's thread touches the connections' state; a thread gets the bytes of one request and the socket
    to write its answer to, and gives the connection back through `done`."""

    alive: bool  # gunicorn's: False once the worker is to stop
    app: PluginServer

    def init_process(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.pool = ThreadPoolExecutor(max_workers=self.cfg.threads, thread_name_prefix="vxlanpy-request")
        self.done: queue.SimpleQueue[tuple[_Connection, bool]] = queue.SimpleQueue()
        self.connections: set[_Connection] = set()
        self.busy = 0
        self.buffered = 0
        self.accepting = False
        self.expired_at = 0.0
        self.evicted = 0
        self.evicted_logged_at = 0.0
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = int(self.cfg.worker_connections)
        if soft != resource.RLIM_INFINITY:
            limit = min(limit, soft - RESERVED_FDS)
        self.max_connections = max(limit, int(self.cfg.threads) + 1)
        self.request_seconds = self.app.request_seconds
        try:
            super().init_process()  # loads the app (and starts the background work), then run()
        finally:
            self.app.stop()  # however the worker ends: stopped, failed to boot, or a signal's SystemExit

    # -- the loop

    def run(self) -> None:
        # SIGTERM and the threads' answers write to this pipe (gunicorn's signal wakeup fd), ending the wait.
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, self._drain_pipe)
        self._accepting(True)
        while self.alive:
            self.notify()
            self._wait(TICK_SECONDS)
            self._finish_answered()
            self._expire()
            self._accepting(len(self.connections) < self.max_connections or self.busy < len(self.connections))
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
        self._stop()

    def _stop(self) -> None:
        """Graceful stop: no new connections, close those waiting, let the requests being answered finish."""
        self._accepting(False)
        for conn in [conn for conn in self.connections if not conn.busy]:
            self._close(conn)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while self.busy and time.monotonic() < deadline:
            self.notify()
            self._wait(TICK_SECONDS)
            self._finish_answered()
        self.pool.shutdown(wait=False)
        for conn in list(self.connections):
            self._close(conn)
        self.selector.close()
        for listener in self.sockets:
            listener.close()

    def _wait(self, timeout: float) -> None:
        try:
            events = self.selector.select(timeout)
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise
            return
        for key, _ in events:
            key.data(key.fileobj)

    def _drain_pipe(self, _fileobj: Any) -> None:
        try:
            while os.read(self.PIPE[0], 4096):
                pass
        except OSError:
            pass  # empty

    def _wake(self) -> None:
        try:
            os.write(self.PIPE[1], b"\0")
        except OSError:
            pass  # full: the loop wakes anyway

    # -- connections

    def _accepting(self, enabled: bool) -> None:
        if enabled == self.accepting:
            return
        for listener in self.sockets:
            if enabled:
                listener.setblocking(False)
                self.selector.register(listener, selectors.EVENT_READ, self._accept)
            else:
                self.selector.unregister(listener)
        self.accepting = enabled

    def _accept(self, listener: Any) -> None:
        for _ in range(64):  # then the other connections' turn
            if len(self.connections) >= self.max_connections and not self._evict():
                return
            try:
                sock, client = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._evict():
                    continue
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED, errno.EMFILE, errno.ENFILE):
                    raise
                return
            sock.setblocking(False)
            now = time.monotonic()
            conn = _Connection(sock, client, listener.getsockname(), deadline=now + self.request_seconds, since=now)
            self.connections.add(conn)
            self._listen_to(conn)

    def _listen_to(self, conn: _Connection) -> None:
        self.selector.register(conn.sock, selectors.EVENT_READ, lambda _sock: self._readable(conn))

    def _evict(self) -> bool:
        """Make room: close the connection that has waited longest for a request (never one being answered)."""
        waiting = [conn for conn in self.connections if not conn.busy]
        if not waiting:
            return False
        self._close(min(waiting, key=lambda conn: conn.since))
        self.evicted += 1
        now = time.monotonic()
        if now - self.evicted_logged_at >= EVICTION_LOG_SECONDS:
            self.log.warning(
                "%d connections open, the most vxlanpy keeps: closed %d waiting longest for a request",
                len(self.connections) + 1,
                self.evicted,
            )
            self.evicted, self.evicted_logged_at = 0, now
        return True

    def _readable(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client closed or reset it
            self._close(conn)
            return
        if not conn.buffer:  # the first bytes of a request: it has request_seconds to arrive in full
            conn.deadline = time.monotonic() + self.request_seconds
        conn.buffer += data
        self.buffered += len(data)
        self._dispatch(conn)
        if self.buffered > BUFFER_BUDGET:
            waiting = [conn for conn in self.connections if not conn.busy]
            if waiting:
                self._close(max(waiting, key=lambda conn: len(conn.buffer)))

    def _dispatch(self, conn: _Connection) -> None:
        """Hand the connection's first request to a thread if it has fully arrived."""
        framed = frame_request(conn.buffer)
        if framed is None:
            if not conn.continued and expects_continue(conn.buffer):
                conn.continued = True
                self._send_quietly(conn, CONTINUE)
            return
        request = bytes(conn.buffer[: framed.length])
        del conn.buffer[: framed.length]
        self.buffered -= len(request)
        self.selector.unregister(conn.sock)
        conn.busy, conn.continued = True, False
        self.busy += 1
        future = self.pool.submit(self._answer, conn, request, framed.last)
        future.add_done_callback(lambda answered: self._answered(conn, answered))

    def _answered(self, conn: _Connection, answered: Future[bool]) -> None:
        keep = not answered.cancelled() and answered.exception() is None and answered.result()
        self.done.put((conn, keep))
        self._wake()

    def _finish_answered(self) -> None:
        """After a thread's answer: wait for the connection's next request, or close it."""
        while True:
            try:
                conn, keep = self.done.get_nowait()
            except queue.Empty:
                return
            conn.busy = False
            self.busy -= 1
            if not (keep and self.alive) or conn not in self.connections:
                self._close(conn)
                continue
            now = time.monotonic()
            conn.since = now
            # A request already buffered behind it (pipelined) has request_seconds; an idle connection keepalive.
            conn.deadline = now + (self.request_seconds if conn.buffer else self.cfg.keepalive)
            try:
                conn.sock.setblocking(False)
                self._listen_to(conn)
            except (OSError, ValueError):
                self._close(conn)
                continue
            if conn.buffer:
                self._dispatch(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        if now - self.expired_at < EXPIRY_SECONDS:
            return
        self.expired_at = now
        for conn in [conn for conn in self.connections if not conn.busy and conn.deadline <= now]:
            if conn.buffer:  # part of a request came, not all of it
                message = b"the request did not arrive in full within %g s" % self.request_seconds
                self._send_quietly(conn, TIMED_OUT % (len(message), message))
            self._close(conn)

    def _send_quietly(self, conn: _Connection, data: bytes) -> None:
        try:
            conn.sock.send(data)  # small, on a non-blocking socket: what does not fit is dropped
        except OSError:
            pass

    def _close(self, conn: _Connection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self.buffered -= len(conn.buffer)
        conn.buffer.clear()
        if not conn.busy:
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
        util.close(conn.sock)

    # -- in a thread: answer one request that has fully arrived

    def _answer(self, conn: _Connection, request: bytes, last: bool) -> bool:
        """Answer `request` (all its bytes) on the connection; whether the connection may carry another."""
        req = None
        try:
            conn.sock.settimeout(IO_SECONDS)  # bounds writing the answer (sendall: in all)
            req = next(http.RequestParser(self.cfg, [request], conn.client))  # parses only these bytes
            if not req:
                return False
            return self._respond(req, conn, last) and not last
        except http.errors.NoMoreData as exc:
            self.log.debug("Ignored an incomplete request. %s", exc)
        except StopIteration as exc:
            self.log.debug("Closing connection. %s", exc)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, None):
                self.log.exception("Socket error processing request.")
        except Exception as exc:
            self.handle_error(req, conn.sock, conn.client, exc)  # gunicorn's 400 (or 500) answer
        return False

    def _respond(self, req: Any, conn: _Connection, last: bool) -> bool:
        """What gunicorn's threaded worker does with a parsed request (handle_request); `last` answers it with
        `Connection: close`."""
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            started = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                    self._wake()
                resp.force_close()
            if last or not self.alive or not self.cfg.keepalive:
                resp.force_close()
            body = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(body, environ["wsgi.file_wrapper"]):
                    resp.write_file(body)
                else:
                    for item in body:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - started)
                if hasattr(body, "close"):
                    body.close()
            return not resp.should_close()
        except OSError:
            raise
        except Exception:
            if resp is not None and resp.headers_sent:  # too late for an error answer on this connection
                self.log.exception("Error handling request")
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")


# -- the application -------------------------------------------------------------------------------------------


class PluginServer(BaseApplication):  # type: ignore[misc]
    def __init__(
        self,
        settings: Settings,
        metrics_addr: tuple[str, int] | None = None,
        request_seconds: float = REQUEST_SECONDS,
    ) -> None:
        """`request_seconds`: how long a request may take to arrive in full (PluginWorker)."""
        self.settings = settings
        self.metrics_addr = metrics_addr
        self.request_seconds = request_seconds
        self.lifecycle: Lifecycle | None = None
        super().__init__()

    def load_config(self) -> None:
        options: dict[str, Any] = {
            "bind": [f"unix:{self.settings.socket}"],
            "umask": SOCKET_UMASK,
            "workers": 1,
            "worker_class": f"{__name__}.PluginWorker",  # a dotted name: gunicorn 21 logs it as a string
            "threads": self.settings.threads,
            # A request can take a while when the kernel or store is slow; never kill it half-way.
            "timeout": 120,
            "graceful_timeout": 10,
            "loglevel": self.settings.log_level,
            "accesslog": None,
            "proc_name": "vxlanpy",
            # gunicorn's control socket lives in ~/.gunicorn and would clash between side-by-side instances.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            if key in self.cfg.settings:  # control_socket_disable only exists in newer gunicorn
                self.cfg.set(key, value)

    def components(self) -> Components:
        """The production components (tests serve fakes instead)."""
        from .wiring import build

        return build(self.settings)

    def load(self) -> Any:
        """In the worker process, after the fork: the background work (metrics and health included) starts here,
        before the socket accepts requests; an identity another live host holds exits with WORKER_BOOT_ERROR."""
        configure_logging(self.settings.log_level)
        from .app import create_app
        from .lifecycle import Lifecycle

        components = self.components()
        self.lifecycle = Lifecycle(
            components, metrics_addr=self.metrics_addr, hook_check_seconds=self.settings.hook_check_seconds
        )
        self.lifecycle.start()
        return create_app(components)

    def stop(self) -> None:
        """When the worker exits."""
        if self.lifecycle is not None:
            self.lifecycle.stop()


def serve(settings: Settings, metrics_addr: tuple[str, int] | None = None) -> None:
    Path(settings.socket).parent.mkdir(parents=True, exist_ok=True)
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ.setdefault("SERVER_SOFTWARE", "vxlanpy")
    PluginServer(settings, metrics_addr).run()
