"""libnetwork's remote network-driver protocol: the only module that knows its JSON field names.

Each handler takes the decoded request body, checks it strictly (libnetwork always sends well-formed ids,
so anything else is refused rather than guessed at), calls the driver with typed values, and returns the
response body.  Reference: moby daemon/libnetwork/docs/remote.md and drivers/remote/api/api.go.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .driver import DST_PREFIX, Driver
from .errors import BadRequest, InvalidOption
from .models import NETWORK_ID, NETWORK_ID_FORM, PROTOCOL_NAMES, PortMapping, Subnet
from .replies import MAX_BODY, Body, Dialect, log_text
from .swarm import SwarmNetworks

Handler = Callable[[Body], Body]

DOCKER_ID = re.compile(r"^[0-9a-f]{64}$")
GENERIC_OPTIONS = "com.docker.network.generic"
INTERNAL_OPTION = "com.docker.network.internal"
ENABLE_IPV4_OPTION = "com.docker.network.enable_ipv4"  # Docker 28: False with --ipv4=false
ENABLE_IPV6_OPTION = "com.docker.network.enable_ipv6"
PORTMAP_OPTION = "com.docker.network.portmap"
# Endpoint options (`--driver-opt` of `docker network connect`, `driver-opt=` of `docker run --network`) come in
# CreateEndpoint's Options.  Docker 28 applies com.docker.network.endpoint.sysctls itself, for every driver, to
# the interface it moves into the container: nothing to do here.  It names that interface from a remote driver's
# Join reply by SrcName and DstPrefix only (DstName is not read), so the ifname option would be silently
# ignored: it is refused (`_refuse_ifname`).
IFNAME_OPTION = "com.docker.network.endpoint.ifname"


def describe_request(body: Body) -> str:
    """A network-driver request in the log: the networks' and endpoints' short ids."""
    return f"network={log_text(body, 'NetworkID', 12)} endpoint={log_text(body, 'EndpointID', 12)}"


LIBNETWORK_BODY_HINT = "libnetwork's requests are a few KiB"
# Errors travel as {"Err": message}, for the plugin handshake too.
NETWORK_DIALECT = Dialect(
    error_key="Err", body_limit=MAX_BODY, body_hint=LIBNETWORK_BODY_HINT, describe=describe_request
)


def field(body: Body, name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if required and not body:
            # What dockerd sends when it retries a call after the plugin restarted in the middle of it.
            raise BadRequest(
                f"request is missing the field {name}: its body is empty, as when dockerd retries a call after "
                "the plugin restarted in the middle of it; run the docker command again"
            )
        if required:
            raise BadRequest(f"request is missing the field {name}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"field {name} has the wrong type ({type(value).__name__})")
    return value


def docker_network_id(body: Body) -> str:
    value = field(body, "NetworkID", str)
    if not NETWORK_ID.match(value):
        raise BadRequest(f"field NetworkID is not a Docker network id ({NETWORK_ID_FORM})")
    return value


def docker_id(body: Body, name: str) -> str:
    value = field(body, name, str)
    if not DOCKER_ID.match(value):
        raise BadRequest(f"field {name} is not a Docker id (64 lowercase hex characters)")
    return value


def _interface(raw: object, what: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if not isinstance(raw, str):
        raise BadRequest(f"{what} must be a string in CIDR form")
    try:
        return ipaddress.ip_interface(raw)
    except ValueError:
        raise BadRequest(f"{what} {raw[:64]!r} is not an address in CIDR form") from None


def _subnets(body: Body, name: str, version: int) -> tuple[Subnet, ...]:
    items = field(body, name, list, required=False) or []
    subnets = []
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest(f"{name} entries must be objects")
        pool_raw = field(item, "Pool", str)
        try:
            pool = ipaddress.ip_network(pool_raw, strict=False)
        except ValueError:
            raise BadRequest(f"{name} pool {pool_raw[:64]!r} is not a CIDR") from None
        gateway_raw = field(item, "Gateway", str, required=False)
        gateway = _interface(gateway_raw, f"{name} gateway") if gateway_raw else None
        if pool.version != version or (gateway is not None and gateway.version != version):
            raise BadRequest(f"{name} holds an address of the wrong IP version")
        subnets.append(Subnet(pool, gateway))
    return tuple(subnets)


class NetworkDriverProtocol:
    """Maps each `/Plugin.*` and `/NetworkDriver.*` path to a handler bound to one Driver."""

    def __init__(self, driver: Driver, scope: str = "local") -> None:
        self.driver = driver
        self.swarm = SwarmNetworks(driver)
        self.scope = scope  # "global" (VXLANPY_SCOPE): swarm networks, AllocateNetwork on the manager
        self.routes: dict[str, Handler] = {
            "Plugin.Activate": self.activate,
            "NetworkDriver.GetCapabilities": self.get_capabilities,
            "NetworkDriver.GwAllocCheck": self.gw_alloc_check,
            "NetworkDriver.CreateNetwork": self.create_network,
            "NetworkDriver.DeleteNetwork": self.delete_network,
            "NetworkDriver.AllocateNetwork": self.allocate_network,
            "NetworkDriver.FreeNetwork": self.free_network,
            "NetworkDriver.CreateEndpoint": self.create_endpoint,
            "NetworkDriver.EndpointOperInfo": self.endpoint_oper_info,
            "NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "NetworkDriver.Join": self.join,
            "NetworkDriver.Leave": self.leave,
            "NetworkDriver.DiscoverNew": self.discover,
            "NetworkDriver.DiscoverDelete": self.discover,
            "NetworkDriver.ProgramExternalConnectivity": self.program_external_connectivity,
            "NetworkDriver.RevokeExternalConnectivity": self.revoke_external_connectivity,
        }

    def activate(self, body: Body) -> Body:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    def get_capabilities(self, body: Body) -> Body:
        # GwAllocChecker: Docker 28+ then asks GwAllocCheck before it allocates a new network's addresses.
        return {"Scope": self.scope, "ConnectivityScope": self.scope, "GwAllocChecker": True}

    def gw_alloc_check(self, body: Body) -> Body:
        """Docker 28+: which gateway addresses Docker need not reserve for a network created with these Options
        (the same Options CreateNetwork will get, without the address data)."""
        options = _network_options(body)
        skip = self.driver.check_gateway_allocation(options.generic, options.internal)
        return {"SkipIPv4": skip.ipv4, "SkipIPv6": skip.ipv6}

    def create_network(self, body: Body) -> Body:
        network_id = docker_network_id(body)
        options = _network_options(body)
        self.driver.create_network(
            network_id,
            options.generic,
            _subnets(body, "IPv4Data", 4),
            _subnets(body, "IPv6Data", 6),
            options.internal,
            ipv4_enabled=options.enable_ipv4,
            ipv6_enabled=options.enable_ipv6,
        )
        return {}

    def delete_network(self, body: Body) -> Body:
        self.driver.delete_network(docker_network_id(body))
        return {}

    def allocate_network(self, body: Body) -> Body:
        """The swarm manager's call; the Options are the driver options (a map of strings), not wrapped."""
        network_id = docker_network_id(body)
        options = field(body, "Options", dict, required=False) or {}
        for key, value in options.items():
            if not isinstance(value, str):
                raise BadRequest(f"Options[{key[:64]!r}] must be a string, not {type(value).__name__}")
        allocated = self.swarm.allocate(
            network_id, options, _subnets(body, "IPv4Data", 4), _subnets(body, "IPv6Data", 6)
        )
        return {"Options": allocated}

    def free_network(self, body: Body) -> Body:
        self.swarm.free(docker_network_id(body))
        return {}

    def create_endpoint(self, body: Body) -> Body:
        network_id = docker_network_id(body)
        endpoint_id = docker_id(body, "EndpointID")
        interface = field(body, "Interface", dict, required=False) or {}
        address = field(interface, "Address", str, required=False)
        address_v6 = field(interface, "AddressIPv6", str, required=False)
        mac = field(interface, "MacAddress", str, required=False)
        ipv4 = _interface(address, "Address") if address else None
        ipv6 = _interface(address_v6, "AddressIPv6") if address_v6 else None
        if not isinstance(ipv4, ipaddress.IPv4Interface | None) or not isinstance(ipv6, ipaddress.IPv6Interface | None):
            raise BadRequest("Address must be IPv4 and AddressIPv6 must be IPv6")
        if mac and not re.match(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$", mac):
            raise BadRequest(f"MacAddress {mac[:32]!r} is not a MAC address")
        _refuse_ifname(field(body, "Options", dict, required=False) or {})
        endpoint = self.driver.create_endpoint(network_id, endpoint_id, ipv4, ipv6, mac or None)
        # libnetwork fails the call if we echo a field it supplied: return only what we chose.
        return {"Interface": {} if mac else {"MacAddress": endpoint.mac}}

    def endpoint_oper_info(self, body: Body) -> Body:
        network_id = docker_network_id(body)
        endpoint = self.driver.get_endpoint(network_id, docker_id(body, "EndpointID"))
        network = self.driver.get_network(network_id)
        return {
            "Value": {
                "vni": network.vni,
                "bridge": network.bridge,
                "veth": endpoint.host_veth,
                "mac": endpoint.mac,
                "ports": [
                    f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.proto}" for p in endpoint.ports
                ],
            }
        }

    def delete_endpoint(self, body: Body) -> Body:
        self.driver.delete_endpoint(docker_network_id(body), docker_id(body, "EndpointID"))
        return {}

    def join(self, body: Body) -> Body:
        sandbox_key = field(body, "SandboxKey", str, required=False)
        info = self.driver.join(docker_network_id(body), docker_id(body, "EndpointID"), sandbox_key)
        response: Body = {"InterfaceName": {"SrcName": info.src_name, "DstPrefix": info.dst_prefix}}
        if info.gateway_v4 is not None:
            response["Gateway"] = str(info.gateway_v4)
        if info.gateway_v6 is not None:
            response["GatewayIPv6"] = str(info.gateway_v6)
        if info.docker_gateway:
            # No Gateway, no default StaticRoute and the gateway service left on: libnetwork's needDefaultGW then
            # connects the container to docker_gwbridge, whose endpoint becomes the gateway endpoint (egress, -p).
            response["DisableGatewayService"] = False
        return response

    def leave(self, body: Body) -> Body:
        self.driver.leave(docker_network_id(body), docker_id(body, "EndpointID"))
        return {}

    def discover(self, body: Body) -> Body:
        field(body, "DiscoveryType", int, required=False)
        return {}

    def program_external_connectivity(self, body: Body) -> Body:
        network_id = docker_network_id(body)
        endpoint_id = docker_id(body, "EndpointID")
        options = field(body, "Options", dict, required=False) or {}
        raw_ports = options.get(PORTMAP_OPTION) or []
        if not isinstance(raw_ports, list):
            raise BadRequest(f"{PORTMAP_OPTION} must be a list")
        ports = [_port_mapping(raw) for raw in raw_ports]
        self.driver.program_external_connectivity(network_id, endpoint_id, ports)
        return {}

    def revoke_external_connectivity(self, body: Body) -> Body:
        self.driver.revoke_external_connectivity(docker_network_id(body), docker_id(body, "EndpointID"))
        return {}


