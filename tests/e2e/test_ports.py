"""`docker run -p HOST_PORT:CONTAINER_PORT` on a vxlanpy network.  VNIs 7060-7069, subnets 10.77.60-69.0/24.

The published port is reached from this machine (127.0.0.1 and the address on the test host link) and from
the test host namespace, which plays "another host".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .helpers import TestHost, exec_ok, http_get, tcp_connect, wait_for

pytestmark = pytest.mark.e2e

HOST_PORT = 18080
CONTAINER_PORT = 8080
PAGE = "hello from vxlanpy"

HTTPD = f"mkdir -p /www && echo '{PAGE}' > /www/index.html && exec httpd -f -p {CONTAINER_PORT} -h /www"


def _get_from_host(host: str, port: int) -> str | None:
    try:
        return http_get(host, port, timeout=3)
    except OSError:
        return None


def test_published_port_is_reachable_and_goes_away(
    create_network: Callable[..., Any], run_container: Callable[..., Any], testhost: TestHost
) -> None:
    network = create_network(vni=7060, subnet="10.77.60.0/24")
    server = run_container(network, command=["sh", "-c", HTTPD], ports={f"{CONTAINER_PORT}/tcp": HOST_PORT})

    # the server itself is up (inside the container)
    local_url = f"http://127.0.0.1:{CONTAINER_PORT}/"
    assert wait_for(lambda: exec_ok(server, ["timeout", "2", "wget", "-q", "-O", "-", local_url])[0] == 0, 10), (
        f"httpd does not serve inside the container: {server.logs().decode(errors='replace')}"
    )

    # from this host, on the loopback address and on the address of the test host link
    for address in ("127.0.0.1", testhost.host_ip):
        body: list[str | None] = [None]

        def fetched(address: str = address, body: list[str | None] = body) -> bool:
            body[0] = _get_from_host(address, HOST_PORT)
            return body[0] is not None

        assert wait_for(fetched, 10), f"http://{address}:{HOST_PORT}/ is not served from this host"
        assert PAGE in (body[0] or ""), body[0]

    # from another host: the test host namespace, through 198.51.100.1
    url = f"http://{testhost.host_ip}:{HOST_PORT}/"
    result = testhost.http_get(url)
    assert result.returncode == 0, f"the test host cannot fetch {url}: {result.stdout}{result.stderr}"
    assert PAGE in result.stdout

    server.remove(force=True)

    # the port is gone once the container is
    def closed() -> bool:
        return not tcp_connect("127.0.0.1", HOST_PORT, timeout=1) and not tcp_connect(
            testhost.host_ip, HOST_PORT, timeout=1
        )

    assert wait_for(closed, 10), f"port {HOST_PORT} still answers after the container was removed"
    result = testhost.http_get(url, timeout=2)
    assert result.returncode != 0, f"the test host still fetches {url}: {result.stdout}"
