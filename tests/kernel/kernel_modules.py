"""Whether this kernel has a feature: the module loads (or is built in), and whether its package ships it.  A tier
that depends on the kernel asserts that the two agree, so a feature the kernel ships is never silently untested."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def module_loads(name: str, *companions: str) -> bool:
    """Whether module `name` is built in or loads (`companions` are loaded too, best effort)."""
    if os.geteuid() != 0:
        return False
    for module in (name, *companions):
        subprocess.run(["modprobe", "-q", module], capture_output=True, check=False, timeout=30)
    return Path("/sys/module", name).exists()


def kernel_ships(name: str) -> bool:
    """Whether the running kernel's module lists name module `name` (loadable or built in)."""
    modules = Path("/lib/modules") / platform.release()
    listed = ""
    for index in ("modules.dep", "modules.builtin"):
        try:
            listed += (modules / index).read_text()
        except OSError:
            pass
    return f"/{name}.ko" in listed