@dataclass(frozen=True)
class NetworkOptions:
    """The top-level Options of CreateNetwork and GwAllocCheck that vxlanpy reads."""

    generic: dict[str, object]  # the `-o KEY=VALUE` driver options
    internal: bool
    enable_ipv4: bool | None  # None: not sent (Docker before 28 has no --ipv4)
    enable_ipv6: bool | None


def _network_options(body: Body) -> NetworkOptions:
    options = field(body, "Options", dict, required=False) or {}
    generic = options.get(GENERIC_OPTIONS) or {}
    if not isinstance(generic, dict):
        raise BadRequest(f"{GENERIC_OPTIONS} must be an object")
    # `-o com.docker.network.enable_ipv6=true` (or a daemon's default-network-opts) stays among the driver
    # options, but Docker has read it and sends the outcome as the top-level flag: not the driver's option.
    generic = {key: value for key, value in generic.items() if key not in (ENABLE_IPV4_OPTION, ENABLE_IPV6_OPTION)}
    flags: dict[str, bool | None] = {}
    for name in (INTERNAL_OPTION, ENABLE_IPV4_OPTION, ENABLE_IPV6_OPTION):
        value = options.get(name)
        if value is not None and not isinstance(value, bool):
            raise BadRequest(f"{name} must be a boolean")
        flags[name] = value
    return NetworkOptions(
        generic=generic,
        internal=bool(flags[INTERNAL_OPTION]),
        enable_ipv4=flags[ENABLE_IPV4_OPTION],
        enable_ipv6=flags[ENABLE_IPV6_OPTION],
    )


