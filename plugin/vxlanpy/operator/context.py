"""What the operator's side of the running plugin works with: the collaborators it is given, and the few helpers
that reading, garbage collection, attachments and recovery share.

Everything that changes state goes through the same Driver (its per-network locks, its store, its rollback) as
Docker's requests; the operator reads the store, the kernel's links and the firewall itself.  One more lock
serialises the operator's own state changes (attach, detach, gc, recover), so that a garbage collection never
sees an attachment half made.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..cluster_base import Cluster
from ..dataplane.base import Firewall, Links
from ..driver import NETWORK_ALIAS_PREFIX, Driver
from ..encryption_base import Encryption
from ..errors import VxlanpyError
from ..metrics import Metrics
from ..models import Endpoint, IPInterface, Network, is_attachment_id
from ..store.base import AddressBook, Store
from .attach import reservation_holder
from .sandbox import Sandboxes

if TYPE_CHECKING:
    from ..cluster import SegmentView

log = logging.getLogger(__name__)

Body = dict[str, Any]


def netns_in_use(path: str) -> bool | None:
    """Whether any process lives in the network namespace bound at `path`: False when no process is in it (the
    sandbox of a container that died, kept by Docker after a failed endpoint delete), None when this cannot be
    told (the file is gone, or the plugin does not see the host's processes, e.g. a managed plugin)."""
    try:
        target = os.stat(path)
    except OSError:  # a sandbox file that is gone is reconciliation's case (stale), not this one
        return None
    seen_dockerd = False
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            ns = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino):
            return True
        if not seen_dockerd:
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8") as comm:
                    seen_dockerd = comm.read().strip() == "dockerd"
            except OSError:
                continue
    return False if seen_dockerd else None  # without dockerd in sight, other processes may be hidden from us


def endpoint_view(endpoint: Endpoint, links: dict[str, str] | None) -> Body:
    return {
        "id": endpoint.endpoint_id,
        "ipv4": str(endpoint.ipv4) if endpoint.ipv4 else None,
        "ipv6": str(endpoint.ipv6) if endpoint.ipv6 else None,
        "mac": endpoint.mac,
        "veth": endpoint.host_veth,
        "veth_present": None if links is None else endpoint.host_veth in links,
        "sandbox": endpoint.sandbox_key,
        "kind": "attached" if is_attachment_id(endpoint.endpoint_id) else "docker",
        "ports": [f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.proto}" for p in endpoint.ports],
    }


@dataclass
class Collaborators:
    """The operator's collaborators, shared (and, in tests, adjusted) by every part of Operations.

    `driver` is there for the lifecycle of networks and endpoints only (create, delete, join, with their
    locks and rollback) and for reconciliation; everything else is read from the store, the links, the firewall
    and the cluster directly."""

    driver: Driver
    store: Store
    links: Links
    firewall: Firewall
    cluster: Cluster | None
    book: AddressBook
    host: str
    sandboxes: Sandboxes
    metrics: Metrics | None = None
    clock: Callable[[], float] = time.time
    sandbox_in_use: Callable[[str], bool | None] = netns_in_use
    encryption: Encryption | None = None  # the WireGuard mesh of encrypted networks (multi-host mode)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(init=False)  # reservations older than this process belong to requests that ended

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def multi_host(self) -> bool:
        return self.cluster is not None

    def segment(self, vni: int) -> SegmentView | None:
        """What the other hosts publish for one VNI; None on a single host."""
        return self.cluster.remote_view(vni) if self.cluster is not None else None

    def lost_networks(self) -> dict[str, list[str]]:
        """network id -> its links, for every network whose devices exist but which the store does not know."""
        known = {network.network_id for network in self.store.list_networks()}
        lost: dict[str, list[str]] = {}
        for name, alias in sorted(self.links.owned_links().items()):
            network_id = alias.removeprefix(NETWORK_ALIAS_PREFIX)
            if alias.startswith(NETWORK_ALIAS_PREFIX) and network_id not in known:
                lost.setdefault(network_id, []).append(name)
        return lost

    def stale_reason(self, endpoint: Endpoint, links: dict[str, str]) -> str | None:
        """Why an attachment is stale (its interface or namespace is gone), or None while it is alive."""
        if endpoint.host_veth not in links:
            return "its interface is gone (the container stopped or its namespace was deleted)"
        if endpoint.container_veth in links:
            return "it never reached its namespace (an attach was interrupted)"
        if endpoint.sandbox_key and not self.sandboxes.netns_exists(endpoint.sandbox_key):
            return f"its namespace {endpoint.sandbox_key} is gone"
        return None

    def remove_attachment(self, endpoint: Endpoint) -> None:
        network = self.store.get_network(endpoint.network_id)
        self.driver.delete_endpoint(endpoint.network_id, endpoint.endpoint_id)
        if network is not None:
            self.release_reserved(network, endpoint.endpoint_id, [a for a in (endpoint.ipv4, endpoint.ipv6) if a])
        log.info("attachment %s removed from network %s", endpoint.endpoint_id[:12], endpoint.network_id[:12])

    def release_reserved(self, network: Network, endpoint_id: str, addresses: list[IPInterface]) -> None:
        """Release the attachment's reservations of `addresses` in vxlanpy's IPAM; a failure is only logged."""
        holder = reservation_holder(self.host, endpoint_id)
        for address in addresses:
            for subnet in (*network.ipv4, *network.ipv6):
                if address.ip not in subnet.pool:
                    continue
                key = str(subnet.pool)
                try:
                    if self.book.reserved_addresses(key).get(str(address.ip)) == holder:
                        self.book.release_address(key, str(address.ip))
                except VxlanpyError as exc:  # gc sweeps it later
                    log.error("cannot release %s in %s: %s", address.ip, key, exc)


class Concern:
    """One concern of the operator's side (reading, cleanup, attachments), working with the shared collaborators."""

    def __init__(self, shared: Collaborators) -> None:
        self.shared = shared
