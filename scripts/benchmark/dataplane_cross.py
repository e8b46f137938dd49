"""dataplane-cross: iperf3 throughput and ping RTT between two network-namespace hosts, vxlanpy (multi-host
harness, etcd mode) vs the same topology built by hand with iproute2 (veth -> bridge -> vxlan -> underlay), on
fresh hosts and inside the Docker hosts."""

from __future__ import annotations

import contextlib
import ipaddress

from .context import Bench
from .docker_side import container_netns
from .params import CROSS_VNI, REF_ON_DOCKER, REF_VNI, SUBNETS
from .runner import run, say
from .traffic import PathCase, measure_paths

SECTION = "dataplane-cross"


def network_on_h1_h2(bench: Bench, name: str, subnet: str, options: dict[str, str]) -> str:
    """`docker network create -d vxlanpy` (vxlanpy IPAM) of `name` on the cluster's h1 and h2."""
    import docker.types

    cluster = bench.cluster
    for host in (cluster["h1"], cluster["h2"]):
        pool = docker.types.IPAMPool(subnet=subnet)
        host.docker.networks.create(
            name, driver="vxlanpy", options=options,
            ipam=docker.types.IPAMConfig(driver="vxlanpy", pool_configs=[pool]), labels={"vxlanpy.test": "1"},
        )  # fmt: skip
    return name


def cross_network(bench: Bench) -> str:
    """The vxlanpy network on h1 and h2, made once; the convergence and dataplane-encrypted sections use it too."""
    if bench.cross_network is None:
        name = f"vxbench-x-{bench.suffix}"
        bench.cross_network = network_on_h1_h2(bench, name, SUBNETS["cross-vxlanpy"], {"vni": str(CROSS_VNI)})
    return bench.cross_network


def build_recipe(host_ns: str, local: str, remote: str, vni: int, guest: str, address: str, prefix: str = "") -> None:
    """The seed recipe with iproute2 in `host_ns`: bridge `<prefix>br0`, VXLAN `<prefix>vx0` (or `vxlan0`) to
    `remote` on eth0, and a veth `<prefix>v0` (or `veth0`) whose other end is eth0 in `guest` with `address`;
    MTU 1450 (the underlay's 1500 minus VXLAN's 50)."""
    bridge, vxlan, veth = (f"{prefix}br0", f"{prefix}vx0", f"{prefix}v0") if prefix else ("br0", "vxlan0", "veth0")
    mtu = str(1500 - 50)
    run(["ip", "-n", host_ns, "link", "add", bridge, "type", "bridge"])
    run(["ip", "-n", host_ns, "link", "add", vxlan, "type", "vxlan", "id", str(vni), "local", local, "remote", remote,
         "dstport", "4789", "dev", "eth0"])  # fmt: skip
    run(["ip", "-n", host_ns, "link", "set", vxlan, "master", bridge, "up"])
    run(["ip", "-n", host_ns, "link", "set", bridge, "up"])
    run(["ip", "-n", host_ns, "link", "add", veth, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "netns", guest])
    run(["ip", "-n", host_ns, "link", "set", veth, "master", bridge, "up"])
    run(["ip", "-n", guest, "addr", "add", address, "dev", "eth0"])
    run(["ip", "-n", guest, "link", "set", "eth0", "mtu", mtu, "up"])


def reference_hosts(bench: Bench) -> tuple[str, str, str]:
    """The seed recipe by hand on two fresh namespaces of the same underlay (no Docker, no vxlanpy):
    container netns -veth-> bridge -> vxlan (remote = the other host) -> eth0 -> underlay bridge."""
    from tests.multihost import cluster as mh

    cluster = bench.cluster
    hosts = [("ra", "10.250.0.21"), ("rb", "10.250.0.22")]
    net = ipaddress.ip_network(SUBNETS["cross-ref"])
    paths = []
    for index, (label, underlay_ip) in enumerate(hosts):
        host_ns = f"{mh.PREFIX}-{label}-{cluster.suffix}"
        run(["ip", "netns", "add", host_ns])
        cluster.extra_netns.append(host_ns)  # the harness's teardown deletes it
        cluster._attach(host_ns, f"p-{label}", underlay_ip)
        guest = bench.ns.add(f"r{label}")
        build_recipe(host_ns, underlay_ip, hosts[1 - index][1], REF_VNI, guest, f"{net[index + 1]}/{net.prefixlen}")
        paths.append(f"/run/netns/{guest}")
    return paths[0], paths[1], str(net[1])


def reference_on_docker_hosts(bench: Bench) -> tuple[str, str, str]:
    """The same recipe built by hand inside the host namespaces of h1 and h2, next to vxlanpy and dockerd:
    the host's firewall as vxlanpy sees it (br_netfilter on, conntrack, FORWARD policy DROP, so the hand-made
    bridge needs an ACCEPT rule, as it would on any Docker host), without vxlanpy's devices or rules."""
    hosts = [bench.cluster["h1"], bench.cluster["h2"]]
    net = ipaddress.ip_network(SUBNETS["cross-ref-docker"])
    paths = []
    for index, host in enumerate(hosts):
        guest = bench.ns.add(f"d{index}")
        build_recipe(host.netns, host.ip, hosts[1 - index].ip, REF_VNI + 1, guest,
                     f"{net[index + 1]}/{net.prefixlen}", prefix="ref")  # fmt: skip
        run(["nsenter", f"--net=/run/netns/{host.netns}", "iptables", "-w", "10", "-I", "FORWARD", "1", "-i",
             "refbr0", "-o", "refbr0", "-j", "ACCEPT"])  # fmt: skip
        paths.append(f"/run/netns/{guest}")
    return paths[0], paths[1], str(net[1])


def run_section(bench: Bench) -> None:
    results = bench.results
    say("data plane across two namespace hosts: hand-built VXLAN vs vxlanpy (etcd mode)")
    name = cross_network(bench)
    h1, h2 = bench.cluster["h1"], bench.cluster["h2"]
    server, client_c = h1.run_container(name), h2.run_container(name)
    server.reload()
    ip = server.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
    vx = PathCase("vxlanpy", container_netns(server), container_netns(client_c), ip, 5311)
    ref_server, ref_client, ref_ip = reference_hosts(bench)
    ref = PathCase("reference", ref_server, ref_client, ref_ip, 5310)
    on_docker = PathCase(REF_ON_DOCKER, *reference_on_docker_hosts(bench), 5312)
    measure_paths(results, SECTION, [ref, on_docker, vx], bench.params, "")
    for metric, target, higher in (("throughput", 0.97, True), ("rtt", None, False)):
        reference = results.get(SECTION, "reference", metric)
        row = results.get(SECTION, "vxlanpy", metric)
        if row is not None:
            results.compare(row, reference, target, higher, "reference")
        row = results.get(SECTION, REF_ON_DOCKER, metric)
        if row is not None:
            results.compare(row, reference, None, higher, "reference")
    for container in (server, client_c):
        with contextlib.suppress(Exception):  # best effort: the cluster's teardown removes what is left
            container.remove(force=True)
