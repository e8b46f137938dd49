"""The Flask application factory, as in Flask's tutorial: `create_app(components)` only builds the routes.

wiring.py builds the components and lifecycle.py runs their background work; nothing here starts anything, so
tests build as many apps as they like.  Every request is answered through replies.answer: JSON, a handler's
result with 200 or an error message with the error's status, in the dialect of the protocol asked
(protocol.py, protocol_ipam.py, operator/api.py).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request

from .errors import NotFound
from .operator import api
from .protocol import NETWORK_DIALECT, Handler, NetworkDriverProtocol
from .protocol_ipam import IPAM_DIALECT, IpamDriverProtocol
from .protocol_ipam import PREFIX as IPAM_PREFIX
from .replies import MAX_BODY, Body, Dialect, answer, reply
from .wiring import Components


def create_app(components: Components) -> Flask:
    routes: dict[str, Handler] = {
        **NetworkDriverProtocol(components.driver, components.scope).routes,
        **IpamDriverProtocol(components.ipam).routes,
    }
    metrics = components.metrics
    app = Flask("vxlanpy")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    # The operator's private endpoints (/vxlanpy/...): see api.py.
    api.register(app, components.operations, metrics)

    @app.post("/<path:method>")
    def dispatch(method: str) -> Response:
        dialect = _dialect_of(method)
        handler = routes.get(method)
        if handler is None:

            def unknown(_body: Body) -> tuple[Body, int]:
                family = method.partition(".")[0] + "."
                known = [name for name in routes if name.startswith(family)] or list(routes)
                raise NotFound(f"unknown method {method[:80]!r}: vxlanpy implements {', '.join(known)}")

            # one metrics label for every unknown method, whatever a client makes up
            return answer("unknown", dialect, metrics, unknown, read_body=False)
        return answer(method, dialect, metrics, lambda body: (handler(body), 200))

    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(413)
    def http_error(error: Any) -> Response:
        key = _dialect_of(request.path.lstrip("/")).error_key
        return reply({key: f"{error.name}: {request.method} {request.path[:80]}"}, error.code)

    return app


def _dialect_of(method: str) -> Dialect:
    return IPAM_DIALECT if method.startswith(IPAM_PREFIX) else NETWORK_DIALECT
