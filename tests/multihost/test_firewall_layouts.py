"""vxlanpy's firewall under each layout dockerd may leave on a host, with real dockerds and containers (issue 11).

h1's dockerd is reconfigured and restarted: (a) `--iptables=false --ip6tables=false` (no Docker chain at all, as
if dockerd never had any) with the FORWARD policy ACCEPT and DROP; (b) no DOCKER-USER chain, as with Docker 29's nftables
backend, beside a `docker-bridges` nftables table as 29 makes it; (c) a plain restart, after which dockerd puts
its jumps (28: DOCKER-USER, DOCKER-FORWARD) above vxlanpy's hook, with the default bridge docker0 whose
`-i docker0 -j ACCEPT` would let its containers into vxlanpy networks; (d) IPv4 forwarding turned off under a
running plugin.  Each time, what a user sees is checked with containers (`assert_layout_holds`): two vxlanpy
networks on h1 cannot reach each other, an `--internal` network reaches nothing and nothing reaches it, a
container reaches an address outside (the cluster's outsider namespace on the underlay), and a published port on
h1 answers from h2 and from outside; `vxlanpy doctor`, run in h1, names the layout.

The `firewall_host` fixture puts h1 back, whatever the test did or where it failed: the FORWARD policies,
nftables tables the test made, ip_forward, and dockerd with its original daemon.json and bridge (restarted, so
it rebuilds its chains).  Containers and networks are removed by conftest.py as after any test.

Run it on an engine:  VXLANPY_TEST_ENGINE=28.5 .venv/bin/python -m pytest tests/multihost/test_firewall_layouts.py
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from .cluster import (
    DRIVER,
    IMAGE,
    LABELS,
    Cluster,
    Host,
    container_address,
    docker,
    exec_text,
    netns_http,
    ping,
    ping_until,
    vxlanpy_command,
    wait_for,
)
from .test_restarts import SERVE, assert_pings, dockerd_log, plugin_logs
from .test_restarts import run as run_container

pytestmark = pytest.mark.firewall_layouts

CreateNetwork = Callable[..., dict[str, Any]]

OUTSIDER = "10.250.0.99"  # the cluster's outsider namespace: on the underlay, not a vxlanpy host
# Serves the image's /www/index.html.  Ends on SIGTERM (httpd as PID 1 would ignore it): a dockerd stopping with
# the container running then need not wait out its 10 s stop timeout.
WEB = ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]
PAGE = "vxlanpy-multihost"
PUBLISHED = 8080
HOOK = "-A FORWARD -j VXLANPY-FORWARD"
# h1's plugin checks its hooks every second here (VXLANPY_HOOK_CHECK_SECONDS; 10 s by default): each wait below
# for the hooks to go back on top ends within about a second instead of about five.
HOOK_CHECK_SECONDS = 1
MOVED_BACK = "above vxlanpy's hook (dockerd restarted?): hook moved back first"  # the plugin's log (iptables.py)
WATCH = 15.0  # a bound on those waits, well above the default period as well
TOOLS = ("iptables", "ip6tables")


# --------------------------------------------------------------------------------------------- h1's firewall


def iptables(host: Host, *argv: str, tool: str = "iptables", check: bool = True) -> str:
    result = host.exec_ip([tool, "-w", *argv], check=check)
    return result.stdout


def forward_rules(host: Host) -> list[str]:
    """`iptables -S FORWARD` in h1, as a user would look at it."""
    return iptables(host, "-S", "FORWARD").splitlines()


def counters(host: Host) -> str:
    """h1's IPv4 filter and nat tables with their packet counters, for a failure message."""
    return host.exec_ip(["iptables-save", "-c"]).stdout


def policies(host: Host) -> dict[str, str]:
    return {tool: iptables(host, "-S", "FORWARD", tool=tool).splitlines()[0].split()[2] for tool in TOOLS}


