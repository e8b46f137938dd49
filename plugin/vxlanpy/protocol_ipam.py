"""libnetwork's remote IPAM protocol: the only module that knows its JSON field names.

Each handler checks the decoded request strictly (libnetwork's requests are well-formed: a field it always
sends that is missing, a wrong type or a bad CIDR is refused, not guessed at), calls the Ipam with typed
values and returns the response body.  Reference: moby daemon/libnetwork/docs/ipam.md and
ipams/remote/api/api.go.  Errors travel as {"Error": message}, not the network driver's "Err" (IPAM_DIALECT).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import BadRequest
from .ipam import GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE, Ipam
from .models import IPAddress, IPNetwork
from .protocol import LIBNETWORK_BODY_HINT, Handler, field
from .replies import MAX_BODY, Body, Dialect, log_text

REQUEST_ADDRESS_TYPE = "RequestAddressType"  # ipamapi.RequestAddressType
GATEWAY_ADDRESS_TYPE = "com.docker.network.gateway"  # netlabel.Gateway
# ipamapi.AllocSerialPrefix: the swarm manager's allocator sets it on every RequestAddress, a node never does.
SWARM_ALLOCATOR_OPTION = "com.docker.network.ipam.serial"
PREFIX = "IpamDriver."  # every method of this protocol


def describe_request(body: Body) -> str:
    """An IPAM request in the log: the pool (its id, or the subnet asked for) and the address asked for."""
    pool = log_text(body, "PoolID") if "PoolID" in body else log_text(body, "Pool")
    return f"pool={pool} address={log_text(body, 'Address')}"


def granted(reply: Body) -> str | None:
    """The address or pool a successful reply hands out."""
    value = reply.get("Address") or reply.get("Pool")
    return value if isinstance(value, str) else None


IPAM_DIALECT = Dialect(
    error_key="Error",  # libnetwork reads a remote IPAM driver's error from "Error"
    body_limit=MAX_BODY,
    body_hint=LIBNETWORK_BODY_HINT,
    describe=describe_request,
    granted=granted,
)


def _string_map(body: Body, name: str) -> dict[str, str]:
    """A Go map[string]string: absent or null means empty."""
    raw: dict[str, Any] = field(body, name, dict, required=False) or {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise BadRequest(f"{name}[{key[:64]!r}] must be a string, not {type(value).__name__}")
    return raw


def _cidr(body: Body, name: str) -> IPNetwork | None:
    raw = field(body, name, str, required=False) or ""
    if not raw:
        return None
    try:
        network = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise BadRequest(f"{name} {raw[:64]!r} is not a CIDR (e.g. 10.60.0.0/24 or fd00:60::/64)") from None
    if str(network) != raw:
        raise BadRequest(f"{name} {raw[:64]!r} has host bits set or is not canonical; did you mean {network}?")
    return network


def _address(body: Body, name: str) -> IPAddress | None:
    raw = field(body, name, str, required=False) or ""
    if not raw:
        return None
    try:
        return ipaddress.ip_address(raw)
    except ValueError:
        raise BadRequest(f"{name} {raw[:64]!r} is not an IP address (without a /prefix)") from None


def _required_address(body: Body, name: str) -> IPAddress:
    field(body, name, str)
    address = _address(body, name)
    if address is None:
        raise BadRequest(f"field {name} is empty; it must be an IP address")
    return address


def _pool_id(body: Body) -> str:
    raw: str = field(body, "PoolID", str)
    if not raw:
        raise BadRequest("field PoolID is empty")
    return raw


class IpamDriverProtocol:
    """Maps each `/IpamDriver.*` path to a handler bound to one Ipam."""

    def __init__(self, ipam: Ipam) -> None:
        self.ipam = ipam
        self.routes: dict[str, Handler] = {
            "IpamDriver.GetCapabilities": self.get_capabilities,
            "IpamDriver.GetDefaultAddressSpaces": self.get_default_address_spaces,
            "IpamDriver.RequestPool": self.request_pool,
            "IpamDriver.ReleasePool": self.release_pool,
            "IpamDriver.RequestAddress": self.request_address,
            "IpamDriver.ReleaseAddress": self.release_address,
        }

    def get_capabilities(self, body: Body) -> Body:
        # Our records persist in the store, so libnetwork need not replay its requests after a restart.
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def get_default_address_spaces(self, body: Body) -> Body:
        return {"LocalDefaultAddressSpace": LOCAL_ADDRESS_SPACE, "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE}

    def request_pool(self, body: Body) -> Body:
        address_space: str = field(body, "AddressSpace", str)
        if not address_space:
            raise BadRequest("field AddressSpace is empty")
        pool = _cidr(body, "Pool")
        subpool = _cidr(body, "SubPool")
        if subpool is not None and pool is None:
            raise BadRequest(f"SubPool {subpool} was given without a Pool")
        options = _string_map(body, "Options")
        v6: bool | None = field(body, "V6", bool, required=False)
        grant = self.ipam.request_pool(address_space, pool, subpool, v6, options)
        return {"PoolID": grant.pool_id, "Pool": str(grant.pool), "Data": {}}

    def release_pool(self, body: Body) -> Body:
        self.ipam.release_pool(_pool_id(body))
        return {}

    def request_address(self, body: Body) -> Body:
        pool_id = _pool_id(body)
        address = _address(body, "Address")
        options = _string_map(body, "Options")
        gateway = options.get(REQUEST_ADDRESS_TYPE) == GATEWAY_ADDRESS_TYPE
        swarm = options.get(SWARM_ALLOCATOR_OPTION) == "true"
        granted = self.ipam.request_address(pool_id, address, gateway=gateway, swarm=swarm)
        return {"Address": str(granted), "Data": {}}

    def release_address(self, body: Body) -> Body:
        pool_id = _pool_id(body)
        self.ipam.release_address(pool_id, _required_address(body, "Address"))
        return {}
