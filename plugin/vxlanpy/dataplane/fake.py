"""In-memory Links and Firewall for unit tests: they record what the kernel would hold.

`fail_on` makes the named method raise DataplaneError, to test the driver's rollback."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from ..errors import DataplaneError, InvalidOption, VniTaken
from ..models import ENCAP_GRETAP, Endpoint, IPAddress, Network, PortMapping
from .base import NO_GRE, RemoteEndpoint, Underlay, vni_taken_message


class FakeLinks:
    def __init__(self, underlays: dict[str, Underlay] | None = None, default_dev: str = "eth0") -> None:
        self.underlays = underlays or {
            "eth0": Underlay("eth0", 1500, (ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("2001:db8::10")))
        }
        self.default_dev = default_dev
        self.networks: dict[str, Network] = {}  # bridge name -> network
        self.endpoints: dict[str, Endpoint] = {}  # host veth name -> endpoint
        self.aliens: set[str] = set()  # links that exist but are not vxlanpy's
        self.remotes: dict[int, tuple[set[IPAddress], list[RemoteEndpoint]]] = {}  # vni -> (flood, remotes)
        self.fail_on: set[str] = set()
        self.calls: list[str] = []
        self.gre = True  # False: a kernel without ip_gre, as netlink's gretap ports report it
        self.foreign: dict[tuple[int, int], str] = {}  # (vni, port) -> name: other VXLAN devices of the host

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        if method in self.fail_on:
            raise DataplaneError(f"injected failure in {method}")

    def underlay(self, dev: str | None) -> Underlay:
        self._enter("underlay")
        name = dev or self.default_dev
        if name not in self.underlays:
            raise InvalidOption(f"underlay interface {name!r} does not exist; set -o dev=INTERFACE")
        return self.underlays[name]

    def ensure_network(self, network: Network) -> None:
        self._enter("ensure_network")
        if network.bridge in self.aliens:
            raise DataplaneError(f"interface {network.bridge} exists and is not managed by vxlanpy")
        if network.config.encap == ENCAP_GRETAP and not self.gre:
            raise DataplaneError(f"cannot create gretap port {network.tunnels[0]}: Operation not supported{NO_GRE}")
        taken = self.foreign.get((network.vni, network.config.dstport))
        if taken is not None and network.config.encap != ENCAP_GRETAP:
            raise VniTaken(vni_taken_message(network.vni, network.config.dstport, taken), network.vni)
        self.networks[network.bridge] = network

    def foreign_vnis(self, dstport: int) -> dict[int, str]:
        self._enter("foreign_vnis")
        return {vni: name for (vni, port), name in self.foreign.items() if port == dstport}

    def remove_network(self, network: Network) -> None:
        self._enter("remove_network")
        self.networks.pop(network.bridge, None)
        self.remotes.pop(network.vni, None)  # the kernel's entries go with their devices

    def ensure_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        self._enter("ensure_endpoint")
        self.endpoints[endpoint.host_veth] = endpoint

    def remove_endpoint(self, endpoint: Endpoint) -> None:
        self._enter("remove_endpoint")
        self.endpoints.pop(endpoint.host_veth, None)

    def sync_remotes(self, network: Network, flood: set[IPAddress], remotes: list[RemoteEndpoint]) -> None:
        self._enter("sync_remotes")
        if network.bridge not in self.networks:
            raise DataplaneError(f"bridge {network.bridge} does not exist")
        self.remotes[network.vni] = (set(flood), sorted(remotes, key=lambda remote: remote.mac))

    def update_remotes(
        self, network: Network, gone_macs: set[str], gone_addresses: set[IPAddress], remotes: list[RemoteEndpoint]
    ) -> None:
        self._enter("update_remotes")
        if network.bridge not in self.networks:
            raise DataplaneError(f"bridge {network.bridge} does not exist")
        # Modelled as the kernel holds them: MAC -> VTEP (FDB) and address -> MAC (neighbours), apart.
        flood, present = self.remotes.get(network.vni, (set(), []))
        vteps = {remote.mac: remote.vtep for remote in present if remote.mac not in gone_macs}
        neigh = {a: remote.mac for remote in present for a in remote.addresses if a not in gone_addresses}
        for remote in remotes:
            vteps[remote.mac] = remote.vtep
            neigh.update((address, remote.mac) for address in remote.addresses)
        self.remotes[network.vni] = (
            flood,
            [
                RemoteEndpoint(mac, vtep, tuple(sorted((a for a, m in neigh.items() if m == mac), key=str)))
                for mac, vtep in sorted(vteps.items())
            ],
        )

    def remote_entries(self, network: Network) -> tuple[set[IPAddress], list[RemoteEndpoint]]:
        return self.remotes.get(network.vni, (set(), []))

    def remove_link(self, name: str) -> None:
        self._enter("remove_link")
        for net in self.networks.values():
            if name == net.bridge or name in net.tunnels:
                self.remotes.pop(net.vni, None)  # the kernel's entries go with their devices
        self.networks = {
            bridge: net for bridge, net in self.networks.items() if name != net.bridge and name not in net.tunnels
        }
        self.endpoints.pop(name, None)

    def owned_links(self) -> dict[str, str]:
        links = {}
        for network in self.networks.values():
            links[network.bridge] = network.alias
            links.update((tunnel, network.alias) for tunnel in network.tunnels)
        for endpoint in self.endpoints.values():
            links[endpoint.host_veth] = endpoint.alias
        return links


class FakeFirewall:
    def __init__(self) -> None:
        self.base_ready = False
        self.networks: dict[int, tuple[Network, list[Endpoint]]] = {}
        self.vtep_filter: tuple[set[int], set[IPAddress]] = (set(), set())
        self.tunnel_ports: dict[int, str] = {}  # encrypted networks' ports -> the interface they must arrive on
        self.fail_on: set[str] = set()

    def _enter(self, method: str) -> None:
        if method in self.fail_on:
            raise DataplaneError(f"injected failure in {method}")

    def ensure_base(self) -> None:
        self._enter("ensure_base")
        self.base_ready = True

    def ensure_network(self, network: Network, endpoints: list[Endpoint]) -> None:
        self._enter("ensure_network")
        self.networks[network.vni] = (network, list(endpoints))

    def remove_network(self, vni: int) -> None:
        self._enter("remove_network")
        self.networks.pop(vni, None)

    def sync_vtep_filter(
        self, ports: set[int], vteps: set[IPAddress], tunnel_ports: Mapping[int, str] | None = None
    ) -> None:
        self._enter("sync_vtep_filter")
        self.vtep_filter = (set(ports), set(vteps))
        self.tunnel_ports = dict(tunnel_ports or {})

    def owned_vnis(self) -> set[int]:
        return set(self.networks)

    def published_ports(self, vni: int) -> dict[IPAddress, list[PortMapping]]:
        network, endpoints = self.networks.get(vni, (None, []))
        if network is None or network.internal:
            return {}
        return {ep.ipv4.ip: list(ep.ports) for ep in endpoints if ep.ipv4 is not None and ep.ports}

    def published(self) -> set[tuple[str, int]]:
        """(proto, host port) pairs currently published, over all networks."""
        return {
            (port.proto, port.host_port)
            for network, endpoints in self.networks.values()
            if not network.internal
            for endpoint in endpoints
            for port in endpoint.ports
        }
