"""`vxlanpy attach` and `detach`: a container or named namespace wired to a network outside Docker (see
attach.py for the conventions that make an attachment an ordinary endpoint of the store).

Attaching is three steps, each undoing what came before it when it fails: choosing the addresses (reserved in
vxlanpy's IPAM when it manages the pool), creating the endpoint through the Driver, and plumbing it into the
namespace."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from ..errors import BadRequest, Conflict, InvalidOption, NotFound, VxlanpyError
from ..ipam import GATEWAY_RECORD, describe_holder
from ..models import Endpoint, IPAddress, IPInterface, Network, Subnet, attachment_id
from .attach import IFNAME as IFNAME_PATTERN
from .attach import first_free, is_host_address, reservation_holder, valid_netns_path, valid_target
from .context import Body, Concern, endpoint_view
from .sandbox import Plumbed, Plumbing

log = logging.getLogger(__name__)


@dataclass
class ChosenAddresses:
    addresses: list[IPInterface] = field(default_factory=list)
    reserved: list[IPInterface] = field(default_factory=list)  # those reserved in vxlanpy's IPAM: released on failure

    @property
    def ipv4(self) -> ipaddress.IPv4Interface | None:
        return next((a for a in self.addresses if isinstance(a, ipaddress.IPv4Interface)), None)

    @property
    def ipv6(self) -> ipaddress.IPv6Interface | None:
        return next((a for a in self.addresses if isinstance(a, ipaddress.IPv6Interface)), None)


def _check_request(target: str, netns_paths: list[str], ifname: str | None) -> None:
    if not valid_target(target):
        raise BadRequest(f"target {target[:80]!r} is neither container:<64 hex id> nor netns:<name>")
    if not netns_paths or not all(isinstance(p, str) and valid_netns_path(p) for p in netns_paths):
        raise BadRequest("netns must list namespace paths under /run/docker/netns, /run/netns or /proc/PID/ns/net")
    if ifname is not None and not IFNAME_PATTERN.match(ifname):
        raise InvalidOption(f"interface name {ifname[:32]!r} is not valid (1-15 letters, digits, '_', '.', '-')")


def _subnet_for(network: Network, version: int, requested: IPAddress | None) -> Subnet | None:
    """The subnet an address of this family comes from: the first, or the one holding the requested address
    (which must be a host address, not the gateway); None when the network has no subnet of this family."""
    subnets = network.ipv4 if version == 4 else network.ipv6
    if requested is not None and requested.version != version:
        raise InvalidOption(f"{requested} is not an IPv{version} address")
    if not subnets:
        if requested is not None:
            raise InvalidOption(f"network {network.network_id[:12]} has no IPv{version} subnet for {requested}")
        return None
    if requested is None:
        return subnets[0]
    subnet = next((s for s in subnets if requested in s.pool), None)
    if subnet is None:
        pools = ", ".join(str(s.pool) for s in subnets)
        raise InvalidOption(f"--ip {requested} is outside the network's subnets ({pools})")
    if subnet.gateway is not None and requested == subnet.gateway.ip:
        raise Conflict(f"--ip {requested} is the network's gateway; choose another address")
    if not is_host_address(requested, subnet.pool):
        raise InvalidOption(f"--ip {requested} is not a host address of {subnet.pool}")
    return subnet


class Attachments(Concern):
    def attach(
        self,
        network_id: str,
        target: str,
        netns_paths: list[str],
        ipv4: IPAddress | None = None,
        ipv6: IPAddress | None = None,
        ifname: str | None = None,
    ) -> Body:
        _check_request(target, netns_paths, ifname)
        with self.shared.lock:
            network = self.shared.driver.get_network(network_id)
            endpoint_id = attachment_id(target, network_id)
            self._replace_stale(endpoint_id, target, network_id)
            netns = next((path for path in netns_paths if self.shared.sandboxes.netns_exists(path)), None)
            if netns is None:
                raise NotFound(f"network namespace {netns_paths[0]} does not exist (is the container running?)")
            chosen = self._choose_addresses(network, endpoint_id, ipv4, ipv6)
            endpoint = self._create_endpoint(network, endpoint_id, chosen)
            plumbed = self._plumb(network, endpoint, netns, ifname, chosen)
        log.info(
            "attached %s to network %s as %s (%s)",
            target[:22],
            network_id[:12],
            plumbed.ifname,
            ", ".join(str(a) for a in chosen.addresses),
        )
        return {
            "endpoint": endpoint_view(endpoint, None),
            "netns": netns,
            "ifname": plumbed.ifname,
            "mtu": network.config.mtu,
            "routes": plumbed.routes,
            "notes": plumbed.notes,
        }

    def detach(self, network_id: str, target: str) -> Body:
        if not valid_target(target):
            raise BadRequest(f"target {target[:80]!r} is neither container:<64 hex id> nor netns:<name>")
        with self.shared.lock:
            self.shared.driver.get_network(network_id)
            endpoint_id = attachment_id(target, network_id)
            endpoint = self.shared.store.get_endpoint(endpoint_id)
            if endpoint is None:
                raise NotFound(f"{target.partition(':')[2][:12]} is not attached to network {network_id[:12]}")
            self.shared.remove_attachment(endpoint)
        return {"endpoint": endpoint_view(endpoint, None)}

    def _replace_stale(self, endpoint_id: str, target: str, network_id: str) -> None:
        """Remove an earlier attachment of the same target whose interface or namespace is gone; refuse a live one."""
        existing = self.shared.store.get_endpoint(endpoint_id)
        if existing is None:
            return
        reason = self.shared.stale_reason(existing, self.shared.links.owned_links())
        if reason is None:
            raise Conflict(
                f"{target.partition(':')[2][:12]} is already attached to network {network_id[:12]} "
                f"({existing.ipv4 or existing.ipv6}); detach it first"
            )
        log.info("replacing stale attachment %s: %s", endpoint_id[:12], reason)
        self.shared.remove_attachment(existing)

    # -- step 1: the addresses ------------------------------------------------------------------------------

    def _choose_addresses(
        self, network: Network, endpoint_id: str, ipv4: IPAddress | None, ipv6: IPAddress | None
    ) -> ChosenAddresses:
        chosen = ChosenAddresses()
        try:
            for version, requested in ((4, ipv4), (6, ipv6)):
                address, is_reserved = self._address(network, version, requested, endpoint_id)
                if address is not None:
                    chosen.addresses.append(address)
                    if is_reserved:
                        chosen.reserved.append(address)
            if not chosen.addresses:
                raise InvalidOption(f"network {network.network_id[:12]} has no subnet to take an address from")
        except Exception:
            self.shared.release_reserved(network, endpoint_id, chosen.reserved)
            raise
        return chosen

    def _address(
        self, network: Network, version: int, requested: IPAddress | None, endpoint_id: str
    ) -> tuple[IPInterface | None, bool]:
        """(address, reserved in vxlanpy's IPAM) for one family; (None, False) when the network has none."""
        subnet = _subnet_for(network, version, requested)
        if subnet is None:
            return None, False
        key = str(subnet.pool)
        if self.shared.book.pool_holders(key):
            return self._reserve(subnet, requested, endpoint_id), True
        taken = self._addresses_in_use(network)
        if requested is not None:
            if requested in taken:
                raise Conflict(f"--ip {requested} is already used by another endpoint of the network; choose another")
            return ipaddress.ip_interface(f"{requested}/{subnet.pool.prefixlen}"), False
        chosen = first_free(subnet, taken, highest_first=True)
        if chosen is None:
            raise Conflict(f"no free address left in {subnet.pool}; give one with --ip")
        return chosen, False

    def _addresses_in_use(self, network: Network) -> set[IPAddress]:
        taken: set[IPAddress] = set()
        for endpoint in self.shared.store.list_endpoints(network.network_id):
            taken.update(a.ip for a in (endpoint.ipv4, endpoint.ipv6) if a is not None)
        view = self.shared.segment(network.vni)
        if view is not None:
            for remote in view.endpoints.values():
                taken.update(remote.addresses)
        return taken

    def _reserve(self, subnet: Subnet, requested: IPAddress | None, endpoint_id: str) -> IPInterface:
        key = str(subnet.pool)
        holder = reservation_holder(self.shared.host, endpoint_id)
        prefix = subnet.pool.prefixlen
        if requested is not None:
            winner = self.shared.book.reserve_address(key, str(requested), holder)
            if winner is not None:
                raise Conflict(f"--ip {requested} is already in use by {describe_holder(winner)}; choose another")
            return ipaddress.ip_interface(f"{requested}/{prefix}")
        for _ in range(16):  # another request may take the address between our read and our claim
            reserved = self.shared.book.reserved_addresses(key)
            taken = {ipaddress.ip_address(a) for a in reserved if a != GATEWAY_RECORD}
            if GATEWAY_RECORD in reserved:
                taken.add(ipaddress.ip_address(reserved[GATEWAY_RECORD]))
            chosen = first_free(subnet, taken, highest_first=False)
            if chosen is None:
                raise Conflict(f"no free address left in {subnet.pool}")
            if self.shared.book.reserve_address(key, str(chosen.ip), holder) is None:
                return chosen
        raise Conflict(f"could not reserve an address in {subnet.pool}: too many concurrent requests; retry")

    # -- step 2: the endpoint -------------------------------------------------------------------------------

    def _create_endpoint(self, network: Network, endpoint_id: str, chosen: ChosenAddresses) -> Endpoint:
        try:
            return self.shared.driver.create_endpoint(network.network_id, endpoint_id, chosen.ipv4, chosen.ipv6, None)
        except Exception:
            self.shared.release_reserved(network, endpoint_id, chosen.reserved)
            raise

    # -- step 3: the plumbing -------------------------------------------------------------------------------

    def _plumb(
        self, network: Network, endpoint: Endpoint, netns: str, ifname: str | None, chosen: ChosenAddresses
    ) -> Plumbed:
        try:
            self.shared.driver.join(network.network_id, endpoint.endpoint_id, netns)
            gateways = self._gateways(network, chosen.addresses)
            return self.shared.sandboxes.plumb(
                Plumbing(netns, endpoint.container_veth, ifname, tuple(chosen.addresses), gateways, network.config.mtu)
            )
        except Exception:
            try:
                self.shared.driver.delete_endpoint(network.network_id, endpoint.endpoint_id)
            except VxlanpyError as exc:
                log.error("rollback of attachment %s incomplete: %s", endpoint.endpoint_id[:12], exc)
            self.shared.release_reserved(network, endpoint.endpoint_id, chosen.reserved)
            raise

    def _gateways(self, network: Network, addresses: list[IPInterface]) -> tuple[IPAddress, ...]:
        # gateway=docker_gwbridge: vxlanpy routes nothing out, and only Docker adds docker_gwbridge: no default route.
        if not network.routes_egress:
            return ()
        gateways = []
        for address in addresses:
            for subnet in (*network.ipv4, *network.ipv6):
                if address.ip in subnet.pool and subnet.gateway is not None:
                    gateways.append(subnet.gateway.ip)
                    break
        return tuple(gateways)
