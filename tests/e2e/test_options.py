"""`docker network create -d vxlanpy -o ...`: every option shows up on the VXLAN device, every bad one is refused.

VNIs 7001-7039, subnets 10.77.1-39.0/24.  Options that make the kernel send VXLAN packets somewhere (remote,
peers, group) put the underlay on the test host's veth, so any packet goes to the test host namespace only.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .helpers import TestHost, default_route_dev, docker, ip_details, link_mtu, links, unique_name

pytestmark = pytest.mark.e2e

DEFAULT_PORT = 4789


def _has(text: str, phrase: str) -> bool:
    return re.search(r"(?<![\w.:-])" + re.escape(phrase) + r"(?![\w.:-])", text) is not None


def _bridge_fdb(dev: str) -> str:
    result = subprocess.run(["bridge", "fdb", "show", "dev", dev], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _check_vxlan(vni: int, *, dstport: int = DEFAULT_PORT, expect: tuple[str, ...] = (), mtu: int | None = None) -> str:
    """The network's VXLAN device exists, is a port of its bridge and `ip -d link` shows the expected options."""
    details = ip_details(f"vxlan-{vni}")
    assert _has(details, f"vxlan id {vni}"), details
    assert _has(details, f"dstport {dstport}"), details
    assert _has(details, f"master vxbr-{vni}"), details
    for phrase in expect:
        assert _has(details, phrase), f"{phrase!r} missing from:\n{details}"
    if mtu is not None:
        assert _has(details, f"mtu {mtu}"), details
        assert link_mtu(f"vxbr-{vni}") == mtu
    return details


def test_vni_and_default_options(create_network: Callable[..., Any]) -> None:
    create_network(vni=7001, subnet="10.77.1.0/24")
    underlay = default_route_dev()
    details = _check_vxlan(7001, mtu=link_mtu(underlay) - 50, expect=(f"dev {underlay}",))
    assert "nolearning" not in details


def test_vni_is_allocated_when_absent(create_network: Callable[..., Any]) -> None:
    before = links(("vxlan-",))
    network = create_network(subnet="10.77.2.0/24")
    added = links(("vxlan-",)) - before
    assert len(added) == 1, f"expected one new vxlan device for {network.name}, got {sorted(added)}"
    vni = int(added.pop().removeprefix("vxlan-"))
    assert 1 <= vni <= 16777215
    _check_vxlan(vni)


def test_dstport(create_network: Callable[..., Any]) -> None:
    create_network(vni=7003, subnet="10.77.3.0/24", options={"dstport": "4790"})
    _check_vxlan(7003, dstport=4790)


def test_dev(create_network: Callable[..., Any], testhost: TestHost) -> None:
    create_network(vni=7004, subnet="10.77.4.0/24", options={"dev": testhost.host_if})
    _check_vxlan(7004, expect=(f"dev {testhost.host_if}",), mtu=link_mtu(testhost.host_if) - 50)


def test_local(create_network: Callable[..., Any], testhost: TestHost) -> None:
    create_network(vni=7005, subnet="10.77.5.0/24", options={"dev": testhost.host_if, "local": testhost.host_ip})
    _check_vxlan(7005, expect=(f"local {testhost.host_ip}",))


def test_ttl(create_network: Callable[..., Any]) -> None:
    create_network(vni=7006, subnet="10.77.6.0/24", options={"ttl": "10"})
    _check_vxlan(7006, expect=("ttl 10",))


def test_learning_false(create_network: Callable[..., Any]) -> None:
    create_network(vni=7007, subnet="10.77.7.0/24", options={"learning": "false"})
    _check_vxlan(7007, expect=("nolearning",))


def test_remote(create_network: Callable[..., Any], testhost: TestHost) -> None:
    create_network(vni=7008, subnet="10.77.8.0/24", options={"dev": testhost.host_if, "remote": testhost.ip})
    _check_vxlan(7008, expect=(f"remote {testhost.ip}",))


