"""The etcd v3 client vxlanpy uses: the few calls it needs, through etcd's JSON gateway (etcd3gw's session and URLs).

Every etcd failure becomes a StoreError that says etcd is unreachable and what still works, within the
client timeout (VXLANPY_ETCD_TIMEOUT, 3 s by default): dockerd waits forever on a hung plugin.  Several
endpoints (etcd://h1:2379,h2:2379,h3:2379) are members of one cluster: a call that meets a refused connection,
a timeout or "no leader" goes on to the next member within that same budget, and watches resume at another
member.  TLS (https, optionally with a client certificate) is on when VXLANPY_ETCD_CA/_CERT/_KEY are set.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from ..digits import ascii_int
from ..errors import InvalidOption, StoreError

log = logging.getLogger(__name__)

HOST_PART = re.compile(r"^[A-Za-z0-9_.:%-]{1,253}$")  # a DNS name or an IPv4/IPv6 address (checked on use)
KEY_PART = re.compile(r"^[A-Za-z0-9_.:~+=-]{1,128}$")
DEFAULT_PORT = 2379
ATTEMPT_SHARE = 1 / 3  # of VXLANPY_ETCD_TIMEOUT per try at one member, so a hung member leaves time for others
MIN_ATTEMPT = 0.5
ROUND_PAUSE = 0.1  # seconds between two rounds over every member (all refused: an election under way)
RETRIED_STATUS = (408, 503, 504)  # gRPC Unavailable/DeadlineExceeded: another member or a later try may answer


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (etcd's convention: last byte + 1)."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


def key_part(value: str) -> str:
    """A piece of a key; anything that could escape its place (a '/', '..', spaces) is refused."""
    if not KEY_PART.match(value) or value in (".", ".."):
        raise InvalidOption(f"{value[:64]!r} cannot be used in a store key")
    return value


class LeaseNotFound(StoreError):
    """The lease expired (etcd was out of reach for longer than its TTL): get a new one and publish again."""


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[tuple[str, int], ...]
    prefix: str = "/vxlanpy"
    timeout: float = 3.0
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_url(cls, url: str, **extra: Any) -> EtcdConfig:
        """etcd://host:port[,host:port...]; an IPv6 address in brackets; the port defaults to 2379."""
        rest = url.removeprefix("etcd://").strip("/")
        endpoints: list[tuple[str, int]] = []
        for item in rest.split(","):
            endpoint = _parse_endpoint(item.strip())
            if endpoint is None:
                raise InvalidOption(
                    f"VXLANPY_STORE={url[:120]!r} is not valid; use etcd://HOST:PORT[,HOST:PORT...], "
                    f"e.g. etcd://10.0.0.1:2379,10.0.0.2:2379 ({item.strip()[:60]!r} is not HOST:PORT)"
                )
            if endpoint in endpoints:
                raise InvalidOption(f"VXLANPY_STORE={url[:120]!r} lists {_endpoint_name(endpoint)} twice")
            endpoints.append(endpoint)
        prefix = "/" + extra.pop("prefix", "/vxlanpy").strip("/")
        if not all(KEY_PART.match(part) for part in prefix.strip("/").split("/")):
            raise InvalidOption(f"VXLANPY_ETCD_PREFIX={prefix!r} is not valid; use e.g. /vxlanpy")
        return cls(endpoints=tuple(endpoints), prefix=prefix, **extra)

    @property
    def protocol(self) -> str:
        """TLS is on as soon as any of the CA, certificate or key is set (they are checked by Settings)."""
        return "https" if self.ca_cert or self.cert or self.key else "http"


