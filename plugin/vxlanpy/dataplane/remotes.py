"""Remote endpoints of `NetlinkLinks` (multi-host mode): three kinds of kernel entries per network, all owned by
vxlanpy:

    vxlan-N FDB (self)     MAC -> VTEP            bridge fdb replace MAC dev vxlan-N dst VTEP self permanent
                           00:..:00 -> VTEP       bridge fdb append 00:00:00:00:00:00 dev vxlan-N dst VTEP
    vxbr-N FDB (master)    MAC -> port vxlan-N    bridge fdb replace MAC dev vxlan-N master static
    vxbr-N neighbours      IP -> MAC              ip neigh replace IP lladdr MAC dev vxbr-N nud permanent

The static bridge entry keeps the bridge from flooding unicast to the VXLAN port, and together with the
neighbour entry it is what the bridge's neigh_suppress needs to answer ARP and ND for the remote locally.
Entries vxlanpy does not make are left alone: the bridge's own (local) entries, dynamic (learned) ones,
and the default destination the kernel keeps for `remote`/`group`.

The tables are read with pyroute2 (filtered by the kernel) and written in batches on the raw socket (see `rtnl`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyroute2.netlink import NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_GETNEIGH
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import (
    NTF_EXT_LEARNED,
    NTF_MASTER,
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    NUD_REACHABLE,
    ndmsg,
)

from ..errors import DataplaneError
from ..models import IPAddress, Network, NetworkConfig
from .base import RemoteEndpoint
from .linkops import VNI_REMEDY, LinkOps, Msg, address_or_none, dataplane_error, netlink_errors
from .rtnl import NeighWrite

ALL_ZEROS_MAC = "00:00:00:00:00:00"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# `bridge fdb ... self permanent` and `bridge fdb ... master static`, as iproute2 encodes them.
_VXLAN_ENTRY_STATE = NUD_PERMANENT | NUD_NOARP
_BRIDGE_STATIC_STATE = NUD_NOARP | NUD_REACHABLE
_FAMILY_REMEDY = {
    errno.EAFNOSUPPORT: " (the VTEP's address family differs from the network's underlay); "
    "use VTEP addresses of the family of -o local",
}


# Remote endpoints come from other hosts (through the cluster store): a bad one is refused with a
# DataplaneError, the error the callers of sync_remotes already handle, before anything is changed.


def unicast_mac(value: str) -> str:
    """A remote endpoint's MAC in the kernel's spelling; refuses what cannot be one endpoint's address."""
    mac = str(value).lower()
    if not _MAC.fullmatch(mac) or mac == ALL_ZEROS_MAC or int(mac[:2], 16) & 1:
        raise DataplaneError(
            f"refusing {value!r} as a remote endpoint's MAC: not a unicast MAC address; "
            "check what the other hosts publish"
        )
    return mac


def checked_address(value: object, what: str) -> IPAddress:
    if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address) or value.is_unspecified:
        raise DataplaneError(f"refusing {value!r} as {what}: not an IP address; check what the other hosts publish")
    return value


def checked_remotes(remotes: list[RemoteEndpoint]) -> dict[str, RemoteEndpoint]:
    """The remotes by MAC, each checked; a MAC listed twice: the last one wins, as a later event would."""
    wanted: dict[str, RemoteEndpoint] = {}
    for remote in remotes:
        wanted[unicast_mac(remote.mac)] = remote
        checked_address(remote.vtep, f"the VTEP of {remote.mac}")
        for address in remote.addresses:
            checked_address(address, f"an address of {remote.mac}")
    return wanted


def _order(address: IPAddress) -> tuple[int, IPAddress]:
    return address.version, address


