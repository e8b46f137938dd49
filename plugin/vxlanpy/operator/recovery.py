"""`vxlanpy recover`: rebuild a lost store from what survives (the kernel's devices and DNAT rules, Docker's own
account of its networks and containers).  See `Recovery`."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..driver import NETWORK_ALIAS_PREFIX
from ..errors import BadRequest
from ..ipam import Ipam, first_host
from ..models import (
    BRIDGE_PREFIX,
    LINK_ALIAS_PREFIX,
    NETWORK_ID,
    NETWORK_ID_FORM,
    Endpoint,
    IPAddress,
    Network,
    PortMapping,
    Subnet,
)
from .context import Body

if TYPE_CHECKING:
    from .operations import Operations


@dataclass(frozen=True)
class RecoveredEndpoint:
    endpoint_id: str
    mac: str | None
    ipv4: ipaddress.IPv4Interface | None
    ipv6: ipaddress.IPv6Interface | None
    sandbox_key: str | None
    ports: tuple[PortMapping, ...] = ()


@dataclass(frozen=True)
class RecoveredNetwork:
    """What Docker still knows of a network (`docker network inspect` and its containers), as the CLI sends it."""

    network_id: str
    options: dict[str, str]
    internal: bool
    ipam_vxlanpy: bool
    ipv4: tuple[Subnet, ...]
    ipv6: tuple[Subnet, ...]
    endpoints: tuple[RecoveredEndpoint, ...] = field(default=())


def _kept_host_ports(wanted: RecoveredEndpoint, published: dict[IPAddress, list[PortMapping]]) -> list[PortMapping]:
    """The endpoint's ports with their host ports: an explicit one as Docker recorded it; one Docker left to
    vxlanpy (`-p PORT`, host port 0) as the kernel's DNAT rule still has it (Docker records it nowhere: its
    inspect shows a remote driver's host ports only while that driver answers), else it is not published."""
    rules = published.get(wanted.ipv4.ip, []) if wanted.ipv4 is not None else []
    ports = []
    for port in wanted.ports:
        if not port.host_port:
            found = [r for r in rules if (r.proto, r.container_port) == (port.proto, port.container_port)]
            found = [r for r in found if port.host_ip is None or r.host_ip in (None, port.host_ip)] or found
            if not found:
                continue
            port = replace(port, host_port=found[0].host_port)
        ports.append(port)
    return ports


def _text(value: object, what: str, limit: int = 256) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{what} must be a string of at most {limit} characters")
    return value


def _hex_id(value: object, what: str) -> str:
    text = _text(value, what)
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise BadRequest(f"{what} must be a full Docker id (64 lowercase hex characters)")
    return text


def _interface(value: object, version: int, what: str) -> Any:
    if value in (None, ""):
        return None
    try:
        parsed = ipaddress.ip_interface(_text(value, what, 64))
    except ValueError:
        raise BadRequest(f"{what} {str(value)[:64]!r} is not an address in CIDR form") from None
    if parsed.version != version:
        raise BadRequest(f"{what} {parsed} is not IPv{version}")
    return parsed


def _ports(items: object) -> tuple[PortMapping, ...]:
    if not isinstance(items, list):
        raise BadRequest("ports must be a list")
    ports = []
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest("each port must be an object")
        proto = item.get("proto")
        container_port, host_port = item.get("container_port"), item.get("host_port")
        if proto not in ("tcp", "udp", "sctp"):
            raise BadRequest("port proto must be tcp, udp or sctp")
        for number in (container_port, host_port):
            if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 65535:
                raise BadRequest("port numbers must be integers in 0-65535")
        host_ip = item.get("host_ip")
        try:
            address = ipaddress.ip_address(_text(host_ip, "host_ip", 64)) if host_ip else None
        except ValueError:
            raise BadRequest(f"host_ip {str(host_ip)[:64]!r} is not an IP address") from None
        ports.append(PortMapping(str(proto), int(container_port), int(host_port), address))  # type: ignore[arg-type]
    return tuple(ports)


