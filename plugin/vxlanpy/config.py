"""Settings, read from the environment once, at start-up (never at import time)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .digits import ascii_int
from .errors import InvalidOption

DEFAULT_SOCKET = "/run/docker/plugins/vxlanpy.sock"
DEFAULT_STATE_DIR = "/var/lib/vxlanpy"
DEFAULT_VNI_RANGE = (4096, 65535)
LOG_LEVELS = ("debug", "info", "warning", "error")


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        state_dir = env.get("VXLANPY_STATE_DIR", DEFAULT_STATE_DIR)
        log_level = env.get("VXLANPY_LOG_LEVEL", "info").lower()
        if log_level not in LOG_LEVELS:
            raise InvalidOption(f"VXLANPY_LOG_LEVEL={log_level!r} is not valid; use one of {', '.join(LOG_LEVELS)}")
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
            etcd_ca=env.get("VXLANPY_ETCD_CA") or None,
            etcd_cert=env.get("VXLANPY_ETCD_CERT") or None,
            etcd_key=env.get("VXLANPY_ETCD_KEY") or None,
            ipam_pool4=env.get("VXLANPY_IPAM_POOL4", "10.200.0.0/16:24"),
            ipam_pool6=env.get("VXLANPY_IPAM_POOL6", "fd78:7870::/48:64"),
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
