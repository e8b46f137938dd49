"""Bad input that used to reach an internal error or a broken network, through Docker and the plugin's socket
(issue 12): digits of other scripts in options, several subnets on one network, a subnet over the underlay's
own address or gateway, deeply nested JSON and oversized bodies.

VNIs 7401-7420, subnets 10.79.N.0/24.  The underlay tests use the test host's veth (198.51.100.0/24, `dev=`),
never the machine's real underlay: on the old code such a network was created and took the host's routes.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vxlanpy.operator.client import unix_transport

from .helpers import DRIVER, LABELS, PluginProcess, TestHost, docker, links, unique_name

pytestmark = pytest.mark.e2e


def _refused(create: Callable[[], Any]) -> str:
    before = links(("vxbr-", "vxlan-"))
    with pytest.raises(docker.errors.APIError) as refused:
        create()
    assert links(("vxbr-", "vxlan-")) == before, "a refused network left devices behind"
    message = str(refused.value)
    assert "internal error" not in message, message
    return message


def _named(client: Any, name: str) -> list[Any]:
    return [network for network in client.networks.list(names=[name]) if network.name == name]


# -- digits ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "phrase"),
    [
        ("vni", "²", "vni='²' is not valid; use a whole number from 1 to 16777215"),
        ("vni", "١٢", "vni='١٢' is not valid; use a whole number from 1 to 16777215"),
        ("mtu", "١٤٠٠", "mtu='١٤٠٠' is not valid; use a whole number from 576"),
        ("dstport", "٤٧٨٩", "dstport='٤٧٨٩' is not valid; use a whole number from 1 to 65535"),
        ("ttl", "６４", "ttl='６４' is not valid; use a whole number from 1 to 255"),
    ],
)
def test_digits_of_other_scripts_are_refused(
    docker_client: Any, create_network: Callable[..., Any], option: str, value: str, phrase: str
) -> None:
    name = unique_name("vxt-digit")
    message = _refused(lambda: create_network(name=name, subnet="10.79.1.0/24", options={option: value}))
    assert phrase in message, message
    assert _named(docker_client, name) == []
    assert "vxlan-12" not in links(("vxlan-",))  # `-o vni=١٢` was taken as VNI 12


# -- several subnets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ipam_driver", ["default", DRIVER])
def test_two_subnets_are_refused_as_by_docker_bridge(docker_client: Any, ipam_driver: str) -> None:
    name = unique_name("vxt-2sub")
    pools = [docker.types.IPAMPool(subnet="10.79.2.0/24"), docker.types.IPAMPool(subnet="10.79.3.0/24")]

    def create() -> Any:
        return docker_client.networks.create(
            name,
            driver=DRIVER,
            options={"vni": "7402"},
            ipam=docker.types.IPAMConfig(driver=ipam_driver, pool_configs=pools),
            labels=dict(LABELS),
        )

    message = _refused(create)
    assert "a vxlanpy network takes one IPv4 subnet, not 2 (10.79.2.0/24, 10.79.3.0/24)" in message, message
    assert "create one network per subnet" in message, message
    assert _named(docker_client, name) == []
    # Docker released both pools: each subnet makes a network of its own, and its container starts
    for index, subnet in enumerate(("10.79.2.0/24", "10.79.3.0/24")):
        docker_client.networks.create(
            unique_name("vxt-1sub"),
            driver=DRIVER,
            options={"vni": str(7403 + index)},
            ipam=docker.types.IPAMConfig(driver=ipam_driver, pool_configs=[docker.types.IPAMPool(subnet=subnet)]),
            labels=dict(LABELS),
        )


def test_one_subnet_of_each_family_still_works(create_network: Callable[..., Any]) -> None:
    network = create_network(vni=7405, subnet="10.79.5.0/24", subnet6="fd79:5::/64")
    network.reload()
    assert sorted(config["Subnet"] for config in network.attrs["IPAM"]["Config"]) == ["10.79.5.0/24", "fd79:5::/64"]


# -- the underlay ------------------------------------------------------------------------------------------


@pytest.fixture
def underlay_gateway(testhost: TestHost) -> Iterator[str]:
    """A default route via the test host's veth, far below the machine's own (metric 4242), so that the veth has
    a default gateway for vxlanpy to see; traffic keeps the machine's real default route."""
    gateway = "198.51.100.130"
    route = ["default", "via", gateway, "dev", testhost.host_if, "metric", "4242"]
    subprocess.run(["ip", "route", "add", *route], check=True, capture_output=True)
    try:
        yield gateway
    finally:
        subprocess.run(["ip", "route", "del", *route], check=False, capture_output=True)


