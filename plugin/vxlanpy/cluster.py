"""Multi-host mode: publish this host's VTEPs and endpoints in etcd, and program the kernel from what others publish.

Each host keeps one etcd lease alive and puts under it, per segment (VNI), its VTEP address and the MAC and
addresses of each local endpoint.  A watcher thread reads everything under `live/` once, programs the kernel
statically (FDB: MAC -> remote VTEP, neighbour: IP -> MAC, all-zero FDB entries to each remote VTEP, and the
VTEP allow-list in the host firewall), then follows the watch from the revision it read.  An applier thread
programs what the events changed, a batch at a time: an endpoint's event writes only that endpoint's entries
(no table dumps, whatever the size of the segment), a VTEP's event programs its segment and the filter again.
The kernel is the driver's: this module never touches it, it hands each batch to the driver (KernelOwner), which
programs a network under the lock its requests hold.  When a host dies its lease expires, its keys vanish, and
every other host removes its entries.  When etcd is unreachable the kernel state stays as it is (containers keep
talking); on reconnection the thread republishes and resyncs in full.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import queue
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from .cluster_base import STOP_JOIN_SECONDS, KernelOwner, RemoteChanges, end_threads
from .dataplane.base import RemoteEndpoint
from .errors import Conflict, StoreError
from .models import Endpoint, IPAddress, Network
from .nodes import IdentityConflict, Nodes
from .store.etcd import EtcdStore
from .store.etcd_kv import EtcdKV, KeyValue, LeaseNotFound, key_part

log = logging.getLogger(__name__)
T = TypeVar("T")
K = TypeVar("K")

WATCH_IDLE = 10.0
WATCH_THREAD = "vxlanpy-watch"
MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


@dataclass
class SegmentView:
    """What other hosts publish for one VNI."""

    vteps: dict[str, IPAddress] = field(default_factory=dict)  # host -> VTEP
    endpoints: dict[tuple[str, str], RemoteEndpoint] = field(default_factory=dict)  # (host, endpoint id) -> entry
    # How many entries of `endpoints` use each MAC and address: whether a removed one is still someone's, in O(1).
    macs: dict[str, int] = field(default_factory=dict, repr=False)
    addresses: dict[IPAddress, int] = field(default_factory=dict, repr=False)

    def put(self, key: tuple[str, str], remote: RemoteEndpoint | None) -> RemoteEndpoint | None:
        """Set (None: remove) one endpoint's entry, keeping the counts; returns the entry it replaces."""
        old = self.endpoints.pop(key, None) if remote is None else self.endpoints.get(key)
        if remote is not None:
            self.endpoints[key] = remote
        for entry, step in ((old, -1), (remote, 1)):
            if entry is not None:
                _count(self.macs, entry.mac, step)
                for address in entry.addresses:
                    _count(self.addresses, address, step)
        return old


def _count(counts: dict[K, int], item: K, step: int) -> None:
    counts[item] = counts.get(item, 0) + step
    if counts[item] <= 0:
        del counts[item]


@dataclass(frozen=True)
class ViewChange:
    """What one watch event changed in a segment's view: an endpoint's entry (`old`: what it was, None when it
    was absent; the view holds what it is now), or, with `endpoint` None, its VTEPs, which the whole segment (and
    the VTEP filter) is programmed again for."""

    vni: int
    endpoint: tuple[str, str] | None = None
    old: RemoteEndpoint | None = None


