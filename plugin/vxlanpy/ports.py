"""Host ports for published container ports: an explicit one is checked, `-p CONTAINER_PORT` gets a free one."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace

from .errors import Conflict
from .models import Endpoint, PortMapping

EPHEMERAL_PORTS = (49153, 60999)  # Docker's bridge driver uses the same range


def allocate_ports(
    endpoint: Endpoint,
    wanted: list[PortMapping],
    others: list[Endpoint],
    port_is_free: Callable[[PortMapping], bool],
) -> tuple[PortMapping, ...]:
    """The host ports for `wanted` on `endpoint`, none of them one that `others` (vxlanpy's other endpoints)
    publish or that `port_is_free` says the host uses; Conflict names an explicit port that is taken."""
    taken = {
        (port.proto, port.host_port)
        for other in others
        if other.endpoint_id != endpoint.endpoint_id
        for port in other.ports
    }
    # Set again without a Revoke (Docker 29): a port chosen by vxlanpy stays the same.
    before = {(port.proto, port.container_port, port.host_ip): port.host_port for port in endpoint.ports}
    chosen: list[PortMapping] = []
    for mapping in wanted:
        kept = None if mapping.host_port else before.get((mapping.proto, mapping.container_port, mapping.host_ip))
        again = replace(mapping, host_port=kept or 0)
        if kept is not None and (mapping.proto, kept) not in taken and port_is_free(again):
            chosen.append(again)
        elif mapping.host_port:
            key = (mapping.proto, mapping.host_port)
            if key in taken or not port_is_free(mapping):
                raise Conflict(
                    f"host port {mapping.host_port}/{mapping.proto} is already allocated; publish on another host port"
                )
            chosen.append(mapping)
        else:
            chosen.append(_ephemeral(mapping, taken, port_is_free))
        taken.add((mapping.proto, chosen[-1].host_port))
    return tuple(chosen)


def _ephemeral(
    mapping: PortMapping, taken: set[tuple[str, int]], port_is_free: Callable[[PortMapping], bool]
) -> PortMapping:
    for port in range(EPHEMERAL_PORTS[0], EPHEMERAL_PORTS[1] + 1):
        candidate = replace(mapping, host_port=port)
        if (mapping.proto, port) not in taken and port_is_free(candidate):
            return candidate
    raise Conflict(f"no free host port left in {EPHEMERAL_PORTS[0]}-{EPHEMERAL_PORTS[1]}; publish an explicit port")


def host_port_is_free(mapping: PortMapping) -> bool:
    """True when nothing on this host is bound to the port now (docker-proxy and other services included)."""
    family = socket.AF_INET6 if mapping.host_ip is not None and mapping.host_ip.version == 6 else socket.AF_INET
    kind = socket.SOCK_DGRAM if mapping.proto == "udp" else socket.SOCK_STREAM
    address = str(mapping.host_ip) if mapping.host_ip is not None else ("::" if family == socket.AF_INET6 else "")
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, mapping.host_port))
        except OSError:
            return False
    return True
