"""How much each section measures (full and quick), the addresses it uses and the rows a complete run produces."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Params:
    repeats: int  # iperf3/ping rounds per case (interleaved)
    iperf_seconds: int
    iperf_omit: int
    ping_count: int
    net_creates: int  # docker network create per driver
    docker_runs: int  # docker run --rm per driver
    parallel_n: int  # containers started at once
    parallel_rounds: int
    call_iters: int  # CreateEndpoint+Join / Leave+DeleteEndpoint pairs
    network_iters: int  # DeleteNetwork calls
    startup_runs: int  # starts of scripts/run and of vxlanpy serve each
    scale_levels: tuple[int, ...]
    scale_samples: int
    endpoints_total: int  # endpoints for the "1000+ endpoints" case
    convergence_runs: int
    cluster_hosts: tuple[int, ...]  # simulated hosts, one case each
    cluster_endpoints: int  # endpoints per simulated host
    churn_seconds: float
    churn_rate: float  # changes per second


# Every size side by side: (full run, quick run).  The quick run is CI's: a few minutes, every row present.
_SIZES: dict[str, tuple[Any, Any]] = {
    "repeats": (5, 2),
    "iperf_seconds": (4, 1),
    "iperf_omit": (1, 0),
    "ping_count": (200, 20),
    "net_creates": (10, 2),
    "docker_runs": (10, 2),
    "parallel_n": (10, 3),
    "parallel_rounds": (3, 1),
    "call_iters": (300, 20),
    "network_iters": (50, 5),
    "startup_runs": (5, 2),
    "scale_levels": ((10, 100, 1000), (10, 30)),
    "scale_samples": (20, 4),
    "endpoints_total": (1024, 40),
    "convergence_runs": (20, 3),
    "cluster_hosts": ((100, 500), (10,)),
    "cluster_endpoints": (100, 100),
    "churn_seconds": (30.0, 3.0),
    "churn_rate": (100.0, 100.0),
}
FULL = Params(**{name: full for name, (full, _) in _SIZES.items()})
QUICK = Params(**{name: quick for name, (_, quick) in _SIZES.items()})

# Private ranges used here; none of them is routed anywhere but to the objects the benchmark makes.
SUBNETS = {
    "dp-vxlanpy": "10.231.0.0/24",
    "dp-bridge": "10.232.0.0/24",
    "dp-veth": "10.233.0.0/24",
    "cp-vxlanpy": "10.234.0.0/24",
    "cp-bridge": "10.235.0.0/24",
    "cp-macvlan": "10.236.0.0/24",
    "cp-vxlanpy-run": "10.238.0.0/24",
    "cp-bridge-run": "10.239.0.0/24",
    "cp-macvlan-run": "10.240.0.0/24",
    "cp-vxlanpy-gwbridge": "10.241.0.0/24",
    "cp-vxlanpy-gwbridge-run": "10.242.0.0/24",
    "calls": "10.237.0.0/16",
    "calls-networks": "10.243.0.0/16",  # a /24 per network the calls section deletes
    "cross-vxlanpy": "10.61.0.0/24",
    "cross-ref": "10.62.0.0/24",
    "cross-ref-docker": "10.63.0.0/24",
    "cross-encrypted": "10.64.0.0/24",
}
# Networks made by direct socket calls get VNIs from here (far from VXLANPY_VNI_RANGE's default start).
FAKE_VNI_BASE = 700000
SCALE_POOL = ipaddress.IPv4Network("10.128.0.0/12")  # /24 per scale network: 4096 of them
CROSS_VNI = 610
ENCRYPTED_VNI = 611  # the `-o encrypted` network of the dataplane-encrypted section
REF_VNI = 620

# Case and metric names that several modules (sections, chart, expected_cases) spell alike.
GWBRIDGE_CASE = "vxlanpy-gwbridge"  # a vxlanpy network with -o gateway=docker_gwbridge
REF_ON_DOCKER = "reference on Docker hosts"  # the same hand-built topology, inside h1 and h2
ENCRYPTED_CASE = "vxlanpy encrypted"  # a vxlanpy network with -o encrypted (VXLAN inside WireGuard)
# The scale section's kernel baseline: the devices of a network, and of an endpoint, made straight with
# netlink by the benchmark (no vxlanpy): how much of vxlanpy's growth the kernel itself shows.
KERNEL_METRICS = ("kernel: bridge+vxlan by hand", "kernel: veth by hand")
PLUGIN_RSS = "plugin rss"  # gunicorn's arbiter and its worker together
CLUSTER_METRICS = ("full resync", "change latency", PLUGIN_RSS, "plugin cpu", "netlink ops per change")


def parallel_metric(params: Params) -> str:
    return f"{params.parallel_n} x docker run -d"


def expected_cases(params: Params) -> list[tuple[str, str, str]]:
    """(section, case, metric) of every row a complete run produces; the CI test checks them all."""
    rows = [("startup", case, "ready") for case in ("scripts/run (installed)", "vxlanpy serve")]
    for case in ("veth", "bridge", "vxlanpy"):
        rows += [("dataplane-local", case, "throughput"), ("dataplane-local", case, "rtt")]
    for case in ("reference", REF_ON_DOCKER, "vxlanpy"):
        rows += [("dataplane-cross", case, "throughput"), ("dataplane-cross", case, "rtt")]
    for case in ("vxlanpy", ENCRYPTED_CASE):
        rows += [("dataplane-encrypted", case, "throughput"), ("dataplane-encrypted", case, "rtt")]
    for case in ("vxlanpy", GWBRIDGE_CASE, "bridge", "macvlan"):
        rows += [("control", case, "network create"), ("control", case, "docker run --rm")]
        rows.append(("control", case, parallel_metric(params)))
    rows += [
        ("calls", "vxlanpy", metric) for metric in ("CreateEndpoint+Join", "Leave+DeleteEndpoint", "DeleteNetwork")
    ]
    for level in params.scale_levels:
        rows += [("scale", f"{level} networks", "network create"), ("scale", f"{level} networks", "endpoint join")]
        rows += [("scale", f"{level} networks", metric) for metric in (*KERNEL_METRICS, PLUGIN_RSS)]
    rows += [("scale", f"{params.endpoints_total} endpoints", metric) for metric in ("endpoint join", PLUGIN_RSS)]
    rows.append(("convergence", "vxlanpy etcd", "convergence"))
    for hosts in params.cluster_hosts:
        rows += [("cluster-scale", f"hosts={hosts}", metric) for metric in CLUSTER_METRICS]
    return rows
