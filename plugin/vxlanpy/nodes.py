"""Host identities in a multi-host cluster: which name this host's keys live under, and the hosts etcd knows.

The identity names every key a host writes (hosts/<id>/..., live/<vni>/vtep/<id>, address holders <id>/...).
It is, in this order: VXLANPY_HOST when set; the one kept in the state dir (host-id) by an earlier start; the
hostname when etcd already holds state under it (a host upgraded from a version that used the hostname); else
a new one, `<hostname>-<8 hex digits>`, kept in the state dir.  Hosts that share a hostname (cloned VMs) thus
get distinct identities without any configuration; the hostname stays in the node record, for humans.

Two keys describe a host:

    nodes/<id>          {"hostname", "vtep", "since"}   under the host's lease: present while its plugin runs
    hosts/<id>/node     {"hostname", "vtep", "seen", "lease_ttl"}   kept: what `node ls` shows once it is gone

A plugin claims its identity by creating nodes/<id> under its lease before it writes anything else; when the
key exists under another lease with a VTEP that is not one of this host's addresses, two live hosts share the
identity and the second is refused (IdentityConflict) before it can overwrite the first's keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Conflict, InvalidOption
from .models import IPAddress
from .store.etcd import HOST_NAME
from .store.etcd_kv import EtcdKV

log = logging.getLogger(__name__)

IDENTITY_FILE = "host-id"
SUFFIX_BYTES = 4  # 8 hex digits: a clash between hosts of one cluster is not a practical concern
Body = dict[str, Any]


class IdentityConflict(Conflict):
    """Another live plugin holds this host's identity: nothing may be written under it."""


@dataclass(frozen=True)
class Identity:
    name: str
    source: str  # for the start-up log: where the name came from


def check_identity(name: str, what: str = "VXLANPY_HOST") -> str:
    if not HOST_NAME.match(name):
        raise InvalidOption(
            f"{what}={name[:80]!r} is not a valid host identity; use up to 63 letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def label_of(hostname: str) -> str:
    """The hostname made fit for an identity: other characters become '-', at most 50 of them."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", hostname).lstrip("_.-")[:50].rstrip("_.-")
    return cleaned or "host"


def choose_identity(
    explicit: str | None, hostname: str, state_dir: Path, has_state: Callable[[str], bool | None]
) -> Identity:
    """This host's identity (see the module's docstring).  `has_state(name)` says whether etcd holds keys under
    `name`, or None when etcd cannot be asked (then a lease file of an earlier run in the state dir counts)."""
    if explicit:
        return Identity(check_identity(explicit), "VXLANPY_HOST")
    path = state_dir / IDENTITY_FILE
    if path.exists():
        return Identity(check_identity(path.read_text().strip(), str(path)), str(path))
    state = has_state(hostname) if HOST_NAME.match(hostname) else False
    if state is None:  # etcd unreachable: a multi-host run of an earlier version leaves its lease file
        state = (state_dir / "etcd-lease").exists()
    if state:
        identity = Identity(hostname, "the hostname, under which etcd already holds this host's state")
    else:
        identity = Identity(f"{label_of(hostname)}-{secrets.token_hex(SUFFIX_BYTES)}", "new")
    _keep(path, identity.name)
    return identity


def _keep(path: Path, name: str) -> None:
    """Write the identity file atomically: a crash never leaves a half-written name to be refused next time."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(name + "\n")
    partial.chmod(0o600)
    partial.replace(path)


def duplicate_message(identity: str, theirs: str, mine: str) -> str:
    return (
        f"host identity {identity!r} is already held by a live vxlanpy with VTEP {theirs or 'unknown'}, and this "
        f"host's VTEP is {mine or 'unknown'}: two hosts would overwrite each other's keys. Give this host its own "
        f"identity: unset VXLANPY_HOST (or set it to a name no other host uses), and delete the state dir's "
        f"{IDENTITY_FILE} file if it was copied from the other host; then start vxlanpy again"
    )