def _parse_endpoint(item: str) -> tuple[str, int] | None:
    """`host`, `host:port`, `[v6]` or `[v6]:port`; None when it is none of those."""
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")) or ":" not in host:
            return None
        port_text = rest[1:] if rest else str(DEFAULT_PORT)
    elif item.count(":") > 1:
        return None  # an IPv6 address needs brackets, or its last group would be read as the port
    else:
        host, _, port_text = item.partition(":") if ":" in item else (item, "", str(DEFAULT_PORT))
    port = ascii_int(port_text, 1, 65535)
    if port is None or not HOST_PART.match(host):
        return None
    return host, port


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    mod_revision: int
    lease: int

    @classmethod
    def decode(cls, kv: dict[str, Any]) -> KeyValue:
        """One key as etcd's JSON gateway sends it (base64 key and value, numbers as strings)."""
        return cls(
            _unb64(kv["key"]), _unb64(kv.get("value", "")), int(kv.get("mod_revision", 0)), int(kv.get("lease", 0))
        )


class EtcdKV:
    """The few etcd v3 calls vxlanpy needs, with failover across endpoints and errors mapped to StoreError.

    Every call, failover included, ends within config.timeout: it tries the endpoints in turn, starting with
    the last one that answered, each try at most ATTEMPT_SHARE of the budget (with several members), until one
    answers or time is up.
    """

    def __init__(self, config: EtcdConfig, sessions: list[requests.Session] | None = None) -> None:
        """`sessions`: one per endpoint, for tests; by default etcd3gw's (TLS settings applied)."""
        from etcd3gw.client import Etcd3Client

        self.config = config
        clients = [
            Etcd3Client(
                host=host,
                port=port,
                protocol=config.protocol,
                ca_cert=config.ca_cert,
                cert_key=config.key,
                cert_cert=config.cert,
                timeout=config.timeout,
                api_path="/v3/",
                session=None if sessions is None else sessions[index],
            )
            for index, (host, port) in enumerate(config.endpoints)
        ]
        self._sessions = [client.session for client in clients]
        if sessions is None:
            for session in self._sessions:
                # etcd is spoken to directly, with VXLANPY_ETCD_CA: requests would otherwise let a proxy or
                # REQUESTS_CA_BUNDLE from the environment override both (psf/requests#3829).
                session.trust_env = False
        self._urls = [client.base_url + "/v3" for client in clients]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return ",".join(_endpoint_name(endpoint) for endpoint in self.config.endpoints)

    def key(self, *parts: str) -> str:
        return "/".join((self.config.prefix, *parts))

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        timeout = self.config.timeout
        deadline = time.monotonic() + timeout
        # A proposal that reaches a member while the cluster has no leader hangs for etcd's own request timeout
        # (7 s by default), even after a new leader is up: a fresh try at another member succeeds sooner.
        count = len(self._sessions)
        share = max(timeout * ATTEMPT_SHARE, MIN_ATTEMPT) if count > 1 else timeout  # alone: no election
        with self._lock:
            first = self._current
        last = "no attempt"
        for attempt in itertools.count():
            if attempt and attempt % count == 0:  # every member failed once: give an election time to finish
                time.sleep(max(min(ROUND_PAUSE, deadline - time.monotonic()), 0))
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                break
            index = (first + attempt) % count
            endpoint = _endpoint_name(self.config.endpoints[index])
            budget = min(share, remaining)
            try:
                response = self._sessions[index].post(self._urls[index] + path, json=body, timeout=budget)
            except requests.exceptions.SSLError as exc:
                if _handshake_cut(exc):  # a member dying mid-handshake looks like this too: try the next one
                    last = f"{endpoint}: TLS failed ({_tls_reason(exc)})"
                    continue
                raise StoreError(
                    f"etcd at {endpoint}: TLS failed ({_tls_reason(exc)}); check VXLANPY_ETCD_CA, VXLANPY_ETCD_CERT "
                    "and VXLANPY_ETCD_KEY, and that etcd serves https (TLS is on when any of them is set)"
                ) from exc
            except requests.exceptions.Timeout:
                last = f"{endpoint} did not answer within {budget:.1f} s"
                continue
            except requests.exceptions.ConnectionError as exc:
                last = f"{endpoint}: {_connection_reason(exc)}"
                continue
            if response.status_code in RETRIED_STATUS:  # no leader, leader changed, etcd's own timeout
                last = f"{endpoint}: {_etcd_error(response)}"
                continue
            if response.status_code != 200:
                detail = _etcd_error(response)
                if "lease not found" in detail:
                    raise LeaseNotFound(f"etcd at {self.where} no longer knows our lease")
                if response.status_code == 400 and "HTTPS" in detail:
                    detail += " (set VXLANPY_ETCD_CA, VXLANPY_ETCD_CERT and VXLANPY_ETCD_KEY to use TLS)"
                raise StoreError(f"etcd at {endpoint} refused {path}: {detail[:200]}")
            try:
                result: dict[str, Any] = response.json()
            except ValueError:
                last = f"{endpoint}: an answer that is not JSON"
                continue
            with self._lock:
                self._current = index
            if attempt:  # a member failed: say so once the call is through, with how long it took
                log.info("etcd %s answered by %s after %d failed tries in %.0f ms (%s)", path, endpoint, attempt,
                         (time.monotonic() - deadline + timeout) * 1000, last)  # fmt: skip
            return result
        # etcd serving https closes a plain http connection without a word
        hint = (
            " (and, if etcd serves https, VXLANPY_ETCD_CA)" if CLOSED in last and self.config.protocol == "http" else ""
        )
        raise StoreError(
            f"etcd at {self.where} is unreachable: no member answered within VXLANPY_ETCD_TIMEOUT={timeout:g} s "
            f"(last: {last}); running containers keep working, but networks and containers cannot be changed "
            f"until etcd is back: check etcd and VXLANPY_STORE{hint}"
        )

    # -- key-value ------------------------------------------------------------------------------------------

    def range(self, prefix: str, keys_only: bool = False) -> tuple[list[KeyValue], int]:
        body: dict[str, Any] = {"key": _b64(prefix), "range_end": _prefix_end(prefix)}
        if keys_only:
            body["keys_only"] = True
        result = self.call("/kv/range", body)
        items = [KeyValue.decode(kv) for kv in result.get("kvs", [])]
        return items, int(result["header"]["revision"])

    def range_pages(self, prefix: str, page: int = 1000) -> Iterator[tuple[list[KeyValue], int]]:
        """The keys under `prefix`, `page` at a time, every page read at the revision of the first: (items,
        revision) per page.  A host reading 10^5 keys never holds the whole answer (JSON, base64) at once."""
        start, revision = prefix, 0
        while True:
            body: dict[str, Any] = {"key": _b64(start), "range_end": _prefix_end(prefix), "limit": page}
            if revision:
                body["revision"] = revision
            result = self.call("/kv/range", body)
            revision = revision or int(result["header"]["revision"])
            items = [KeyValue.decode(kv) for kv in result.get("kvs", [])]
            yield items, revision
            if not result.get("more") or not items:
                return
            start = items[-1].key + "\0"  # the next key after the last one read

    def get(self, key: str) -> str | None:
        result = self.call("/kv/range", {"key": _b64(key)})
        kvs = result.get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def put(self, key: str, value: str, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        self.call("/kv/put", body)

    def create(self, key: str, value: str, lease: int = 0) -> str | None:
        """Put `key` only if it does not exist. Returns None on success, else the value that is there."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = lease
        result = self.call(
            "/kv/txn",
            {
                "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
                "success": [{"request_put": put}],
                "failure": [{"request_range": {"key": _b64(key)}}],
            },
        )
        if result.get("succeeded"):
            return None
        kvs = result["responses"][0]["response_range"].get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else ""

    def delete(self, key: str) -> None:
        self.call("/kv/deleterange", {"key": _b64(key)})

    def delete_prefix(self, prefix: str) -> None:
        self.call("/kv/deleterange", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})

    # -- leases ---------------------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self.call("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh the lease; returns its remaining TTL, 0 when etcd no longer knows it."""
        result = self.call("/lease/keepalive", {"ID": lease})
        return int(result.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.call("/lease/revoke", {"ID": lease})

    # -- watch ----------------------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, idle_timeout: float) -> Iterator[tuple[str, KeyValue]]:
        """Yield ("PUT" | "DELETE", kv) from start_revision on.  Ends quietly after idle_timeout without events
        (the caller watches again from where it was); raises StoreError when etcd breaks the stream."""
        with self._lock:
            index = self._current
        body: dict[str, Any] = {
            "create_request": {"key": _b64(prefix), "range_end": _prefix_end(prefix), "start_revision": start_revision}
        }
        try:
            response = self._sessions[index].post(
                self._urls[index] + "/watch",
                json=body,
                stream=True,
                timeout=(self.config.timeout, idle_timeout),
                # etcd ends the watch when its member loses the leader (a partitioned member sees no changes)
                headers={"Grpc-Metadata-hasleader": "true"},
            )
            with response:
                if response.status_code != 200:
                    raise StoreError(
                        f"etcd at {_endpoint_name(self.config.endpoints[index])} refused the watch: "
                        f"{_etcd_error(response)[:200]}"
                    )
                for line in response.iter_lines(chunk_size=None):  # type: ignore[call-overload]  # per chunk, no buffering
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result", {})
                    if result.get("compact_revision"):
                        raise StoreError(f"etcd compacted past revision {start_revision}; resyncing")
                    for event in result.get("events", []):
                        yield event.get("type", "PUT"), KeyValue.decode(event["kv"])
        except (requests.RequestException, ValueError) as exc:
            if _is_idle_timeout(exc):
                return
            with self._lock:  # the next resync starts at the next member
                if self._current == index:
                    self._current = (index + 1) % len(self._sessions)
            endpoint = _endpoint_name(self.config.endpoints[index])
            raise StoreError(f"etcd watch on {endpoint} ended: {type(exc).__name__}") from exc
        raise StoreError(f"etcd at {_endpoint_name(self.config.endpoints[index])} closed the watch stream")


def _endpoint_name(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _etcd_error(response: requests.Response) -> str:
    """The gateway's error text ({"error": ..., "code": ...}), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error") or body.get("message"), str):
        return f"HTTP {response.status_code}: {body.get('error') or body.get('message')}"
    return f"HTTP {response.status_code}: {response.text[:200].strip()}"


def _connection_reason(exc: Exception) -> str:
    text = str(exc)
    if "RemoteDisconnected" in text:
        return CLOSED
    for reason in ("Connection refused", "No route to host", "Network is unreachable", "Name or service not known"):
        if reason in text:
            return reason.lower()
    return type(exc).__name__


CLOSED = "closed the connection without answering"
TLS_REASONS = (
    ("certificate_verify_failed", "etcd's certificate is not signed by VXLANPY_ETCD_CA, or not for this address"),
    ("wrong_version_number", "etcd answered without TLS: it serves http, not https"),
    ("certificate required", "etcd wants a client certificate: set VXLANPY_ETCD_CERT and VXLANPY_ETCD_KEY"),
    ("unknown ca", "etcd does not trust the CA of our client certificate"),
    ("bad certificate", "etcd does not accept our client certificate"),
    ("eof occurred in violation of protocol", "etcd ended the handshake: it wants a client certificate that it trusts"),
)


def _handshake_cut(exc: Exception) -> bool:
    """The peer closed the connection during the TLS handshake: a refused client certificate, or a dying member."""
    text = str(exc).lower()
    return "eof occurred in violation of protocol" in text or "connection reset" in text


def _tls_reason(exc: Exception) -> str:
    text = str(exc).lower()
    return next((hint for needle, hint in TLS_REASONS if needle in text), str(exc)[:160])


def _is_idle_timeout(exc: Exception) -> bool:
    """requests reports a read timeout in the middle of a stream as a ConnectionError wrapping urllib3's."""
    from urllib3.exceptions import ReadTimeoutError

    return isinstance(exc, requests.exceptions.ReadTimeout) or any(
        isinstance(arg, ReadTimeoutError) for arg in getattr(exc, "args", ())
    )
