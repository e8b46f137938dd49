"""The benchmark package without running a benchmark (no root, no Docker): its command line loads every section
module and names every section, and the table reads as docs/benchmarks.md shows it.

    .venv/bin/python -m pytest -q tests/bench/test_bench_package.py
"""

from __future__ import annotations

import os
import subprocess
import sys

from scripts.benchmark.cli import SECTIONS
from scripts.benchmark.cluster_scale import churn_plan
from scripts.benchmark.dataplane_encrypted import THROUGH_WIREGUARD, through_wireguard
from scripts.benchmark.output import format_markdown, format_table
from scripts.benchmark.params import FULL, QUICK, expected_cases
from scripts.benchmark.results import Results
from scripts.benchmark.wireguard_side import (
    Transfer,
    backend_in_findings,
    backend_of_link,
    parse_udp_rcvbuf_errors,
    transfer_of,
)

from tests.bench.conftest import REPO
from tests.multihost.wireguard import parse_wg_dump
from vxlanpy.encryption_base import BACKEND_KERNEL, BACKEND_USERSPACE


def test_help_names_every_section_and_the_options() -> None:
    # As scripts/bench runs it: `python -m scripts.benchmark` from the repository's root.
    result = subprocess.run(
        [sys.executable, "-m", "scripts.benchmark", "--help"], cwd=REPO, env={**os.environ, "COLUMNS": "300"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: scripts/bench"), result.stdout
    for word in ("--quick", "--json", "--png", "--only", "--scale-levels", "--repeats", *SECTIONS):
        assert word in result.stdout, f"{word} not in:\n{result.stdout}"


def test_every_section_has_expected_rows() -> None:
    for params in (QUICK, FULL):
        sections = {section for section, _, _ in expected_cases(params)}
        assert sections == set(SECTIONS)


def test_table_and_markdown_show_median_p99_comparison_and_target() -> None:
    results = Results()
    bridge = results.add("control", "bridge", "docker run --rm", "ms", [300.0, 310.0, 320.0])
    mine = results.add("control", "vxlanpy", "docker run --rm", "ms", [330.0, 340.0, 1500.0], p99=1500.0)
    results.compare(mine, bridge, 1.05, False, "bridge")
    lines = format_table(results).splitlines()
    assert lines[0].split() == ["section", "case", "metric", "median", "p99", "vs", "ratio", "target", "met"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split()[-1] == "-"  # the baseline itself has no target
    assert "340 ms" in lines[3] and "1.5e+03" in lines[3] and "1.097" in lines[3] and "<= 1.05x bridge" in lines[3]
    assert lines[3].endswith("NO")
    assert lines[0].index("median") == lines[2].index("310 ms") == lines[3].index("340 ms")  # aligned columns
    markdown = format_markdown(results).splitlines()
    assert markdown[1] == "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    assert markdown[3].startswith("| control | vxlanpy | docker run --rm | 340 ms |")
    assert markdown[3].endswith(" | **no** |")


def test_churn_plan_brings_every_removed_endpoint_back_later() -> None:
    endpoints = [f"ep{index}" for index in range(1000)]
    for items, count, lag in ((1000, 300, 50), (1000, 20, 5), (4, 20, 50), (3, 2, 1)):
        plan = churn_plan(endpoints[:items], count, lag)
        removed = [item for what, item in plan if what == "del"]
        assert removed and len(removed) == len(set(removed)), plan
        assert sorted(item for what, item in plan if what == "add") == sorted(removed), plan
        for item in removed:
            gone, back = plan.index(("del", item)), plan.index(("add", item))
            # Never back to back: the plugin would see both changes of one endpoint queued together.
            assert back - gone >= (lag if items > count else 2), (item, plan)


def test_notes_follow_the_table_and_the_markdown() -> None:
    results = Results()
    results.add("dataplane-encrypted", "vxlanpy", "throughput", "Gbit/s", [20.0])
    results.add("dataplane-encrypted", "vxlanpy encrypted", "throughput", "Gbit/s", [1.5], note="WireGuard backend x")
    table = format_table(results).splitlines()
    assert table[-2:] == ["notes:", "  dataplane-encrypted / vxlanpy encrypted / throughput: WireGuard backend x"]
    assert format_markdown(results).splitlines()[-1] == (
        "* dataplane-encrypted / vxlanpy encrypted / throughput: WireGuard backend x"
    )
    assert "notes:" not in format_table(Results())


def test_wireguard_transfer_is_summed_over_the_peers() -> None:
    # `wg show IFACE dump` with two peers (the interface line's private key field is a stand-in)
    dump = (
        "(hidden)\tkJ0dRM5eRvAwUqOJwDC7S3P3R9hQ8hOeLeCp8sGvOyI=\t51820\toff\n"
        "q3d7g5W1FxSk5q6v7uo0OJ7E8g3W3ivd6cR8+AfjVG4=\t(none)\t10.250.0.2:51820\t10.255.0.2/32\t1765000000\t1000"
        "\t2000\t25\n"
        "Yf1cYQ7c1bMNiU0m6a0bH1Yw0YJzJp8nJSCu9LG1eWc=\t(none)\t10.250.0.3:51820\t10.255.0.3/32\t0\t30\t40\t25\n"
    )
    assert transfer_of(parse_wg_dump(dump)) == Transfer(1030, 2040)
    assert transfer_of(parse_wg_dump(dump.splitlines()[0])) == Transfer(0, 0)
    assert Transfer(1030, 2040) - Transfer(30, 40) == Transfer(1000, 2000)


def test_backend_from_the_link_kind_and_from_doctor() -> None:
    assert backend_of_link({"ifname": "vxlanpy-wg", "linkinfo": {"info_kind": "wireguard"}}) == BACKEND_KERNEL
    assert backend_of_link({"ifname": "vxlanpy-wg", "linkinfo": {"info_kind": "tun"}}) == BACKEND_USERSPACE
    assert backend_of_link({"ifname": "vxlanpy-wg", "linkinfo": {"info_kind": "veth"}}) is None
    assert backend_of_link({"ifname": "vxlanpy-wg"}) is None and backend_of_link(None) is None
    modules = {"status": "ok", "check": "kernel modules", "summary": "vxlan, bridge, br_netfilter loaded"}
    for backend in (BACKEND_KERNEL, BACKEND_USERSPACE):
        finding = {"status": "ok", "check": "wireguard", "summary": f"backend {backend}; interface vxlanpy-wg up"}
        assert backend_in_findings([modules, finding]) == backend
    # What names no backend in use: another check, a failure naming both, the MTU finding.
    neither = {"status": "fail", "check": "wireguard", "summary": "no WireGuard backend: neither kernel WireGuard "
               "nor wireguard-go"}  # fmt: skip
    mtu = {"status": "ok", "check": "wireguard", "summary": "MTU of encrypted vni 611: 1390 <= 1390"}
    assert backend_in_findings([modules, neither, mtu]) is None


def test_traffic_that_bypassed_wireguard_is_named_by_host() -> None:
    counted = 100e6  # bytes iperf3 counted on the encrypted network
    moved = {"h1": Transfer(95_000_000, 3_000_000), "h2": Transfer(1_000_000, 2_000_000)}
    short = through_wireguard(moved, counted)
    assert len(short) == 1 and short[0].startswith("h2: 3.0 MB through WireGuard, iperf3 counted 100.0"), short
    assert through_wireguard({"h1": Transfer(0, int(counted * THROUGH_WIREGUARD))}, counted) == []


def test_udp_receive_buffer_drops_are_read_from_snmp() -> None:
    snmp = (
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti\n"
        "Udp: 1685 1 6145 1691 6140 0 0 0\n"
        "UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti\n"
        "UdpLite: 0 0 0 0 0 0 0 0\n"
    )
    assert parse_udp_rcvbuf_errors(snmp) == 6140
