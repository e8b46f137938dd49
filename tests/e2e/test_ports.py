"""`docker run -p HOST_PORT:CONTAINER_PORT` on a vxlanpy network.  VNIs 7060-7069, subnets 10.77.60-69.0/24.

The published port is reached from this machine (127.0.0.1 and the address on the test host link) and from
the test host namespace, which plays "another host".

Two ways to publish: by default vxlanpy DNATs itself, and `docker port`/`docker ps` cannot show those ports
(Docker reads ports back only from its own drivers; `vxlanpy inspect` shows them).  With -o gateway=docker_gwbridge
Docker's docker_gwbridge serves egress and -p, and Docker shows the ports.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .helpers import (
    IMAGE,
    LABELS,
    PluginProcess,
    TestHost,
    container_ip,
    exec_ok,
    http_get,
    ping_fails,
    ping_ok,
    tcp_connect,
    wait_for,
)
from .test_cli import ok, vxlanpy

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


def test_published_port_answers_a_container_of_the_same_network(
    create_network: Callable[..., Any], run_container: Callable[..., Any], testhost: TestHost
) -> None:
    """Hairpin: a container reaches its neighbour's published port through the host's addresses.  The frames
    switched between the two are not tracked (dataplane/notrack.py), so only the masquerade of such connections
    lets the reply come back through the host to be un-DNATed."""
    network = create_network(vni=7065, subnet="10.77.65.0/24")
    run_container(network, command=["sh", "-c", HTTPD], ports={f"{CONTAINER_PORT}/tcp": HOST_PORT})
    client = run_container(network)
    for address in ("10.77.65.1", testhost.host_ip):  # the gateway, and the host's address on another link
        url = f"http://{address}:{HOST_PORT}/"
        output: list[str] = [""]

        def fetched(url: str = url, output: list[str] = output) -> bool:
            code, output[0] = exec_ok(client, ["timeout", "3", "wget", "-q", "-O", "-", url])
            return code == 0

        assert wait_for(fetched, 10), f"a container of the same network cannot fetch {url}: {output[0]}"
        assert PAGE in output[0]


def _docker_cli(*argv: str) -> str:
    """The docker CLI, as a user runs it (DOCKER_HOST points at the test engine)."""
    result = subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"docker {' '.join(argv)}: exit {result.returncode}: {result.stderr}"
    return result.stdout


def _run_exposing(network: Any, port: int) -> str:
    """`docker run --expose PORT` (the SDK has no --expose without publishing): the container's id."""
    labels = [arg for key, value in LABELS.items() for arg in ("--label", f"{key}={value}")]
    argv = ["run", "-d", "--network", network.name, "--expose", str(port), *labels, IMAGE, "sleep", "3600"]
    return _docker_cli(*argv).strip()


def _ps_ports(container_id: str) -> str:
    return _docker_cli("ps", "--filter", f"id={container_id}", "--format", "{{.Ports}}").strip()


