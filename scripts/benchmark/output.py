"""What a run shows: the table printed at the end, the same as markdown (in the JSON), and the PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .params import ENCRYPTED_CASE, KERNEL_METRICS, REF_ON_DOCKER
from .results import Results, Row

TABLE_HEADER = ["section", "case", "metric", "median", "p99", "vs", "ratio", "target", "met"]


def _cells(row: Row, bold_miss: bool = False) -> list[str]:
    value = f"{row.value:.3g} {row.unit}" if row.value < 1000 else f"{row.value:.0f} {row.unit}"
    met = "-" if row.met is None else ("yes" if row.met else ("**no**" if bold_miss else "NO"))
    return [
        row.section, row.case, row.metric, value, "-" if row.p99 is None else f"{row.p99:.3g}", row.baseline or "-",
        "-" if row.ratio is None else f"{row.ratio:.3f}", row.target or "-", met,
    ]  # fmt: skip


def _notes(results: Results, bullet: str) -> list[str]:
    """The rows' notes (e.g. the WireGuard backend an encrypted row measured), one line each, after the table."""
    noted = [f"{bullet}{row.section} / {row.case} / {row.metric}: {row.note}" for row in results.rows if row.note]
    return ["", "notes:", *noted] if noted else []


def format_table(results: Results) -> str:
    lines = [TABLE_HEADER, *(_cells(row) for row in results.rows)]
    widths = [max(len(cells[i]) for cells in lines) for i in range(len(TABLE_HEADER))]
    out = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip() for cells in lines]
    out.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(out + _notes(results, "  "))


def format_markdown(results: Results) -> str:
    lines = [TABLE_HEADER, ["---"] * len(TABLE_HEADER), *(_cells(row, bold_miss=True) for row in results.rows)]
    return "\n".join(["| " + " | ".join(cells) + " |" for cells in lines] + _notes(results, "* "))


def _bars(ax: Any, items: list[tuple[str, Row | None]], ylabel: str, subtitle: str, p99: bool = False) -> None:
    """One bar per row present (vxlanpy's red), its median written above it; p99 as a tick when asked."""
    present = [(label, row) for label, row in items if row is not None]
    labels = [label for label, _ in present]
    values = [row.value for _, row in present]
    colors = ["#d62728" if label.startswith("vxlanpy") else "#7f7f7f" for label in labels]
    ax.bar(range(len(values)), values, color=colors, width=0.6, label="median")
    if p99:
        ax.scatter(range(len(values)), [row.p99 or row.value for _, row in present], marker="_", s=300,
                   color="black", label="p99", zorder=3)  # fmt: skip
        ax.legend(fontsize=7)
    for index, value in enumerate(values):
        ax.text(index, value, f"{value:.3g}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels, fontsize=7, rotation=20, ha="right")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(subtitle, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)


def _dataplane(results: Results, metric: str) -> list[tuple[str, Row | None]]:
    """Both data-plane sections' rows of `metric`, as the chart labels them."""
    get = results.get
    return [
        ("veth (1 host)", get("dataplane-local", "veth", metric)),
        ("bridge (1 host)", get("dataplane-local", "bridge", metric)),
        ("vxlanpy (1 host)", get("dataplane-local", "vxlanpy", metric)),
        ("hand-built (2 hosts)", get("dataplane-cross", "reference", metric)),
        ("hand-built on Docker hosts", get("dataplane-cross", REF_ON_DOCKER, metric)),
        ("vxlanpy (2 hosts)", get("dataplane-cross", "vxlanpy", metric)),
        ("vxlanpy encrypted (2 hosts)", get("dataplane-encrypted", ENCRYPTED_CASE, metric)),
    ]


def _control(ax: Any, results: Results) -> None:
    drivers = ["bridge", "macvlan", "vxlanpy"]
    metrics = [row.metric for row in results.rows if row.section == "control" and row.case == "bridge"]
    for offset, driver in enumerate(drivers):
        values = [(results.get("control", driver, metric) or Row("", "", "", "", 0.0)).value for metric in metrics]
        color = {"bridge": "#7f7f7f", "macvlan": "#bcbd22", "vxlanpy": "#d62728"}[driver]
        ax.bar([i + (offset - 1) * 0.27 for i in range(len(metrics))], values, width=0.27, label=driver, color=color)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics, fontsize=7)
    ax.set_ylabel("ms (median)", fontsize=8)
    ax.set_title("Docker control plane (CLI wall time)", fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(axis="y", labelsize=7)


def _scale(ax: Any, results: Results) -> None:
    levels = sorted({int(row.case.split()[0]) for row in results.rows if row.case.endswith(" networks")})
    for metric, color, style in (
        ("network create", "#1f77b4", "-"),
        ("endpoint join", "#d62728", "-"),
        (KERNEL_METRICS[0], "#1f77b4", ":"),
        (KERNEL_METRICS[1], "#d62728", ":"),
    ):
        points = [(level, results.get("scale", f"{level} networks", metric)) for level in levels]
        xs = [level for level, row in points if row is not None]
        ys = [row.value for _, row in points if row is not None]
        if xs:
            ax.plot(xs, ys, marker="o", linestyle=style, label=metric, color=color)
    endpoints = [row for row in results.rows if row.section == "scale" and row.case.endswith(" endpoints")]
    for row in endpoints:
        ax.scatter([int(row.case.split()[0])], [row.value], marker="s", color="#ff7f0e", label=f"join, {row.case}")
    if levels:
        ax.set_xscale("log")
    ax.set_xlabel("networks on the host", fontsize=8)
    ax.set_ylabel("ms per operation (median)", fontsize=8)
    ax.set_title("scale: per-operation cost (target <= 1.2x at 10)", fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)


def write_png(results: Results, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), dpi=72)
    fig.suptitle(title, fontsize=10)
    get = results.get
    _bars(axes[0][0], _dataplane(results, "throughput"), "Gbit/s", "iperf3 TCP throughput (median)")
    _bars(axes[0][1], _dataplane(results, "rtt"), "microseconds", "ping RTT (median, p99)", p99=True)
    _control(axes[0][2], results)
    _bars(axes[1][0], [
        ("CreateEndpoint+Join", get("calls", "vxlanpy", "CreateEndpoint+Join")),
        ("Leave+DeleteEndpoint", get("calls", "vxlanpy", "Leave+DeleteEndpoint")),
    ], "ms", "plugin calls over the socket (target p99 <= 10 ms)", p99=True)  # fmt: skip
    axes[1][0].axhline(10, color="#d62728", linestyle="--", linewidth=0.8)
    _bars(axes[1][1], [("vxlanpy etcd", get("convergence", "vxlanpy etcd", "convergence"))], "ms",
          "multi-host convergence (target p99 <= 500 ms)", p99=True)  # fmt: skip
    axes[1][1].axhline(500, color="#d62728", linestyle="--", linewidth=0.8)
    _scale(axes[1][2], results)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
