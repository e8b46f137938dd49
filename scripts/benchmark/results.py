"""The rows a run produces: median, samples, p99 and the comparison with a baseline case."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .runner import say


@dataclass
class Row:
    section: str
    case: str
    metric: str
    unit: str
    value: float  # the median
    samples: list[float] = field(default_factory=list)
    p99: float | None = None
    baseline: str | None = None  # the case this one is compared with
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str = ""


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the largest one)."""
    ordered = sorted(values)
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.errors: list[dict[str, str]] = []
        self.info: dict[str, Any] = {}

    def add(self, section: str, case: str, metric: str, unit: str, samples: list[float], **kw: Any) -> Row:
        if not samples:
            raise RuntimeError(f"no samples for {section}/{case}/{metric}")
        row = Row(section, case, metric, unit, statistics.median(samples), [round(s, 6) for s in samples], **kw)
        self.rows.append(row)
        shown = f"{row.value:.3f} {unit}" + (f" (p99 {row.p99:.3f})" if row.p99 is not None else "")
        say(f"  {section} / {case} / {metric}: {shown}")
        return row

    def get(self, section: str, case: str, metric: str) -> Row | None:
        for row in self.rows:
            if (row.section, row.case, row.metric) == (section, case, metric):
                return row
        return None

    def compare(self, row: Row, base: Row | None, target: float | None, higher_is_better: bool, label: str) -> None:
        """Set row.ratio = row / base and whether it meets `target` (a ratio)."""
        if base is None or not base.value:
            return
        row.baseline = base.case if base.section == row.section and base.metric == row.metric else label
        row.ratio = row.value / base.value
        if target is not None:
            row.target = f"{'>=' if higher_is_better else '<='} {target:g}x {label}"
            row.met = row.ratio >= target if higher_is_better else row.ratio <= target
