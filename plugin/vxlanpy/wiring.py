"""Wiring: every component of the plugin, built once.

`build(settings)` picks the production store, links, firewall and cluster a Settings object asks for;
`assemble(driver, settings)` adds what sits on any driver (IPAM, operations, metrics), so tests build the same
components on fakes.  Nothing here starts anything: lifecycle.Lifecycle starts and stops the background work,
app.create_app serves the components.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .config import Settings
from .dataplane.base import Links
from .driver import Driver
from .encryption_base import Encryption
from .errors import StoreError, VxlanpyError
from .ipam import Ipam
from .metrics import Metrics
from .models import IPAddress
from .operator.operations import Operations
from .operator.sandbox import NetlinkSandboxes, Sandboxes
from .store.base import Store

if TYPE_CHECKING:
    from .cluster import EtcdCluster
    from .encryption import WireGuardMesh
    from .operator.client import DockerListing
    from .store.etcd import EtcdKV

log = logging.getLogger("vxlanpy")

DockerAsker = Callable[[], "DockerListing | None"]  # Docker's networks, or None when Docker cannot be asked


class BackgroundCluster(Protocol):
    """What the lifecycle does with the multi-host layer (cluster.EtcdCluster)."""

    on_reconnect: Callable[[], None] | None  # after every (re)connection to etcd
    on_refused: Callable[[str], None] | None  # another live host took our identity

    def resume_lease(self) -> bool: ...

    def claim_identity(self) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> list[str]:
        """Returns the names of the threads still running."""
        ...


class BackgroundEncryption(Encryption, Protocol):
    """The encryption mesh (encryption.WireGuardMesh): what the driver and operator use, and its watch thread."""

    def start(self) -> None: ...

    def stop(self) -> list[str]:
        """Returns the names of the threads still running."""
        ...


@dataclass(frozen=True)
class Components:
    driver: Driver
    ipam: Ipam
    operations: Operations
    metrics: Metrics
    cluster: BackgroundCluster | None = None  # multi-host mode only
    # With Docker's networks, start-up removes the networks and releases the pool claims of network creates
    # that never completed on Docker's side; None: Docker is not asked.
    docker_listing: DockerAsker | None = None
    encryption: BackgroundEncryption | None = None  # multi-host mode only: encrypted networks' WireGuard mesh
    scope: str = "local"  # what GetCapabilities reports (VXLANPY_SCOPE); global: swarm networks


def assemble(
    driver: Driver,
    settings: Settings,
    *,
    cluster: BackgroundCluster | None = None,
    ipam: Ipam | None = None,
    sandboxes: Sandboxes | None = None,
    docker_listing: DockerAsker | None = None,
    encryption: BackgroundEncryption | None = None,
) -> Components:
    """Everything that sits on `driver`.  The IPAM driver keeps its records in the driver's own store, so they are
    shared as widely as it is; `settings.host` is the name this host's records are kept under."""
    if ipam is None:
        ipam = Ipam(driver.store, host=settings.host, pool4=settings.ipam_pool4, pool6=settings.ipam_pool6)
    metrics = Metrics()
    sandboxes = sandboxes or NetlinkSandboxes()
    operations = Operations(
        driver,
        driver.store,
        driver.links,
        driver.firewall,
        driver.cluster,
        ipam.book,
        ipam.host,
        sandboxes,
        metrics,
        encryption=encryption,
    )
    metrics.watch_state(operations.metrics_state)
    return Components(driver, ipam, operations, metrics, cluster, docker_listing, encryption, settings.scope)


def build(settings: Settings) -> Components:
    """The production components: the kernel's links and firewall, the store (and cluster) of the settings."""
    from .dataplane.iptables import IptablesFirewall
    from .dataplane.netlink import NetlinkLinks
    from .operator.client import docker_listing

    links = NetlinkLinks()
    firewall = IptablesFirewall(background_removal=True)
    if not settings.multi_host:
        from .store import open_store

        store = open_store(settings.store_url, settings.state_dir)
        driver = Driver(store, links, firewall, vni_range=settings.vni_range, default_dev=settings.default_dev)
        return assemble(driver, settings, docker_listing=docker_listing)

    from .cluster import EtcdCluster
    from .nodes import Nodes
    from .store.etcd import EtcdConfig, EtcdKV, EtcdStore

    config = EtcdConfig.from_url(
        settings.store_url,
        prefix=settings.etcd_prefix,
        timeout=settings.etcd_timeout,
        ca_cert=settings.etcd_ca,
        cert=settings.etcd_cert,
        key=settings.etcd_key,
    )
    kv = EtcdKV(config)
    identity = identity_of(settings, kv)
    etcd_store = EtcdStore(kv, identity)
    lease_file = Path(settings.state_dir) / "etcd-lease"
    cluster = EtcdCluster(
        kv,
        etcd_store,
        lease_ttl=settings.lease_ttl,
        lease_file=lease_file,
        nodes=Nodes(kv, identity, settings.hostname),
        local_addresses=lambda: local_addresses(links, etcd_store, settings.default_dev),
    )
    encryption = build_encryption(settings, kv, cluster, identity, links)
    driver = Driver(
        etcd_store,
        links,
        firewall,
        vni_range=settings.vni_range,
        default_dev=settings.default_dev,
        cluster=cluster,
        encryption=encryption,
        swarm=etcd_store,
    )
    # the records are kept under the identity, not the hostname
    return assemble(
        driver,
        replace(settings, host=identity),
        cluster=cluster,
        docker_listing=docker_listing,
        encryption=encryption,
    )


def build_encryption(
    settings: Settings, kv: EtcdKV, cluster: EtcdCluster, identity: str, links: Links
) -> WireGuardMesh:
    """The WireGuard mesh of encrypted networks (nothing happens on the host until the first one is created)."""
    from .dataplane.wireguard import NetlinkWireGuard  # the real dataplane, imported only when a plugin runs
    from .encryption import WireGuardMesh

    return WireGuardMesh(
        kv,
        cluster,
        NetlinkWireGuard(),
        identity,
        Path(settings.state_dir),
        underlay=lambda: links.underlay(settings.default_dev),
        interface=settings.wg_interface,
        port=settings.wg_port,
        subnet=settings.wg_subnet,
    )


def identity_of(settings: Settings, kv: EtcdKV) -> str:
    from .nodes import choose_identity

    def has_state(name: str) -> bool | None:
        try:
            return bool(kv.range(kv.key("hosts", name, ""), keys_only=True)[0])
        except StoreError:
            return None

    explicit = settings.host if settings.host_explicit else None
    identity = choose_identity(explicit, settings.hostname, Path(settings.state_dir), has_state)
    log.info("host identity %s (hostname %s; from %s)", identity.name, settings.hostname, identity.source)
    return identity.name


def local_addresses(links: Links, store: Store, default_dev: str | None) -> list[IPAddress]:
    """This host's underlay addresses, IPv4 first: the default underlay's, then those of devices networks name."""
    devices: list[str | None] = [default_dev]
    try:
        devices += sorted({network.config.dev for network in store.list_networks() if network.config.dev})
    except VxlanpyError:
        pass
    found: list[IPAddress] = []
    for dev in devices:
        try:
            addresses = links.underlay(dev).addresses
        except VxlanpyError:  # no default route, or a device this host does not have
            continue
        found += sorted((a for a in addresses if a not in found), key=lambda address: address.version)
    return found
