"""Swarm services on vxlanpy networks (issue 17): a 3-node swarm (swarm.py), the managed plugin on every node.

Each test asserts what a user sees: `docker network create --scope swarm` on the manager (refused on a worker),
a service's tasks on all three nodes reaching each other, its name resolving and its VIP balancing, a plain
`docker run` joining the attachable network, scale/drain/rm leaving nothing behind, and a dead worker's tasks
rescheduled elsewhere.  The last test kills a worker: it runs last.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.multihost.cluster import exec_text, kill_pids, netns_pids, wait_for, with_descendants

from .swarm import SERVICE_IMAGE, SWARM_PLUGIN, Swarm, SwarmNode, service_answers

PORT = 8080
# Each task answers every TCP connection on PORT with its hostname (the container's short id), and keeps running.
ANSWER_HOSTNAME = ["nc", "-ll", "-p", str(PORT), "-e", "hostname"]


@dataclass
class SwarmNetwork:
    name: str
    id: str
    subnet: str


def create_network(swarm: Swarm, name: str, subnet: str) -> SwarmNetwork:
    created = swarm.manager.docker(
        "network", "create", "-d", SWARM_PLUGIN, "--scope", "swarm", "--attachable", "--subnet", subnet, name,
        check=False,
    )  # fmt: skip
    assert created.returncode == 0, f"network create on the manager failed: {created.stderr}\n{swarm.plugin_logs()}"
    return SwarmNetwork(name, created.stdout.strip(), subnet)


def create_service(swarm: Swarm, name: str, network: SwarmNetwork, *options: str) -> None:
    created = swarm.manager.docker(
        "service", "create", "--detach", "--name", name, "--network", network.name, "--no-resolve-image",
        "--stop-grace-period", "1s", *options, SERVICE_IMAGE, *ANSWER_HOSTNAME,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr


def remove_service(swarm: Swarm, name: str) -> None:
    swarm.manager.docker("service", "rm", name)
    gone = wait_for(lambda: not any(c for n in swarm.nodes if n.alive for c in service_containers(n, name)), 30)
    assert gone, f"the containers of {name} are still there after `docker service rm`"


def service_containers(node: SwarmNode, service: str) -> list[Any]:
    # The API's list, not the SDK's containers.list, which inspects each one and fails on one just removed.
    return list(node.client.api.containers(all=True, filters={"label": f"com.docker.swarm.service.name={service}"}))


def short_id(task: dict[str, Any]) -> str:
    return str(task["Status"]["ContainerStatus"]["ContainerID"])[:12]


def vni_of(swarm: Swarm, network: SwarmNetwork) -> int:
    """The VNI the plugin gave the network, from its record in etcd (every node's has the same)."""
    for key, value in swarm.etcd_keys().items():
        if key.endswith(f"/networks/{network.id}"):
            return int(json.loads(value)["config"]["vni"])
    raise AssertionError(f"no record of {network.name} ({network.id}) in etcd: {sorted(swarm.etcd_keys())}")


def first_answer(container: Any, address: str, timeout: float = 10.0) -> list[str]:
    """The first answer of address:PORT to a connection from `container`, retried for `timeout` seconds ([]: none)."""
    return list(wait_for(lambda: [a for a in service_answers(container, address, PORT, 1) if a], timeout=timeout))


def assert_tasks_reach_each_other(swarm: Swarm, tasks: list[dict[str, Any]], network: SwarmNetwork) -> None:
    """From every task, a TCP connection to every other task's address is answered by that task."""
    failures = []
    for source in tasks:
        container = swarm.task_container(source)
        for target in tasks:
            if target is source:
                continue
            address = swarm.task_address(target, network.id)
            answers = first_answer(container, address)
            if answers != [short_id(target)]:
                failures.append(
                    f"{swarm.by_id(source['NodeID']).role} -> {swarm.by_id(target['NodeID']).role} ({address}): "
                    f"{answers or 'no answer'}"
                )
    assert not failures, "\n".join(failures) + "\n" + swarm.plugin_logs()


@pytest.fixture(scope="module")
def overlay(swarm: Swarm) -> Iterator[SwarmNetwork]:
    """The module's swarm network, made on the manager as a user does."""
    network = create_network(swarm, f"vxsw-{secrets.token_hex(3)}", "10.171.1.0/24")
    yield network
    problems = swarm.remove_services_and_networks()
    assert not problems, "removing the module's services and networks:\n  " + "\n  ".join(problems)


@pytest.fixture(scope="module")
def web(swarm: Swarm, overlay: SwarmNetwork) -> Iterator[list[dict[str, Any]]]:
    """Service `web`: three replicas on the module's network, one per node; yields its running tasks.

    --endpoint-mode dnsrr: a VIP cannot work on a remote driver's network.  dockerd gives a node's swarm network
    a load-balancer endpoint (lb-<network>, whose sandbox holds the VIPs and their IPVS services) only when the
    driver is "overlay" (moby daemon/network.go, createNetwork: `if agent && driver == "overlay"` ...
    NetworkOptionLBEndpoint); without it libnetwork programs no IPVS service for the VIP (service_linux.go,
    addLBBackend: dockerd logs "addLBBackend <id>/<name>: Unable to find load balancing endpoint for network
    <id>"), so the VIP resolves but nothing answers it ("No route to host").  In dnsrr mode the name resolves to
    the tasks' own addresses, in a shuffled order."""
    create_service(swarm, "web", overlay, "--replicas", "3", "--replicas-max-per-node", "1", "--endpoint-mode", "dnsrr")
    yield swarm.wait_tasks("web", 3, nodes={"m1", "w1", "w2"})
    swarm.manager.docker("service", "rm", "web", check=False)


def test_network_create_works_on_the_manager_and_is_refused_on_a_worker(swarm: Swarm, overlay: SwarmNetwork) -> None:
    def inspect() -> dict[str, Any]:
        return dict(json.loads(swarm.manager.docker("network", "inspect", overlay.name).stdout)[0])

    # The manager allocates the network (IPAM, then the driver's AllocateNetwork) just after `network create`.
    inspected = wait_for(lambda: (found := inspect())["Driver"] and found, timeout=10) or inspect()
    assert inspected["Scope"] == "swarm" and inspected["Driver"] == SWARM_PLUGIN, (
        f"{json.dumps(inspected, indent=1)}\n{swarm.plugin_logs()}\n{swarm.manager.dockerd.log_tail(30)}"
    )
    assert inspected["Attachable"] is True
    assert inspected["IPAM"]["Config"][0]["Subnet"] == overlay.subnet, inspected["IPAM"]

    refused = swarm["w1"].docker(
        "network", "create", "-d", SWARM_PLUGIN, "--scope", "swarm", "--attachable", "--subnet", "10.171.2.0/24",
        "vxsw-from-a-worker", check=False,
    )  # fmt: skip
    assert refused.returncode != 0, refused.stdout
    # Docker's own refusal, before any call to the plugin.
    assert "Cannot create a multi-host network from a worker node" in refused.stderr, refused.stderr


def test_service_tasks_on_every_node_reach_each_other(
    swarm: Swarm, overlay: SwarmNetwork, web: list[dict[str, Any]]
) -> None:
    listing = swarm.manager.docker("service", "ps", "--filter", "desired-state=running", "--format", "{{.Node}}", "web")
    assert sorted(listing.stdout.split()) == ["swarm-m1", "swarm-w1", "swarm-w2"], listing.stdout
    for task in web:
        address = swarm.task_address(task, overlay.id)
        assert address.startswith("10.171.1."), address
    assert_tasks_reach_each_other(swarm, web, overlay)


def test_service_name_resolves_to_its_tasks_and_connections_spread_over_them(
    swarm: Swarm, overlay: SwarmNetwork, web: list[dict[str, Any]]
) -> None:
    client = swarm.task_container(web[0])
    addresses = {swarm.task_address(task, overlay.id) for task in web}
    for name in ("web", "tasks.web"):
        code, output = exec_text(client, ["nslookup", name])
        assert code == 0 and all(address in output for address in addresses), f"`nslookup {name}` from a task: {output}"

    # Docker's DNS lists the tasks in a new order at every lookup; a client that takes the first address reaches
    # one task or another.  (Not `nc web`: getaddrinfo sorts the addresses again, RFC 3484's longest matching
    # prefix first, so a task always picks itself.)
    answers = []
    for _ in range(9):
        first = first_address(client, "web")
        answers += [first_answer(client, first, timeout=5)[0] if first in addresses else f"resolved to {first}"]
    answered = set(answers)
    assert len(answered) >= 2 and answered <= {short_id(task) for task in web}, (
        f"9 connections to the first address of web:{PORT} were answered by {answers}\n{swarm.plugin_logs()}"
    )


def first_address(container: Any, name: str) -> str:
    """The first address `nslookup name` lists (busybox: "Address: A" lines after the server's "Address:\tS")."""
    code, output = exec_text(container, ["nslookup", name])
    found = [line.split()[1] for line in output.splitlines()[2:] if line.startswith("Address:")]
    return found[0] if code == 0 and found else f"nothing ({output.strip()})"


def test_a_plain_container_on_a_worker_joins_the_attachable_network(
    swarm: Swarm, overlay: SwarmNetwork, web: list[dict[str, Any]]
) -> None:
    worker = swarm["w1"]
    started = worker.docker(
        "run", "-d", "--network", overlay.name, "--name", "vxsw-plain", SERVICE_IMAGE, "sleep", "600", check=False
    )
    assert started.returncode == 0, f"docker run on w1: {started.stderr}\n{swarm.plugin_logs()}"
    container = worker.container(started.stdout.strip())
    try:
        remote = next(task for task in web if swarm.by_id(task["NodeID"]).role == "m1")
        address = swarm.task_address(remote, overlay.id)
        answers = first_answer(container, address)
        assert answers == [short_id(remote)], f"w1's plain container -> m1's task {address}: {answers}"
    finally:
        container.remove(force=True)


def test_scale_drain_and_rm_leave_nothing_behind(swarm: Swarm) -> None:
    network = create_network(swarm, f"vxsw-life-{secrets.token_hex(3)}", "10.171.5.0/24")
    create_service(swarm, "life", network, "--replicas", "2")
    swarm.wait_tasks("life", 2)
    vni = vni_of(swarm, network)
    present = swarm.leftovers(network.id, vni)  # what the final check must find gone: it sees it while in use
    assert any("vxbr-" in item for item in present) and any(item.startswith("etcd:") for item in present), present

    swarm.manager.docker("service", "scale", "--detach", "life=6")
    tasks = swarm.wait_tasks("life", 6, nodes={"m1", "w1", "w2"})
    assert_tasks_reach_each_other(swarm, tasks[:3], network)
    swarm.manager.docker("service", "scale", "--detach", "life=1")
    swarm.wait_tasks("life", 1)
    # One task left in the whole swarm: one container's veth on the network's bridge, on one node.
    assert wait_for(lambda: sum(len(endpoint_links(node, vni)) for node in swarm.nodes) == 1, timeout=15), {
        node.role: endpoint_links(node, vni) for node in swarm.nodes
    }

    swarm.manager.docker("service", "scale", "--detach", "life=3")
    swarm.wait_tasks("life", 3)
    swarm.manager.docker("node", "update", "--availability", "drain", swarm["w1"].node_id)
    try:
        tasks = swarm.wait_tasks("life", 3)
        assert "w1" not in {swarm.by_id(task["NodeID"]).role for task in tasks}
        # The drained node keeps nothing of the network: no task there uses it any more.
        drained = wait_for(lambda: not {link for link in swarm["w1"].links() if link.endswith(str(vni))}, 20)
        assert drained, f"w1 still has {sorted(swarm['w1'].links())} after the drain"
    finally:
        swarm.manager.docker("node", "update", "--availability", "active", swarm["w1"].node_id)

    remove_service(swarm, "life")
    swarm.manager.docker("network", "rm", network.name)
    left = swarm.wait_no_leftovers(network.id, vni)
    assert not left, "left behind after service rm and network rm:\n  " + "\n  ".join(left)


def endpoint_links(node: SwarmNode, vni: int) -> set[str]:
    """The containers' veths on the network's bridge on `node`."""
    ports = node.ip_json("link", "show", "master", f"vxbr-{vni}")
    return {link["ifname"] for link in ports if link["ifname"].startswith("vxh-")}


def test_vxlanpys_ipam_grants_each_node_the_address_the_manager_chose(swarm: Swarm) -> None:
    """--ipam-driver vxlanpy: the manager's allocator reserves each task's address in vxlanpy's IPAM, and every
    node asks for it again when it creates the endpoint (granted); an address in use is still refused."""
    subnet = "10.171.7.0/24"
    name = f"vxsw-ipam-{secrets.token_hex(3)}"
    created = swarm.manager.docker(
        "network", "create", "-d", SWARM_PLUGIN, "--ipam-driver", SWARM_PLUGIN, "--scope", "swarm", "--attachable",
        "--subnet", subnet, name, check=False,
    )  # fmt: skip
    assert created.returncode == 0, f"network create: {created.stderr}\n{swarm.plugin_logs()}"
    network = SwarmNetwork(name, created.stdout.strip(), subnet)
    create_service(
        swarm, "ipam", network, "--replicas", "3", "--replicas-max-per-node", "1", "--endpoint-mode", "dnsrr"
    )
    tasks = swarm.wait_tasks("ipam", 3, nodes={"m1", "w1", "w2"})
    assert_tasks_reach_each_other(swarm, tasks, network)
    reserved = [key for key in swarm.etcd_keys() if "/ipam/addresses/10.171.7.0_24/" in key]
    for task in tasks:
        assert any(key.endswith("/" + swarm.task_address(task, network.id)) for key in reserved), reserved

    taken = swarm.task_address(tasks[0], network.id)
    refused = swarm["w1"].docker(
        "run", "--rm", "--network", name, "--ip", taken, SERVICE_IMAGE, "true", check=False, timeout=60
    )
    assert refused.returncode != 0, f"a second container got {taken}: {refused.stdout}"
    # Docker tells only "attaching to network failed ... check manager logs": the manager's plugin says why.
    manager_log = swarm.manager.plugin_log(SWARM_PLUGIN, 2000)
    assert f"{taken} is already in use" in manager_log, f"{refused.stderr}\n{swarm.plugin_logs()}"

    vni = vni_of(swarm, network)
    remove_service(swarm, "ipam")
    swarm.manager.docker("network", "rm", name)
    left = swarm.wait_no_leftovers(network.id, vni)
    left += [f"etcd: {key}" for key in swarm.etcd_keys() if "10.171.7.0_24" in key]
    assert not left, "left behind after service rm and network rm:\n  " + "\n  ".join(left)


def test_a_killed_workers_tasks_are_rescheduled_and_reachable(swarm: Swarm) -> None:
    network = create_network(swarm, f"vxsw-kill-{secrets.token_hex(3)}", "10.171.6.0/24")
    create_service(swarm, "survivor", network, "--replicas", "3", "--replicas-max-per-node", "2")
    swarm.wait_tasks("survivor", 3, nodes={"m1", "w1", "w2"})

    victim = swarm["w2"]
    # The host dies: its dockerd, its containerd, its plugin and its containers, all at once.
    kill_pids(with_descendants([pid for pid in netns_pids(victim.netns) if pid != victim.registry.pid]))
    victim.dockerd.kill9()
    tasks = swarm.wait_tasks("survivor", 3, nodes={"m1", "w1"}, timeout=90)
    down = swarm.manager.client.api.inspect_node(victim.node_id)["Status"]["State"]
    assert down == "down", down
    assert_tasks_reach_each_other(swarm, tasks, network)
