"""The single-host store: one SQLite file, rows holding JSON documents.

One connection shared by the plugin's threads behind a lock: SQLite serialises writers anyway, and a single
connection means no "database is locked" can ever reach a user.  WAL with synchronous=NORMAL survives a
kill -9 of the plugin (only a power loss may drop the last transaction).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import Conflict, StoreError
from ..models import Endpoint, Network
from .base import no_free_vni_message, vni_in_use_message

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
"""


class SqliteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the state database {path}: {exc}; check VXLANPY_STATE_DIR/VXLANPY_STORE"
            ) from exc
        self._lock = threading.Lock()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"state database {self.path} failed: {exc}") from exc

    def _insert_network(self, db: sqlite3.Connection, network: Network) -> None:
        row = db.execute("SELECT network_id FROM networks WHERE vni = ?", (network.vni,)).fetchone()
        if row is not None:
            raise Conflict(vni_in_use_message(network.vni, row[0]))
        if db.execute("SELECT 1 FROM networks WHERE network_id = ?", (network.network_id,)).fetchone():
            raise Conflict(f"network {network.network_id[:12]} already exists")
        db.execute(
            "INSERT INTO networks (network_id, vni, data) VALUES (?, ?, ?)",
            (network.network_id, network.vni, json.dumps(network.to_dict())),
        )

    def add_network(self, network: Network) -> None:
        with self._transaction() as db:
            self._insert_network(db, network)

    def add_network_with_free_vni(self, build: Callable[[int], Network], low: int, high: int) -> Network:
        with self._transaction() as db:
            vni = _lowest_free_vni(db, low, high)
            if vni is None:
                raise Conflict(no_free_vni_message(low, high))
            network = build(vni)
            self._insert_network(db, network)
            return network

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
                raise StoreError(f"state database {self.path} failed: {exc}") from exc


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
