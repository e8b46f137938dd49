"""The Flask application factory.  Nothing happens at import time: `create_app()` wires everything.

Every request is answered with JSON: a handler's result with 200, or an error message with the error's
status: {"Err": message} for the network driver and the plugin handshake, {"Error": message} for the IPAM
driver (`/IpamDriver.*`), as libnetwork reads them.  The client never sees a traceback; the log gets one line
per request.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .config import Settings
from .driver import STALE_UNJOINED_SECONDS, Driver
from .errors import StoreError, VxlanpyError
from .ipam import Ipam
from .metrics import Metrics
from .nodes import IdentityConflict
from .operator import api
from .operator.client import DockerListing
from .operator.operations import Operations
from .operator.sandbox import NetlinkSandboxes, Sandboxes
from .protocol import (
    LIBNETWORK_BODY_HINT,
    Body,
    Handler,
    NetworkDriverProtocol,
    body_too_large,
    decode_body,
    read_limited,
)
from .protocol_ipam import IpamDriverProtocol
from .wiring import build

log = logging.getLogger("vxlanpy.requests")

HOOK_CHECK_SECONDS = 10.0
MAX_BODY = 1 << 20  # libnetwork's largest request is a few KiB
IPAM_PREFIX = "IpamDriver."


def build_ipam(driver: Driver, settings: Settings) -> Ipam:
    """The IPAM driver keeps its records in the driver's own store, so they are shared as widely as it is."""
    return Ipam(driver.store, host=settings.host, pool4=settings.ipam_pool4, pool6=settings.ipam_pool6)


def create_app(
    driver: Driver | None = None,
    settings: Settings | None = None,
    reconcile: bool = True,
    ipam: Ipam | None = None,
    sandboxes: Sandboxes | None = None,
    docker_listing: Callable[[], DockerListing | None] | None = None,
) -> Flask:
    """`docker_listing`: Docker's networks, or None when Docker cannot be asked (the production wiring asks
    Docker's socket); with them, start-up removes the networks and releases the pool claims of network creates
    that never completed on Docker's side."""
    settings = settings or Settings.from_env()
    metrics = Metrics()
    cluster = None
    if driver is None:
        components = build(settings)
        driver, cluster = components.driver, components.cluster
        settings = replace(settings, host=components.host)  # the identity, in multi-host mode
        if docker_listing is None:
            from .operator.client import docker_listing as ask_docker

            docker_listing = ask_docker
    if ipam is None:
        ipam = build_ipam(driver, settings)
    if cluster is not None:
        try:  # first of all, before the other hosts give up on us
            cluster.resume_lease()
        except StoreError as exc:
            logging.getLogger("vxlanpy").warning("cannot reach etcd at start-up: %s", exc)
        try:  # before reconciliation writes anything under our identity
            cluster.claim_identity()
        except IdentityConflict as exc:
            logging.getLogger("vxlanpy").critical("refusing to start: %s", exc.message)
            raise
        except StoreError as exc:  # the watch thread claims it when etcd answers
            logging.getLogger("vxlanpy").warning("cannot claim the host identity yet: %s", exc)
        cluster.on_refused = _exit_refused
    if reconcile:
        # Not serving yet: an endpoint still unjoined now belongs to a start that failed while we were down.
        _reconcile(driver, tolerate_store_errors=cluster is not None, unjoined_grace=0.0, metrics=metrics)
    if cluster is not None:
        # After every (re)connection to etcd: etcd may have been down when we started, or lost our lease.
        cluster.on_reconnect = lambda: _reconcile(driver, tolerate_store_errors=True, metrics=metrics, trigger="etcd")
        cluster.start()
    if reconcile:
        _watch_firewall_hooks(driver)
    routes: dict[str, Handler] = {**NetworkDriverProtocol(driver).routes, **IpamDriverProtocol(ipam).routes}
    app = Flask("vxlanpy")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["vxlanpy.driver"] = driver
    app.extensions["vxlanpy.ipam"] = ipam
    # The operator's private endpoints (/vxlanpy/...), metrics and health: see api.py and metrics.py.
    operations = Operations(
        driver=driver,
        store=driver.store,
        links=driver.links,
        firewall=driver.firewall,
        cluster=driver.cluster,
        book=ipam.book,
        host=ipam.host,
        sandboxes=sandboxes or NetlinkSandboxes(),
        metrics=metrics,
    )
    metrics.watch_state(operations.metrics_state)
    if reconcile and docker_listing is not None:
        _sweep_unfinished_creates(operations, docker_listing)
    app.extensions["vxlanpy.metrics"] = metrics
    app.extensions["vxlanpy.operations"] = operations
    api.register(app, operations, metrics)

    @app.post("/<path:method>")
    def dispatch(method: str) -> Response:
        error_key = _error_key(method)
        handler = routes.get(method)
        if handler is None:
            family = method.partition(".")[0] + "."
            known = [name for name in routes if name.startswith(family)] or list(routes)
            metrics.observe_request("unknown", 404, 0.0)
            return _reply({error_key: f"unknown method {method[:80]!r}: vxlanpy implements {', '.join(known)}"}, 404)
        started = time.monotonic()
        body: Body = {}
        try:
            body = decode_body(_read_body(MAX_BODY))
            result, status = handler(body), 200
        except VxlanpyError as exc:
            result, status = {error_key: exc.message}, exc.status
        except RequestEntityTooLarge:  # a body over MAX_BODY
            result, status = {error_key: body_too_large(method, MAX_BODY, LIBNETWORK_BODY_HINT).message}, 413
        except HTTPException as exc:
            result, status = {error_key: f"{exc.name}: {exc.description}"}, exc.code or 400
        except Exception as exc:  # a bug: keep the worker alive and tell the user where to look
            log.exception("%s crashed", method)
            result = {error_key: f"internal error in vxlanpy ({type(exc).__name__}); see the plugin log"}
            status = 500
        seconds = time.monotonic() - started
        metrics.observe_request(method, status, seconds)
        _log_request(method, body, status, result, seconds)
        return _reply(result, status)

    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(413)
    def http_error(error: Any) -> Response:
        key = _error_key(request.path.lstrip("/"))
        return _reply({key: f"{error.name}: {request.method} {request.path[:80]}"}, error.code)

    return app