def _nat_rules(chain: str) -> str:
    result = subprocess.run(["iptables", "-w", "-t", "nat", "-S", chain], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"iptables -t nat -S {chain}: {result.stderr}"
    return result.stdout


def _inspect_ports(plugin: PluginProcess, network: Any) -> tuple[str, dict[str, list[str]]]:
    """`vxlanpy inspect NET` as text, and container name -> PORTS of its endpoint in `--json`."""
    text = ok(vxlanpy(plugin, "inspect", network.name)).stdout
    row = json.loads(ok(vxlanpy(plugin, "inspect", "--json", network.name)).stdout)[0]
    return text, {str(endpoint["container"]): endpoint["ports"] for endpoint in row["endpoints"]}


def _serving(server: Any) -> bool:
    url = f"http://127.0.0.1:{CONTAINER_PORT}/"
    return exec_ok(server, ["timeout", "2", "wget", "-q", "-O", "-", url])[0] == 0


@pytest.fixture
def gwbridge_cleanup(docker_client: Any) -> Iterator[None]:
    """docker_gwbridge is made by Docker for the first container that needs it: remove it after the test when
    the test made it and nothing uses it any more (the test removes its containers itself: the autouse cleanup
    runs after this teardown)."""
    existed = bool(docker_client.networks.list(names=["docker_gwbridge"]))
    yield
    if existed:
        return
    for network in docker_client.networks.list(names=["docker_gwbridge"]):
        network.reload()
        if not network.attrs.get("Containers"):
            network.remove()


def test_default_mode_ports_show_in_vxlanpy_inspect_not_in_docker(
    create_network: Callable[..., Any], run_container: Callable[..., Any], plugin: PluginProcess
) -> None:
    network = create_network(vni=7062, subnet="10.77.62.0/24")
    server = run_container(
        network, command=["sh", "-c", HTTPD], ports={f"{CONTAINER_PORT}/tcp": HOST_PORT + 2, "9090/udp": None}
    )
    assert wait_for(lambda: _serving(server), 10), server.logs().decode(errors="replace")
    assert wait_for(lambda: _get_from_host("127.0.0.1", HOST_PORT + 2) is not None, 10), "the port is not served"

    text, ports = _inspect_ports(plugin, network)
    published = ports[server.name]
    assert f"0.0.0.0:{HOST_PORT + 2}->{CONTAINER_PORT}/tcp" in published, text
    ephemeral = [port for port in published if port.endswith("->9090/udp")]
    assert len(ephemeral) == 1 and 49153 <= int(ephemeral[0].split(":")[1].split("-")[0]) <= 60999, published
    assert f"0.0.0.0:{HOST_PORT + 2}->{CONTAINER_PORT}/tcp" in text, text
    assert "gateway:   vxlanpy" in text, text
    # What a user sees from Docker in this mode: nothing (libnetwork asserts Go types a remote driver's JSON can
    # never have).  If this starts failing, Docker learned to show them: update README and docs/design.md.
    assert _docker_cli("port", server.name).strip() == ""
    assert _ps_ports(server.id) == ""
    assert _ps_ports(_run_exposing(network, 9091)) == ""  # --expose: nothing either


def test_gateway_docker_gwbridge_ports_show_in_docker_and_answer(
    create_network: Callable[..., Any],
    run_container: Callable[..., Any],
    testhost: TestHost,
    plugin: PluginProcess,
    gwbridge_cleanup: None,
) -> None:
    port = HOST_PORT + 1
    network = create_network(vni=7061, subnet="10.77.61.0/24", options={"gateway": "docker_gwbridge"})
    other = create_network(vni=7063, subnet="10.77.63.0/24")  # vxlanpy's own gateway: must stay isolated
    server = run_container(network, command=["sh", "-c", HTTPD], ports={f"{CONTAINER_PORT}/tcp": port})
    client = run_container(network)
    stranger = run_container(other)
    exposer = _run_exposing(network, 9091)
    try:
        assert wait_for(lambda: _serving(server), 10), server.logs().decode(errors="replace")

        # docker port and docker ps show the port
        assert f"{CONTAINER_PORT}/tcp -> 0.0.0.0:{port}" in _docker_cli("port", server.name)
        listed = _ps_ports(server.id)
        assert f"0.0.0.0:{port}->{CONTAINER_PORT}/tcp" in listed, listed
        assert _ps_ports(exposer) == "9091/tcp"  # --expose without -p

        # the port answers on loopback and on the test host link address, and from the test host
        for address in ("127.0.0.1", testhost.host_ip):
            body: list[str | None] = [None]

            def fetched(address: str = address, body: list[str | None] = body) -> bool:
                body[0] = _get_from_host(address, port)
                return body[0] is not None

            assert wait_for(fetched, 10), f"http://{address}:{port}/ is not served"
            assert PAGE in (body[0] or ""), body[0]
        result = testhost.http_get(f"http://{testhost.host_ip}:{port}/")
        assert result.returncode == 0 and PAGE in result.stdout, f"{result.stdout}{result.stderr}"

        # the containers reach each other over the vxlanpy network (eth0); the way out is docker_gwbridge (eth1)
        server_ip = container_ip(server, network)
        code, page = exec_ok(client, ["timeout", "3", "wget", "-q", "-O", "-", f"http://{server_ip}:{CONTAINER_PORT}/"])
        assert code == 0 and PAGE in page, page
        code, routes = exec_ok(client, ["ip", "route"])
        assert code == 0 and "default via" in routes and "dev eth1" in routes.split("default", 1)[1], routes
        assert "10.77.61.0/24 dev eth0" in routes, routes
        reached, output = ping_ok(client, testhost.ip)
        assert reached, f"no egress through docker_gwbridge to {testhost.ip}:\n{output}"

        # isolation still holds: nothing from this network reaches another vxlanpy network, nor the reverse
        isolated, output = ping_fails(client, container_ip(stranger, other))
        assert isolated, f"{client.name} reaches {stranger.name} on another vxlanpy network:\n{output}"
        isolated, output = ping_fails(stranger, server_ip)
        assert isolated, f"{stranger.name} reaches {server.name}:\n{output}"

        # vxlanpy adds no NAT of its own for this network (Docker's bridge masquerades and DNATs: no double NAT)
        assert "MASQUERADE" not in _nat_rules("VXP-7061") and "DNAT" not in _nat_rules("VXPD-7061")
        assert "MASQUERADE" in _nat_rules("VXP-7063")

        # vxlanpy inspect shows the ports, as Docker publishes them
        text, ports = _inspect_ports(plugin, network)
        assert f"0.0.0.0:{port}->{CONTAINER_PORT}/tcp" in ports[server.name], text
        assert ports[client.name] == [], text
        assert "gateway:   docker_gwbridge" in text, text
    finally:
        for container in (server, client, stranger):
            container.remove(force=True)
        subprocess.run(["docker", "rm", "-f", exposer], capture_output=True, timeout=60, check=False)

    def closed() -> bool:
        return not tcp_connect("127.0.0.1", port, timeout=1)

    assert wait_for(closed, 10), f"port {port} still answers after the container was removed"


@pytest.mark.parametrize(
    ("internal", "options", "message"),
    [
        (True, {"gateway": "docker_gwbridge"}, "does not apply to an --internal network"),
        (False, {"gateway": "gwbridge"}, "gateway='gwbridge' is not valid"),
    ],
    ids=["internal", "unknown-value"],
)
def test_gateway_option_is_checked(
    create_network: Callable[..., Any], internal: bool, options: dict[str, str], message: str
) -> None:
    import docker

    with pytest.raises(docker.errors.APIError) as raised:
        create_network(vni=7064, subnet="10.77.64.0/24", options=options, internal=internal)
    assert message in str(raised.value), raised.value
