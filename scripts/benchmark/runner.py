"""What every section uses: the progress line, running a program, and the namespaces the benchmark makes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NS_PREFIX = "vxb"

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"bench [{time.monotonic() - _T0:6.1f}s]: {message}", file=sys.stderr, flush=True)


def run(argv: list[str], *, check: bool = True, timeout: float = 120.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[:500]}")
    return result


def timed(argv: list[str], timeout: float = 120.0) -> float:
    started = time.perf_counter()
    run(argv, timeout=timeout)
    return time.perf_counter() - started


def rotate(items: list[Any], by: int) -> list[Any]:
    by %= len(items)
    return items[by:] + items[:by]


def nsenter(netns_path: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={netns_path}", *argv]


def quiet(action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


class Namespaces:
    """Named network namespaces made here (`ip netns add`), deleted at exit."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.made: list[str] = []

    def add(self, label: str) -> str:
        name = f"{NS_PREFIX}-{label}-{self.suffix}"
        run(["ip", "netns", "add", name])
        self.made.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def cleanup(self) -> None:
        for name in reversed(self.made):
            self._remove(name)
        self.made.clear()

    def cleanup_one(self, name: str) -> None:
        if name in self.made:
            self._remove(name)
            self.made.remove(name)

    @staticmethod
    def _remove(name: str) -> None:
        for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
            with contextlib.suppress(Exception):  # best-effort: it may be gone already
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", name], check=False)


def owner_pidfile(suffix: str) -> Path:
    """The file naming the process that owns the namespaces ending in `-suffix` (so a later run knows them stale)."""
    return Path(f"/tmp/vxlanpy-bench-{suffix}.pid")


def remove_stale_namespaces() -> None:
    """Namespaces of an earlier benchmark run that was killed (vxb-*-<hex> whose owner process is gone)."""
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(f"{NS_PREFIX}-"):
            continue
        try:
            if Path(f"/proc/{int(owner_pidfile(name.rsplit('-', 1)[-1]).read_text().strip())}").exists():
                continue
        except (OSError, ValueError):
            pass
        run(["ip", "netns", "del", name], check=False)
