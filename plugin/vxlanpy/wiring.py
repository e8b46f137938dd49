"""The production wiring: which store, links, firewall and cluster a Settings object asks for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Settings
from .driver import Driver

if TYPE_CHECKING:
    from .cluster import EtcdCluster


@dataclass
class Components:
    driver: Driver
    cluster: EtcdCluster | None  # multi-host mode only; the app starts it


def build(settings: Settings) -> Components:
    from .dataplane.iptables import IptablesFirewall
    from .dataplane.netlink import NetlinkLinks

    links = NetlinkLinks()
    firewall = IptablesFirewall()
    if not settings.multi_host:
        from .store import open_store

        store = open_store(settings.store_url, settings.state_dir)
        driver = Driver(store, links, firewall, vni_range=settings.vni_range, default_dev=settings.default_dev)
        return Components(driver, None)

    from .cluster import EtcdCluster
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
    etcd_store = EtcdStore(kv, settings.host)
    lease_file = Path(settings.state_dir) / "etcd-lease"
    cluster = EtcdCluster(kv, etcd_store, links, firewall, lease_ttl=settings.lease_ttl, lease_file=lease_file)
    driver = Driver(
        etcd_store, links, firewall, vni_range=settings.vni_range, default_dev=settings.default_dev, cluster=cluster
    )
    return Components(driver, cluster)
