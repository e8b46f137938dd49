"""scale: the cost of network create and endpoint join with 10/100/1000 networks present and with 1000+
endpoints (socket calls), beside the kernel's own cost of the same devices made by hand; and the plugin's
resident memory at each."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .context import Bench
from .params import FAKE_VNI_BASE, KERNEL_METRICS, PLUGIN_RSS, SCALE_POOL
from .plugin import SocketClient, create_network, endpoint_down, endpoint_up
from .runner import quiet, say

SECTION = "scale"
SETTLE_SECONDS = 30.0  # at most, after filling up to a level, before measuring at it
ENDPOINTS_PER_NETWORK = 256  # for the 1000+ endpoints: a bridge takes 1024 ports at most
DELETERS = 4  # concurrent clients removing the networks at the end
RSS_TARGET_NETWORKS, RSS_TARGET_MB = 1000, 120  # the plugin's memory with 1000 networks


def wait_until_idle(limit: float, busy_below: float = 0.1) -> float:
    """Wait (at most `limit` seconds, at least 2) until the CPUs were less than `busy_below` busy over a second,
    as /proc/stat counts it; returns the seconds waited."""
    started = time.monotonic()

    def busy_and_total() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields) - fields[3] - fields[4], sum(fields)  # all but idle and iowait

    time.sleep(1.0)
    while True:
        busy0, total0 = busy_and_total()
        time.sleep(1.0)
        busy1, total1 = busy_and_total()
        waited = time.monotonic() - started
        if (busy1 - busy0) < busy_below * max(1, total1 - total0) or waited >= limit:
            return waited


def kernel_devices(samples: int, subnet: ipaddress.IPv4Network) -> tuple[list[float], list[float]]:
    """The kernel's own cost of what vxlanpy builds, made straight with netlink in the host namespace (no
    vxlanpy, no firewall): per sample, a bridge with an address, up, and a VXLAN port on it as vxlanpy makes
    them (ms), then a veth pair on that bridge, up (ms); each removed before the next sample.  Like vxlanpy's,
    the bridge (IPv4 only), the VXLAN port and the host end of the veth get no IPv6 address."""
    from pyroute2 import IPRoute

    no_ipv6 = {"IFLA_AF_SPEC": {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}}

    dev_index = None
    network_times, veth_times = [], []
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET)[:1]:
            dev_index = route.get("oif")
        for sample in range(samples):
            names = [f"vxk-{kind}{sample}" for kind in ("br", "vx", "h", "c")]
            try:
                started = time.perf_counter()
                ipr.link("add", ifname=names[0], kind="bridge", mtu=1450, br_stp_state=0, br_forward_delay=0)
                bridge = ipr.link_lookup(ifname=names[0])[0]
                ipr.link("set", index=bridge, **no_ipv6)
                ipr.addr("add", index=bridge, address=str(subnet[1]), prefixlen=subnet.prefixlen)
                ipr.link("set", index=bridge, state="up")
                vxlan = {"vxlan_id": FAKE_VNI_BASE - 1 - sample, "vxlan_port": 4789, "vxlan_learning": 0}
                if dev_index is not None:
                    vxlan["vxlan_link"] = dev_index
                ipr.link("add", ifname=names[1], kind="vxlan", mtu=1450, master=bridge, **vxlan)
                ipr.link("set", ifname=names[1], state="up", **no_ipv6)
                network_times.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                ipr.link("add", ifname=names[2], kind="veth", mtu=1450, master=bridge, state="up",
                         peer={"ifname": names[3], "mtu": 1450})  # fmt: skip
                ipr.link("set", ifname=names[2], **no_ipv6)
                veth_times.append((time.perf_counter() - started) * 1000)
            finally:
                for name in names[2::-1]:
                    with contextlib.suppress(Exception):
                        ipr.link("del", ifname=name)
    return network_times, veth_times


def add_rss(bench: Bench, case: str, with_target: bool) -> None:
    """The plugin's resident memory now: gunicorn's arbiter and worker, the worker's own in the note."""
    total, worker = bench.plugin.rss_mib()
    row = bench.results.add(
        SECTION, case, PLUGIN_RSS, "MiB", [total], note=f"arbiter + worker; the worker {worker:.0f} MiB"
    )
    if with_target:
        row.target, row.met = f"<= {RSS_TARGET_MB} MB", total * (1 << 20) <= RSS_TARGET_MB * 1e6


