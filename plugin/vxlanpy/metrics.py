"""Prometheus metrics, and the optional HTTP listener that exposes them with a health check.

Off by default: set VXLANPY_METRICS_ADDR=HOST:PORT (e.g. 127.0.0.1:9478, [::1]:9478) and the plugin serves
`/metrics` (Prometheus text format) and `/health` (JSON, 200 or 503) there.  Each app has its own registry, so
tests can build as many apps as they like.

Request metrics are recorded by the app for every call on the plugin socket; the state gauges (networks,
endpoints, peers) are read from the store when Prometheus scrapes, so they can never drift from it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, is_dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .digits import ascii_int
from .errors import InvalidOption

log = logging.getLogger(__name__)

METRICS_ADDR_ENV = "VXLANPY_METRICS_ADDR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OUTCOMES = {200: "ok", 400: "bad_request", 404: "not_found", 409: "conflict", 413: "too_large", 503: "unavailable"}

StateReader = Callable[[], dict[str, Any]]
HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


def outcome_of(status: int) -> str:
    return OUTCOMES.get(status, "error" if status >= 500 else "client_error")


def parse_metrics_addr(raw: str | None) -> tuple[str, int] | None:
    """ "HOST:PORT", "[V6]:PORT" or ":PORT" (every address); None or "" turns metrics off."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    host, sep, port = text.rpartition(":")
    example = "use HOST:PORT, e.g. 127.0.0.1:9478 or [::1]:9478"
    number = ascii_int(port, 1, 65535)
    if not sep or number is None:
        raise InvalidOption(f"{METRICS_ADDR_ENV}={raw[:64]!r} is not valid: {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise InvalidOption(
                f"{METRICS_ADDR_ENV}={raw!r} is not valid: {host!r} is not an IP address; {example}"
            ) from None
    return host, number


