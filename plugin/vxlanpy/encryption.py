"""This host's WireGuard interface, kept in step with the cluster: the Encryption of encrypted networks.

Keys in etcd (see encryption_base for the design):

    wg/addresses/<tunnel address>   = host identity   allocated once, kept (no lease): the address stays the host's
    wg/peers/<host identity>        = {"public_key", "tunnel", "endpoint_address", "endpoint_port"}
                                      under the host's lease: it vanishes when the host dies or `node rm` revokes it

A watch thread follows `wg/peers/` and makes every other host's record a peer of the interface (once ensure()
has brought it up).  The private key stays in the state dir's wireguard.key (0600): only its path is handed to
the WireGuard dataplane, and nothing read from it is ever written to etcd, logs or answers.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cluster import EtcdCluster
from .cluster_base import STOP_JOIN_SECONDS, end_threads
from .dataplane.base import Underlay
from .encryption_base import (
    DEFAULT_WG_INTERFACE,
    DEFAULT_WG_PORT,
    DEFAULT_WG_SUBNET,
    ENCRYPTED_VXLAN_PORT,
    Tunnel,
    WireGuard,
    WireGuardPeer,
    wg_overhead,
)
from .errors import Conflict, DataplaneError, StoreError, VxlanpyError
from .models import IPAddress
from .store.etcd_kv import EtcdKV, KeyValue, key_part

log = logging.getLogger(__name__)

KEY_FILE = "wireguard.key"
KEEPALIVE = 25
JOIN_SECONDS = 3.0  # after ensure(), this host's peers have no keepalive: only the others start handshakes
WATCH_IDLE = 10.0
WATCH_THREAD = "vxlanpy-wg-watch"
RETRY_SECONDS = 1.0
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_record(raw: str) -> WireGuardPeer:
    """A `wg/peers/<host>` record; ValueError (or KeyError, TypeError) for anything malformed."""
    record = json.loads(raw)
    public_key = record["public_key"]
    if not isinstance(public_key, str) or len(public_key) != 44 or not public_key.endswith("="):
        raise ValueError("not a WireGuard public key")
    port = record["endpoint_port"]
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError("bad endpoint port")
    return WireGuardPeer(
        public_key=public_key,
        endpoint_address=ipaddress.ip_address(record["endpoint_address"]),
        endpoint_port=port,
        tunnel=ipaddress.ip_address(record["tunnel"]),
    )


def record_of(peer: WireGuardPeer) -> str:
    return json.dumps(
        {
            "public_key": peer.public_key,
            "tunnel": str(peer.tunnel),
            "endpoint_address": str(peer.endpoint_address),
            "endpoint_port": peer.endpoint_port,
        },
        sort_keys=True,
    )


class WireGuardMesh:
    """encryption_base.Encryption on etcd: see the module's docstring."""

    def __init__(
        self,
        kv: EtcdKV,
        cluster: EtcdCluster,
        wireguard: WireGuard,
        host: str,
        state_dir: Path,
        underlay: Callable[[], Underlay],
        interface: str = DEFAULT_WG_INTERFACE,
        port: int = DEFAULT_WG_PORT,
        subnet: str = DEFAULT_WG_SUBNET,
        watch_idle: float = WATCH_IDLE,
    ) -> None:
        """`underlay`: this host's underlay (its first address is the WireGuard endpoint; its MTU less
        WireGuard's overhead is the interface's)."""
        self.kv = kv
        self.cluster = cluster
        self.wireguard = wireguard
        self.host = key_part(host)
        self.key_path = Path(state_dir) / KEY_FILE
        self.underlay = underlay
        self.interface = interface
        self.port = port
        self.subnet: IPNetwork = ipaddress.ip_network(subnet)
        self.watch_idle = watch_idle
        self._lock = threading.RLock()
        self._address: IPAddress | None = None
        self._record: WireGuardPeer | None = None  # ours, while published (the interface is up)
        self._records: dict[str, WireGuardPeer] = {}  # the other hosts', as etcd holds them
        self._joined_at: float | None = None  # when ensure() brought the interface up (see there)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.synced = threading.Event()
        cluster.on_republish.append(self._republish)

    # -- keys ----------------------------------------------------------------------------------------------

    def _address_key(self, address: IPAddress) -> str:
        return self.kv.key("wg", "addresses", key_part(str(address)))

    def _peer_key(self, host: str) -> str:
        return self.kv.key("wg", "peers", key_part(host))

    # -- Encryption ----------------------------------------------------------------------------------------

    def tunnel(self) -> Tunnel:
        with self._lock:
            if self._address is None:
                self._address = self._allocate()
            return Tunnel(self.interface, self._address, ENCRYPTED_VXLAN_PORT)

    def _allocate(self) -> IPAddress:
        """The address etcd already maps to this host, else the first free one of the subnet, claimed with a
        create-if-absent (another host claiming the same one at once makes us try the next)."""
        items, _ = self.kv.range(self.kv.key("wg", "addresses", ""))
        taken: set[IPAddress] = set()
        for item in items:
            try:
                address = ipaddress.ip_address(item.key.rsplit("/", 1)[-1])
            except ValueError:
                log.warning("ignoring malformed key %s in etcd", item.key)
                continue
            if item.value == self.host and address in self.subnet:
                log.info("WireGuard tunnel address %s (allocated earlier)", address)
                return address
            taken.add(address)
        for address in self.subnet.hosts():
            if address in taken:
                continue
            existing = self.kv.create(self._address_key(address), self.host)
            if existing is None or existing == self.host:
                log.info("WireGuard tunnel address %s allocated in %s", address, self.subnet)
                return address
        raise Conflict(
            f"no free tunnel address left in VXLANPY_WG_SUBNET={self.subnet} ({len(taken)} taken by other hosts): "
            "set a larger VXLANPY_WG_SUBNET on every host, or release the addresses of hosts that are gone for "
            "good with `vxlanpy node rm HOST`"
        )

    def ensure(self) -> None:
        with self._lock:
            address = self.tunnel().address
            if self.key_path.exists():
                public_key = self.wireguard.public_key(self.key_path)
            else:
                self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                public_key = self.wireguard.generate_key(self.key_path)
                log.info("WireGuard keypair generated (public key %s)", public_key)
            underlay = self.underlay()
            endpoint = _endpoint_address(underlay)
            mtu = underlay.mtu - wg_overhead(endpoint)
            self.wireguard.ensure_interface(
                self.interface, self.key_path, self.port, address, self.subnet.prefixlen, mtu
            )
            self._record = WireGuardPeer(public_key, endpoint, self.port, address)
            # Peers first, without keepalive for JOIN_SECONDS (nothing is sent to them), then the record: the
            # others add this host with a keepalive, which starts their handshakes at once.  Were both sides to
            # start at the same instant, their handshakes would cross: each drops the answer to its own, and
            # wireguard-go can take half a minute to try again.
            self._joined_at = time.monotonic()
            self._sync_from_etcd()
            self._publish()

    def release_if_unused(self, in_use: Callable[[], bool]) -> None:
        with self._lock:
            if in_use():
                return
            self._record = None  # no republication from now on
            self.kv.delete(self._peer_key(self.host))
            self.wireguard.remove_interface(self.interface)
            log.info("no encrypted network left: WireGuard interface %s removed, record withdrawn", self.interface)

    def rotate_key(self) -> dict[str, Any]:
        with self._lock:
            if self._record is None:
                raise Conflict(
                    f"the WireGuard interface {self.interface} is not up on this host (no encrypted network, or "
                    "its set-up failed: see `vxlanpy doctor`): there is no key in use to rotate"
                )
            previous = self._record.public_key
            fresh = self.key_path.with_name(f".{KEY_FILE}.new")
            try:
                public_key = self.wireguard.generate_key(fresh)
                self.wireguard.set_private_key(self.interface, fresh)
                fresh.replace(self.key_path)
            finally:
                fresh.unlink(missing_ok=True)
            self._record = WireGuardPeer(
                public_key, self._record.endpoint_address, self._record.endpoint_port, self._record.tunnel
            )
            log.warning("WireGuard key rotated: public key %s (was %s)", public_key, previous)
            self._publish()  # the other hosts' watch replaces our peer with the new key
            return {"public_key": public_key, "previous": previous}

    def status(self) -> dict[str, Any]:
        with self._lock:
            record = self._record
            expected = dict(self._records)
        body: dict[str, Any] = {
            "interface": self.interface,
            "subnet": str(self.subnet),
            "port": self.port,
            "up": record is not None,
            "tunnel": str(self._address) if self._address is not None else None,
            "public_key": record.public_key if record is not None else None,
            "endpoint": f"{record.endpoint_address}:{record.endpoint_port}" if record is not None else None,
        }
        try:
            underlay = self.underlay()
            body["underlay"] = {"dev": underlay.dev, "mtu": underlay.mtu}
            body["overhead"] = wg_overhead(_endpoint_address(underlay))
        except VxlanpyError as exc:
            body["underlay"] = {"error": exc.message}
        try:
            state = self.wireguard.state(self.interface)
            body["backend"] = state.backend if state is not None else self.wireguard.backend()
            body["backend_error"] = None
        except DataplaneError as exc:
            state, body["backend"], body["backend_error"] = None, None, exc.message
        body["interface_present"] = state is not None
        kernel = state.peers if state is not None else {}
        handshakes = state.handshakes if state is not None else {}
        body["listen_port"] = state.listen_port if state is not None else None
        body["peers"] = [
            {**_peer_view(peer), "latest_handshake": handshakes.get(key, 0)} for key, peer in sorted(kernel.items())
        ]
        body["expected"] = [{"host": host, **_peer_view(peer)} for host, peer in sorted(expected.items())]
        wanted = {peer.public_key for peer in expected.values()}
        body["missing"] = sorted(host for host, peer in expected.items() if peer.public_key not in kernel)
        body["extra"] = sorted(key for key in kernel if key not in wanted)
        return body

    # -- publishing ----------------------------------------------------------------------------------------

    def _publish(self) -> None:
        record = self._record
        if record is not None:
            self.cluster.put_leased(self._peer_key(self.host), record_of(record))

    def _republish(self, lease: int) -> None:
        """The cluster's hook: our record back under a new lease (the old one expired, or etcd came back)."""
        with self._lock:
            if self._record is not None:
                self.kv.put(self._peer_key(self.host), record_of(self._record), lease)

    # -- following the other hosts ------------------------------------------------------------------------

    def start(self) -> None:
        thread = threading.Thread(target=self._watch_loop, name=WATCH_THREAD, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = STOP_JOIN_SECONDS) -> list[str]:
        """As EtcdCluster.stop: the names of the threads still running after `timeout` seconds each."""
        self._stop.set()
        self._threads = end_threads(self._threads, timeout, watches={WATCH_THREAD})
        return [thread.name for thread in self._threads]

    def _sync_from_etcd(self) -> int:
        """Read every record, make the interface's peers match them; returns the revision read."""
        prefix = self.kv.key("wg", "peers", "")
        items, revision = self.kv.range(prefix)
        records: dict[str, WireGuardPeer] = {}
        for item in items:
            parsed = self._parse(item, prefix)
            if parsed is not None:
                records[parsed[0]] = parsed[1]
        with self._lock:
            self._records = records
            self._sync_peers()
        return revision

    def _parse(self, item: KeyValue, prefix: str) -> tuple[str, WireGuardPeer] | None:
        host = item.key.removeprefix(prefix)
        if host == self.host:
            return None
        try:
            return key_part(host), parse_record(item.value)
        except (VxlanpyError, KeyError, ValueError, TypeError):
            log.warning("ignoring malformed key %s in etcd", item.key)
            return None

    def _sync_peers(self) -> None:
        """Under the lock: the interface's peers are the records (only once ensure() brought it up)."""
        if self._record is None:
            return
        own = self._record.tunnel
        peers = [peer for _, peer in sorted(self._records.items()) if peer.tunnel != own]
        joining = self._joined_at is not None and time.monotonic() - self._joined_at < JOIN_SECONDS
        self.wireguard.sync_peers(self.interface, peers, 0 if joining else KEEPALIVE)

    def _end_joining(self) -> None:
        """At the watch's first wake JOIN_SECONDS after ensure(): the keepalives on (the others' handshakes are
        done by then, so this one sends its keepalives through them)."""
        with self._lock:
            if self._joined_at is not None and time.monotonic() - self._joined_at >= JOIN_SECONDS:
                self._joined_at = None
                self._sync_peers()

    def _watch_loop(self) -> None:
        prefix = self.kv.key("wg", "peers", "")
        while not self._stop.is_set():
            try:
                revision = self._sync_from_etcd()
                self.synced.set()
                while not self._stop.is_set():
                    # an idle watch ends after watch_idle and is resumed; a broken one leads to a full resync
                    for kind, item in self.kv.watch(prefix, revision + 1, idle_timeout=self.watch_idle):
                        revision = max(revision, item.mod_revision)
                        self._apply_event(kind, item, prefix)
                    self._end_joining()
            except StoreError as exc:
                self.synced.clear()
                log.warning("WireGuard peers watch interrupted: %s; resyncing", exc)
                self._stop.wait(RETRY_SECONDS)
            except Exception:  # a dataplane failure included: the next full resync puts the peers right
                self.synced.clear()
                log.exception("cannot sync the WireGuard peers; resyncing")
                self._stop.wait(RETRY_SECONDS)

    def _apply_event(self, kind: str, item: KeyValue, prefix: str) -> None:
        host = item.key.removeprefix(prefix)
        if host == self.host:
            return
        with self._lock:
            if kind == "DELETE":
                if self._records.pop(host, None) is None:
                    return
                log.info("WireGuard peer %s gone", host)
            else:
                parsed = self._parse(item, prefix)
                if parsed is None or self._records.get(parsed[0]) == parsed[1]:
                    return  # junk, or a re-put under a new lease
                log.info("WireGuard peer %s: %s", host, "updated" if host in self._records else "added")
                self._records[parsed[0]] = parsed[1]
            self._sync_peers()


def _endpoint_address(underlay: Underlay) -> IPAddress:
    if not underlay.addresses:
        raise DataplaneError(
            f"the underlay interface {underlay.dev} has no address: WireGuard needs one to be reached by the other "
            "hosts; give it an address, or set VXLANPY_DEV to the interface that has one"
        )
    return sorted(underlay.addresses, key=lambda address: address.version)[0]


def _peer_view(peer: WireGuardPeer) -> dict[str, Any]:
    return {
        "public_key": peer.public_key,
        "tunnel": str(peer.tunnel),
        "endpoint": f"{peer.endpoint_address}:{peer.endpoint_port}"
        if peer.endpoint_address.version == 4
        else f"[{peer.endpoint_address}]:{peer.endpoint_port}",
    }
