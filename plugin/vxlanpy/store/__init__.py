"""State store: where networks and endpoints are kept so the plugin survives restarts.

`base.Store` is the interface; `sqlite` is the single-host default and `memory` the in-package fake.
`open_store(url)` picks the backend from VXLANPY_STORE.
"""

from __future__ import annotations

from ..errors import InvalidOption
from .base import Store


def open_store(url: str) -> Store:
    if url.startswith("sqlite://"):
        from .sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite://"))
    if url == "memory://":
        from .memory import MemoryStore

        return MemoryStore()
    raise InvalidOption(f"VXLANPY_STORE={url!r} is not supported; use sqlite:///PATH/state.db or memory://")


__all__ = ["Store", "open_store"]