class EtcdCluster:
    def __init__(
        self,
        kv: EtcdKV,
        store: EtcdStore,
        lease_ttl: int = 10,
        on_reconnect: Callable[[], None] | None = None,
        lease_file: Path | None = None,
        nodes: Nodes | None = None,
        local_addresses: Callable[[], list[IPAddress]] | None = None,
        watch_idle: float = WATCH_IDLE,
    ) -> None:
        self.kv = kv
        self.watch_idle = watch_idle
        self.store = store
        self.host = store.host
        self.kernel: KernelOwner | None = None  # the driver, which programs what the watch learns
        self.lease_ttl = lease_ttl
        self.on_reconnect = on_reconnect
        self.lease_file = lease_file
        self._lease = 0
        self._lease_lock = threading.Lock()
        self._view: defaultdict[int, SegmentView] = defaultdict(SegmentView)
        self._view_lock = threading.Lock()
        self._stop = threading.Event()
        self._changes: queue.SimpleQueue[ViewChange] = queue.SimpleQueue()  # watch thread -> applier thread
        self._threads: list[threading.Thread] = []
        self.synced = threading.Event()
        # The node record (None: no identity check, as in tests of the data path alone); local_addresses: this
        # host's underlay addresses, the first one its VTEP, to tell another live host from an earlier run of ours.
        self.nodes = nodes
        self.local_addresses = local_addresses or list
        self.refused: str | None = None  # set when another live host holds our identity: we publish nothing
        self.on_refused: Callable[[str], None] | None = None
        # What else this host publishes under its lease (the WireGuard record): put back by republish()
        self.on_republish: list[Callable[[int], None]] = []
        self._touched = 0.0

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        loops = (
            (self._watch_loop, WATCH_THREAD),
            (self._apply_loop, "vxlanpy-apply"),
            (self._keepalive_loop, "vxlanpy-lease"),
        )
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = STOP_JOIN_SECONDS) -> list[str]:
        """Ends the threads and waits for them, `timeout` seconds each at most; returns the names of those still
        running.  The applier and the lease keep-alive wake at once; a watch blocked reading an idle stream ends at
        its idle timeout (`watch_idle`) at the latest, and holds no lock meanwhile: a stop waits for it only briefly."""
        self._stop.set()
        self._threads = end_threads(self._threads, timeout, watches={WATCH_THREAD})
        return [thread.name for thread in self._threads]

    def program_through(self, owner: KernelOwner) -> None:
        self.kernel = owner

    # -- publishing (called by the driver, under its network lock) -----------------------------------------

    def _live(self, vni: int, *parts: str) -> str:
        return self.kv.key("live", str(vni), *parts)

    def lease(self) -> int:
        """The current lease, granted on first use; a lost lease is replaced by the keepalive thread."""
        with self._lease_lock:
            if self.refused is not None:
                raise IdentityConflict(self.refused)
            if not self._lease:
                self._lease = self.kv.grant(self.lease_ttl)
                if self.lease_file is not None:
                    self.lease_file.write_text(str(self._lease))
            return self._lease

    def resume_lease(self) -> bool:
        """Keep the lease of the previous run alive, if it has not expired yet, so that a quick restart (even after
        kill -9) does not make every other host drop this host's entries and then learn them again."""
        if self.lease_file is None or not self.lease_file.exists():
            return False
        try:
            previous = int(self.lease_file.read_text().strip())
        except ValueError:
            return False
        if self.kv.keepalive(previous) <= 0:
            return False
        with self._lease_lock:
            self._lease = previous
        log.info("kept the etcd lease %x of the previous run", previous)
        return True

    def claim_identity(self) -> None:
        """Hold this host's identity under our lease before anything is written under it (at start, and before
        every republication); IdentityConflict when another live host holds it."""
        if self.nodes is None:
            return
        lease = self.lease()
        addresses = self.local_addresses()
        vtep = str(addresses[0]) if addresses else ""
        try:
            self.nodes.claim(lease, vtep, set(addresses), self.lease_ttl)
        except IdentityConflict as exc:
            self.refused = exc.message
            raise
        self._touched = time.monotonic()

    def _refuse(self, exc: IdentityConflict) -> None:
        log.critical("%s", exc.message)
        if self.on_refused is not None:
            self.on_refused(exc.message)

    def _leased(self, action: Callable[[int], T]) -> T:
        """Run `action(lease)`; if etcd has forgotten the lease (it was unreachable for longer than the TTL), take
        a new one, put everything back under it and try once more, instead of failing the user's request."""
        try:
            return action(self.lease())
        except LeaseNotFound:
            with self._lease_lock:
                self._lease = 0
            log.warning("etcd lease expired while etcd was unreachable; publishing again under a new lease")
            self.republish()
            return action(self.lease())

    def put_leased(self, key: str, value: str) -> None:
        """Put `key` under this host's lease (a lost lease is replaced, see _leased)."""
        self._leased(lambda lease: self.kv.put(key, value, lease))

    def publish_network(self, network: Network) -> None:
        if network.config.local is None:
            raise Conflict(f"network vni {network.vni} has no local VTEP address; set -o local=ADDRESS or -o dev=...")
        vtep = str(network.config.local)
        self._leased(lambda lease: self.kv.put(self._live(network.vni, "vtep", self.host), vtep, lease))

    def unpublish_network(self, network: Network) -> None:
        self.kv.delete(self._live(network.vni, "vtep", self.host))
        self.kv.delete_prefix(self._live(network.vni, "ep", self.host, ""))
        self._release_addresses(network.vni, keep=set())

    def _release_addresses(self, vni: int, keep: set[str]) -> None:
        """Drop this host's address claims on the segment, except those of the endpoints in `keep`: a claim must
        not outlive its endpoint, e.g. one whose DeleteEndpoint failed while etcd was unreachable."""
        items, _ = self.kv.range(self.kv.key("addresses", str(vni), ""))
        for kv in items:
            host, _, endpoint_id = kv.value.partition("/")
            if host == self.host and endpoint_id not in keep:
                self.kv.delete(kv.key)

    def publish_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        """Claim the endpoint's addresses on the segment and announce it; Conflict names the host holding one."""
        self._leased(lambda lease: self._publish_endpoint(network, endpoint, lease))

    def _publish_endpoint(self, network: Network, endpoint: Endpoint, lease: int) -> None:
        addresses = [str(address.ip) for address in (endpoint.ipv4, endpoint.ipv6) if address is not None]
        claimed: list[str] = []
        holder = f"{self.host}/{endpoint.endpoint_id}"
        for address in addresses:
            key = self.kv.key("addresses", str(network.vni), key_part(address))
            existing = self.kv.create(key, holder, lease)
            if existing == holder:  # ours from before a restart or a lost lease: move it under the current lease
                self.kv.put(key, holder, lease)
            elif existing is not None:
                for done in claimed:
                    self.kv.delete(self.kv.key("addresses", str(network.vni), key_part(done)))
                other_host, _, other_endpoint = existing.partition("/")
                raise Conflict(
                    f"address {address} is already used on host {other_host} (endpoint {other_endpoint[:12]}) "
                    f"in vni {network.vni}; choose another --ip, or use --ipam-driver vxlanpy for addresses that are "
                    "unique across hosts"
                )
            claimed.append(address)
        record = {"mac": endpoint.mac, "vtep": str(network.config.local), "addresses": addresses}
        self.kv.put(self._live(network.vni, "ep", self.host, endpoint.endpoint_id), json.dumps(record), lease)

    def unpublish_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        self.kv.delete(self._live(network.vni, "ep", self.host, endpoint.endpoint_id))
        holder = f"{self.host}/{endpoint.endpoint_id}"
        for address in (endpoint.ipv4, endpoint.ipv6):
            if address is None:
                continue
            key = self.kv.key("addresses", str(network.vni), key_part(str(address.ip)))
            if self.kv.get(key) == holder:
                self.kv.delete(key)

    def republish(self) -> None:
        """Put every local VTEP and endpoint back under the current lease (after a lost lease or a restart)."""
        self.claim_identity()  # the identity may have been taken while our lease was gone
        endpoints = self.store.list_endpoints()
        for network in self.store.list_networks():
            if network.config.local is None:
                continue
            lease = self.lease()
            self.kv.put(self._live(network.vni, "vtep", self.host), str(network.config.local), lease)
            mine = [endpoint for endpoint in endpoints if endpoint.network_id == network.network_id]
            self._release_addresses(network.vni, keep={endpoint.endpoint_id for endpoint in mine})
            for endpoint in mine:
                try:
                    self._publish_endpoint(network, endpoint, lease)
                except Conflict as exc:  # someone took the address while we were away: say so, keep going
                    log.error("cannot republish endpoint %s: %s", endpoint.endpoint_id[:12], exc)
        for republish in self.on_republish:
            republish(self.lease())

    # -- reading what other hosts publish -------------------------------------------------------------------

    def remote_view(self, vni: int) -> SegmentView:
        with self._view_lock:
            view = self._view.get(vni, SegmentView())
            return SegmentView(dict(view.vteps), dict(view.endpoints))

    def remote_vteps(self) -> set[IPAddress]:
        with self._view_lock:
            return {vtep for segment in self._view.values() for vtep in segment.vteps.values()}

    def _watch_loop(self) -> None:
        prefix = self.kv.key("live", "")
        while not self._stop.is_set():
            try:
                self.lease()
                self.republish()
                started = time.monotonic()
                view: defaultdict[int, SegmentView] = defaultdict(SegmentView)
                count = revision = 0
                for items, revision in self.kv.range_pages(prefix):  # noqa: B007 - the watch starts after the last
                    for kv in items:
                        self._update_view("PUT", kv, prefix, view)
                    count += len(items)
                with self._view_lock:
                    self._view = view
                read = time.monotonic()
                if self.kernel is not None:
                    self.kernel.program_segments()
                log.info(
                    "etcd sync: %d keys read in %.2f s, the kernel programmed from them in %.2f s",
                    count,
                    read - started,
                    time.monotonic() - read,
                )
                self.synced.set()
                if self.on_reconnect is not None:
                    self.on_reconnect()
                while not self._stop.is_set():
                    # An idle watch ends after `watch_idle` seconds and is resumed from the last revision seen;
                    # a broken one raises StoreError and leads to a full resync.
                    for kind, kv in self.kv.watch(prefix, revision + 1, idle_timeout=self.watch_idle):
                        revision = max(revision, kv.mod_revision)
                        with self._view_lock:
                            change = self._update_view(kind, kv, prefix)
                        if change is not None:
                            self._changes.put(change)
            except IdentityConflict as exc:
                self.synced.clear()
                self._refuse(exc)
                return
            except StoreError as exc:
                self.synced.clear()
                log.warning("etcd sync interrupted: %s; retrying", exc)
                self._stop.wait(1.0)
            except Exception:  # keep following the cluster whatever a single event did
                log.exception("etcd sync failed; resyncing")
                self._stop.wait(1.0)

    def _update_view(
        self, kind: str, kv: KeyValue, prefix: str, view: defaultdict[int, SegmentView] | None = None
    ) -> ViewChange | None:
        """Apply one key change to the view (or to `view`, one being built); returns what changed, None for our
        own keys or junk."""
        parts = kv.key.removeprefix(prefix).split("/")
        try:
            vni = int(parts[0])
            host = parts[2]
            if host == self.host:
                return None
            segment = (self._view if view is None else view)[vni]
            if parts[1] == "vtep" and len(parts) == 3:
                if kind == "DELETE":
                    segment.vteps.pop(host, None)
                else:
                    segment.vteps[host] = ipaddress.ip_address(kv.value)
                return ViewChange(vni)
            if parts[1] == "ep" and len(parts) == 4:
                key = (host, parts[3])
                if kind == "DELETE":
                    return ViewChange(vni, key, segment.put(key, None))
                record = json.loads(kv.value)
                if not MAC.match(str(record["mac"])):
                    raise ValueError("bad MAC")
                new = RemoteEndpoint(
                    mac=str(record["mac"]).lower(),
                    vtep=ipaddress.ip_address(record["vtep"]),
                    addresses=tuple(ipaddress.ip_address(address) for address in record["addresses"]),
                )
                return ViewChange(vni, key, segment.put(key, new))
            return None
        except (IndexError, KeyError, ValueError, TypeError):
            log.warning("ignoring malformed key %s in etcd", kv.key)
            return None

    # -- programming the kernel, through its owner ---------------------------------------------------------

    def _apply_loop(self) -> None:
        """Program what the watch saw, every change queued meanwhile at once: under a burst of events the kernel
        work is done per batch (one lock and one update per network, each endpoint once), not per event."""
        while not self._stop.is_set():
            try:
                batch = [self._changes.get(timeout=0.5)]
            except queue.Empty:
                continue
            while True:
                try:
                    batch.append(self._changes.get_nowait())
                except queue.Empty:
                    break
            try:
                self._apply_changes(batch)
            except Exception:  # the watch's next full resync puts the kernel right
                log.exception("cannot program %d changes from etcd", len(batch))

    def _apply_changes(self, batch: list[ViewChange]) -> None:
        """For an endpoint, only its own entries (no table dumps, no firewall: a few netlink writes whatever the
        size of the segment); for a VTEP, the whole segment and the VTEP filter."""
        if self.kernel is None:
            return
        whole = {change.vni for change in batch if change.endpoint is None}
        before: defaultdict[int, dict[tuple[str, str], RemoteEndpoint | None]] = defaultdict(dict)
        for change in batch:  # each endpoint's entry before the batch; the view says what it is now
            if change.endpoint is not None and change.vni not in whole:
                before[change.vni].setdefault(change.endpoint, change.old)
        if whole:
            self.kernel.program_segments(whole)
        for vni, endpoints in sorted(before.items()):
            self.kernel.update_segment(vni, partial(self._entries_to_change, vni, endpoints))

    def _entries_to_change(
        self, vni: int, before: dict[tuple[str, str], RemoteEndpoint | None]
    ) -> RemoteChanges | None:
        """What the kernel must drop and (re)write for these endpoints, from their entries `before` to what the
        view holds now (a full resync may have passed their events by); None when that is nothing, e.g. a re-put
        under a new lease.  The old entries' MACs and addresses go, but those another endpoint still uses (a
        host's stale record of a container that moved) stay, and that endpoint's entries are written again, so
        that the kernel ends as a full `sync_remotes` leaves it."""
        with self._view_lock:
            segment = self._view.get(vni, SegmentView())
            changes = [(old, segment.endpoints.get(key)) for key, old in before.items()]
            changes = [(old, new) for old, new in changes if old != new]
            if not changes:
                return None
            remotes = {new.mac: new for _, new in changes if new is not None}
            wanted_addresses = {address for remote in remotes.values() for address in remote.addresses}
            gone_macs = {old.mac for old, _ in changes if old is not None} - remotes.keys()
            gone_addresses = {address for old, _ in changes if old is not None for address in old.addresses}
            gone_addresses -= wanted_addresses
            shared_macs = {mac for mac in gone_macs if mac in segment.macs}
            shared_addresses = {address for address in gone_addresses if address in segment.addresses}
            if shared_macs or shared_addresses:  # rare: worth a scan of the segment
                for remote in segment.endpoints.values():
                    if remote.mac in shared_macs or not shared_addresses.isdisjoint(remote.addresses):
                        remotes.setdefault(remote.mac, remote)
        return RemoteChanges(gone_macs - shared_macs, gone_addresses - shared_addresses, list(remotes.values()))

    # -- the lease ------------------------------------------------------------------------------------------

    def _keepalive_loop(self) -> None:
        interval = max(self.lease_ttl / 3, 0.5)
        while not self._stop.wait(interval):
            with self._lease_lock:
                lease = self._lease
            if not lease:
                continue
            try:
                if self.kv.keepalive(lease) > 0:
                    self._touch()
                    continue
                log.warning("etcd lease %x expired; publishing again under a new lease", lease)
                with self._lease_lock:
                    self._lease = 0
                self.republish()
            except IdentityConflict as exc:
                self._refuse(exc)
                return
            except StoreError as exc:
                log.warning("cannot refresh the etcd lease: %s", exc)

    def _touch(self) -> None:
        """Refresh the node's kept record about once per lease TTL: `node ls` shows when a gone host was last seen."""
        if self.nodes is None or time.monotonic() - self._touched < self.lease_ttl:
            return
        addresses = self.local_addresses()
        self.nodes.touch(str(addresses[0]) if addresses else "", self.lease_ttl)
        self._touched = time.monotonic()