WORKER_BOOT_ERROR = 3  # gunicorn's Arbiter.WORKER_BOOT_ERROR: the master stops too, instead of a new worker


def _exit_refused(message: str) -> None:
    """Another live host took our identity while etcd was out of reach: stop serving rather than write under it,
    with the exit code of a refusal found at start (server.py)."""
    logging.getLogger("vxlanpy").critical("stopping: %s", message)
    os._exit(WORKER_BOOT_ERROR)


def _read_body(limit: int) -> bytes:
    """The request body; RequestEntityTooLarge when it is over `limit` (reading it whole, as get_data does, let a
    chunked body through, and its truncated or oversized JSON was a 400)."""
    raw = read_limited(request.stream, request.content_length, limit)
    if raw is None:
        raise RequestEntityTooLarge()
    return raw


def _sweep_unfinished_creates(operations: Operations, docker_listing: Callable[[], DockerListing | None]) -> None:
    """Not serving yet, so no create of this process is under way: a network Docker does not know, and a pool
    claim no network uses, belong to creates of an earlier process that Docker never completed."""
    out = logging.getLogger("vxlanpy")
    listing = docker_listing()
    if listing is None:
        out.info(
            "Docker's networks could not be read at start-up; `vxlanpy gc` releases the IPAM pools of creates "
            "that never completed, `vxlanpy gc --forget` removes networks Docker does not know"
        )
        return
    try:
        removed = operations.remove_networks_docker_lacks(set(listing.ids))
        released = operations.release_orphan_pools(set(listing.subnets))
    except VxlanpyError as exc:  # the store is checked and reported by health; never block the start
        out.error("cannot sweep the leftovers of unfinished network creates: %s", exc)
        return
    if removed:
        out.warning(
            "removed %d network(s) whose create Docker never completed (the plugin stopped before Docker had "
            "its answer; Docker does not know them): %s",
            len(removed),
            ", ".join(f"{item['id'][:12]} (vni {item['vni']})" for item in removed),
        )
    if released:
        out.warning(
            "released %d IPAM pool claim(s) of network creates that never completed: %s",
            len(released),
            ", ".join(f"{item['pool']} ({item['claim']})" for item in released),
        )


def _error_key(method: str) -> str:
    """libnetwork reads a remote IPAM driver's error from "Error" and a network driver's from "Err"."""
    return "Error" if method.startswith(IPAM_PREFIX) else "Err"


def _reconcile(
    driver: Driver,
    tolerate_store_errors: bool,
    unjoined_grace: float = STALE_UNJOINED_SECONDS,
    metrics: Metrics | None = None,
    trigger: str = "startup",
) -> None:
    started = time.monotonic()
    try:
        report = driver.reconcile(unjoined_grace=unjoined_grace)
    except Exception as exc:
        if metrics is not None:
            metrics.observe_reconcile(trigger, None)
        if not isinstance(exc, StoreError) or not tolerate_store_errors:
            raise
        logging.getLogger("vxlanpy").warning("reconciliation postponed until the store is reachable: %s", exc)
        return
    if metrics is not None:
        metrics.observe_reconcile(trigger, report)
    logging.getLogger("vxlanpy").info(
        "reconciliation: %s (%.0f ms)", report.summary(), (time.monotonic() - started) * 1000
    )


def _watch_firewall_hooks(driver: Driver, interval: float = HOOK_CHECK_SECONDS) -> None:
    """dockerd puts its own FORWARD rules above ours whenever it (re)starts; put ours back on top soon after."""

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                driver.firewall.ensure_base()
            except VxlanpyError as exc:
                logging.getLogger("vxlanpy").warning("cannot check the firewall hooks: %s", exc)

    threading.Thread(target=loop, name="vxlanpy-hooks", daemon=True).start()


def _reply(body: Body, status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/vnd.docker.plugins.v1+json")


def _short(body: Body, key: str) -> str:
    value = body.get(key)
    return value[:12] if isinstance(value, str) else "-"


def _text(body: Body, key: str) -> str:
    """A request field for the log: at most 80 characters, never a line break of the client's making."""
    value = body.get(key)
    if not isinstance(value, str) or not value:
        return "-"
    return value[:80] if value.isprintable() else repr(value[:80])


def _log_request(method: str, body: Body, status: int, result: Body, seconds: float) -> None:
    level = logging.INFO if status < 500 else logging.ERROR
    if method.startswith(IPAM_PREFIX):
        granted = (result.get("Address") or result.get("Pool")) if status == 200 else None
        outcome = (f"ok {granted}" if granted else "ok") if status == 200 else f"error {status}: {result.get('Error')}"
        log.log(
            level,
            "%s pool=%s address=%s %s %.1fms",
            method,
            _text(body, "PoolID") if "PoolID" in body else _text(body, "Pool"),
            _text(body, "Address"),
            outcome,
            seconds * 1000,
        )
        return
    outcome = "ok" if status == 200 else f"error {status}: {result.get('Err')}"
    log.log(
        level,
        "%s network=%s endpoint=%s %s %.1fms",
        method,
        _short(body, "NetworkID"),
        _short(body, "EndpointID"),
        outcome,
        seconds * 1000,
    )
