"""The `vxlanpy` command: the plugin itself (`serve`) and the operator's tools.

The group, its options and what the commands share are in base.py; the commands in show.py (ls, inspect,
peers, node, health), repair.py (doctor, gc, recover), attaching.py (attach, detach) and keys.py (rotate-key),
which add themselves to `main` when imported here.
"""

from __future__ import annotations

from ..client import EXIT_UNREACHABLE
from . import attaching, keys, repair, show  # noqa: F401 - importing them adds their commands to `main`
from .base import Env, main

__all__ = ["main", "Env", "EXIT_UNREACHABLE"]

if __name__ == "__main__":
    main()
