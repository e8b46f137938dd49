"""The single-host store: one SQLite file, rows holding JSON documents.

One connection shared by the plugin's threads behind a lock: SQLite serialises writers anyway, and a single
connection means no "database is locked" can ever reach a user.  WAL with synchronous=NORMAL survives a
kill -9 of the plugin (only a power loss may drop the last transaction).

The file is the plugin's only memory of what it owns, so it is guarded:

* it is created 0600 (SQLite gives its -wal and -shm files the same mode) in a directory created 0700, and an
  older 0644 file is tightened: it names every network and endpoint of the host;
* every write first checks that the path still names the file that was opened.  A file deleted or replaced
  while the plugin runs (a bad restore, a cleanup script) would otherwise take writes that vanish at the next
  restart; they are refused, saying so, and `vxlanpy recover` writes the open copy back (`restore_file`);
* `check()` (the health check) proves that a write commits, so a read-only file or directory is reported.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import Conflict, NoFreeVni, StoreError
from ..models import Endpoint, Network
from .base import no_free_vni_message, vni_in_use_message

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    network_id TEXT PRIMARY KEY,
    vni INTEGER NOT NULL UNIQUE,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    endpoint_id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS endpoints_by_network ON endpoints (network_id);
CREATE TABLE IF NOT EXISTS ipam_pools (
    pool_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    PRIMARY KEY (pool_id, holder)
);
CREATE TABLE IF NOT EXISTS ipam_addresses (
    pool_id TEXT NOT NULL,
    address TEXT NOT NULL,
    holder TEXT NOT NULL,
    PRIMARY KEY (pool_id, address)
);
CREATE TABLE IF NOT EXISTS pending_networks (
    network_id TEXT PRIMARY KEY,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _connect(path: str) -> sqlite3.Connection:
    """The plugin's one connection: shared by its threads behind the store's lock, WAL, synchronous=NORMAL."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        db.close()
        raise
    return db


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class SqliteStore:
    def __init__(self, path: str, private_dir: bool = False) -> None:
        """`private_dir`: the file's directory holds only vxlanpy's state (VXLANPY_STATE_DIR), so it is
        tightened to 0700 too; otherwise it is only created 0700 when missing."""
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = self._open(private_dir)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the state database {path}: {exc}; check VXLANPY_STATE_DIR/VXLANPY_STORE"
            ) from exc
        self._identity = _identity(path)

    def _open(self, private_dir: bool) -> sqlite3.Connection:
        path = Path(self.path)
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if private_dir:
            _tighten(path.parent, DIR_MODE)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)  # before SQLite, which would make it 0644
        os.close(fd)
        for name in (self.path, self.path + "-wal", self.path + "-shm"):
            _tighten(Path(name), FILE_MODE)
        db = _connect(self.path)
        try:
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    # -- the file's identity and health -------------------------------------------------------------------

    def _vanished(self) -> str | None:
        """Why the path no longer names the open file, or None when it does."""
        now = _identity(self.path)
        if now == self._identity:
            return None
        state = "deleted" if now is None else "replaced by another file"
        return (
            f"the state database {self.path} was {state} while the plugin ran: writes are refused, since they "
            "would vanish at the next restart (the plugin still holds its state); run `vxlanpy recover` to write "
            "the plugin's state back to that path"
            + ("" if now is None else f" (the other file is kept as {self.path}.replaced-TIME)")
        )

    def check(self) -> str:
        """Prove that a write reaches the file at `path`; raise StoreError saying why not."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('health_probe', ?)", (repr(time.time()),))
        return f"{self.path} writable"

    def restore_file(self, dry_run: bool = False) -> str | None:
        """After the file was deleted or replaced under the running plugin: write the open database back to
        `path` (a file found there is kept beside it, as found) and use that file from now on."""
        kept = ""
        with self._lock:
            found = _identity(self.path)
            if found == self._identity:
                return None
            if dry_run:
                state = "deleted" if found is None else "replaced"
                return f"would write the plugin's state back to {self.path} ({state} while the plugin ran)"
            temporary = f"{self.path}.recover-{os.getpid()}"
            try:
                fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, FILE_MODE)
                os.close(fd)
                copy = sqlite3.connect(temporary)
                try:
                    self._db.backup(copy)
                finally:
                    copy.close()
                # Closed before any file moves: on close SQLite removes "<path>-wal" by name.
                self._db.close()
                if found is not None:
                    kept = f"{self.path}.replaced-{int(time.time())}"
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(self.path + suffix):
                        if kept:
                            os.replace(self.path + suffix, kept + suffix)
                        elif suffix:
                            os.unlink(self.path + suffix)
                os.replace(temporary, self.path)
                self._db = _connect(self.path)
            except (OSError, sqlite3.Error) as exc:
                hint = _hint(exc, self.path) if isinstance(exc, sqlite3.Error) else ""
                raise StoreError(f"cannot write the state back to {self.path}: {exc}{hint}") from exc
            self._identity = _identity(self.path)
        log.warning("state database written back to %s%s", self.path, f"; the file found there is {kept}" * bool(kept))
        return f"state written back to {self.path}" + (f"; the file found there is kept as {kept}" if kept else "")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            reason = self._vanished()
            if reason is not None:
                raise StoreError(reason)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"state database {self.path} failed: {exc}{_hint(exc, self.path)}") from exc

    # -- networks -----------------------------------------------------------------------------------------

    def _insert_network(self, db: sqlite3.Connection, network: Network, pending_since: float | None) -> None:
        row = db.execute("SELECT network_id FROM networks WHERE vni = ?", (network.vni,)).fetchone()
        if row is not None:
            raise Conflict(vni_in_use_message(network.vni, row[0]))
        if db.execute("SELECT 1 FROM networks WHERE network_id = ?", (network.network_id,)).fetchone():
            raise Conflict(f"network {network.network_id[:12]} already exists")
        db.execute(
            "INSERT INTO networks (network_id, vni, data) VALUES (?, ?, ?)",
            (network.network_id, network.vni, json.dumps(network.to_dict())),
        )
        if pending_since is not None:
            db.execute(
                "INSERT OR REPLACE INTO pending_networks (network_id, since) VALUES (?, ?)",
                (network.network_id, pending_since),
            )

    def add_network(self, network: Network, pending_since: float | None = None) -> None:
        with self._transaction() as db:
            self._insert_network(db, network, pending_since)

    def add_network_with_free_vni(
        self, build: Callable[[int], Network], low: int, high: int, pending_since: float | None = None
    ) -> Network:
        with self._transaction() as db:
            vni = _lowest_free_vni(db, low, high)
            if vni is None:
                raise NoFreeVni(no_free_vni_message(low, high))
            network = build(vni)
            self._insert_network(db, network, pending_since)
            return network

    def confirm_network(self, network_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM pending_networks WHERE network_id = ?", (network_id,))

    def pending_networks(self) -> dict[str, float]:
        rows = self._query_all("SELECT network_id, since FROM pending_networks", ())
        return {str(row[0]): float(row[1]) for row in rows}

    def get_network(self, network_id: str) -> Network | None:
        row = self._query_one("SELECT data FROM networks WHERE network_id = ?", (network_id,))
        return Network.from_dict(json.loads(row[0])) if row else None

    def list_networks(self) -> list[Network]:
        rows = self._query_all("SELECT data FROM networks ORDER BY vni", ())
        return [Network.from_dict(json.loads(row[0])) for row in rows]

    def delete_network(self, network_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM endpoints WHERE network_id = ?", (network_id,))
            db.execute("DELETE FROM networks WHERE network_id = ?", (network_id,))
            db.execute("DELETE FROM pending_networks WHERE network_id = ?", (network_id,))

    def put_endpoint(self, endpoint: Endpoint) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO endpoints (endpoint_id, network_id, data) VALUES (?, ?, ?)",
                (endpoint.endpoint_id, endpoint.network_id, json.dumps(endpoint.to_dict())),
            )

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = self._query_one("SELECT data FROM endpoints WHERE endpoint_id = ?", (endpoint_id,))
        return Endpoint.from_dict(json.loads(row[0])) if row else None

    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        if network_id is None:
            rows = self._query_all("SELECT data FROM endpoints", ())
        else:
            rows = self._query_all("SELECT data FROM endpoints WHERE network_id = ?", (network_id,))
        return [Endpoint.from_dict(json.loads(row[0])) for row in rows]

    def delete_endpoint(self, endpoint_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM endpoints WHERE endpoint_id = ?", (endpoint_id,))

    # -- AddressBook (the IPAM driver's records) -------------------------------------------------------------

    def claim_pool(self, pool_id: str, holder: str, exclusive: bool) -> bool:
        with self._transaction() as db:
            if exclusive and db.execute("SELECT 1 FROM ipam_pools WHERE pool_id = ?", (pool_id,)).fetchone():
                return False
            db.execute("INSERT OR IGNORE INTO ipam_pools (pool_id, holder) VALUES (?, ?)", (pool_id, holder))
            return True

    def release_pool(self, pool_id: str, holder: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM ipam_pools WHERE pool_id = ? AND holder = ?", (pool_id, holder))
            if db.execute("SELECT 1 FROM ipam_pools WHERE pool_id = ?", (pool_id,)).fetchone() is None:
                db.execute("DELETE FROM ipam_addresses WHERE pool_id = ?", (pool_id,))

    def pool_holders(self, pool_id: str) -> set[str]:
        return {row[0] for row in self._query_all("SELECT holder FROM ipam_pools WHERE pool_id = ?", (pool_id,))}

    def claimed_pools(self) -> dict[str, set[str]]:
        claims: dict[str, set[str]] = {}
        for pool_id, holder in self._query_all("SELECT pool_id, holder FROM ipam_pools", ()):
            claims.setdefault(pool_id, set()).add(holder)
        return claims

    def reserve_address(self, pool_id: str, address: str, holder: str) -> str | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT holder FROM ipam_addresses WHERE pool_id = ? AND address = ?", (pool_id, address)
            ).fetchone()
            if row is not None:
                return None if row[0] == holder else str(row[0])
            db.execute(
                "INSERT INTO ipam_addresses (pool_id, address, holder) VALUES (?, ?, ?)", (pool_id, address, holder)
            )
            return None

    def release_address(self, pool_id: str, address: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM ipam_addresses WHERE pool_id = ? AND address = ?", (pool_id, address))

    def reserved_addresses(self, pool_id: str) -> dict[str, str]:
        rows = self._query_all("SELECT address, holder FROM ipam_addresses WHERE pool_id = ?", (pool_id,))
        return {str(row[0]): str(row[1]) for row in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query_one(self, sql: str, args: tuple[object, ...]) -> tuple[str, ...] | None:
        rows = self._query_all(sql, args)
        return rows[0] if rows else None

    def _query_all(self, sql: str, args: tuple[object, ...]) -> list[tuple[str, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"state database {self.path} failed: {exc}{_hint(exc, self.path)}") from exc


def _tighten(path: Path, mode: int) -> None:
    """Take group and other permissions away from a file or directory vxlanpy owns (an older install made
    them 0644 and 0755)."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current & 0o077:
        os.chmod(path, current & mode)
        log.info("%s was mode %04o; now %04o", path, current, current & mode)


