"""What `vxlanpy ls`, `peers`, `node ls/rm` and `health` read from the running plugin, and the metrics gauges.

Docker's names are unknown here: the CLI adds them."""

from __future__ import annotations

import socket
import time
from typing import Any

from ..dataplane.base import RemoteEndpoint
from ..errors import Conflict, VxlanpyError
from ..models import BRIDGE_PREFIX, ENCAP_GRETAP, IPAddress, Network, gretap_ports, is_attachment_id
from .context import Body, Concern, endpoint_view
from .wireguard import is_encrypted


def network_mode(network: Network, multi_host: bool) -> str:
    config = network.config
    if multi_host:  # an encrypted network's VXLAN runs inside this host's WireGuard interface
        return "etcd+wg" if is_encrypted(network) else "etcd"
    if config.remote is not None:
        return "remote"
    if config.peers:
        return "peers"
    if config.group is not None:
        return "group"
    return "local"


def _remote_view(remote: RemoteEndpoint) -> Body:
    return {"mac": remote.mac, "vtep": str(remote.vtep), "addresses": sorted(str(a) for a in remote.addresses)}


class Reading(Concern):
    """The operator's read-only views of the plugin's state (and `node rm`, which acts on the cluster's list)."""

    def _peers(self, network: Network) -> list[Body]:
        config = network.config
        peers: list[Body] = []
        if config.remote is not None:
            peers.append({"address": str(config.remote), "host": None, "source": "remote"})
        peers += [{"address": str(peer), "host": None, "source": "static"} for peer in config.peers]
        if config.group is not None:
            peers.append({"address": str(config.group), "host": None, "source": "group"})
        view = self.shared.segment(network.vni)
        if view is not None:
            peers += [
                {"address": str(vtep), "host": host, "source": "etcd"} for host, vtep in sorted(view.vteps.items())
            ]
        return peers

    def listing(self) -> Body:
        links = self.shared.links.owned_links()
        networks = self.shared.store.list_networks()
        endpoints = self.shared.store.list_endpoints()
        result = []
        for network in networks:
            config = network.config
            result.append(
                {
                    "id": network.network_id,
                    "vni": network.vni,
                    "mode": network_mode(network, self.shared.multi_host),
                    "internal": network.internal,
                    "mtu": config.mtu,
                    "subnets": [subnet.to_dict() for subnet in (*network.ipv4, *network.ipv6)],
                    "config": config.to_dict(),
                    "devices": [
                        {"name": network.bridge, "kind": "bridge", "present": network.bridge in links},
                        *tunnel_devices(network, links),
                    ],
                    "peers": self._peers(network),
                    "endpoints": [
                        endpoint_view(endpoint, links)
                        for endpoint in endpoints
                        if endpoint.network_id == network.network_id
                    ],
                }
            )
        return {"host": self.shared.host, "multi_host": self.shared.multi_host, "networks": result}

    def nodes(self) -> Body:
        """The cluster's hosts (`vxlanpy node ls`); on the SQLite store, this one host."""
        nodes = self.shared.cluster.nodes if self.shared.cluster is not None else None
        if nodes is not None:
            return {"host": self.shared.host, "multi_host": True, "nodes": nodes.listing()}
        endpoints = self.shared.store.list_endpoints()
        addresses = sorted(
            str(address.ip) for endpoint in endpoints for address in (endpoint.ipv4, endpoint.ipv6) if address
        )
        vteps = sorted(
            {str(network.config.local) for network in self.shared.store.list_networks() if network.config.local}
        )
        row = {
            "id": self.shared.host,
            "hostname": socket.gethostname(),
            "vteps": vteps,
            "state": "alive",
            "this_host": True,
            "last_seen": self.shared.clock(),
            "networks": len(self.shared.store.list_networks()),
            "endpoints": len(endpoints),
            "addresses": addresses,
        }
        return {"host": self.shared.host, "multi_host": False, "nodes": [row]}

    def node_rm(self, identity: str, force: bool) -> Body:
        """Remove a host that is gone for good from the cluster (`vxlanpy node rm`)."""
        nodes = self.shared.cluster.nodes if self.shared.cluster is not None else None
        if nodes is None:
            raise Conflict(
                "this plugin keeps its state in a single-host (SQLite) store, which only ever holds this host: "
                "node rm removes hosts of a multi-host (etcd) cluster"
            )
        with self.shared.lock:
            result: Body = nodes.remove(identity, force)
        return result

    def metrics_state(self) -> Body:
        """What the metrics gauges show; read at scrape time."""
        networks = self.shared.store.list_networks()
        endpoints = self.shared.store.list_endpoints()
        rows = []
        for network in networks:
            view = self.shared.segment(network.vni)
            rows.append(
                {
                    "vni": network.vni,
                    "endpoints": sum(1 for ep in endpoints if ep.network_id == network.network_id),
                    "peers": len(self._peers(network)),
                    "remote_endpoints": len(view.endpoints) if view is not None else 0,
                }
            )
        kinds = [{"kind": "attached" if is_attachment_id(ep.endpoint_id) else "docker"} for ep in endpoints]
        return {"networks": rows, "endpoints": kinds}

    def peers(self, network_id: str) -> Body:
        network = self.shared.driver.get_network(network_id)
        config = network.config
        if config.encap == ENCAP_GRETAP:
            return self._gretap_peers(network)
        kernel_flood, kernel_remotes = self.shared.links.remote_entries(network)
        view = self.shared.segment(network.vni)
        hosts: dict[IPAddress, str] = {}
        wanted_flood: set[IPAddress] = set(config.peers)
        wanted: dict[str, tuple[str | None, str | None, RemoteEndpoint | None]] = {}
        if view is not None:
            for host, vtep in view.vteps.items():
                wanted_flood.add(vtep)
                hosts[vtep] = host
            for (host, endpoint_id), remote in view.endpoints.items():
                wanted[remote.mac] = (host, endpoint_id, remote)
        vteps = [
            {
                "address": str(address),
                "host": hosts.get(address),
                "store": address in wanted_flood,
                "kernel": address in kernel_flood,
            }
            for address in sorted(wanted_flood | kernel_flood, key=lambda a: (a.version, a))
        ]
        kernel_by_mac = {remote.mac: remote for remote in kernel_remotes}
        entries = []
        for mac in sorted(set(wanted) | set(kernel_by_mac)):
            holder, holder_endpoint, stored = wanted.get(mac, (None, None, None))
            in_kernel = kernel_by_mac.get(mac)
            store_view = _remote_view(stored) if stored is not None else None
            kernel_view = _remote_view(in_kernel) if in_kernel is not None else None
            entries.append(
                {
                    "mac": mac,
                    "host": holder,
                    "endpoint": holder_endpoint,
                    "store": store_view,
                    "kernel": kernel_view,
                    "match": store_view is not None and store_view == kernel_view,
                }
            )
        device = self._device_check(network)
        match = (
            all(row["store"] == row["kernel"] for row in vteps)
            and all(row["match"] for row in entries)
            and not device["differences"]
        )
        return {
            "id": network.network_id,
            "vni": network.vni,
            "mode": network_mode(network, self.shared.multi_host),
            "learning": config.learning,
            "source": "etcd" if view is not None else "static peers config",
            "vteps": vteps,
            "entries": entries,
            "device": device,
            "match": match,
        }

    def _gretap_peers(self, network: Network) -> Body:
        """A gretap network's peers are its ports: one per peer, each present in the kernel or not."""
        links = self.shared.links.owned_links()
        ports = gretap_ports(network.config)
        vteps = [
            {"address": str(peer), "host": None, "store": True, "kernel": name in links, "port": name}
            for name, peer in ports.items()
        ]
        missing = [name for name in ports if name not in links]
        return {
            "id": network.network_id,
            "vni": network.vni,
            "mode": network_mode(network, self.shared.multi_host),
            "learning": True,  # the bridge learns the MACs behind each port
            "source": "static peers config",
            "vteps": vteps,
            "entries": [],
            "device": {
                "name": "gretap ports",
                "ports": list(ports),
                "missing": missing,
                "differences": [f"{name} missing" for name in missing],
            },
            "match": not missing,
        }

    def _device_check(self, network: Network) -> Body:
        expected = expected_vxlan_device(network)
        actual = self.shared.sandboxes.vxlan_device(network.vxlan)
        if actual is None:
            return {"name": network.vxlan, "expected": expected, "kernel": None, "differences": ["missing"]}
        differences = [
            f"{key} {actual.get(key)} (store: {value})" for key, value in expected.items() if actual.get(key) != value
        ]
        return {"name": network.vxlan, "expected": expected, "kernel": actual, "differences": differences}

    def health(self) -> tuple[bool, Body]:
        checks: dict[str, Body] = {}

        def probe(name: str, action: Any) -> None:
            started = time.monotonic()
            try:
                detail = action()
                checks[name] = {"ok": True, "detail": detail}
            except VxlanpyError as exc:
                checks[name] = {"ok": False, "detail": exc.message}
            except Exception as exc:  # noqa: BLE001 - a health check reports, it never crashes
                checks[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
            checks[name]["ms"] = round((time.monotonic() - started) * 1000, 1)

        probe("store", lambda: f"{len(self.shared.store.list_networks())} networks; {self.shared.store.check()}")
        probe("netlink", lambda: f"{len(self.shared.links.owned_links())} vxlanpy links")
        probe("state", self._state_check)
        synced = self.shared.cluster.synced if self.shared.cluster is not None else None
        if synced is not None:

            def etcd() -> str:
                if not synced.is_set():
                    raise VxlanpyError("not in sync with etcd (unreachable, or still connecting); see the plugin log")
                return "in sync"

            probe("etcd", etcd)
        healthy = all(check["ok"] for check in checks.values())
        return healthy, {"status": "healthy" if healthy else "unhealthy", "host": self.shared.host, "checks": checks}

    def _state_check(self) -> str:
        lost = self.shared.lost_networks()
        if lost:
            bridges = (name for links in lost.values() for name in links if name.startswith(BRIDGE_PREFIX))
            names = ", ".join(sorted(bridges))
            raise VxlanpyError(
                f"the kernel holds the devices of {len(lost)} network(s) the store does not know ({names}): the "
                "state was lost (state.db deleted, emptied or replaced?); run `vxlanpy recover` to adopt the "
                "networks Docker still knows"
            )
        return "every vxlanpy device is owned by the store"


def tunnel_devices(network: Network, links: dict[str, str]) -> list[Body]:
    """The network's VXLAN device, or its gretap ports, as `vxlanpy ls` and `doctor` read them."""
    config = network.config
    common: Body = {"dev": config.dev, "local": str(config.local) if config.local else None}
    if config.encap == ENCAP_GRETAP:
        return [
            {"name": name, "kind": "gretap", "present": name in links, **common, "remote": str(peer)}
            for name, peer in gretap_ports(config).items()
        ]
    return [
        {"name": network.vxlan, "kind": "vxlan", "present": network.vxlan in links, **common, "dstport": config.dstport}
    ]


def expected_vxlan_device(network: Network) -> Body:
    """The VXLAN device's settings as `vxlanpy peers` compares them with the kernel's."""
    config = network.config
    destination = config.remote or config.group
    return {
        "vni": config.vni,
        "port": config.dstport,
        "local": str(config.local) if config.local else None,
        "destination": str(destination) if destination else None,
        "learning": config.learning,
        "mtu": config.mtu,
        "up": True,
    }
