"""Attachments: containers started with `--network none` (or named network namespaces) wired to a network by
`vxlanpy attach`, outside Docker.

An attachment is an ordinary endpoint of the store, so reconciliation, restarts and the multi-host peers treat
it like Docker's own, with two conventions that need no extra state:

* its endpoint id is derived from what it attaches (`container:<id>` or `netns:<name>`) and the network id, and
  carries a check: `attachment_id(target, network)` is 48 hex digits of a hash plus 16 of a checksum of those.
  `vxlanpy detach` finds the endpoint again from the same two values; `is_attachment_id` tells an attachment from
  one of Docker's random ids (a false positive has a chance of 2^-64);
* its sandbox key is the network namespace it lives in (a path), as for Docker's endpoints.

When vxlanpy's IPAM driver manages the network's pool, the attachment's address is reserved there under the
holder `HOST/attach-<endpoint id prefix>`, so Docker never hands it out again; on Docker's default IPAM vxlanpy
takes the highest free address of the subnet (Docker allocates from the bottom).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from ..models import IPAddress, IPInterface, Subnet

ATTACH_LABEL = "attach"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
NETNS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# Where the namespaces an attachment may enter live: Docker's sandboxes, `ip netns` names, and processes.
_NETNS_PATH = re.compile(
    r"^(/var)?/run/(docker/)?netns/[A-Za-z0-9_.-]{1,64}$|^/proc/[1-9][0-9]{0,9}/ns/net$",
)


def container_target(container_id: str) -> str:
    return f"container:{container_id}"


def netns_target(name: str) -> str:
    return f"netns:{name}"


def valid_target(target: str) -> bool:
    kind, _, value = target.partition(":")
    if kind == "container":
        return bool(_HEX64.match(value))
    if kind == "netns":
        return bool(NETNS_NAME.match(value))
    return False


def valid_netns_path(path: str) -> bool:
    return bool(_NETNS_PATH.match(path))


def reservation_holder(host: str, endpoint_id: str) -> str:
    return f"{host}/{ATTACH_LABEL}-{endpoint_id[:12]}"


def is_reservation_of_attachment(holder: str, host: str) -> bool:
    return holder.startswith(f"{host}/{ATTACH_LABEL}-")


def host_addresses(pool: ipaddress.IPv4Network | ipaddress.IPv6Network, highest_first: bool) -> Iterable[IPAddress]:
    """The usable addresses of a subnet (no network or broadcast address for IPv4, no Subnet-Router anycast for
    IPv6), from either end.  Lazy: a /64 is never enumerated beyond what the caller consumes."""
    first = int(pool.network_address) + 1
    last = int(pool.broadcast_address) - (1 if pool.version == 4 else 0)
    if pool.prefixlen >= pool.max_prefixlen - 1:  # /31, /32 (and /127, /128): every address is usable
        first, last = int(pool.network_address), int(pool.broadcast_address)
    values = range(last, first - 1, -1) if highest_first else range(first, last + 1)
    for value in values:
        yield ipaddress.ip_address(value) if pool.version == 4 else ipaddress.IPv6Address(value)


def is_host_address(address: IPAddress, pool: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if address not in pool:
        return False
    if pool.prefixlen >= pool.max_prefixlen - 1:
        return True
    return address != pool.network_address and (pool.version == 6 or address != pool.broadcast_address)


def first_free(subnet: Subnet, taken: set[IPAddress], highest_first: bool, limit: int = 1 << 16) -> IPInterface | None:
    """The first address of the subnet that is not taken and not the gateway, as an interface with its prefix."""
    gateway = subnet.gateway.ip if subnet.gateway is not None else None
    for index, candidate in enumerate(host_addresses(subnet.pool, highest_first)):
        if index >= limit:
            return None
        if candidate != gateway and candidate not in taken:
            return ipaddress.ip_interface(f"{candidate}/{subnet.pool.prefixlen}")
    return None