def _refuse_ifname(options: Body) -> None:
    """A remote driver cannot choose the container's interface name: Docker reads only SrcName and DstPrefix of
    the Join reply and names the interface DstPrefix+N itself.  Ignoring the option would give the container
    an interface named otherwise than asked, so it is refused before anything is made."""
    ifname = options.get(IFNAME_OPTION)
    if ifname is None or ifname == "":
        return
    shown = ifname[:32] if isinstance(ifname, str) else type(ifname).__name__
    raise InvalidOption(
        f"driver option {IFNAME_OPTION}={shown!r} cannot be honoured on a vxlanpy network: Docker names the "
        f"interfaces of remote network drivers itself ({DST_PREFIX}0, {DST_PREFIX}1, ... in the order the container "
        "joins its networks); remove that driver option from `docker run --network` or `docker network connect`"
    )


def _port_mapping(raw: object) -> PortMapping:
    """One libnetwork PortBinding; a host port range (HostPort..HostPortEnd) takes its first port."""
    if not isinstance(raw, dict):
        raise BadRequest("port bindings must be objects")
    proto_number = field(raw, "Proto", int)
    if proto_number not in PROTOCOL_NAMES:
        raise BadRequest(f"port protocol {proto_number} is not tcp, udp or sctp")
    container_port = field(raw, "Port", int)
    host_port = field(raw, "HostPort", int, required=False) or 0
    host_ip_raw = field(raw, "HostIP", str, required=False) or ""
    if not 0 < container_port < 65536 or not 0 <= host_port < 65536:
        raise BadRequest("port numbers must be between 1 and 65535")
    try:
        host_ip = ipaddress.ip_address(host_ip_raw) if host_ip_raw else None
    except ValueError:
        raise BadRequest(f"HostIP {host_ip_raw[:64]!r} is not an IP address") from None
    if host_ip is not None and host_ip.is_unspecified:
        host_ip = None
    return PortMapping(PROTOCOL_NAMES[proto_number], container_port, host_port, host_ip)
