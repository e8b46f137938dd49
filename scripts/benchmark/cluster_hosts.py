"""The hosts of the cluster-scale section: N simulated ones in this process, and the one real vxlanpy.

The simulated hosts are each an EtcdStore + EtcdCluster of their own (the plugin's own publishing code, with no
driver and so no kernel objects: they never watch), under a lease of their own, publishing their VTEP and
their endpoints on the same VNI.  The real host is vxlanpy in a namespace of its own, etcd at the other end of
its veth.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from tests.multihost.cluster import vxlanpy_command, with_descendants

from vxlanpy.cluster import EtcdCluster
from vxlanpy.models import Endpoint, Network, NetworkConfig, Subnet
from vxlanpy.store.etcd import EtcdConfig, EtcdKV, EtcdStore

from .plugin import PluginProcess, SocketClient, create_network

VNI = 7700
UNDERLAY = ipaddress.IPv4Network("10.255.77.0/30")  # root side .1 (etcd), the real host's eth0 .2
OVERLAY = ipaddress.IPv4Network("10.200.0.0/16")  # 65534 addresses: 500 hosts x 100 endpoints fit
SIM_VTEPS = ipaddress.IPv4Network("10.201.0.0/16")  # simulated VTEPs: addresses only, nothing answers on them
REAL_HOST = "real"
SIM_MAC_PREFIX = "02:5c:"  # every simulated endpoint's MAC starts so: the kernel's own entries are told apart
PUBLISH_WORKERS = 8
SIM_LEASE_TTL = 120  # seconds; refreshed every SIM_KEEPALIVE from the start: publishing 50,000 endpoints is slow
SIM_KEEPALIVE = 10.0  # concurrent etcd clients while the simulated hosts publish


def mac_of(host: int, endpoint: int) -> str:
    return f"{SIM_MAC_PREFIX}{host >> 8:02x}:{host & 0xFF:02x}:{endpoint >> 8:02x}:{endpoint & 0xFF:02x}"


@dataclass
class SimHost:
    """One simulated host: the plugin's store and publishing code with fake kernel objects, its own lease."""

    index: int
    url: str
    endpoints_per_host: int
    network: Network = field(init=False)
    cluster: EtcdCluster = field(init=False)
    endpoints: list[Endpoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        kv = EtcdKV(EtcdConfig.from_url(self.url, timeout=10.0))
        store = EtcdStore(kv, f"sim{self.index:03d}")
        self.cluster = EtcdCluster(kv, store, lease_ttl=SIM_LEASE_TTL)
        vtep = SIM_VTEPS[self.index + 1]
        self.network = Network(
            network_id=secrets.token_hex(32),
            config=NetworkConfig(vni=VNI, local=vtep),
            ipv4=(Subnet(OVERLAY, ipaddress.ip_interface(f"{OVERLAY[1]}/{OVERLAY.prefixlen}")),),
        )
        first = 10 + self.index * self.endpoints_per_host  # .1 is the gateway, .2-.9 are the real host's
        for number in range(self.endpoints_per_host):
            address = OVERLAY[first + number]
            self.endpoints.append(
                Endpoint(
                    endpoint_id=secrets.token_hex(32),
                    network_id=self.network.network_id,
                    mac=mac_of(self.index, number),
                    ipv4=ipaddress.IPv4Interface(f"{address}/{OVERLAY.prefixlen}"),
                )
            )

    @property
    def store(self) -> EtcdStore:
        return self.cluster.store

    def publish_network(self) -> None:
        """What CreateNetwork does on a host in etcd mode, but the kernel objects: the store's record, then the
        VTEP under the lease."""
        self.store.add_network(self.network)
        self.cluster.publish_network(self.network)

    def publish(self, endpoint: Endpoint) -> None:
        """What CreateEndpoint does: the store's record and the cluster's announcement."""
        self.store.put_endpoint(endpoint)
        self.cluster.publish_endpoint(self.network, endpoint)

    def unpublish(self, endpoint: Endpoint) -> None:
        """What DeleteEndpoint does."""
        self.cluster.unpublish_endpoint(self.network, endpoint)
        self.store.delete_endpoint(endpoint.endpoint_id)

    def keepalive(self) -> None:
        self.cluster.kv.keepalive(self.cluster.lease())

    def revoke(self) -> None:
        self.cluster.kv.revoke(self.cluster.lease())


def process_tree_stats(pid: int) -> tuple[int, float]:
    """(RSS in bytes, CPU seconds) summed over `pid` and its descendants (gunicorn's arbiter and worker)."""
    rss, cpu = 0, 0.0
    page, ticks = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    for each in with_descendants([pid]):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            rss += int(Path(f"/proc/{each}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        cpu += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return rss, cpu


class RealHost(PluginProcess):
    """The one real vxlanpy, in its own namespace, with etcd on the other end of its veth."""

    def __init__(self, workdir: Path, netns: str, store_url: str) -> None:
        super().__init__(workdir / "vxlanpy.sock", workdir / "vxlanpy.log")
        self.workdir = workdir
        self.netns = netns
        self.store_url = store_url

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ)
        env.update(
            VXLANPY_SOCKET=str(self.socket_path),
            VXLANPY_STATE_DIR=str(self.workdir / "state"),
            VXLANPY_STORE=self.store_url,
            VXLANPY_HOST=REAL_HOST,
            VXLANPY_LOG_LEVEL="info",
            VXLANPY_ETCD_TIMEOUT="10",
            # No Docker here: at start-up the plugin removes the networks Docker does not list, and a dockerd of
            # the machine's own (scripts/test runs one) lists none of this benchmark's.
            DOCKER_HOST=f"unix://{self.workdir / 'no-docker.sock'}",
        )
        self.launch(["ip", "netns", "exec", self.netns, *vxlanpy_command()], env, self.workdir, timeout)

    def create_network(self) -> str:
        sock = SocketClient(str(self.socket_path))
        try:
            return create_network(sock, VNI, OVERLAY, dev="eth0")
        finally:
            sock.close()

    def stats(self) -> tuple[int, float]:
        assert self.process is not None
        return process_tree_stats(self.process.pid)