def _hint(exc: sqlite3.Error, path: str) -> str:
    if "readonly" in str(exc):
        return (
            "; the file or its directory is read-only: make both writable by the plugin "
            "(state.db 0600 and its directory 0700, owned by root)"
        )
    # An immutable file or a read-only mount fails an open file's writes as a bare "disk I/O error"; root's
    # access() still honours both, so it tells them from a failing disk.
    blocked = [name for name in (path, path + "-wal", os.path.dirname(path)) if _write_refused(name)]
    if blocked:
        return (
            f"; {', '.join(blocked)} cannot be written (a read-only mount, or the immutable attribute: "
            "`lsattr` shows it, `chattr -i` clears it); make the state writable by the plugin"
        )
    return ""


def _write_refused(path: str) -> bool:
    return os.path.exists(path) and not os.access(path, os.W_OK)


def _lowest_free_vni(db: sqlite3.Connection, low: int, high: int) -> int | None:
    if db.execute("SELECT 1 FROM networks WHERE vni = ?", (low,)).fetchone() is None:
        return low
    # The first used VNI whose successor is free: uses the UNIQUE index on vni, no table scan in Python.
    row = db.execute(
        "SELECT n.vni + 1 FROM networks n WHERE n.vni BETWEEN ? AND ? "
        "AND NOT EXISTS (SELECT 1 FROM networks m WHERE m.vni = n.vni + 1) ORDER BY n.vni LIMIT 1",
        (low, high - 1),
    ).fetchone()
    return int(row[0]) if row else None
