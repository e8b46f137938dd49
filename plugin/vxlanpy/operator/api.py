"""The plugin's private endpoints on its socket, for the `vxlanpy` CLI and health probes (never used by dockerd):

    GET  /vxlanpy/health            200 healthy / 503 unhealthy, with the result of each check
    GET  /vxlanpy/ls                networks, their devices, peers and endpoints as the plugin holds them
    GET  /vxlanpy/peers/<network>   remote VTEPs and entries: the store's view against the kernel's
    POST /vxlanpy/gc                {"dry_run": bool, "forget": [network ids], "docker_pools": [subnets]}:
                                    reconciliation on demand
    POST /vxlanpy/attach            {"network", "target", "netns": [paths], "ipv4"?, "ipv6"?, "ifname"?}
    POST /vxlanpy/detach            {"network", "target"}
    GET  /vxlanpy/nodes             the cluster's hosts: identity, hostname, VTEPs, lease state, what they hold
    POST /vxlanpy/nodes/rm          {"host": identity, "force": bool}: remove a host that is gone for good
    GET  /vxlanpy/wireguard         the WireGuard mesh of encrypted networks: backend, interface, peers against etcd
    POST /vxlanpy/rotate-key        a new WireGuard keypair for this host: {"public_key", "previous"} (public keys)
    POST /vxlanpy/recover           {"step": "state"|"adopt"|"finish", "dry_run", "network"?, "forget"?}: a lost store

Errors are {"Err": message} with the error's status, as for the network driver (replies.answer).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from flask import Flask, Response

from ..errors import BadRequest
from ..metrics import Metrics
from ..models import NETWORK_ID, NETWORK_ID_FORM, IPAddress
from ..replies import Body, Dialect, answer
from .operations import Operations, Recovery, parse_recovered_network

PREFIX = "/vxlanpy"
OPERATOR_DIALECT = Dialect(
    error_key="Err", body_limit=1 << 16, body_hint="the vxlanpy CLI sends a few hundred bytes", describe=lambda _: ""
)


def _network_id(value: object) -> str:
    if not isinstance(value, str) or not NETWORK_ID.match(value):
        raise BadRequest(f"network must be a full network id ({NETWORK_ID_FORM})")
    return value


def _optional_address(body: Body, name: str) -> IPAddress | None:
    value = body.get(name)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise BadRequest(f"{name} {value[:64]!r} is not an IP address") from None


def register(app: Flask, operations: Operations, metrics: Metrics) -> None:
    def run(name: str, action: Callable[[Body], tuple[Body, int]], read_body: bool = True) -> Response:
        # probes every few seconds would drown the log: only an unhealthy answer is logged
        return answer(f"vxlanpy.{name}", OPERATOR_DIALECT, metrics, action, read_body, log_success=name != "health")

    @app.route(f"{PREFIX}/health", methods=["GET", "POST"])
    def health() -> Response:
        def action(_request: Body) -> tuple[Body, int]:
            healthy, body = operations.health()
            return body, 200 if healthy else 503

        return run("health", action, read_body=False)

    @app.get(f"{PREFIX}/ls")
    def listing() -> Response:
        return run("ls", lambda _: (operations.listing(), 200), read_body=False)

    @app.get(f"{PREFIX}/peers/<network>")
    def peers(network: str) -> Response:
        return run("peers", lambda _: (operations.peers(_network_id(network)), 200), read_body=False)

    @app.post(f"{PREFIX}/gc")
    def gc() -> Response:
        def action(body: Body) -> tuple[Body, int]:
            dry_run = body.get("dry_run", False)
            if not isinstance(dry_run, bool):
                raise BadRequest("dry_run must be true or false")
            forget = body.get("forget") or []
            if not isinstance(forget, list):
                raise BadRequest("forget must be a list of network ids")
            pools = body.get("docker_pools")
            if pools is not None and not (
                isinstance(pools, list) and all(isinstance(item, str) and len(item) <= 64 for item in pools)
            ):
                raise BadRequest("docker_pools must be a list of subnets (those of Docker's networks)")
            forget_ids = [_network_id(item) for item in forget]
            return operations.gc(dry_run, forget_ids, None if pools is None else set(pools)), 200

        return run("gc", action)

    @app.post(f"{PREFIX}/attach")
    def attach() -> Response:
        def action(body: Body) -> tuple[Body, int]:
            netns = body.get("netns")
            if isinstance(netns, str):
                netns = [netns]
            if not isinstance(netns, list):
                raise BadRequest("netns must be a list of namespace paths")
            ifname = body.get("ifname")
            if ifname is not None and not isinstance(ifname, str):
                raise BadRequest("ifname must be a string")
            result = operations.attach(
                _network_id(body.get("network")),
                str(body.get("target") or ""),
                netns,
                ipv4=_optional_address(body, "ipv4"),
                ipv6=_optional_address(body, "ipv6"),
                ifname=ifname or None,
            )
            return result, 200

        return run("attach", action)

    @app.get(f"{PREFIX}/nodes")
    def nodes() -> Response:
        return run("nodes", lambda _: (operations.nodes(), 200), read_body=False)

    @app.post(f"{PREFIX}/nodes/rm")
    def node_rm() -> Response:
        def action(body: Body) -> tuple[Body, int]:
            force = body.get("force", False)
            if not isinstance(force, bool):
                raise BadRequest("force must be true or false")
            host = body.get("host")
            if not isinstance(host, str) or not host:
                raise BadRequest("host must be a host identity, as `vxlanpy node ls` shows it")
            return operations.node_rm(host, force), 200

        return run("nodes.rm", action)

    @app.get(f"{PREFIX}/wireguard")
    def wireguard() -> Response:
        return run("wireguard", lambda _: (operations.wireguard(), 200), read_body=False)

    @app.post(f"{PREFIX}/rotate-key")
    def rotate_key() -> Response:
        return run("rotate-key", lambda _: (operations.rotate_key(), 200), read_body=False)

    @app.post(f"{PREFIX}/recover")
    def recover() -> Response:
        def action(body: Body) -> tuple[Body, int]:
            dry_run = body.get("dry_run", False)
            if not isinstance(dry_run, bool):
                raise BadRequest("dry_run must be true or false")
            recovery = Recovery(operations)
            step = body.get("step")
            if step == "state":
                return recovery.state(dry_run), 200
            if step == "adopt":
                return recovery.adopt(parse_recovered_network(body.get("network")), dry_run), 200
            if step == "finish":
                forget = body.get("forget") or []
                if not isinstance(forget, list):
                    raise BadRequest("forget must be a list of network ids")
                return recovery.finish([_network_id(item) for item in forget], dry_run), 200
            raise BadRequest("step must be state, adopt or finish")

        return run("recover", action)

    @app.post(f"{PREFIX}/detach")
    def detach() -> Response:
        def action(body: Body) -> tuple[Body, int]:
            return operations.detach(_network_id(body.get("network")), str(body.get("target") or "")), 200

        return run("detach", action)