def test_peers(create_network: Callable[..., Any], testhost: TestHost) -> None:
    peers = f"{testhost.ip},{testhost.ip2}"
    create_network(vni=7009, subnet="10.77.9.0/24", options={"dev": testhost.host_if, "peers": peers})
    details = _check_vxlan(7009)
    assert not re.search(r"\b(remote|group) (\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f:]+)\b", details), (
        f"peers is not a single remote or group:\n{details}"
    )
    fdb = _bridge_fdb("vxlan-7009")
    for peer in (testhost.ip, testhost.ip2):
        flood_entry = rf"^00:00:00:00:00:00 dst {re.escape(peer)}\b"
        assert re.search(flood_entry, fdb, re.M), f"no flood entry for {peer}:\n{fdb}"


def test_group(create_network: Callable[..., Any], testhost: TestHost) -> None:
    create_network(vni=7010, subnet="10.77.10.0/24", options={"dev": testhost.host_if, "group": "239.1.1.1"})
    _check_vxlan(7010, expect=("group 239.1.1.1", f"dev {testhost.host_if}"))


def test_mtu(create_network: Callable[..., Any], testhost: TestHost) -> None:
    # the test host's veth has MTU 1500, so 1400 fits whatever this machine's own uplink MTU is
    create_network(vni=7011, subnet="10.77.11.0/24", options={"dev": testhost.host_if, "mtu": "1400"})
    _check_vxlan(7011, mtu=1400)


def test_docker_mtu_option(create_network: Callable[..., Any], testhost: TestHost) -> None:
    options = {"dev": testhost.host_if, "com.docker.network.driver.mtu": "1300"}
    create_network(vni=7012, subnet="10.77.12.0/24", options=options)
    _check_vxlan(7012, mtu=1300)


def test_subnet_gateway_and_ip_range(create_network: Callable[..., Any], run_container: Callable[..., Any]) -> None:
    network = create_network(vni=7013, subnet="10.77.13.0/24", gateway="10.77.13.254", ip_range="10.77.13.128/25")
    container = run_container(network)
    address = container.attrs["NetworkSettings"]["Networks"][network.name]
    assert address["Gateway"] == "10.77.13.254"
    last_octet = int(address["IPAddress"].rsplit(".", 1)[1])
    assert 128 <= last_octet < 255, address
    details = subprocess.run(["ip", "-4", "addr", "show", "vxbr-7013"], capture_output=True, text=True, check=True)
    assert "10.77.13.254/24" in details.stdout, details.stdout


# ------------------------------------------------------------------------------------------ refused options

BAD_OPTIONS = [
    pytest.param({"vni": "7020", "color": "blue"}, ("color", "valid options"), id="unknown-option"),
    pytest.param({"vni": "0"}, ("vni",), id="vni-0"),
    pytest.param({"vni": "16777216"}, ("vni", "16777216"), id="vni-too-big"),
    pytest.param({"vni": "abc"}, ("vni", "abc"), id="vni-not-a-number"),
    pytest.param({"vni": "7021", "dstport": "0"}, ("dstport",), id="dstport-0"),
    pytest.param({"vni": "7022", "dstport": "70000"}, ("dstport", "70000"), id="dstport-70000"),
    pytest.param({"vni": "7023", "ttl": "300"}, ("ttl", "300"), id="ttl-300"),
    pytest.param({"vni": "7024", "learning": "maybe"}, ("learning", "maybe"), id="learning-maybe"),
    pytest.param({"vni": "7025", "remote": "not-an-ip"}, ("remote", "not-an-ip"), id="remote-not-an-ip"),
    pytest.param(
        {"vni": "7026", "remote": "198.51.100.2", "group": "239.1.1.1"}, ("remote", "group"), id="remote-and-group"
    ),
    pytest.param({"vni": "7027", "group": "10.0.0.1"}, ("group", "multicast"), id="group-not-multicast"),
    pytest.param({"vni": "7028", "mtu": "9000"}, ("mtu", "9000"), id="mtu-too-big"),
    pytest.param({"vni": "7029", "dev": "nosuchdev"}, ("nosuchdev",), id="dev-missing"),
    pytest.param({"vni": "7032", "encap": "geneve"}, ("encap", "geneve"), id="encap-unknown"),
    pytest.param({"vni": "7033", "encap": "gretap"}, ("encap=gretap", "remote", "peers"), id="gretap-no-peer"),
    pytest.param(
        {"vni": "7034", "encap": "gretap", "remote": "198.51.100.2", "dstport": "4790"},
        ("dstport", "gretap"),
        id="gretap-dstport",
    ),
    pytest.param(
        {"vni": "7035", "encap": "gretap", "remote": "198.51.100.2", "learning": "on"},
        ("learning", "gretap"),
        id="gretap-learning",
    ),
]