def test_a_subnet_holding_the_underlay_address_is_refused(
    docker_client: Any, create_network: Callable[..., Any], testhost: TestHost
) -> None:
    name = unique_name("vxt-under")
    message = _refused(
        lambda: create_network(name=name, vni=7406, subnet="198.51.100.0/24", options={"dev": testhost.host_if})
    )
    assert (
        f"subnet 198.51.100.0/24 overlaps the underlay interface {testhost.host_if}: it contains "
        f"{testhost.host_if}'s address {testhost.host_ip}"
    ) in message, message
    assert _named(docker_client, name) == []


def test_a_subnet_holding_the_underlay_gateway_is_refused(
    docker_client: Any, create_network: Callable[..., Any], testhost: TestHost, underlay_gateway: str
) -> None:
    name = unique_name("vxt-gw")
    message = _refused(
        lambda: create_network(name=name, vni=7407, subnet="198.51.100.128/25", options={"dev": testhost.host_if})
    )
    assert (
        f"subnet 198.51.100.128/25 overlaps the underlay interface {testhost.host_if}: it contains the default "
        f"gateway {underlay_gateway} via {testhost.host_if}"
    ) in message, message
    assert _named(docker_client, name) == []
    # beside the underlay's addresses, the same underlay is fine
    create_network(vni=7408, subnet="10.79.8.0/24", options={"dev": testhost.host_if})


# -- bodies ------------------------------------------------------------------------------------------------


def _post(plugin: PluginProcess, path: str, data: bytes) -> tuple[int, str]:
    status, raw = unix_transport(str(plugin.socket_path))("POST", path, data, 10.0)
    return status, raw.decode("utf-8", "replace")


def _send_raw(plugin: PluginProcess, head: bytes, chunks: Iterator[bytes]) -> str:
    """Send a request on a raw socket and read the reply, as Go's client does (dockerd's): the plugin may answer
    an oversized body before reading it and stop reading, so a failed send is not the end."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(plugin.socket_path))
        client.sendall(head)
        try:
            for chunk in chunks:
                client.sendall(chunk)
        except OSError:
            pass  # the plugin answered and closed
        reply = b""
        while not (b"\r\n\r\n" in reply and reply.rstrip().endswith(b"}")):
            data = client.recv(65536)
            if not data:
                break
            reply += data
    return reply.decode("utf-8", "replace")


@pytest.mark.parametrize("path", ["/NetworkDriver.CreateNetwork", "/IpamDriver.RequestPool", "/vxlanpy/gc"])
def test_deeply_nested_json_is_a_clear_400(plugin: PluginProcess, path: str) -> None:
    status, text = _post(plugin, path, b"[" * 60_000)
    assert status == 400, text
    assert "request body nests JSON more than 32 levels deep" in text, text
    assert _post(plugin, "/Plugin.Activate", b"")[0] == 200  # and the plugin still answers


@pytest.mark.parametrize(
    ("path", "limit"), [("/vxlanpy/attach", "64 KiB"), ("/NetworkDriver.Join", "1 MiB"), ("/vxlanpy/gc", "64 KiB")]
)
def test_a_body_over_the_limit_is_a_clear_413(plugin: PluginProcess, path: str, limit: str) -> None:
    body = b'{"network": "' + b"a" * (2 << 20) + b'"}'
    head = b"POST %s HTTP/1.1\r\nHost: plugin\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(body))
    text = _send_raw(plugin, head, iter([body[i : i + 65536] for i in range(0, len(body), 65536)]))
    assert text.startswith("HTTP/1.1 413"), text[:300]
    assert f"request body is larger than {limit}, the most {path} accepts" in text, text[:600]
    assert _post(plugin, "/Plugin.Activate", b"")[0] == 200  # and the plugin still answers


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/vxlanpy/attach", "64 KiB"), ("/NetworkDriver.Join", "1 MiB"), ("/IpamDriver.RequestPool", "1 MiB")],
)
def test_a_chunked_body_over_the_limit_is_a_clear_413(plugin: PluginProcess, path: str, limit: str) -> None:
    """Without a Content-Length the size is only known while reading (an earlier check got a 400 for a libnetwork
    call): the same 413 and limit as a sized body."""
    chunk = b"x" * 65536
    text = _send_raw(
        plugin,
        b"POST %s HTTP/1.1\r\nHost: plugin\r\nTransfer-Encoding: chunked\r\n\r\n" % path.encode(),
        iter([b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 40 + [b"0\r\n\r\n"]),  # 2.5 MiB
    )
    assert text.startswith("HTTP/1.1 413"), text[:300]
    assert f"request body is larger than {limit}, the most {path} accepts" in text, text[:600]
    assert _post(plugin, "/Plugin.Activate", b"")[0] == 200
