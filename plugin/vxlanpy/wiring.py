"""The production wiring: which store, links, firewall and cluster a Settings object asks for."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Settings
from .dataplane.base import Links
from .driver import Driver
from .errors import StoreError, VxlanpyError
from .models import IPAddress
from .store.base import Store

if TYPE_CHECKING:
    from .cluster import EtcdCluster
    from .store.etcd import EtcdKV

log = logging.getLogger("vxlanpy")


@dataclass
class Components:
    driver: Driver
    cluster: EtcdCluster | None  # multi-host mode only; the app starts it
    host: str  # the name this host's records are kept under: its identity in multi-host mode


def build(settings: Settings) -> Components:
    from .dataplane.iptables import IptablesFirewall
    from .dataplane.netlink import NetlinkLinks

    links = NetlinkLinks()
    firewall = IptablesFirewall()
    if not settings.multi_host:
        from .store import open_store

        store = open_store(settings.store_url, settings.state_dir)
        driver = Driver(store, links, firewall, vni_range=settings.vni_range, default_dev=settings.default_dev)
        return Components(driver, None, settings.host)

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
    driver = Driver(
        etcd_store, links, firewall, vni_range=settings.vni_range, default_dev=settings.default_dev, cluster=cluster
    )
    return Components(driver, cluster, identity)


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