def _docker_networks_named(client: Any, name: str) -> list[Any]:
    return [network for network in client.networks.list(names=[name]) if network.name == name]


@pytest.mark.parametrize(("options", "phrases"), BAD_OPTIONS)
def test_bad_option_is_refused(
    docker_client: Any, create_network: Callable[..., Any], options: dict[str, str], phrases: tuple[str, ...]
) -> None:
    before = links(("vxbr-", "vxlan-", "vxg-"))
    name = unique_name("vxt-bad")
    with pytest.raises(docker.errors.APIError) as refused:
        create_network(name=name, subnet="10.77.20.0/24", options=options)
    message = str(refused.value)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} is not in docker's error: {message}"
    assert _docker_networks_named(docker_client, name) == []
    assert links(("vxbr-", "vxlan-", "vxg-")) == before


def test_duplicate_vni_is_refused(docker_client: Any, create_network: Callable[..., Any]) -> None:
    first = create_network(vni=7030, subnet="10.77.30.0/24")
    before = links(("vxbr-", "vxlan-"))
    name = unique_name("vxt-dup")
    with pytest.raises(docker.errors.APIError) as refused:
        create_network(name=name, vni=7030, subnet="10.77.31.0/24")
    message = str(refused.value)
    assert "7030" in message, message
    assert _docker_networks_named(docker_client, name) == []
    assert links(("vxbr-", "vxlan-")) == before
    # the first network is untouched
    _check_vxlan(7030)
    assert _docker_networks_named(docker_client, first.name) != []


def _kernel_has_gre() -> bool:
    subprocess.run(["modprobe", "-q", "ip_gre"], capture_output=True, check=False, timeout=30)
    return Path("/sys/module/ip_gre").exists()


def test_gretap_network_is_built_where_the_kernel_has_gre_and_refused_clearly_where_not(
    docker_client: Any, create_network: Callable[..., Any], testhost: TestHost
) -> None:
    """`-o encap=gretap`: on a kernel with GRE (Debian's: scripts/test runs this test in a guest on one) a keyed
    gretap port to the peer on the bridge, with the gretap MTU; on one without (this machine's own), a refusal
    that names ip_gre and leaves nothing behind."""
    options = {"encap": "gretap", "dev": testhost.host_if, "remote": testhost.ip}
    before = links(("vxbr-", "vxlan-", "vxg-"))
    name = unique_name("vxt-gre")
    if not _kernel_has_gre():
        with pytest.raises(docker.errors.APIError) as refused:
            create_network(name=name, vni=7036, subnet="10.77.36.0/24", options=options)
        message = str(refused.value)
        assert "the kernel lacks GRE support" in message and "ip_gre" in message, message
        assert _docker_networks_named(docker_client, name) == []
        assert links(("vxbr-", "vxlan-", "vxg-")) == before
        return
    create_network(name=name, vni=7036, subnet="10.77.36.0/24", options=options)
    details = ip_details("vxg-7036")
    for phrase in ("gretap", f"remote {testhost.ip}", "ikey 0.0.27.124", "okey 0.0.27.124", "master vxbr-7036"):
        assert phrase in details, f"{phrase!r} missing from:\n{details}"
    assert link_mtu("vxbr-7036") == link_mtu(testhost.host_if) - 42
