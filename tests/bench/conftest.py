"""What the benchmark's tests share: running scripts/bench as a user does, its output kept for failure messages."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class BenchRun:
    returncode: int
    stdout: str  # the table
    context: str  # the tails of stdout and stderr, for assertion messages


@pytest.fixture
def run_bench() -> Callable[..., BenchRun]:
    def run(*args: str, timeout: float = 600) -> BenchRun:
        result = subprocess.run(
            [str(REPO / "scripts" / "bench"), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        context = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-6000:]}"
        return BenchRun(result.returncode, result.stdout, context)

    return run
