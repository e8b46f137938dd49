"""dataplane-local: iperf3 TCP throughput and ping RTT between two containers on one host, vxlanpy vs Docker's
bridge vs a raw veth pair between two namespaces (the limit)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from .context import Bench
from .docker_side import container_netns, create_docker_network, start_container
from .params import SUBNETS
from .runner import Namespaces, run, say
from .traffic import PathCase, measure_paths

SECTION = "dataplane-local"


def veth_pair_case(ns: Namespaces, mtu: int) -> tuple[str, str, str]:
    """Two namespaces joined by a veth pair: the limit.  Returns (server netns path, client netns path, server IP)."""
    a, b = ns.add("va"), ns.add("vb")
    run(["ip", "-n", a, "link", "add", "eth0", "mtu", str(mtu), "type", "veth", "peer", "name", "eth0", "netns", b])
    net = ipaddress.ip_network(SUBNETS["dp-veth"])
    for netns, host in ((a, 1), (b, 2)):
        run(["ip", "-n", netns, "addr", "add", f"{net[host]}/{net.prefixlen}", "dev", "eth0"])
        run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    return f"/run/netns/{a}", f"/run/netns/{b}", str(net[1])


def run_section(bench: Bench) -> None:
    client, results = bench.client, bench.results
    _ = bench.plugin
    say("data plane on one host: veth pair vs Docker bridge vs vxlanpy")
    vx = create_docker_network(client, f"vxbench-dp-vx-{bench.suffix}", "vxlanpy", SUBNETS["dp-vxlanpy"], {})
    br = create_docker_network(client, f"vxbench-dp-br-{bench.suffix}", "bridge", SUBNETS["dp-bridge"], {})
    cases = []
    for port, (name, network) in enumerate((("bridge", br), ("vxlanpy", vx)), start=5301):
        server, client_c = start_container(client, network.name), start_container(client, network.name)
        server.reload()
        ip = server.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        cases.append(PathCase(name, container_netns(server), container_netns(client_c), ip, port))
    vx_mtu = int(Path("/sys/class/net/eth0/mtu").read_text()) if Path("/sys/class/net/eth0").exists() else 1500
    server_ns, client_ns, ip = veth_pair_case(bench.ns, 1500)
    cases.insert(0, PathCase("veth", server_ns, client_ns, ip, 5300))
    results.info["dataplane_local_mtu"] = {"veth": 1500, "bridge": 1500, "vxlanpy": vx_mtu - 50}
    measure_paths(results, SECTION, cases, bench.params, "")
    veth = results.get(SECTION, "veth", "throughput")
    bridge = results.get(SECTION, "bridge", "throughput")
    mine = results.get(SECTION, "vxlanpy", "throughput")
    if mine is not None:
        results.compare(mine, bridge, 0.97, True, "bridge")
    if bridge is not None:
        results.compare(bridge, veth, None, True, "veth")
    for case in ("bridge", "vxlanpy"):
        row = results.get(SECTION, case, "rtt")
        if row is not None:
            results.compare(row, results.get(SECTION, "veth", "rtt"), None, False, "veth")