class Nodes:
    """The node records of one cluster, and `node ls` / `node rm` over the whole key space."""

    def __init__(self, kv: EtcdKV, identity: str, hostname: str, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.identity = check_identity(identity)
        self.hostname = hostname
        self.clock = clock

    def _live_key(self, identity: str) -> str:
        return self.kv.key("nodes", identity)

    def _record_key(self, identity: str) -> str:
        return self.kv.key("hosts", identity, "node")

    # -- this host ------------------------------------------------------------------------------------------

    def claim(self, lease: int, vtep: str, mine: set[IPAddress], lease_ttl: int) -> None:
        """Take nodes/<id> under `lease`; IdentityConflict when another live plugin with another VTEP has it."""
        key = self._live_key(self.identity)
        record = json.dumps({"hostname": self.hostname, "vtep": vtep, "since": round(self.clock(), 3)})
        existing = self.kv.create(key, record, lease)
        if existing is not None:
            current = [item for item in self.kv.range(key)[0] if item.key == key]
            if current and current[0].lease != lease:
                theirs = _field(current[0].value, "vtep")
                if _other_host(theirs, mine):
                    raise IdentityConflict(duplicate_message(self.identity, theirs, vtep))
            # ours (a resumed lease), or an earlier run of this host whose lease has not expired yet
            self.kv.put(key, record, lease)
        self._check_legacy(lease, vtep, mine)
        self.touch(vtep, lease_ttl)

    def _check_legacy(self, lease: int, vtep: str, mine: set[IPAddress]) -> None:
        """A plugin of an earlier version publishes no node key, only its VTEPs: look at those too."""
        items, _ = self.kv.range(self.kv.key("live", ""))
        for item in items:
            parts = item.key.removeprefix(self.kv.key("live", "")).split("/")
            if len(parts) == 3 and parts[1] == "vtep" and parts[2] == self.identity and item.lease != lease:
                if _other_host(item.value, mine):
                    raise IdentityConflict(duplicate_message(self.identity, item.value, vtep))

    def touch(self, vtep: str, lease_ttl: int) -> None:
        """Refresh the kept record: `seen` is when this host was last known alive."""
        record = {"hostname": self.hostname, "vtep": vtep, "seen": round(self.clock(), 3), "lease_ttl": lease_ttl}
        self.kv.put(self._record_key(self.identity), json.dumps(record))

    # -- the cluster ----------------------------------------------------------------------------------------

    def listing(self) -> list[Body]:
        """Every host etcd knows, from one consistent read of the whole prefix."""
        prefix = self.kv.key("")
        items, _ = self.kv.range(prefix)
        hosts: defaultdict[str, Body] = defaultdict(_empty_host)
        for item in items:
            parts = item.key.removeprefix(prefix).split("/")
            kind = parts[0]
            if kind == "hosts" and len(parts) >= 3:
                host = hosts[parts[1]]
                if parts[2] == "node" and len(parts) == 3:
                    host["record"] = _json(item.value)
                elif parts[2] in ("networks", "endpoints") and len(parts) == 4:
                    host[parts[2]] += 1
            elif kind == "nodes" and len(parts) == 2:
                hosts[parts[1]]["live"] = _json(item.value)
                hosts[parts[1]]["leases"].add(item.lease)
            elif kind == "live" and len(parts) >= 4 and parts[2] in ("vtep", "ep"):
                host = hosts[parts[3]]
                host["leases"].add(item.lease)
                if parts[2] == "vtep":
                    host["vteps"].add(item.value)
            elif kind == "segment-hosts" and len(parts) == 3:
                hosts[parts[2]]["segments"] += 1
            elif kind == "wg" and len(parts) == 3 and parts[1] == "addresses":
                hosts[item.value]["tunnel"] = parts[2]
            elif (kind == "addresses" and len(parts) == 3) or (kind == "ipam" and parts[1:2] == ["addresses"]):
                owner, sep, _ = item.value.partition("/")
                if sep:
                    hosts[owner]["addresses"].add(parts[-1])
        now = self.clock()
        return [self._row(name, host, now) for name, host in sorted(hosts.items()) if HOST_NAME.match(name)]

    def _row(self, name: str, host: Body, now: float) -> Body:
        record = host.get("record") or {}
        live = host.get("live") or {}
        alive = bool(host["leases"])
        seen = record.get("seen")
        vteps = set(host["vteps"]) | {vtep for vtep in (live.get("vtep"), record.get("vtep")) if vtep}
        row: Body = {
            "id": name,
            "hostname": live.get("hostname") or record.get("hostname"),
            "vteps": sorted(vteps),
            "state": "alive" if alive else "expired",
            "this_host": name == self.identity,
            "last_seen": now if alive else seen,
            "networks": host["networks"],
            "endpoints": host["endpoints"],
            "addresses": sorted(host["addresses"]),
        }
        if host.get("tunnel"):  # its WireGuard tunnel address (encrypted networks)
            row["tunnel"] = host["tunnel"]
        if not alive and isinstance(seen, (int, float)):
            # its lease ran out at most a TTL after the last refresh of the record
            row["expired_at"] = seen + float(record.get("lease_ttl") or 0)
        return row

    def remove(self, identity: str, force: bool) -> Body:
        """Remove every key of a host that is gone for good; refused for a live host unless `force`."""
        check_identity(identity, "HOST")
        if identity == self.identity:
            raise Conflict(f"{identity} is this host: run `vxlanpy node rm` on another host of the cluster")
        rows = {row["id"]: row for row in self.listing()}
        row = rows.get(identity)
        if row is None:
            known = ", ".join(rows) or "none"
            raise Conflict(f"etcd knows no host {identity!r} (known: {known[:400]}); see `vxlanpy node ls`")
        leases = self._leases_of(identity)
        if leases and not force:
            raise Conflict(
                f"host {identity} (hostname {row['hostname'] or 'unknown'}, VTEP {', '.join(row['vteps']) or 'none'}) "
                "is alive: its plugin keeps its etcd lease fresh. Stop vxlanpy there, or wait for its lease to "
                "expire, then run this again; --force removes it anyway (a plugin that still runs publishes "
                "itself again)"
            )
        for lease in leases:  # everything it published under its lease vanishes at once, on every host
            self.kv.revoke(lease)
        removed = self._delete_keys(identity)
        log.warning("removed host %s from the cluster (%d keys%s)", identity, removed, ", forced" if leases else "")
        return {"id": identity, "hostname": row["hostname"], "keys": removed, "forced": bool(leases), "row": row}

    def _leases_of(self, identity: str) -> set[int]:
        leases = set()
        for item in self.kv.range(self._live_key(identity))[0]:
            if item.key == self._live_key(identity):
                leases.add(item.lease)
        for item in self.kv.range(self.kv.key("live", ""))[0]:
            parts = item.key.removeprefix(self.kv.key("live", "")).split("/")
            if len(parts) >= 3 and parts[2] == identity:
                leases.add(item.lease)
        return {lease for lease in leases if lease}

    def _delete_keys(self, identity: str) -> int:
        """Delete the host's keys: each one read back from etcd, so no key is ever built from the name alone but
        for the host's own prefix (built from the checked identity)."""
        prefix = self.kv.key("")
        items, _ = self.kv.range(prefix)
        doomed: list[str] = []
        pools: set[str] = set()
        segments: set[str] = set()
        holders: defaultdict[str, int] = defaultdict(int)
        for item in items:
            parts = item.key.removeprefix(prefix).split("/")
            owner = item.value.partition("/")[0] if "/" in item.value else None
            if parts[0] == "live" and len(parts) >= 4 and parts[3] == identity:
                doomed.append(item.key)
            elif parts[0] == "addresses" and len(parts) == 3 and owner == identity:
                doomed.append(item.key)
            elif (
                parts[0] == "wg"
                and len(parts) == 3
                and (parts[1], identity) in (("addresses", item.value), ("peers", parts[2]))
            ):
                doomed.append(item.key)  # its WireGuard tunnel address (held: the value) and record (its key)
            elif parts[0] == "segment-hosts" and len(parts) == 3:
                holders[f"segment:{parts[1]}"] += 1
                if parts[2] == identity:
                    doomed.append(item.key)
                    segments.add(parts[1])
            elif parts[0] == "ipam" and len(parts) == 4 and parts[1] in ("pools", "addresses"):
                if parts[1] == "pools":
                    holders[f"pool:{parts[2]}"] += 1
                if owner == identity:
                    doomed.append(item.key)
                    if parts[1] == "pools":
                        pools.add(parts[2])
        count = len(doomed)
        for key in doomed:
            self.kv.delete(key)
        for pool in pools:  # as release_pool: a pool nobody holds any more is forgotten with its reservations
            gone = sum(1 for key in doomed if key.startswith(self.kv.key("ipam", "pools", pool, "")))
            if holders[f"pool:{pool}"] == gone:
                self.kv.delete_prefix(self.kv.key("ipam", "addresses", pool, ""))
                self.kv.delete(self.kv.key("ipam", "pool-owners", pool))
        for vni in segments:  # as delete_network: a segment no host has any more is forgotten
            if holders[f"segment:{vni}"] == 1:
                self.kv.delete(self.kv.key("segments", vni))
        count += sum(1 for item in items if item.key.startswith(self.kv.key("hosts", identity, "")))
        self.kv.delete_prefix(self.kv.key("hosts", identity, ""))
        self.kv.delete(self._live_key(identity))
        return count


def _empty_host() -> Body:
    return {"leases": set(), "vteps": set(), "addresses": set(), "networks": 0, "endpoints": 0, "segments": 0}


def _json(raw: str) -> Body:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _field(raw: str, name: str) -> str:
    value = _json(raw).get(name)
    return value if isinstance(value, str) else ""


def _other_host(vtep: str, mine: Iterable[IPAddress]) -> bool:
    """Whether `vtep` shows another host: it is known, this host's addresses are known, and it is none of them."""
    addresses = {str(address) for address in mine}
    return bool(vtep) and bool(addresses) and vtep not in addresses