def parse_recovered_network(body: object) -> RecoveredNetwork:
    """The CLI's account of one Docker network (see cli.py `recover`), checked strictly."""
    if not isinstance(body, dict):
        raise BadRequest("network must be an object")
    network_id = _text(body.get("id"), "network id")
    if not NETWORK_ID.match(network_id):
        raise BadRequest(f"network id must be a full Docker network id ({NETWORK_ID_FORM})")
    options = body.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
        raise BadRequest("options must map strings to strings")
    subnets: dict[int, list[Subnet]] = {4: [], 6: []}
    for item in body.get("subnets") or []:
        if not isinstance(item, dict):
            raise BadRequest("each subnet must be an object")
        try:
            pool = ipaddress.ip_network(_text(item.get("pool"), "subnet", 64))
        except ValueError:
            raise BadRequest(f"subnet {str(item.get('pool'))[:64]!r} is not a CIDR") from None
        gateway_raw = item.get("gateway")
        gateway = None
        if gateway_raw:
            try:
                gateway = ipaddress.ip_interface(f"{_text(gateway_raw, 'gateway', 64)}/{pool.prefixlen}")
            except ValueError:
                raise BadRequest(f"gateway {str(gateway_raw)[:64]!r} is not an address") from None
            if gateway.ip not in pool:
                raise BadRequest(f"gateway {gateway.ip} is outside {pool}")
        subnets[pool.version].append(Subnet(pool, gateway))
    endpoints = []
    for item in body.get("endpoints") or []:
        if not isinstance(item, dict):
            raise BadRequest("each endpoint must be an object")
        sandbox = item.get("sandbox") or None
        mac = item.get("mac") or None
        endpoints.append(
            RecoveredEndpoint(
                endpoint_id=_hex_id(item.get("id"), "endpoint id"),
                mac=_text(mac, "mac", 17) if mac else None,
                ipv4=_interface(item.get("ipv4"), 4, "ipv4"),
                ipv6=_interface(item.get("ipv6"), 6, "ipv6"),
                sandbox_key=_text(sandbox, "sandbox") if sandbox else None,
                ports=_ports(item.get("ports") or []),
            )
        )
    internal, ipam_vxlanpy = body.get("internal", False), body.get("ipam_vxlanpy", False)
    if not isinstance(internal, bool) or not isinstance(ipam_vxlanpy, bool):
        raise BadRequest("internal and ipam_vxlanpy must be true or false")
    return RecoveredNetwork(
        network_id, dict(options), internal, ipam_vxlanpy, tuple(subnets[4]), tuple(subnets[6]), tuple(endpoints)
    )


def _with_gateways(subnets: tuple[Subnet, ...]) -> tuple[Subnet, ...]:
    """`docker network inspect` shows a gateway only when it was given to `docker network create`; otherwise
    Docker's IPAM, like vxlanpy's, took the first host address of the subnet."""
    return tuple(
        subnet
        if subnet.gateway is not None
        else Subnet(subnet.pool, ipaddress.ip_interface(f"{first_host(subnet.pool)}/{subnet.pool.prefixlen}"))
        for subnet in subnets
    )


