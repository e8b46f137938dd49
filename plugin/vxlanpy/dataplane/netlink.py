"""`Links` realised with rtnetlink through pyroute2: bridges, VXLAN devices, veth pairs and FDB entries.

Every public method converges the kernel to the given object, so the driver and reconciliation can call
them again and again.  Nothing here runs `ip` or any other program.  The parts: `linkops` (errors, generic link
operations), `underlay` (the underlay interface and its default routes), `remotes` (multi-host FDB and
neighbour entries) and `rtnl` (the requests and dumps pyroute2 makes too slowly, each with its figure); this
module holds the lifecycle, the `Links` protocol, bridges, VXLAN devices and veth pairs.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from ..errors import DataplaneError, VniTaken
from ..models import ENCAP_GRETAP, LINK_ALIAS_PREFIX, Endpoint, IPAddress, Network, NetworkConfig
from .base import RemoteEndpoint, Underlay, vni_taken_message
from .gretap import GretapPorts, is_unlabelled_gretap_of
from .linkops import (
    VETH_REMEDY,
    VNI_REMEDY,
    Msg,
    address_or_none,
    alias_of,
    dataplane_error,
    info_of,
    is_owned,
    kind_of,
    netlink_errors,
)
from .reaper import DELETING_ALIAS, DELETING_GROUP, DELETING_PREFIX, LinkReaper
from .remotes import RemoteEndpoints, checked_address, checked_remotes, unicast_mac
from .rtnl import ROUTE_GROUPS, DefaultRouteWatch, RawSocket, open_socket
from .underlay import UnderlayLookup

T = TypeVar("T")

IPV6_LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")


def _created_unlabelled(link: Msg, network: Network) -> bool:
    """A device of `network` that a create made but did not label: the plugin was killed between the two requests
    (the kernel ignores the alias in a create).  Known by what the create set: the bridge's anycast gateway MAC,
    the VXLAN device's VNI.  Without this a killed create left a bridge no one would remove and whose name blocked
    the VNI for good."""
    if alias_of(link):
        return False  # labelled: vxlanpy's (then owned) or someone else's
    kind = kind_of(link)
    if kind == "bridge":
        return str(link.get("address") or "").lower() == network.gateway_mac
    return (kind == "vxlan" and info_of(link, "vxlan_id") == network.vni) or is_unlabelled_gretap_of(link, network)


def _ip_key(address: IPAddress, v4: str, v6: str) -> str:
    return v6 if address.version == 6 else v4


class NetlinkLinks(RemoteEndpoints, GretapPorts, UnderlayLookup):
    """The `Links` protocol on one network namespace.

    pyroute2 0.9 binds a netlink socket (and an asyncio loop) to the thread that uses it and quietly opens
    a new socket for every other thread.  The plugin serves requests from many threads, so all netlink
    work runs on one worker thread that owns the single socket; the lock makes each public operation,
    which is several netlink requests, atomic with respect to the others and keeps `close()` from racing them.

    `background_removal`: removed links are taken down at once and deleted by a `LinkReaper` (reaper.py explains
    why); by default in the plugin's own namespace, where the requests are served.  Without it, or after
    `settle()`, a removal returns once the links are gone.
    """

    def __init__(self, netns: str | None = None, background_removal: bool | None = None) -> None:
        self._netns = netns
        if background_removal is None:
            background_removal = netns is None
        self._reaper = LinkReaper(lambda: RawSocket(open_socket(netns))) if background_removal else None
        self._lock = threading.Lock()
        self._closed = False
        self._bridges: dict[str, int] = {}  # bridge name -> index, see _bridge_index (worker thread only)
        self._default_oif = None
        self._gateways = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vxlanpy-netlink")
        try:
            self._ipr = self._worker.submit(self._open).result()
        except BaseException:
            self._worker.shutdown(wait=False)
            raise

    def _open(self) -> Any:
        where = f"network namespace {self._netns!r}" if self._netns else "the host network namespace"
        remedies = {errno.ENOENT: f" ({where} does not exist); create it or fix the netns name"}
        with netlink_errors(f"cannot open a netlink socket in {where}", remedies):
            if self._netns is None:
                ipr = IPRoute()
            else:
                # flags=0: pyroute2 would otherwise silently create a missing namespace.
                ipr = NetNS(self._netns, flags=0)
            try:
                self._raw = RawSocket(open_socket(self._netns))
            except BaseException:
                ipr.close()
                raise
            try:
                # Listening before the first dump: no change between the two is missed.
                self._routes = DefaultRouteWatch(open_socket(self._netns, ROUTE_GROUPS))
            except BaseException:
                self._raw.close()
                ipr.close()
                raise
            return ipr

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.close()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._worker.submit(self._ipr.close).result()
            finally:
                self._raw.close()
                self._routes.close()
                self._worker.shutdown(wait=True)

    def __enter__(self) -> NetlinkLinks:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self, operation: str, func: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._closed:
                raise DataplaneError(f"cannot {operation}: the netlink connection is closed; restart the plugin")
            with netlink_errors(f"cannot {operation}"):
                return self._worker.submit(func, *args).result()

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until the links removed so far are deleted; False if `timeout` ran out first."""
        return True if self._reaper is None else self._reaper.settle(timeout)

    # -- the Links protocol -----------------------------------------------------------------------------

    def underlay(self, dev: str | None) -> Underlay:
        return self._run("inspect the underlay interface", self._underlay, dev)

    def ensure_network(self, network: Network) -> None:
        self._run(f"set up network {network.bridge}", self._ensure_network, network)

    def remove_network(self, network: Network) -> None:
        self._run(f"remove network {network.bridge}", self._remove_network, network)

    def ensure_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        self._run(f"set up endpoint {endpoint.host_veth}", self._ensure_endpoint, network, endpoint)

    def remove_endpoint(self, endpoint: Endpoint) -> None:
        self._run(f"remove endpoint {endpoint.host_veth}", self._remove_endpoint, endpoint)

    def sync_remotes(self, network: Network, flood: set[IPAddress], remotes: list[RemoteEndpoint]) -> None:
        wanted_flood = {checked_address(vtep, "a flood VTEP") for vtep in flood}
        wanted = checked_remotes(remotes)
        self._run(f"program the remote endpoints of {network.vxlan}", self._sync_remotes, network, wanted_flood, wanted)

    def update_remotes(
        self, network: Network, gone_macs: set[str], gone_addresses: set[IPAddress], remotes: list[RemoteEndpoint]
    ) -> None:
        macs = {unicast_mac(mac) for mac in gone_macs}
        addresses = {checked_address(address, "a former neighbour") for address in gone_addresses}
        wanted = checked_remotes(remotes)
        self._run(
            f"update the remote endpoints of {network.vxlan}", self._update_remotes, network, macs, addresses, wanted
        )

    def remote_entries(self, network: Network) -> tuple[set[IPAddress], list[RemoteEndpoint]]:
        return self._run(f"read the remote endpoints of {network.vxlan}", self._remote_entries, network)

    def remove_link(self, name: str) -> None:
        self._run(f"remove interface {name}", self._remove_link, name)

    def owned_links(self) -> dict[str, str]:
        return self._run("list vxlanpy's interfaces", self._owned_links)

    def foreign_vnis(self, dstport: int) -> dict[int, str]:
        return self._run("list the host's VXLAN devices", self._foreign_vnis, dstport)

    # -- implementations: these run on the worker thread only -------------------------------------------

    def _ensure_network(self, network: Network) -> None:
        self._wait_for_deletion((*network.tunnels, network.bridge))
        dev_index = self._dev_index(network.config.dev)
        # gretap ports first: a kernel without GRE fails the create before the bridge exists.
        gretap = self._ensure_gretap_ports(network, dev_index) if network.config.encap == ENCAP_GRETAP else None
        bridge = self._ensure_bridge(network)
        if self._netns is None:  # the first CreateEndpoint on it (`docker run` right after) skips a lookup
            self._bridges[network.bridge] = int(bridge["index"])
        self._ensure_gateways(network, bridge)
        if gretap is not None:
            self._attach_gretap_ports(network, bridge, gretap)
            return
        vxlan = self._ensure_vxlan(network, bridge, dev_index)
        self._ensure_neigh_suppress(network, vxlan)
        self._ensure_peers(network, vxlan)

    def _remove_network(self, network: Network) -> None:
        self._bridges.pop(network.bridge, None)
        if network.config.encap == ENCAP_GRETAP:
            self._remove_stale_gretap_ports(network, set(network.tunnels))
        doomed: dict[int, str] = {}
        for name in (*network.tunnels, network.bridge):
            link = self._link(name)
            if link is not None and (is_owned(link) or _created_unlabelled(link, network)):
                doomed[int(link["index"])] = name
        self._discard(doomed)

    def _bridge_index(self, network: Network) -> int | None:
        """The index of the network's bridge, None when it does not exist.

        In the plugin's own namespace a bridge already checked (ours, a bridge) is remembered by index and
        re-validated with if_nametoindex (an ioctl, no netlink decode): the same name at the same index is the
        same device, since the kernel hands out interface indexes cyclically and does not reuse them soon."""
        cached = self._bridges.get(network.bridge) if self._netns is None else None
        if cached is not None:
            try:
                if socket.if_nametoindex(network.bridge) == cached:
                    return cached
            except OSError:
                pass
            self._bridges.pop(network.bridge, None)
        bridge = self._owned_link(network.bridge, VNI_REMEDY)
        if bridge is None:
            return None
        index = int(bridge["index"])
        if kind_of(bridge) == "bridge":
            self._bridges[network.bridge] = index
        return index

    def _ensure_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        self._wait_for_deletion((endpoint.host_veth, endpoint.container_veth))
        bridge_index = self._bridge_index(network)
        if bridge_index is None:
            raise DataplaneError(
                f"cannot attach endpoint {endpoint.host_veth}: bridge {network.bridge} does not exist; "
                "recreate the network or restart the plugin so that it reconciles"
            )
        if self._add_veth_fast(network, endpoint, bridge_index):
            return
        bridge = {"index": bridge_index}
        host = self._owned_link(endpoint.host_veth, VETH_REMEDY)
        if host is None:
            host = self._create_veth(network, endpoint, bridge)
        self._converge(host, mtu=network.config.mtu, master=bridge["index"], alias=endpoint.alias, up=True)
        container = self._owned_link(endpoint.container_veth, VETH_REMEDY)
        if container is not None:
            self._converge(container, mtu=network.config.mtu, address=endpoint.mac, alias=endpoint.alias)

    def _remove_endpoint(self, endpoint: Endpoint) -> None:
        # Deleting one end of a veth removes both, so the container end is usually gone by then.  By name, without
        # reading the link first: a missing one answers ENODEV at once.
        if self._reaper is None:
            for name in (endpoint.host_veth, endpoint.container_veth):
                self._delete_name(name)
            return
        for name in (endpoint.host_veth, endpoint.container_veth):
            link = self._link(name)
            if link is not None:
                # and its peer with it.  Not renamed: no later endpoint takes its name, and the rename would cost
                # DeleteEndpoint an RCU grace period (the kernel's dev_change_name waits for one)
                self._discard({int(link["index"]): name}, rename=False)
                return

    def _discard(self, links: dict[int, str], rename: bool = True) -> None:
        """Delete `links` (index -> name), or retire them (see reaper.py), renamed or not, and leave the deletion
        to the reaper."""
        if self._reaper is None:
            for index, name in links.items():
                self._delete_where(f"cannot delete interface {name}", index=index)
            return
        prefix = DELETING_PREFIX if rename else None
        refused = self._raw.retire_links(list(links), DELETING_ALIAS, DELETING_GROUP, prefix) if links else {}
        for index, code in refused.items():
            if code != errno.ENODEV:
                raise dataplane_error(
                    f"cannot take interface {links[index]} down", OSError(code, os.strerror(code)), {}
                )
        self._reaper.delete({index: name for index, name in links.items() if index not in refused})

    def _wait_for_deletion(self, names: tuple[str, ...]) -> None:
        if self._reaper is not None:
            self._reaper.wait_for(names)

    def _remove_link(self, name: str) -> None:
        self._wait_for_deletion((name,))
        link = self._link(name)
        if link is not None and is_owned(link):
            self._delete(link)

    def _owned_links(self) -> dict[str, str]:
        with netlink_errors("cannot list the interfaces"):
            links = self._ipr.link("dump")
        doomed = self._reaper.pending_indexes() if self._reaper is not None else set()  # being deleted already
        return {
            str(link.get("ifname")): alias_of(link) for link in links if is_owned(link) and link["index"] not in doomed
        }

    def _foreign_vnis(self, dstport: int) -> dict[int, str]:
        with netlink_errors("cannot list the host's VXLAN devices"):
            devices = self._raw.vxlan_devices()
        return {
            device.vni: device.name
            for device in devices
            if device.port == dstport and not device.alias.startswith(LINK_ALIAS_PREFIX)
        }

    # -- bridge ------------------------------------------------------------------------------------------

    def _ensure_bridge(self, network: Network) -> Msg:
        bridge = self._owned_link(network.bridge, VNI_REMEDY)
        if bridge is not None and kind_of(bridge) != "bridge":
            self._delete(bridge)
            bridge = None
        if bridge is None:
            bridge = self._create(
                f"cannot create bridge {network.bridge}",
                network.alias,
                no_ipv6=not network.ipv6,
                ifname=network.bridge,
                kind="bridge",
                mtu=network.config.mtu,
                address=network.gateway_mac,
                br_stp_state=0,
                br_forward_delay=0,
            )
        if info_of(bridge, "br_stp_state") != 0 or info_of(bridge, "br_forward_delay") != 0:
            with netlink_errors(f"cannot turn STP off on bridge {network.bridge}"):
                self._ipr.link("set", index=bridge["index"], kind="bridge", br_stp_state=0, br_forward_delay=0)
        return self._converge(bridge, mtu=network.config.mtu, address=network.gateway_mac, alias=network.alias, up=True)

    def _ensure_gateways(self, network: Network, bridge: Msg) -> None:
        wanted = {(gateway.ip, gateway.network.prefixlen) for gateway in network.gateways}
        with netlink_errors(f"cannot read the addresses of bridge {network.bridge}"):
            present = {(address, prefixlen) for address, prefixlen, _ in self._raw.addresses(int(bridge["index"]))}
        for ip, prefixlen in present - wanted:
            if ip in IPV6_LINK_LOCAL:
                continue
            with netlink_errors(f"cannot remove stale address {ip}/{prefixlen} from bridge {network.bridge}"):
                self._ipr.addr("del", index=bridge["index"], address=str(ip), prefixlen=prefixlen)
        for ip, prefixlen in sorted(wanted - present, key=str):
            # The gateway is the same address on every host; suppressed ND makes DAD pointless, skip its delay.
            flags = IFA_F_NODAD if ip.version == 6 else 0
            remedies = {errno.EEXIST: f" ({ip} is already assigned elsewhere on this host); choose another subnet"}
            with netlink_errors(f"cannot add gateway {ip}/{prefixlen} to bridge {network.bridge}", remedies):
                self._ipr.addr("add", index=bridge["index"], address=str(ip), prefixlen=prefixlen, flags=flags)

    # -- vxlan -------------------------------------------------------------------------------------------

    def _ensure_vxlan(self, network: Network, bridge: Msg, dev_index: int | None) -> Msg:
        config = network.config
        vxlan = self._owned_link(network.vxlan, VNI_REMEDY)
        if vxlan is not None and not self._vxlan_matches(vxlan, config, dev_index):
            self._delete(vxlan)
            vxlan = None
        if vxlan is None:
            on_dev = f" on dev {config.dev}" if config.dev else ""
            in_use = f" (another VXLAN device already uses VNI {config.vni} and port {config.dstport})"
            remedies = {  # EEXIST (the VNI and port taken): VniTaken, below
                errno.EADDRINUSE: f"{in_use}; remove it or choose another vni or dstport",
                errno.EINVAL: f" (mtu {config.mtu} or an address does not fit the underlay{on_dev}); "
                "lower -o mtu or check -o local/remote/group",
            }
            try:
                vxlan = self._create(
                    f"cannot create VXLAN device {network.vxlan}{on_dev}",
                    network.alias,
                    remedies,
                    no_ipv6=True,
                    ifname=network.vxlan,
                    kind="vxlan",
                    mtu=config.mtu,
                    master=bridge["index"],
                    **self._vxlan_spec(config, dev_index),
                )
            except DataplaneError as error:
                if getattr(error.__cause__, "code", None) != errno.EEXIST:
                    raise
                taken = self._foreign_vnis(config.dstport).get(config.vni)
                raise VniTaken(vni_taken_message(config.vni, config.dstport, taken), config.vni) from error
        return self._converge(vxlan, mtu=config.mtu, master=bridge["index"], alias=network.alias, up=True)

    @staticmethod
    def _vxlan_spec(config: NetworkConfig, dev_index: int | None) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "vxlan_id": config.vni,
            "vxlan_port": config.dstport,
            "vxlan_learning": int(config.learning),
        }
        if dev_index is not None:
            spec["vxlan_link"] = dev_index
        if config.local is not None:
            spec[_ip_key(config.local, "vxlan_local", "vxlan_local6")] = str(config.local)
        if config.ttl is not None:
            spec["vxlan_ttl"] = config.ttl
        destination = config.remote or config.group
        if destination is not None:
            spec[_ip_key(destination, "vxlan_group", "vxlan_group6")] = str(destination)
        return spec

    @staticmethod
    def _vxlan_matches(vxlan: Msg, config: NetworkConfig, dev_index: int | None) -> bool:
        """Whether the existing device already has the parameters that only a re-creation can change."""
        local = address_or_none(info_of(vxlan, "vxlan_local") or info_of(vxlan, "vxlan_local6"))
        group = address_or_none(info_of(vxlan, "vxlan_group") or info_of(vxlan, "vxlan_group6"))
        return (
            kind_of(vxlan) == "vxlan"
            and info_of(vxlan, "vxlan_id") == config.vni
            and info_of(vxlan, "vxlan_port") == config.dstport
            and (info_of(vxlan, "vxlan_link") or None) == dev_index
            and local == config.local
            and group == (config.remote or config.group)
            and (info_of(vxlan, "vxlan_ttl") or 0) == (config.ttl or 0)
            and bool(info_of(vxlan, "vxlan_learning")) == config.learning
        )

    def _ensure_neigh_suppress(self, network: Network, vxlan: Msg) -> None:
        # Set every time: reading it back (`brport show`) dumps every bridge port of the host, O(endpoints),
        # while setting the value it already has is one request that changes nothing.
        action = f"cannot turn on neigh_suppress on bridge port {network.vxlan}"
        with netlink_errors(action, {errno.EINVAL: "; the kernel is too old for neigh_suppress (needs 4.15 or later)"}):
            self._ipr.brport("set", index=vxlan["index"], neigh_suppress=1)

    # -- veth --------------------------------------------------------------------------------------------

    def _add_veth_fast(self, network: Network, endpoint: Endpoint, bridge_index: int) -> bool:
        """The usual CreateEndpoint: neither end exists yet.  One request creates the pair already up and on the
        bridge, two more label both ends, and nothing is read back (each read is a full link decode).  False when
        either name is taken (a retry, a leftover): the caller then converges whatever is there step by step."""
        mtu = network.config.mtu
        try:
            self._ipr.link(
                "add",
                ifname=endpoint.host_veth,
                kind="veth",
                mtu=mtu,
                master=bridge_index,
                state="up",
                peer={"ifname": endpoint.container_veth, "address": endpoint.mac, "mtu": mtu},
            )
        except NetlinkError as error:
            if error.code == errno.EEXIST:
                return False
            action = f"cannot create veth pair {endpoint.host_veth}/{endpoint.container_veth}"
            raise dataplane_error(action, error, {}) from error
        try:
            # The kernel ignores IFLA_IFALIAS in a create request, so the labels need requests of their own:
            # both sent at once.  The container end is down until dockerd moves it into the sandbox, so the
            # host end has no carrier yet (see `_label`).
            host, container = endpoint.host_veth, endpoint.container_veth
            with netlink_errors(f"cannot label interfaces {host} and {container} as vxlanpy's"):
                self._label([(host, endpoint.alias, True), (container, endpoint.alias, False)])
        except DataplaneError:
            # An unlabelled link would be taken for someone else's and block every later attempt.
            self._delete_name(endpoint.host_veth)
            raise
        return True

    def _create_veth(self, network: Network, endpoint: Endpoint, bridge: Msg) -> Msg:
        stale = self._owned_link(endpoint.container_veth, VETH_REMEDY)
        if stale is not None:
            self._delete(stale)
        host = self._create(
            f"cannot create veth pair {endpoint.host_veth}/{endpoint.container_veth}",
            endpoint.alias,
            no_ipv6=True,
            ifname=endpoint.host_veth,
            kind="veth",
            mtu=network.config.mtu,
            master=bridge["index"],
            peer={"ifname": endpoint.container_veth, "address": endpoint.mac, "mtu": network.config.mtu},
        )
        self._converge(self._require(endpoint.container_veth), alias=endpoint.alias)
        return host