def run_section(bench: Bench) -> None:
    p, results = bench.params, bench.results
    sock = SocketClient(str(bench.plugin.socket_path))
    say(f"scale: networks {', '.join(map(str, p.scale_levels))}, then {p.endpoints_total} endpoints")
    subnets = SCALE_POOL.subnets(new_prefix=24)
    vnis = iter(range(FAKE_VNI_BASE + 1, FAKE_VNI_BASE + 100000))
    made: list[str] = []
    endpoints: list[tuple[str, str]] = []

    def new_network() -> tuple[str, ipaddress.IPv4Network]:
        subnet = next(subnets)
        network_id = create_network(sock, next(vnis), subnet)
        made.append(network_id)
        return network_id, subnet

    def delete_all() -> None:
        started = time.monotonic()
        for network_id, endpoint_id in endpoints:
            with contextlib.suppress(Exception):  # best effort: the networks go next anyway
                endpoint_down(sock, network_id, endpoint_id)
        endpoints.clear()
        deleters = [SocketClient(sock.path) for _ in range(DELETERS)]

        def delete(index_and_id: tuple[int, str]) -> None:
            index, network_id = index_and_id
            deleters[index % len(deleters)].call("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})

        with ThreadPoolExecutor(max_workers=len(deleters)) as pool:
            list(pool.map(delete, enumerate(made)))
        for client in deleters:
            client.close()
        say(f"  removed {len(made)} scale networks in {time.monotonic() - started:.1f} s")
        made.clear()

    bench.stack.callback(lambda: quiet(delete_all) if made or endpoints else None)
    try:
        for level in p.scale_levels:
            fill_started = time.monotonic()
            while len(made) < level:
                new_network()
            say(f"  {level} networks present (filled in {time.monotonic() - fill_started:.1f} s)")
            # The kernel finishes bringing a burst of new devices up (or down) in the background (link
            # state events, RCU callbacks, kworkers) for seconds; measure the networks present, not that.
            settled = wait_until_idle(SETTLE_SECONDS)
            say(f"  machine idle after {settled:.1f} s")
            create_at = []
            probes = []
            for _ in range(p.scale_samples):
                started = time.perf_counter()
                network_id, subnet = new_network()
                create_at.append((time.perf_counter() - started) * 1000)
                probes.append((network_id, subnet))
            join_at = []
            network_id, subnet = probes[0]
            for index in range(p.scale_samples):
                endpoint_id, seconds = endpoint_up(sock, network_id, f"{subnet[index + 2]}/24")
                join_at.append(seconds * 1000)
                endpoint_down(sock, network_id, endpoint_id)
            for network_id, _ in probes:  # back to `level` networks
                sock.call("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
                made.remove(network_id)
            results.add(SECTION, f"{level} networks", "network create", "ms", create_at)
            results.add(SECTION, f"{level} networks", "endpoint join", "ms", join_at)
            for metric, values in zip(KERNEL_METRICS, kernel_devices(p.scale_samples, next(subnets)), strict=True):
                results.add(SECTION, f"{level} networks", metric, "ms", values)
            add_rss(bench, f"{level} networks", level >= RSS_TARGET_NETWORKS)
        # 1000+ endpoints, spread over networks of ENDPOINTS_PER_NETWORK at most
        started = time.monotonic()
        targets: list[tuple[str, ipaddress.IPv4Network]] = []
        while len(endpoints) < p.endpoints_total:
            if not targets or sum(1 for n, _ in endpoints if n == targets[-1][0]) >= ENDPOINTS_PER_NETWORK - 8:
                targets.append(new_network())
            network_id, subnet = targets[-1]
            used = sum(1 for n, _ in endpoints if n == network_id)
            endpoint_id, _ = endpoint_up(sock, network_id, f"{subnet[used + 2]}/24")
            endpoints.append((network_id, endpoint_id))
        say(f"  {len(endpoints)} endpoints present (made in {time.monotonic() - started:.1f} s)")
        network_id, subnet = targets[-1]
        used = sum(1 for n, _ in endpoints if n == network_id)
        samples = []
        for index in range(p.scale_samples):
            endpoint_id, seconds = endpoint_up(sock, network_id, f"{subnet[used + 2 + index]}/24")
            samples.append(seconds * 1000)
            endpoint_down(sock, network_id, endpoint_id)
        results.add(SECTION, f"{p.endpoints_total} endpoints", "endpoint join", "ms", samples)
        add_rss(bench, f"{p.endpoints_total} endpoints", False)
    finally:
        delete_all()
        sock.close()
    low = min(p.scale_levels)
    for level in p.scale_levels:
        for metric in ("network create", "endpoint join", *KERNEL_METRICS):
            row = results.get(SECTION, f"{level} networks", metric)
            base = results.get(SECTION, f"{low} networks", metric)
            if row is not None and level != low:
                target = None if metric in KERNEL_METRICS else 1.2
                results.compare(row, base, target, False, f"{low} networks")
    for case in [f"{level} networks" for level in p.scale_levels] + [f"{p.endpoints_total} endpoints"]:
        row = results.get(SECTION, case, PLUGIN_RSS)
        if row is not None and case != f"{low} networks":  # how much it grew
            results.compare(row, results.get(SECTION, f"{low} networks", PLUGIN_RSS), None, False, f"{low} networks")
    row = results.get(SECTION, f"{p.endpoints_total} endpoints", "endpoint join")
    if row is not None:
        results.compare(row, results.get(SECTION, f"{low} networks", "endpoint join"), 1.2, False, f"{low} networks")