def docker_chains(host: Host) -> list[str]:
    return [
        line
        for tool in TOOLS
        for table in ("filter", "nat")
        for line in iptables(host, "-t", table, "-S", tool=tool).splitlines()
        if ("DOCKER" in line or "docker0" in line) and "VXLANPY" not in line  # vxlanpy's own hook names docker0
    ]


def remove_docker_chains(host: Host, only: str | None = None) -> None:
    """What a host where dockerd never had iptables looks like: every rule and chain of Docker's deleted (in the
    test's namespace only; dockerd puts them back when it restarts with iptables on).  With `only`, just the
    rules of built-in chains that name it (docker0's, left behind by a dockerd started without it)."""
    for tool in TOOLS:
        for table in ("filter", "nat"):
            listing = iptables(host, "-t", table, "-S", tool=tool).splitlines()
            for line in listing:
                words = line.split()
                ours = any(word in line for word in ([only] if only else ["DOCKER", "docker0"]))
                if words[0] == "-A" and not words[1].startswith("DOCKER") and ours:
                    iptables(host, "-t", table, "-D", *words[1:], tool=tool)
            if only:
                continue
            chains = [line.split()[1] for line in listing if line.startswith("-N DOCKER")]
            if not chains:
                continue
            # One transaction: vxlanpy's hook check may put its rule back into DOCKER-USER between a -F and a -X.
            commands = [f"{action} {chain}" for action in ("-F", "-X") for chain in chains]
            restored = subprocess.run(
                ["ip", "netns", "exec", host.netns, f"{tool}-restore", "-w", "--noflush"],
                input="\n".join([f"*{table}", *commands, "COMMIT", ""]),
                capture_output=True, text=True, timeout=20, check=False,
            )  # fmt: skip
            assert restored.returncode == 0, f"{tool}-restore {commands}: {restored.stderr}"


def delete_docker_user(host: Host) -> None:
    for tool in TOOLS:
        while "-A FORWARD -j DOCKER-USER" in iptables(host, "-S", "FORWARD", tool=tool).splitlines():
            iptables(host, "-D", "FORWARD", "-j", "DOCKER-USER", tool=tool)
        iptables(host, "-F", "DOCKER-USER", tool=tool, check=False)
        iptables(host, "-X", "DOCKER-USER", tool=tool, check=False)


def hook_first(host: Host) -> bool:
    return all(iptables(host, "-S", "FORWARD", tool=tool).splitlines()[1:2] == [HOOK] for tool in TOOLS)