def _addresses_sorted(addresses: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(sorted(addresses, key=_order))


def _default_destinations(config: NetworkConfig) -> set[IPAddress]:
    """The all-zero entry the kernel itself keeps for `remote`/`group`: never vxlanpy's to add or remove."""
    return {address for address in (config.remote, config.group) if address is not None}


@dataclass
class _RemoteState:
    """The remote-endpoint entries of one network as the kernel holds them now (see the module docstring)."""

    flood: set[IPAddress] = field(default_factory=set)
    # MAC -> VTEPs of the permanent unicast entries of the VXLAN device (more than one only if appended).
    vxlan: dict[str, set[IPAddress]] = field(default_factory=dict)
    # MACs with a static bridge entry on the VXLAN port (not the port's own local entry, not learned ones).
    static: set[str] = field(default_factory=set)
    # IP -> MAC of the permanent neighbour entries on the bridge.
    neigh: dict[IPAddress, str] = field(default_factory=dict)


class RemoteEndpoints(LinkOps):
    """Part of `NetlinkLinks`; worker thread only."""

    def _ensure_peers(self, network: Network, vxlan: Msg) -> None:
        """Add the all-zero entries of the static peers that are missing.

        Nothing is removed here: in multi-host mode `sync_remotes` owns the flood list, and reconciliation
        calls this again; a peer dropped from the options goes with the next `sync_remotes`."""
        if not network.config.peers:  # multi-host mode: no dump of a table that may hold 10^5 remote entries
            return
        present = self._read_remotes(network, vxlan, None).flood
        for peer in sorted(set(network.config.peers) - present, key=str):
            self._add_flood(network, vxlan, peer)

    def _network_links(self, network: Network) -> tuple[Msg, Msg] | None:
        """The network's VXLAN device and bridge, None if either is gone; the VXLAN device must be a port."""
        vxlan = self._owned_link(network.vxlan, VNI_REMEDY)
        bridge = self._owned_link(network.bridge, VNI_REMEDY)
        if vxlan is None or bridge is None:
            return None
        if vxlan.get("master") != bridge["index"]:
            raise DataplaneError(
                f"{network.vxlan} is not a port of bridge {network.bridge}; "
                "restart the plugin so that it reconciles the network"
            )
        return vxlan, bridge

    def _remote_links(self, network: Network) -> tuple[Msg, Msg]:
        """The network's VXLAN device and bridge, on which remote endpoints are programmed."""
        found = self._network_links(network)
        if found is None:
            raise DataplaneError(
                f"cannot program remote endpoints: {network.vxlan} or {network.bridge} does not exist; "
                "recreate the network or restart the plugin so that it reconciles"
            )
        return found

    def _sync_remotes(self, network: Network, flood: set[IPAddress], wanted: dict[str, RemoteEndpoint]) -> None:
        vxlan, bridge = self._remote_links(network)
        present = self._read_remotes(network, vxlan, bridge)
        neigh = {address: mac for mac, remote in wanted.items() for address in remote.addresses}

        # Retire first what is no longer wanted, in the order that never leaves an answer without a path:
        # neighbour entries, then the bridge's static entries, then the VXLAN entries and flood VTEPs.
        writes = [
            self._neigh_removal(network, bridge, a) for a in sorted(present.neigh.keys() - neigh.keys(), key=_order)
        ]
        writes += [self._bridge_static_removal(network, vxlan, mac) for mac in sorted(present.static - wanted.keys())]
        writes += [
            self._vxlan_entry_removal(network, vxlan, mac) for mac in sorted(present.vxlan.keys() - wanted.keys())
        ]
        for vtep in sorted(present.flood - flood - _default_destinations(network.config), key=str):
            writes.append(self._flood_removal(network, vxlan, vtep))

        # Then add or correct what is missing, the forwarding path before the neighbour entry it serves.
        writes += [self._flood(network, vxlan, vtep) for vtep in sorted(flood - present.flood, key=str)]
        for mac, remote in sorted(wanted.items()):
            vteps = present.vxlan.get(mac, set())
            if vteps == {remote.vtep}:
                continue
            if len(vteps) > 1:  # a replace only changes the first destination: start over
                writes.append(self._vxlan_entry_removal(network, vxlan, mac))
            writes.append(self._vxlan_entry(network, vxlan, mac, remote.vtep))
        writes += [self._bridge_static(network, vxlan, mac) for mac in sorted(wanted.keys() - present.static)]
        for address, mac in sorted(neigh.items(), key=lambda item: _order(item[0])):
            if present.neigh.get(address) != mac:
                writes.append(self._neigh(network, bridge, address, mac))
        self._write(writes)

    def _update_remotes(
        self, network: Network, gone_macs: set[str], gone_addresses: set[IPAddress], wanted: dict[str, RemoteEndpoint]
    ) -> None:
        """One change's worth of `_sync_remotes`, in its order, without reading the tables: a replace is
        idempotent and a removal of what is gone is fine, so nothing needs to be known of what is there."""
        vxlan, bridge = self._remote_links(network)
        writes = [self._neigh_removal(network, bridge, address) for address in sorted(gone_addresses, key=_order)]
        writes += [self._bridge_static_removal(network, vxlan, mac) for mac in sorted(gone_macs)]
        writes += [self._vxlan_entry_removal(network, vxlan, mac) for mac in sorted(gone_macs)]
        writes += [self._vxlan_entry(network, vxlan, mac, remote.vtep) for mac, remote in sorted(wanted.items())]
        writes += [self._bridge_static(network, vxlan, mac) for mac in sorted(wanted)]
        for mac, remote in sorted(wanted.items()):
            writes += [self._neigh(network, bridge, address, mac) for address in _addresses_sorted(remote.addresses)]
        self._write(writes)

    def _remote_entries(self, network: Network) -> tuple[set[IPAddress], list[RemoteEndpoint]]:
        found = self._network_links(network)
        if found is None:
            return set(), []
        vxlan, bridge = found
        present = self._read_remotes(network, vxlan, bridge)
        flood = present.flood - _default_destinations(network.config)
        by_mac: dict[str, list[IPAddress]] = {}
        for address, mac in present.neigh.items():
            by_mac.setdefault(mac, []).append(address)
        remotes = [
            RemoteEndpoint(
                mac=mac, vtep=min(vteps, key=lambda a: (a.version, a)), addresses=_addresses_sorted(by_mac.get(mac, ()))
            )
            for mac, vteps in sorted(present.vxlan.items())
        ]
        return flood, remotes

    def _read_remotes(self, network: Network, vxlan: Msg, bridge: Msg | None) -> _RemoteState:
        """One FDB dump of the VXLAN port (its own entries and the bridge's for it), one neighbour dump of
        the bridge (skipped when `bridge` is None): both filtered by the kernel, as `bridge fdb show dev`."""
        state = _RemoteState()
        index = vxlan["index"]
        request = ifinfmsg()  # an ifinfomsg header is how the kernel takes a port filter for an FDB dump
        request["family"] = socket.AF_BRIDGE
        request["index"] = index
        with netlink_errors(f"cannot read the forwarding database of {network.vxlan}"):
            entries = self._dump(request)
        for entry in entries:
            mac = str(entry.get("lladdr") or "").lower()
            if entry["ifindex"] != index or not mac:
                continue
            if entry["flags"] & NTF_SELF:
                dst = address_or_none(entry.get("dst"))
                if dst is None or entry.get("vni") not in (None, network.vni):
                    continue
                if mac == ALL_ZEROS_MAC:
                    state.flood.add(dst)
                elif entry["state"] & NUD_PERMANENT:
                    state.vxlan.setdefault(mac, set()).add(dst)
            elif entry.get("master") is not None and entry.get("vlan") is None:
                # Permanent is the bridge's own (local) entry for the port's MAC; without NOARP it is learned.
                static = entry["state"] & (NUD_PERMANENT | NUD_NOARP) == NUD_NOARP
                if static and not entry["flags"] & NTF_EXT_LEARNED:
                    state.static.add(mac)
        if bridge is None:
            return state
        request = ndmsg()
        request["family"] = socket.AF_UNSPEC  # IPv4 and IPv6 in one dump
        request["attrs"] = [("NDA_IFINDEX", bridge["index"])]
        with netlink_errors(f"cannot read the neighbour table of {network.bridge}"):
            entries = self._dump(request)
        for entry in entries:
            dst, mac = entry.get("dst"), entry.get("lladdr")
            if entry["ifindex"] != bridge["index"] or not dst or not mac:
                continue
            if entry["state"] & NUD_PERMANENT:
                state.neigh[ipaddress.ip_address(dst)] = str(mac).lower()
        return state

    def _write(self, writes: list[NeighWrite]) -> None:
        """The writes in batches (`RawSocket.write_neighbours`); the first one refused as a DataplaneError."""
        refused = self._raw.write_neighbours(writes)
        if refused is not None:
            write, code = refused
            raise dataplane_error(write.action, OSError(code, os.strerror(code)), write.remedies)

    def _dump(self, request: Msg) -> list[Msg]:
        request["header"]["type"] = RTM_GETNEIGH
        request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        # nlm_request_batch sends the message as built: fdb()/neigh() would only filter a full dump here.
        return list(self._ipr.nlm_request_batch([request]))

    # The writes of `_sync_remotes` and `_update_remotes`, batched by `RawSocket.write_neighbours`: the requests
    # `bridge fdb` and `ip neigh` send, with the message to give when the kernel refuses one.

    @staticmethod
    def _flood(network: Network, vxlan: Msg, vtep: IPAddress) -> NeighWrite:
        return NeighWrite(
            f"cannot add flood VTEP {vtep} to {network.vxlan}", socket.AF_BRIDGE, int(vxlan["index"]), ALL_ZEROS_MAC,
            vtep, _VXLAN_ENTRY_STATE, NTF_SELF, NLM_F_CREATE | NLM_F_APPEND, _FAMILY_REMEDY,
        )  # fmt: skip

    @staticmethod
    def _flood_removal(network: Network, vxlan: Msg, vtep: IPAddress) -> NeighWrite:
        return NeighWrite(
            f"cannot remove former flood VTEP {vtep} from {network.vxlan}", socket.AF_BRIDGE, int(vxlan["index"]),
            ALL_ZEROS_MAC, vtep, flags=NTF_SELF, mode=None,
        )  # fmt: skip

    @staticmethod
    def _vxlan_entry(network: Network, vxlan: Msg, mac: str, vtep: IPAddress) -> NeighWrite:
        return NeighWrite(
            f"cannot point {mac} at VTEP {vtep} on {network.vxlan}", socket.AF_BRIDGE, int(vxlan["index"]), mac,
            vtep, _VXLAN_ENTRY_STATE, NTF_SELF, remedies=_FAMILY_REMEDY,
        )  # fmt: skip

    @staticmethod
    def _vxlan_entry_removal(network: Network, vxlan: Msg, mac: str) -> NeighWrite:
        return NeighWrite(
            f"cannot remove remote {mac} from {network.vxlan}", socket.AF_BRIDGE, int(vxlan["index"]), mac,
            flags=NTF_SELF, mode=None,
        )  # fmt: skip

    @staticmethod
    def _bridge_static(network: Network, vxlan: Msg, mac: str) -> NeighWrite:
        return NeighWrite(
            f"cannot add static entry {mac} on port {network.vxlan} to bridge {network.bridge}", socket.AF_BRIDGE,
            int(vxlan["index"]), mac, state=_BRIDGE_STATIC_STATE, flags=NTF_MASTER,
        )  # fmt: skip

    @staticmethod
    def _bridge_static_removal(network: Network, vxlan: Msg, mac: str) -> NeighWrite:
        return NeighWrite(
            f"cannot remove static entry {mac} from bridge {network.bridge}", socket.AF_BRIDGE, int(vxlan["index"]),
            mac, state=_BRIDGE_STATIC_STATE, flags=NTF_MASTER, mode=None,
        )  # fmt: skip

    @staticmethod
    def _neigh(network: Network, bridge: Msg, address: IPAddress, mac: str) -> NeighWrite:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        remedies = {errno.EINVAL: f" (is IPv{address.version} disabled on {network.bridge}?)"}
        return NeighWrite(
            f"cannot add neighbour {address} -> {mac} to bridge {network.bridge}", family, int(bridge["index"]), mac,
            address, NUD_PERMANENT, remedies=remedies,
        )  # fmt: skip

    @staticmethod
    def _neigh_removal(network: Network, bridge: Msg, address: IPAddress) -> NeighWrite:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        return NeighWrite(
            f"cannot remove neighbour {address} from bridge {network.bridge}", family, int(bridge["index"]),
            dst=address, mode=None,
        )  # fmt: skip

    def _add_flood(self, network: Network, vxlan: Msg, vtep: IPAddress) -> None:
        with netlink_errors(f"cannot add flood VTEP {vtep} to {network.vxlan}", _FAMILY_REMEDY):
            self._ipr.fdb(
                "append",
                ifindex=vxlan["index"],
                lladdr=ALL_ZEROS_MAC,
                dst=str(vtep),
                state=_VXLAN_ENTRY_STATE,
                flags=NTF_SELF,
            )
