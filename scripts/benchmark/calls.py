"""calls: plugin call latency over the socket, CreateEndpoint+Join and Leave+DeleteEndpoint, as the client sees
it and as the plugin itself logged it."""

from __future__ import annotations

import ipaddress

from .context import Bench
from .params import FAKE_VNI_BASE, SUBNETS
from .plugin import SocketClient, create_network, endpoint_down, endpoint_up
from .results import percentile
from .runner import say

SECTION = "calls"
WARM_UP = 5  # endpoint round trips not counted


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
        sock.close()
    row = results.add(SECTION, "vxlanpy", "CreateEndpoint+Join", "ms", up, p99=percentile(up, 0.99))
    row.target, row.met = "p99 <= 10 ms", percentile(up, 0.99) <= 10.0
    # The same calls as the plugin itself timed them (its request log): without the client, the socket and
    # the HTTP layer, i.e. what is left when the machine is busy with other work.
    served = bench.plugin.served_times(("CreateEndpoint", "Join"))
    if len(served) >= p.call_iters:
        served = served[-p.call_iters :]
        results.add(SECTION, "vxlanpy (in plugin)", "CreateEndpoint+Join", "ms", served, p99=percentile(served, 0.99))
    results.add(SECTION, "vxlanpy", "Leave+DeleteEndpoint", "ms", down, p99=percentile(down, 0.99))
