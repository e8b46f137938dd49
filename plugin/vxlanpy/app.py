"""The Flask application factory.  Nothing happens at import time: `create_app()` wires everything.

Every request is answered with JSON: a handler's result with 200, or {"Err": message} with the error's
status.  The client never sees a traceback; the log gets one line per request.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from .config import Settings
from .driver import Driver
from .errors import BadRequest, VxlanpyError
from .protocol import Body, NetworkDriverProtocol

log = logging.getLogger("vxlanpy.requests")

MAX_BODY = 1 << 20  # libnetwork's largest request is a few KiB


def build_driver(settings: Settings) -> Driver:
    """The production wiring: SQLite/etcd store, pyroute2 links, iptables firewall."""
    from .dataplane.iptables import IptablesFirewall
    from .dataplane.netlink import NetlinkLinks
    from .store import open_store

    return Driver(
        store=open_store(settings.store_url),
        links=NetlinkLinks(),
        firewall=IptablesFirewall(),
        vni_range=settings.vni_range,
        default_dev=settings.default_dev,
    )


def create_app(driver: Driver | None = None, settings: Settings | None = None, reconcile: bool = True) -> Flask:
    settings = settings or Settings.from_env()
    if driver is None:
        driver = build_driver(settings)
    if reconcile:
        report = driver.reconcile()
        logging.getLogger("vxlanpy").info("start-up reconciliation: %s", report.summary())
    protocol = NetworkDriverProtocol(driver)
    app = Flask("vxlanpy")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["vxlanpy.driver"] = driver

    @app.post("/<path:method>")
    def dispatch(method: str) -> Response:
        handler = protocol.routes.get(method)
        if handler is None:
            return _reply(
                {"Err": f"unknown method {method[:80]!r}: vxlanpy implements {', '.join(protocol.routes)}"}, 404
            )
        started = time.monotonic()
        body: Body = {}
        try:
            body = _decode(request.get_data(cache=False))
            result, status = handler(body), 200
        except VxlanpyError as exc:
            result, status = {"Err": exc.message}, exc.status
        except HTTPException as exc:  # e.g. a body over MAX_BODY
            result, status = {"Err": f"{exc.name}: {exc.description}"}, exc.code or 400
        except Exception as exc:  # a bug: keep the worker alive and tell the user where to look
            log.exception("%s crashed", method)
            result, status = {"Err": f"internal error in vxlanpy ({type(exc).__name__}); see the plugin log"}, 500
        _log_request(method, body, status, result, time.monotonic() - started)
        return _reply(result, status)

    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(413)
    def http_error(error: Any) -> Response:
        return _reply({"Err": f"{error.name}: {request.method} {request.path[:80]}"}, error.code)

    return app


def _decode(raw: bytes) -> Body:
    """dockerd sends no Content-Type, and some calls have an empty body."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _reply(body: Body, status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/vnd.docker.plugins.v1+json")


def _short(body: Body, key: str) -> str:
    value = body.get(key)
    return value[:12] if isinstance(value, str) else "-"


def _log_request(method: str, body: Body, status: int, result: Body, seconds: float) -> None:
    outcome = "ok" if status == 200 else f"error {status}: {result.get('Err')}"
    level = logging.INFO if status < 500 else logging.ERROR
    log.log(
        level,
        "%s network=%s endpoint=%s %s %.1fms",
        method,
        _short(body, "NetworkID"),
        _short(body, "EndpointID"),
        outcome,
        seconds * 1000,
    )
