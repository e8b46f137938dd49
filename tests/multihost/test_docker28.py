"""Docker 28's IPv6-only networks across hosts (`--ipv4=false --ipv6`), on etcd with vxlanpy's IPAM.

The docker SDK here predates API 1.48, so the network is created with a raw API body (EnableIPv4).  Deselected
on engines before 28 (tests/engines.py); scripts/test runs it in the multi-host smoke on 28.5."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from .cluster import DRIVER, LABELS, Cluster, exec_text

pytestmark = [pytest.mark.smoke, pytest.mark.min_engine(28)]

SUBNET6 = "fd00:62:28::/64"
VNI = 6228


def create_ipv6_only(cluster: Cluster, name: str) -> dict[str, Any]:
    """The same IPv6-only network on every host, vxlanpy's IPAM keeping addresses unique across them."""
    made = {}
    for host in cluster.hosts:
        api = host.docker.api
        body = {
            "Name": name,
            "Driver": DRIVER,
            "EnableIPv4": False,
            "EnableIPv6": True,
            "Options": {"vni": str(VNI)},
            "IPAM": {"Driver": DRIVER, "Config": [{"Subnet": SUBNET6}]},
            "Labels": dict(LABELS),
        }
        created = api._result(api._post_json(api._url("/networks/create"), data=body), json=True)
        made[host.name] = host.docker.networks.get(created["Id"])
    return made


def ipv6_address(container: Any, network_name: str) -> str:
    container.reload()
    settings = container.attrs["NetworkSettings"]["Networks"][network_name]
    assert not settings["IPAddress"], f"an IPv6-only network gave {container.name} an IPv4 address: {settings}"
    return str(settings["GlobalIPv6Address"])


def ping6_until(container: Any, target: str, attempts: int = 10) -> tuple[bool, str]:
    output = ""
    for _ in range(attempts):
        code, output = exec_text(container, ["ping", "-6", "-c", "1", "-W", "1", target])
        if code == 0:
            return True, output
    return False, output


def test_ipv6_only_network_spans_hosts_with_unique_addresses(vx_cluster: Cluster) -> None:
    name = f"vxmh-v6only-{secrets.token_hex(3)}"
    create_ipv6_only(vx_cluster, name)
    containers = {host.name: host.run_container(name) for host in vx_cluster.hosts}
    addresses = {host_name: ipv6_address(c, name) for host_name, c in containers.items()}
    assert len(set(addresses.values())) == 3, f"addresses not unique across hosts: {addresses}"
    assert all(a.startswith("fd00:62:28:") for a in addresses.values()), addresses
    failures = []
    for source, target in (("h1", "h2"), ("h2", "h3"), ("h3", "h1")):
        ok, output = ping6_until(containers[source], addresses[target])
        if not ok:
            failures.append(f"{source} -> {target} ({addresses[target]}): {output}")
    logs = "\n".join(f"--- {h.name}:\n{h.plugin.log_tail(15)}" for h in vx_cluster.hosts)
    assert not failures, "\n".join(failures) + "\n" + logs
