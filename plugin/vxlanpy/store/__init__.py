"""State store: where networks and endpoints are kept so the plugin survives restarts.

`base.Store` is the interface; `sqlite` is the single-host default and `memory` the in-package fake.
`open_store(url)` picks the backend from VXLANPY_STORE.
"""

from __future__ import annotations

from ..errors import InvalidOption
from .base import Store


def open_store(url: str, state_dir: str | None = None) -> Store:
    """`state_dir`: VXLANPY_STATE_DIR; a SQLite file directly in it makes it private (0700)."""
    if url.startswith("sqlite://"):
        import os

        from .sqlite import SqliteStore

        path = url.removeprefix("sqlite://")
        private = state_dir is not None and os.path.dirname(os.path.abspath(path)) == os.path.abspath(state_dir)
        return SqliteStore(path, private_dir=private)
    if url == "memory://":
        from .memory import MemoryStore

        return MemoryStore()
    raise InvalidOption(f"VXLANPY_STORE={url!r} is not supported; use sqlite:///PATH/state.db or memory://")


__all__ = ["Store", "open_store"]