class Recovery:
    """`vxlanpy recover`: rebuild a lost store from what survives, in three steps the CLI drives.

    1. `state()`: the store file is written back when it was deleted or replaced under the running plugin (the
       plugin still holds it open, so nothing is lost); then the networks whose devices exist in the kernel but
       whose rows do not (start-up kept them: see Driver.reconcile).
    2. `adopt(network)`, for each vxlanpy network Docker knows: its row is re-created from Docker's options and
       subnets, with the VNI of its devices in the kernel (labelled with the network id); the endpoints whose
       veth survives get their rows back, with their sandbox and explicitly published ports; the addresses of
       a network on vxlanpy's IPAM are reserved again.
    3. `finish(forget)`: the devices of the lost networks Docker does not know are removed, then a reconciliation
       repairs the rest."""

    def __init__(self, operations: Operations) -> None:
        self.shared = operations.shared

    def state(self, dry_run: bool) -> Body:
        with self.shared.lock:
            return self._state(dry_run)

    def adopt(self, wanted: RecoveredNetwork, dry_run: bool) -> Body:
        with self.shared.lock:
            return self._adopt(wanted, dry_run)

    def finish(self, forget: list[str], dry_run: bool) -> Body:
        with self.shared.lock:
            return self._finish(forget, dry_run)

    def _state(self, dry_run: bool) -> Body:
        file_note = self.shared.store.restore_file(dry_run)
        lost = self.shared.lost_networks()
        return {
            "store_file": file_note,
            "known": [network.network_id for network in self.shared.store.list_networks()],
            "lost": [{"id": network_id, "links": links} for network_id, links in sorted(lost.items())],
        }

    def _kernel_vni(self, network_id: str) -> int | None:
        alias = f"{NETWORK_ALIAS_PREFIX}{network_id}"
        for name, owner in self.shared.links.owned_links().items():
            if owner == alias and name.startswith(BRIDGE_PREFIX):
                number = name.removeprefix(BRIDGE_PREFIX)
                if number.isascii() and number.isdigit():
                    return int(number)
        return None

    def _adopt(self, wanted: RecoveredNetwork, dry_run: bool) -> Body:
        result: Body = {"id": wanted.network_id, "adopted": False, "endpoints": [], "skipped": [], "ipam": []}
        network = self.shared.store.get_network(wanted.network_id)
        published: dict[IPAddress, list[PortMapping]] = {}
        if network is None:
            options: dict[str, object] = dict(wanted.options)
            vni = self._kernel_vni(wanted.network_id)
            if vni is not None:  # read before the create below rewrites the network's chains
                published = self.shared.firewall.published_ports(vni)
            if vni is not None:
                options["vni"] = str(vni)
            result["vni"] = vni
            result["adopted"] = True
            if dry_run:
                result["endpoints"] = [ep.endpoint_id for ep in wanted.endpoints]
                return result
            ipv4, ipv6 = _with_gateways(wanted.ipv4), _with_gateways(wanted.ipv6)
            network = self.shared.driver.create_network(wanted.network_id, options, ipv4, ipv6, wanted.internal)
            result["vni"] = network.vni
        else:
            result["vni"] = network.vni
        self._adopt_endpoints(network, wanted, published, dry_run, result)
        if wanted.ipam_vxlanpy and not dry_run:
            result["ipam"] += self._reserve_again(network, wanted)
        return result

    def _adopt_endpoints(
        self,
        network: Network,
        wanted: RecoveredNetwork,
        published: dict[IPAddress, list[PortMapping]],
        dry_run: bool,
        result: Body,
    ) -> None:
        """The rows of the endpoints whose veth survives, joined to their sandbox, with their published ports."""
        links = self.shared.links.owned_links()
        for wanted_ep in wanted.endpoints:
            if self.shared.store.get_endpoint(wanted_ep.endpoint_id) is not None:
                continue
            host_veth = Endpoint(wanted_ep.endpoint_id, network.network_id, "").host_veth
            if links.get(host_veth) != f"{LINK_ALIAS_PREFIX}ep:{wanted_ep.endpoint_id}":
                result["skipped"].append(
                    {"id": wanted_ep.endpoint_id, "reason": "its veth is gone; restart its container to reconnect it"}
                )
                continue
            result["endpoints"].append(wanted_ep.endpoint_id)
            if dry_run:
                continue
            self.shared.driver.create_endpoint(
                network.network_id, wanted_ep.endpoint_id, wanted_ep.ipv4, wanted_ep.ipv6, wanted_ep.mac
            )
            if wanted_ep.sandbox_key:
                self.shared.driver.join(network.network_id, wanted_ep.endpoint_id, wanted_ep.sandbox_key)
            ports = _kept_host_ports(wanted_ep, published)
            if ports and not network.internal:
                self.shared.driver.program_external_connectivity(network.network_id, wanted_ep.endpoint_id, ports)

    def _reserve_again(self, network: Network, wanted: RecoveredNetwork) -> list[str]:
        """The network's pools and the endpoints' addresses reserved again in vxlanpy's IPAM."""
        ipam = Ipam(self.shared.book, self.shared.host, clock=self.shared.clock)
        recovered: list[str] = []
        for subnet in (*network.ipv4, *network.ipv6):
            addresses = [
                a.ip for ep in wanted.endpoints for a in (ep.ipv4, ep.ipv6) if a is not None and a.ip in subnet.pool
            ]
            gateway = subnet.gateway.ip if subnet.gateway is not None else None
            recovered += ipam.recover_pool(network.network_id, subnet.pool, gateway, addresses)
        return recovered

    def _finish(self, forget: list[str], dry_run: bool) -> Body:
        lost = self.shared.lost_networks()
        removed = []
        for network_id in forget:
            links = lost.get(network_id)
            if links is None:
                continue  # not lost (adopted meanwhile, or never here): nothing to remove
            vni = next((int(n.removeprefix(BRIDGE_PREFIX)) for n in links if n.startswith(BRIDGE_PREFIX)), None)
            removed.append({"id": network_id, "vni": vni, "links": links})
            if dry_run:
                continue
            for name in links:
                self.shared.links.remove_link(name)
            if vni is not None:
                self.shared.firewall.remove_network(vni)
        report = asdict(self.shared.driver.reconcile(dry_run=dry_run))
        return {"removed_networks": removed, "report": report}
