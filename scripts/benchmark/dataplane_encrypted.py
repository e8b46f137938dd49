"""dataplane-encrypted: iperf3 throughput and ping RTT between two harness hosts on a network made with
`-o encrypted` (VXLAN inside WireGuard), beside the plain vxlanpy network, interleaved in one run.

The encrypted rows carry the ratio to the plain ones and name the WireGuard backend measured (the plugin's doctor,
checked against the link's kind).  The section also proves, without a capture, that the encrypted network's
traffic really went through WireGuard: each host's WireGuard transfer counters must have moved by at least the
bytes iperf3 counted on that network.  At the end the encrypted network is removed, so the plugins release their
WireGuard interfaces (and stop wireguard-go) while the harness still runs.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from tests.multihost.wireguard import WG_INTERFACE, WIREGUARD_GO, wireguard_go_pids

from .context import Bench
from .dataplane_cross import cross_network, network_on_h1_h2
from .docker_side import container_netns
from .params import ENCRYPTED_CASE, ENCRYPTED_VNI, SUBNETS
from .results import Results
from .runner import say
from .traffic import PathCase, measure_paths, ping_rtts
from .wireguard_side import Transfer, host_backend, transfer, udp_rcvbuf_errors

SECTION = "dataplane-encrypted"
PLAIN_CASE = "vxlanpy"
PORTS = {PLAIN_CASE: 5313, ENCRYPTED_CASE: 5314}
REACH_TIMEOUT = 30.0  # seconds for the first reply across the tunnel (peers added, first handshake)
# Each host's WireGuard counters must show at least this share of the bytes iperf3 counted on the encrypted
# network (they show more: WireGuard's and VXLAN's headers, the warm-up, the pings, the ACKs).
THROUGH_WIREGUARD = 0.9
RELEASE_TIMEOUT = 10.0  # seconds for wireguard-go to exit once a host's last encrypted network is gone


def encrypted_network(bench: Bench) -> str:
    name = f"vxbench-e-{bench.suffix}"
    return network_on_h1_h2(bench, name, SUBNETS["cross-encrypted"], {"vni": str(ENCRYPTED_VNI), "encrypted": ""})


def wait_reachable(case: PathCase, timeout: float = REACH_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ping_rtts(case, 1)
            return
        except RuntimeError:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{case.name}: {case.server_ip} did not answer within {timeout:.0f} s") from None


def iperf_bytes(results: Results, params_seconds: int) -> float:
    """The bytes iperf3 counted on the encrypted network: its runs' throughput times their length."""
    row = results.get(SECTION, ENCRYPTED_CASE, "throughput")
    return 0.0 if row is None else sum(row.samples) * 1e9 / 8 * params_seconds


def through_wireguard(moved: dict[str, Transfer], counted: float) -> list[str]:
    """The hosts whose WireGuard counters moved less than THROUGH_WIREGUARD x the bytes iperf3 counted."""
    return [
        f"{name}: {(delta.received + delta.sent) / 1e6:.1f} MB through WireGuard, iperf3 counted {counted / 1e6:.1f}"
        for name, delta in moved.items()
        if delta.received + delta.sent < THROUGH_WIREGUARD * counted
    ]


def run_section(bench: Bench) -> None:
    results, params = bench.results, bench.params
    say("data plane across two namespace hosts: vxlanpy -o encrypted (WireGuard) vs plain vxlanpy (etcd mode)")
    plain, encrypted = cross_network(bench), encrypted_network(bench)
    h1, h2 = bench.cluster["h1"], bench.cluster["h2"]
    containers: list[Any] = []
    try:
        cases = []
        for case_name, network in ((PLAIN_CASE, plain), (ENCRYPTED_CASE, encrypted)):
            server, client = h1.run_container(network), h2.run_container(network)
            containers += [server, client]
            address = server.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
            cases.append(PathCase(case_name, container_netns(server), container_netns(client), address,
                                  PORTS[case_name]))  # fmt: skip
        wait_reachable(cases[1])
        hosts = {host.name: host_backend(host) for host in (h1, h2)}
        backend = hosts["h1"]["backend"]
        if hosts["h2"]["backend"] != backend:
            raise RuntimeError(f"the hosts use different WireGuard backends: {hosts}")
        kinds = ", ".join(f"{name} {seen['link_kind']}" for name, seen in hosts.items())
        say(f"  WireGuard backend: {backend} (named by vxlanpy doctor on h1 and h2; link kind: {kinds})")
        before = {host.name: transfer(host) for host in (h1, h2)}
        drops_before = {host.name: udp_rcvbuf_errors(host) for host in (h1, h2)}
        measure_paths(results, SECTION, cases, params, "")
        moved = {host.name: transfer(host) - before[host.name] for host in (h1, h2)}
        for host in (h1, h2):
            hosts[host.name]["udp_rcvbuf_errors"] = udp_rcvbuf_errors(host) - drops_before[host.name]
    finally:
        for container in containers:
            with contextlib.suppress(Exception):  # best effort: the cluster's teardown removes what is left
                container.remove(force=True)
        release_encryption(bench, encrypted)
    counted = iperf_bytes(results, params.iperf_seconds)
    for name, delta in moved.items():
        hosts[name].update(wg_received=delta.received, wg_sent=delta.sent)
    results.info["encryption"] = {"backend": backend, "interface": WG_INTERFACE, "iperf_bytes": counted, "hosts": hosts}
    for metric, higher in (("throughput", True), ("rtt", False)):
        row = results.get(SECTION, ENCRYPTED_CASE, metric)
        if row is not None:
            results.compare(row, results.get(SECTION, PLAIN_CASE, metric), None, higher, PLAIN_CASE)
            row.note = f"WireGuard backend {backend}"
    short = through_wireguard(moved, counted)
    if short:
        raise RuntimeError("the encrypted network's traffic did not all go through WireGuard: " + "; ".join(short))


def release_encryption(bench: Bench, network: str) -> None:
    """Remove the encrypted network from h1 and h2: the plugins then remove their WireGuard interfaces (and stop
    wireguard-go).  What is left is reported; the harness's teardown kills it."""
    for host in (bench.cluster["h1"], bench.cluster["h2"]):
        try:
            host.docker.networks.get(network).remove()
        except Exception as exc:  # noqa: BLE001 - report it, the teardown removes labelled networks
            say(f"WARNING: removing {network} on {host.name}: {exc}")
        deadline = time.monotonic() + RELEASE_TIMEOUT
        while (left := wireguard_go_pids(host.netns)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if left:
            say(f"WARNING: {WIREGUARD_GO} still runs on {host.name} after its last encrypted network went: {left}")
