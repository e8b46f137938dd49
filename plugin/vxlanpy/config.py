"""Settings, read from the environment once, at start-up (never at import time)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
        )


def _parse_positive_int(name: str, raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidOption(f"{name}={raw!r} is not valid; use a whole number of at least 1")
    return int(raw)


def _parse_vni_range(raw: str | None) -> tuple[int, int]:
    if not raw:
        return DEFAULT_VNI_RANGE
    low, sep, high = raw.partition("-")
    if not (sep and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high) <= 16777215):
        raise InvalidOption(f"VXLANPY_VNI_RANGE={raw!r} is not valid; use LOW-HIGH within 1-16777215, e.g. 4096-65535")
    return int(low), int(high)