def doctor(host: Host) -> dict[str, list[dict[str, Any]]]:
    """`sudo vxlanpy doctor --json` run in h1 (its network namespace, its plugin and dockerd), by check."""
    env = {
        **os.environ,
        "VXLANPY_SOCKET": str(host.plugin.socket_path),
        "DOCKER_HOST": f"unix://{host.dockerd.socket_path}",
    }
    argv = ["ip", "netns", "exec", host.netns, vxlanpy_command()[0], "doctor", "--json"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode in (0, 1), result.stderr
    found: dict[str, list[dict[str, Any]]] = {}
    for finding in json.loads(result.stdout):
        found.setdefault(finding["check"], []).append(finding)
    return found


def layout_seen(host: Host) -> str:
    return str(doctor(host)["firewall layout"][0]["summary"])


@dataclass
class Saved:
    config: dict[str, Any]
    default_bridge: bool
    policies: dict[str, str]
    ip_forward: str
    nft_tables: list[tuple[str, str]] = field(default_factory=list)  # made by the test, deleted afterwards


@pytest.fixture(scope="module", autouse=True)
def quick_hook_check(vx_cluster: Cluster) -> Iterator[None]:
    """h1's plugin with VXLANPY_HOOK_CHECK_SECONDS=HOOK_CHECK_SECONDS during this module, as before afterwards."""
    plugin = vx_cluster["h1"].plugin
    saved = dict(plugin.extra_env)

    def restart(env: dict[str, str]) -> None:
        plugin.stop()
        plugin.extra_env = env
        plugin.start()

    restart({**saved, "VXLANPY_HOOK_CHECK_SECONDS": str(HOOK_CHECK_SECONDS)})
    try:
        yield
    finally:
        restart(saved)


@pytest.fixture
def firewall_host(vx_cluster: Cluster) -> Iterator[tuple[Host, Saved]]:
    """h1, whose dockerd and firewall the test may change: afterwards both are as before, whatever happened."""
    host = vx_cluster["h1"]
    dockerd = host.dockerd
    saved = Saved(
        dict(dockerd.config),
        dockerd.default_bridge,
        policies(host),
        host.exec_ip(["sysctl", "-n", "net.ipv4.ip_forward"], check=True).stdout.strip(),
    )
    before = docker_chains(host)
    yield host, saved
    problems = []
    if not host.plugin.alive:
        host.plugin.start()
    for family, table in saved.nft_tables:
        host.exec_ip(["nft", "delete", "table", family, table])
    host.exec_ip(["sysctl", "-qw", f"net.ipv4.ip_forward={saved.ip_forward}"], check=True)
    for tool, policy in saved.policies.items():
        iptables(host, "-P", "FORWARD", policy, tool=tool)
    bridged = dockerd.default_bridge
    if dockerd.config != saved.config or bridged != saved.default_bridge or docker_chains(host) != before:
        dockerd.default_bridge = saved.default_bridge
        dockerd.restart(config=saved.config)  # rebuilds Docker's chains from scratch
    if bridged and not saved.default_bridge:  # docker0 and the rules for it that dockerd left
        remove_docker_chains(host, only="docker0")
        host.exec_ip(["ip", "link", "del", "docker0"])
        if host.has_link("docker0"):
            problems.append("docker0 is still there")
    if not wait_for(lambda: hook_first(host), timeout=WATCH, interval=0.5):
        problems.append(f"vxlanpy's hook is not first again: {forward_rules(host)}")
    assert not problems, problems


# --------------------------------------------------------------------------------------------- the checks


def internal_network(host: Host, subnet: str, vni: int) -> Any:
    pool = docker.types.IPAMPool(subnet=subnet)
    return host.docker.networks.create(
        f"vxmh-int{vni}-{secrets.token_hex(3)}",
        driver=DRIVER,
        options={"vni": str(vni)},
        ipam=docker.types.IPAMConfig(driver="vxlanpy", pool_configs=[pool]),
        internal=True,
        labels=dict(LABELS),
    )


def outsider_reaches(outsider: str, address: str) -> bool:
    result = subprocess.run(
        ["ip", "netns", "exec", outsider, "/bin/busybox", "ping", "-c", "1", "-W", "1", address],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.returncode == 0


def fetch(netns: str, address: str, timeout: float = 10.0) -> str:
    """The page at http://address:PUBLISHED/ fetched from inside `netns`, retried until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = netns_http(netns, "GET", address, PUBLISHED, "/", timeout=2)
            page = str(body) if status == 200 else f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            page = f"error: {exc!r}"
        if PAGE in page or time.monotonic() >= deadline:
            return page
        time.sleep(0.3)


def assert_layout_holds(cluster: Cluster, create_network: CreateNetwork, label: str) -> str:
    """What a user of vxlanpy must see on h1 whatever the firewall layout (see the module docstring); returns the
    address of the web container, on h1's network "red"."""
    h1, h2 = cluster["h1"], cluster["h2"]
    red = create_network(subnet="10.66.1.0/24", vni=341, hosts=("h1", "h2"))
    blue = create_network(subnet="10.66.2.0/24", vni=342, hosts=("h1",))["h1"].name
    walled = internal_network(h1, "10.66.3.0/24", 343).name
    red_name = red["h1"].name
    web = run_container(h1, red_name, command=WEB, ports={"80/tcp": PUBLISHED})
    remote = run_container(h2, red_name)
    stranger = run_container(h1, blue)
    inmate, cellmate = run_container(h1, walled), run_container(h1, walled)
    web_ip = container_address(web, red_name)[0]
    inmate_ip = container_address(inmate, walled)[0]
    context = f"{label}; h1 FORWARD: {forward_rules(h1)}"

    assert_pings(remote, web_ip, f"{label}: red on h2 -> red on h1", cluster)
    assert_pings(cellmate, inmate_ip, f"{label}: inside the internal network", cluster)
    assert not ping(stranger, web_ip, wait=2)[0], f"blue reaches red: networks are not isolated ({context})"
    assert not ping(web, container_address(stranger, blue)[0], wait=2)[0], f"red reaches blue ({context})"
    with cluster.outsider(OUTSIDER) as outsider:
        # An earlier outsider had another MAC: h1 would take seconds to find out (neighbour entry STALE, then
        # probed) and the first pings would be lost for it.
        h1.exec_ip(["ip", "neigh", "flush", "to", OUTSIDER], check=True)
        ok, output = ping_until(web, OUTSIDER)
        assert ok, f"{label}: no egress from red to {OUTSIDER}: {output}\n{counters(h1)}"
        assert not ping(inmate, OUTSIDER, wait=2)[0], f"the internal network reaches outside ({context})"
        # Even with a route to its subnet through h1, nothing reaches into the internal network.
        subprocess.run(["ip", "-n", outsider, "route", "add", "10.66.0.0/16", "via", h1.ip], check=True)
        assert not outsider_reaches(outsider, inmate_ip), f"outside reaches the internal network ({context})"
        assert not outsider_reaches(outsider, web_ip), f"outside reaches an unpublished container ({context})"
        page = fetch(outsider, h1.ip)
        assert PAGE in page, f"the published port of h1 does not answer from outside: {page} ({context})"
    page = fetch(h2.netns, h1.ip)
    assert PAGE in page, f"the published port of h1 does not answer from h2: {page}\n{plugin_logs(cluster)}"
    return web_ip


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("policy", ["ACCEPT", "DROP"])
def test_dockerd_without_iptables(
    vx_cluster: Cluster, firewall_host: tuple[Host, Saved], create_network: CreateNetwork, policy: str
) -> None:
    h1, _ = firewall_host

    def while_down() -> None:
        remove_docker_chains(h1)
        for tool in TOOLS:
            iptables(h1, "-P", "FORWARD", policy, tool=tool)

    # ip6tables too: since Docker 27 it defaults to true, and does not follow iptables=false.
    h1.dockerd.restart(config={"iptables": False, "ip6tables": False}, while_down=while_down)
    assert not docker_chains(h1), f"dockerd --iptables=false made rules: {docker_chains(h1)}"
    assert wait_for(lambda: hook_first(h1), timeout=WATCH, interval=0.5), forward_rules(h1)
    assert layout_seen(h1) == "no docker chains (--iptables=false)"
    assert_layout_holds(vx_cluster, create_network, f"--iptables=false, FORWARD policy {policy}")
    assert policies(h1) == {tool: policy for tool in TOOLS}, "vxlanpy changed the FORWARD policy"


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (apt-get install nftables)")
def test_no_docker_user_chain_beside_an_nftables_docker_table(
    vx_cluster: Cluster, firewall_host: tuple[Host, Saved], create_network: CreateNetwork
) -> None:
    h1, saved = firewall_host
    delete_docker_user(h1)
    # Docker 29's nftables backend: its own table and forward base chain (policy accept), no DOCKER-USER.
    saved.nft_tables.append(("ip", "docker-bridges"))
    h1.exec_ip(["nft", "add", "table", "ip", "docker-bridges"], check=True)
    h1.exec_ip(["nft", "add", "chain", "ip", "docker-bridges", "filter-FORWARD",
                "{ type filter hook forward priority filter; policy accept; }"], check=True)  # fmt: skip
    assert "docker nftables tables present (ip docker-bridges" in layout_seen(h1)
    assert_layout_holds(vx_cluster, create_network, "no DOCKER-USER, nftables docker-bridges")
    found = doctor(h1)
    assert [f["status"] for f in found["vxlanpy's FORWARD hook"]] == ["ok"], found["vxlanpy's FORWARD hook"]
    assert [f["status"] for f in found["nftables forward chains"]] == ["ok"], found["nftables forward chains"]


def test_dockerd_restart_puts_its_jumps_above_vxlanpys_hook_and_the_hook_goes_back_first(
    vx_cluster: Cluster,
    firewall_host: tuple[Host, Saved],
    create_network: CreateNetwork,
    capsys: pytest.CaptureFixture[str],
) -> None:
    h1, _ = firewall_host
    moved_before = h1.plugin.log_text().count(MOVED_BACK)
    h1.dockerd.default_bridge = True  # docker0, whose containers Docker lets out to anywhere
    h1.dockerd.restart()
    after_start = forward_rules(h1)
    with capsys.disabled():
        print(f"\nh1's dockerd {h1.docker.version().get('Version')} just (re)started, iptables -S FORWARD:\n  "
              + "\n  ".join(after_start))  # fmt: skip
    jumps = [line for line in after_start if line.startswith("-A FORWARD")]
    # With the hooks checked every second, vxlanpy may have moved its hook back before this read: its log says so.
    displaced = jumps[0] == "-A FORWARD -j DOCKER-USER" or h1.plugin.log_text().count(MOVED_BACK) > moved_before
    assert displaced, f"dockerd did not put DOCKER-USER first: {after_start}\n{plugin_logs(vx_cluster)}"
    user = iptables(h1, "-S", "DOCKER-USER").splitlines()
    assert user[1:2] == ["-A DOCKER-USER -j VXLANPY-FORWARD"], f"DOCKER-USER lost vxlanpy's hook: {user}"
    assert wait_for(lambda: hook_first(h1), timeout=WATCH, interval=0.5), (
        f"vxlanpy did not put its hook back first: {forward_rules(h1)}\n{plugin_logs(vx_cluster)}"
    )
    layout = layout_seen(h1)
    assert layout.startswith("docker iptables"), layout
    web_ip = assert_layout_holds(vx_cluster, create_network, f"after a dockerd restart ({layout})")
    # A container on Docker's default bridge does not get into a vxlanpy network either.
    on_docker0 = h1.docker.containers.run(IMAGE, SERVE, detach=True, labels=dict(LABELS),
                                          name=f"vxmh-d0-{secrets.token_hex(3)}")  # fmt: skip
    code, output = exec_text(on_docker0, ["ping", "-c", "1", "-W", "2", web_ip])
    assert code != 0, f"a container on docker0 reaches a vxlanpy network: {output}\n{forward_rules(h1)}"
    code, output = exec_text(on_docker0, ["ping", "-c", "1", "-W", "2", container_address(on_docker0, "bridge")[2]])
    assert code == 0, f"docker0's container cannot even reach its gateway: {output}\n{dockerd_log(h1)}"


def test_ip_forward_turned_off_is_turned_back_on(
    vx_cluster: Cluster, firewall_host: tuple[Host, Saved], create_network: CreateNetwork
) -> None:
    h1, _ = firewall_host
    h1.exec_ip(["sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True)
    assert wait_for(
        lambda: h1.exec_ip(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1", timeout=WATCH, interval=0.5
    ), f"vxlanpy left IPv4 forwarding off\n{plugin_logs(vx_cluster)}"
    assert "vxlanpy turned it on" in h1.plugin.log_text()
    assert_layout_holds(vx_cluster, create_network, "after ip_forward was turned off")
