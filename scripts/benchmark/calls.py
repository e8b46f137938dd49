"""calls: plugin call latency over the socket, CreateEndpoint+Join, Leave+DeleteEndpoint and DeleteNetwork (of a
network that had an endpoint), as the client sees it and as the plugin itself logged it."""

from __future__ import annotations

import ipaddress
import statistics
import time

from .context import Bench
from .params import FAKE_VNI_BASE, SUBNETS
from .plugin import BenchPlugin, SocketClient, create_network, endpoint_down, endpoint_up
from .results import Results, percentile
from .runner import say

SECTION = "calls"
WARM_UP = 5  # endpoint round trips not counted
NETWORK_VNI_BASE = FAKE_VNI_BASE + 50000  # the networks made and deleted here, far from the scale section's
CALL_P99_MS = 10.0  # the target of both endpoint rows
DELETE_NETWORK_MEDIAN_MS = 30.0


def run_section(bench: Bench) -> None:
    p, results = bench.params, bench.results
    sock = SocketClient(str(bench.plugin.socket_path))
    say(f"plugin calls over the socket: {p.call_iters} x (CreateEndpoint+Join, Leave+DeleteEndpoint)")
    subnet = ipaddress.IPv4Network(SUBNETS["calls"])
    network_id = create_network(sock, FAKE_VNI_BASE, subnet)
    up: list[float] = []
    down: list[float] = []
    try:
        hosts = subnet.hosts()
        next(hosts)  # the gateway
        for index in range(p.call_iters + WARM_UP):
            endpoint_id, seconds = endpoint_up(sock, network_id, f"{next(hosts)}/{subnet.prefixlen}")
            down_seconds = endpoint_down(sock, network_id, endpoint_id)
            if index >= WARM_UP:
                up.append(seconds * 1000)
                down.append(down_seconds * 1000)
    finally:
        sock.call("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
    try:
        removed = delete_networks(sock, p.network_iters)
    finally:
        sock.close()
    for metric, samples in (("CreateEndpoint+Join", up), ("Leave+DeleteEndpoint", down)):
        row = results.add(SECTION, "vxlanpy", metric, "ms", samples, p99=percentile(samples, 0.99))
        row.target, row.met = f"p99 <= {CALL_P99_MS:g} ms", percentile(samples, 0.99) <= CALL_P99_MS
        # The same calls as the plugin itself timed them (its request log): without the client, the socket and
        # the HTTP layer, i.e. what is left when the machine is busy with other work.
        add_served(results, bench.plugin, metric, tuple(metric.split("+")), p.call_iters)
    row = results.add(SECTION, "vxlanpy", "DeleteNetwork", "ms", removed, p99=percentile(removed, 0.99))
    row.target = f"median <= {DELETE_NETWORK_MEDIAN_MS:g} ms"
    row.met = statistics.median(removed) <= DELETE_NETWORK_MEDIAN_MS
    add_served(results, bench.plugin, "DeleteNetwork", ("DeleteNetwork",), p.network_iters)


def delete_networks(sock: SocketClient, count: int) -> list[float]:
    """`count` times: a network made, an endpoint made on it and removed, then the network removed, as `docker
    network rm` after its last container; the milliseconds each DeleteNetwork took."""
    say(f"plugin calls over the socket: {count} x DeleteNetwork of a network that had an endpoint")
    subnets = ipaddress.IPv4Network(SUBNETS["calls-networks"]).subnets(new_prefix=24)
    times = []
    for index in range(count):
        subnet = next(subnets)
        network_id = create_network(sock, NETWORK_VNI_BASE + index, subnet)
        endpoint_id, _ = endpoint_up(sock, network_id, f"{subnet[2]}/{subnet.prefixlen}")
        endpoint_down(sock, network_id, endpoint_id)
        started = time.perf_counter()
        sock.call("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
        times.append((time.perf_counter() - started) * 1000)
    return times


def add_served(results: Results, plugin: BenchPlugin, metric: str, methods: tuple[str, ...], count: int) -> None:
    """The row of `metric` as the plugin logged it: its last `count` samples, if it logged that many."""
    served = plugin.served_times(methods)
    if len(served) >= count:
        served = served[-count:]
        results.add(SECTION, "vxlanpy (in plugin)", metric, "ms", served, p99=percentile(served, 0.99))