class _StateCollector(Collector):
    """Gauges read at scrape time from `read_state()` (see Operations.metrics_state)."""

    def __init__(self, read_state: StateReader) -> None:
        self.read_state = read_state

    def describe(self) -> Iterable[Any]:
        return []  # computed at scrape time only: no description, so registering never calls collect()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("vxlanpy_store_up", "1 when the state store answered this scrape, else 0")
        try:
            state = self.read_state()
        except Exception as exc:  # a scrape must never fail: say the store is down instead
            log.warning("metrics: cannot read the state store: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        networks = GaugeMetricFamily("vxlanpy_networks", "Networks in the state store")
        networks.add_metric([], len(state["networks"]))
        yield networks
        endpoints = GaugeMetricFamily(
            "vxlanpy_endpoints", "Endpoints in the state store, by kind (docker or attached)", labels=["kind"]
        )
        for kind in ("docker", "attached"):
            endpoints.add_metric([kind], sum(1 for ep in state["endpoints"] if ep["kind"] == kind))
        yield endpoints
        per_network = GaugeMetricFamily(
            "vxlanpy_network_endpoints", "Endpoints of each network (this host)", labels=["vni"]
        )
        peers = GaugeMetricFamily(
            "vxlanpy_peers", "Remote VTEPs of each network (static peers or hosts in etcd)", labels=["vni"]
        )
        remotes = GaugeMetricFamily(
            "vxlanpy_remote_endpoints", "Endpoints on other hosts known for each network (etcd mode)", labels=["vni"]
        )
        for network in state["networks"]:
            vni = str(network["vni"])
            per_network.add_metric([vni], network["endpoints"])
            peers.add_metric([vni], network["peers"])
            remotes.add_metric([vni], network["remote_endpoints"])
        yield per_network
        yield peers
        yield remotes


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # the *_created series only double the output; Prometheus does not need them
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "vxlanpy_requests",
            "Requests on the plugin socket, by method and outcome",
            ["method", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vxlanpy_request_duration_seconds",
            "Time to answer a request on the plugin socket, by method and outcome",
            ["method", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_runs = Counter(
            "vxlanpy_reconcile_runs",
            "Reconciliations, by trigger (startup, etcd, gc) and outcome (ok, error)",
            ["trigger", "outcome"],
            registry=self.registry,
        )
        self.reconcile_actions = Counter(
            "vxlanpy_reconcile_actions",
            "Changes made by reconciliations (dry runs excluded), by action",
            ["action"],
            registry=self.registry,
        )
        self.reconcile_last = Gauge(
            "vxlanpy_reconcile_last_success_timestamp_seconds",
            "Unix time of the last successful reconciliation",
            registry=self.registry,
        )
        self.started = Gauge("vxlanpy_start_time_seconds", "Unix time the plugin started", registry=self.registry)
        self.started.set(time.time())
        self._state: _StateCollector | None = None

    def watch_state(self, read_state: StateReader) -> None:
        if self._state is None:
            self._state = _StateCollector(read_state)
            self.registry.register(self._state)

    def observe_request(self, method: str, status: int, seconds: float) -> None:
        outcome = outcome_of(status)
        self.requests.labels(method, outcome).inc()
        self.latency.labels(method, outcome).observe(seconds)

    def observe_reconcile(self, trigger: str, report: Any | None, dry_run: bool = False) -> None:
        """`report` is a ReconcileReport-like dataclass or dict of lists; None when the run failed."""
        if report is None:
            self.reconcile_runs.labels(trigger, "error").inc()
            return
        if dry_run:
            return
        self.reconcile_runs.labels(trigger, "ok").inc()
        self.reconcile_last.set(time.time())
        items = asdict(report) if is_dataclass(report) and not isinstance(report, type) else dict(report)
        for action, done in items.items():
            # Every healthy endpoint is "reattached" (re-ensured), and a lost one is only reported: not changes.
            if isinstance(done, list) and done and action not in ("reattached_endpoints", "lost_endpoints"):
                self.reconcile_actions.labels(action).inc(len(done))

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# -- the HTTP listener ---------------------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("metrics http: " + format, *args)


def metrics_wsgi_app(metrics: Metrics, health: HealthCheck) -> Callable[..., Any]:
    prometheus = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path in ("/metrics", "/"):
            return prometheus(environ, start_response)  # type: ignore[no-any-return]
        if path in ("/health", "/healthz"):
            try:
                healthy, body = health()
            except Exception as exc:  # noqa: BLE001 - a health probe answers, whatever happened
                healthy, body = False, {"status": "unhealthy", "error": type(exc).__name__}
            payload = json.dumps(body).encode()
            status = "200 OK" if healthy else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
            return [payload]
        payload = b"not found: try /metrics or /health\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(payload)))])
        return [payload]

    return app


class MetricsServer:
    """Serves metrics_wsgi_app on HOST:PORT from a daemon thread.  If the port is busy (e.g. an old worker still
    holds it), it keeps retrying in the background: the plugin itself must keep serving Docker regardless."""

    def __init__(self, address: tuple[str, int], metrics: Metrics, health: HealthCheck, retry: float = 2.0) -> None:
        self.address = address
        self.app = metrics_wsgi_app(metrics, health)
        self.retry = retry
        self.server: WSGIServer | None = None
        self.bound = threading.Event()
        self._stop = threading.Event()
        self._binding: threading.Thread | None = None
        self._serving: threading.Thread | None = None

    def start(self) -> None:
        if not self._try_bind(first=True):
            self._binding = threading.Thread(target=self._bind_loop, name="vxlanpy-metrics-bind", daemon=True)
            self._binding.start()

    def _try_bind(self, first: bool) -> bool:
        host, port = self.address
        server_class = _V6Server if ":" in host else _Server
        try:
            self.server = make_server(host, port, self.app, server_class=server_class, handler_class=_QuietHandler)
        except OSError as exc:
            level = logging.ERROR if first else logging.DEBUG
            log.log(level, "cannot serve metrics on %s:%d: %s; retrying every %.0f s", host, port, exc, self.retry)
            return False
        self._serving = threading.Thread(target=self.server.serve_forever, name="vxlanpy-metrics", daemon=True)
        self._serving.start()
        self.bound.set()
        log.info("metrics and health on http://%s/metrics and /health", _display(host, port))
        return True

    def _bind_loop(self) -> None:
        while not self._stop.wait(self.retry):
            if self._try_bind(first=False):
                return

    @property
    def port(self) -> int:
        return int(self.server.server_port) if self.server is not None else self.address[1]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait for the listener's threads (a scrape being answered finishes on its own)."""
        self._stop.set()
        if self._binding is not None:
            self._binding.join(timeout)  # so that it binds no server after this
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self._serving is not None:
            self._serving.join(timeout)


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
