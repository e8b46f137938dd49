"""Settings, read from the environment once, at start-up (never at import time)."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .digits import ascii_int
from .encryption_base import DEFAULT_WG_INTERFACE, DEFAULT_WG_PORT, DEFAULT_WG_SUBNET
from .errors import InvalidOption

DEFAULT_SOCKET = "/run/docker/plugins/vxlanpy.sock"
DEFAULT_STATE_DIR = "/var/lib/vxlanpy"
DEFAULT_VNI_RANGE = (4096, 65535)
DEFAULT_HOOK_CHECK_SECONDS = 10
LOG_LEVELS = ("debug", "info", "warning", "error")
SCOPES = ("local", "global")  # what GetCapabilities reports; global: swarm networks (swarm.py)
IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # what the kernel takes as an interface name (IFNAMSIZ - 1)


@dataclass(frozen=True)
class Settings:
    socket: str = DEFAULT_SOCKET
    state_dir: str = DEFAULT_STATE_DIR
    store_url: str = f"sqlite://{DEFAULT_STATE_DIR}/state.db"
    log_level: str = "info"
    vni_range: tuple[int, int] = DEFAULT_VNI_RANGE
    default_dev: str | None = None
    threads: int = 8
    host: str = "localhost"  # multi-host mode: replaced by the identity chosen at start (nodes.py)
    host_explicit: bool = False  # VXLANPY_HOST was set: it is the identity
    hostname: str = "localhost"
    lease_ttl: int = 10
    etcd_prefix: str = "/vxlanpy"
    etcd_timeout: float = 3.0
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    ipam_pool4: str = "10.200.0.0/16:24"
    ipam_pool6: str = "fd78:7870::/48:64"
    wg_port: int = DEFAULT_WG_PORT
    wg_subnet: str = DEFAULT_WG_SUBNET
    wg_interface: str = DEFAULT_WG_INTERFACE
    scope: str = "local"
    # How soon vxlanpy's firewall hooks go back on top after dockerd moved them.
    hook_check_seconds: int = DEFAULT_HOOK_CHECK_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        state_dir = env.get("VXLANPY_STATE_DIR", DEFAULT_STATE_DIR)
        log_level = env.get("VXLANPY_LOG_LEVEL", "info").lower()
        if log_level not in LOG_LEVELS:
            raise InvalidOption(f"VXLANPY_LOG_LEVEL={log_level!r} is not valid; use one of {', '.join(LOG_LEVELS)}")
        etcd_tls = check_etcd_tls(env) if env.get("VXLANPY_STORE", "").startswith("etcd://") else (None, None, None)
        return cls(
            socket=env.get("VXLANPY_SOCKET", DEFAULT_SOCKET),
            state_dir=state_dir,
            store_url=env.get("VXLANPY_STORE", f"sqlite://{Path(state_dir) / 'state.db'}"),
            log_level=log_level,
            vni_range=_parse_vni_range(env.get("VXLANPY_VNI_RANGE")),
            default_dev=env.get("VXLANPY_DEV") or None,
            threads=_parse_positive_int("VXLANPY_THREADS", env.get("VXLANPY_THREADS", "8")),
            host=env.get("VXLANPY_HOST") or socket.gethostname(),
            host_explicit=bool(env.get("VXLANPY_HOST")),
            hostname=socket.gethostname(),
            lease_ttl=_parse_positive_int("VXLANPY_LEASE_TTL", env.get("VXLANPY_LEASE_TTL", "10")),
            etcd_prefix=env.get("VXLANPY_ETCD_PREFIX", "/vxlanpy"),
            etcd_timeout=float(_parse_positive_int("VXLANPY_ETCD_TIMEOUT", env.get("VXLANPY_ETCD_TIMEOUT", "3"))),
            etcd_ca=etcd_tls[0],
            etcd_cert=etcd_tls[1],
            etcd_key=etcd_tls[2],
            ipam_pool4=env.get("VXLANPY_IPAM_POOL4", "10.200.0.0/16:24"),
            ipam_pool6=env.get("VXLANPY_IPAM_POOL6", "fd78:7870::/48:64"),
            wg_port=_parse_wg_port(env.get("VXLANPY_WG_PORT") or str(DEFAULT_WG_PORT)),
            wg_subnet=_parse_wg_subnet(env.get("VXLANPY_WG_SUBNET") or DEFAULT_WG_SUBNET),
            wg_interface=_parse_wg_interface(env.get("VXLANPY_WG_INTERFACE") or DEFAULT_WG_INTERFACE),
            scope=_parse_scope(env.get("VXLANPY_SCOPE") or "local", env.get("VXLANPY_STORE", "")),
            hook_check_seconds=_parse_positive_int(
                "VXLANPY_HOOK_CHECK_SECONDS", env.get("VXLANPY_HOOK_CHECK_SECONDS", str(DEFAULT_HOOK_CHECK_SECONDS))
            ),
        )

    @property
    def multi_host(self) -> bool:
        return self.store_url.startswith("etcd://")


MAX_SETTING = 1 << 31  # far above any sensible thread count, lease or timeout


def _parse_positive_int(name: str, raw: str) -> int:
    value = ascii_int(raw, 1, MAX_SETTING)
    if value is None:
        raise InvalidOption(f"{name}={raw[:64]!r} is not valid; use a whole number of at least 1")
    return value


def _parse_vni_range(raw: str | None) -> tuple[int, int]:
    if not raw:
        return DEFAULT_VNI_RANGE
    low_raw, sep, high_raw = raw.partition("-")
    low, high = ascii_int(low_raw, 1, 16777215), ascii_int(high_raw, 1, 16777215)
    if not sep or low is None or high is None or low > high:
        raise InvalidOption(
            f"VXLANPY_VNI_RANGE={raw[:64]!r} is not valid; use LOW-HIGH within 1-16777215, e.g. 4096-65535"
        )
    return low, high


def _parse_scope(raw: str, store_url: str) -> str:
    scope = raw.strip().lower()
    if scope not in SCOPES:
        raise InvalidOption(
            f"VXLANPY_SCOPE={raw[:64]!r} is not valid; use local (the default) or global (for swarm services)"
        )
    if scope == "global" and not store_url.startswith("etcd://"):
        # Every node of a swarm must see one VNI and one set of endpoints per network: only etcd shares them.
        raise InvalidOption(
            "VXLANPY_SCOPE=global (swarm networks) needs the etcd store, shared by every node of the swarm: set "
            "VXLANPY_STORE=etcd://HOST:2379 as well (e.g. `docker plugin set vxlanpy/vxlanpy:latest "
            "VXLANPY_STORE=etcd://10.0.0.1:2379 VXLANPY_SCOPE=global`), or VXLANPY_SCOPE=local"
        )
    return scope


def _parse_wg_port(raw: str) -> int:
    port = ascii_int(raw, 1, 65535)
    if port is None:
        raise InvalidOption(
            f"VXLANPY_WG_PORT={raw[:64]!r} is not valid; use a UDP port within 1-65535 (default {DEFAULT_WG_PORT})"
        )
    return port


def _parse_wg_subnet(raw: str) -> str:
    """The network the hosts' tunnel addresses come from: it must hold at least two hosts.  IPv4 only: the
    encrypted networks' MTU counts VXLAN's outer IPv4 header inside the tunnel (an IPv4 tunnel address crosses an
    IPv6 underlay as well: WireGuard carries either family)."""
    try:
        network = ipaddress.ip_network(raw.strip())
    except ValueError:
        network = None
    if not isinstance(network, ipaddress.IPv4Network):
        raise InvalidOption(
            f"VXLANPY_WG_SUBNET={raw[:64]!r} is not valid; use an IPv4 network with its host bits zero, "
            f"e.g. {DEFAULT_WG_SUBNET} (the same on every host; it works over an IPv6 underlay too)"
        )
    if network.num_addresses < 4:
        raise InvalidOption(
            f"VXLANPY_WG_SUBNET={raw[:64]!r} is too small: it needs an address per host; use e.g. {DEFAULT_WG_SUBNET}"
        )
    return str(network)


def _parse_wg_interface(raw: str) -> str:
    if not IFNAME.match(raw) or raw in (".", ".."):
        raise InvalidOption(
            f"VXLANPY_WG_INTERFACE={raw[:64]!r} is not a valid interface name; use up to 15 letters, digits, "
            f"'_', '.' and '-' (default {DEFAULT_WG_INTERFACE})"
        )
    return raw


TLS_FILES = (
    ("VXLANPY_ETCD_CA", "CERTIFICATE"),
    ("VXLANPY_ETCD_CERT", "CERTIFICATE"),
    ("VXLANPY_ETCD_KEY", "PRIVATE KEY"),
)
PLUGIN_PATH_HINT = "with the managed plugin the path is inside the plugin: put the file under /var/lib/vxlanpy"


def check_etcd_tls(env: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    """The CA, certificate and key paths, each checked now (at start) rather than at the first etcd call.

    Each must be a readable PEM file of the right kind, the certificate and key come together, and they must
    load as TLS settings (the key must match the certificate)."""
    import ssl

    paths: list[str | None] = []
    for name, kind in TLS_FILES:
        path = env.get(name) or None
        if path is not None:
            _check_pem(name, path, kind)
        paths.append(path)
    ca, cert, key = paths
    if (cert is None) != (key is None):
        have, missing = (
            ("VXLANPY_ETCD_CERT", "VXLANPY_ETCD_KEY") if key is None else ("VXLANPY_ETCD_KEY", "VXLANPY_ETCD_CERT")
        )
        raise InvalidOption(f"{have} is set but {missing} is not: a client certificate needs its key, set both")
    try:
        context = ssl.create_default_context(cafile=ca)
        if cert is not None and key is not None:
            context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        what = "VXLANPY_ETCD_CERT and VXLANPY_ETCD_KEY do not match" if "KEY_VALUES_MISMATCH" in str(exc) else str(exc)
        raise InvalidOption(f"the etcd TLS files cannot be used: {what}") from None
    return ca, cert, key


def _check_pem(name: str, path: str, kind: str) -> None:
    where = f"{name}={path[:200]}"
    if not os.path.isabs(path):
        raise InvalidOption(f"{where} is not an absolute path; {PLUGIN_PATH_HINT}")
    try:
        with open(path, "rb") as file:
            head = file.read(1 << 20)
    except FileNotFoundError:
        raise InvalidOption(f"{where}: no such file; {PLUGIN_PATH_HINT}") from None
    except IsADirectoryError:
        raise InvalidOption(f"{where} is a directory; give the PEM file itself") from None
    except PermissionError:
        raise InvalidOption(f"{where} cannot be read (permission denied): check its mode") from None
    except OSError as exc:
        raise InvalidOption(f"{where} cannot be read: {exc.strerror}") from None
    if f"-----BEGIN {kind}".encode() not in head and not (kind == "PRIVATE KEY" and b"PRIVATE KEY-----" in head):
        raise InvalidOption(f"{where} holds no PEM {kind.lower()} (-----BEGIN {kind}-----)")
