"""A 3-node swarm on the managed plugin: tests/multihost's cluster with one manager and two workers.

Layout (tests/multihost/cluster.py builds the namespaces, the underlay, etcd and the dockerds)::

    vxmh-ul-<hex>   the underlay bridge, etcd on 10.250.0.254:2379
    vxmh-h1-<hex>   m1, the manager: 10.250.0.1, dockerd (hostname swarm-m1), a registry on 127.0.0.1:5000
    vxmh-h2-<hex>   w1, a worker:    10.250.0.2, dockerd (hostname swarm-w1), a registry on 127.0.0.1:5000
    vxmh-h3-<hex>   w2, a worker:    10.250.0.3, dockerd (hostname swarm-w2), a registry on 127.0.0.1:5000

Each node's registry serves tests/plugin's registry storage (where the `built` fixture pushed the plugin and where
the busybox image is pushed here), on the node's own loopback, which Docker trusts without TLS.  Every node installs
the plugin from it under one name (vxlanpy/vxlanpy:latest, the name a swarm network's driver is), with
VXLANPY_STORE on the session's etcd, VXLANPY_HOST=<role> (the hosts share the machine's hostname),
VXLANPY_SCOPE=global and the default VNI range (4096-65535, as swarm's overlay VNIs: its ingress network holds 4096
on port 4789 on every node, and swarm networks take vxlanpy's VNIs from the top); services run 127.0.0.1:5000/vxlanpy-test/busybox, which every node has pulled, so a task's
pull never leaves its node.  The swarm: `swarm init` on m1 with a 1 s dispatcher heartbeat (a dead node is seen
within seconds) and its own address pool (swarm's ingress stays off the tests' subnets); w1 and w2 join.

Teardown, whatever the state: services, then containers and networks on every node, `swarm leave -f`, the plugins,
the registries, then the cluster (dockerds, etcd, namespaces, /tmp/vxmh-<hex>).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tests.multihost.cluster import ETCD_URL, LEASE_TTL, Cluster, Host, exec_text, remove_stale_clusters, wait_for
from tests.multihost.layout import IMAGE, docker

from .harness import LOCAL_PLUGIN, REGISTRY, REGISTRY_PLUGIN, TIMINGS, Engine, Registry

ROLES = ("m1", "w1", "w2")  # the cluster's h1, h2, h3
SWARM_PLUGIN = LOCAL_PLUGIN  # one name:tag on every node: a swarm network's driver is this name
SERVICE_IMAGE = f"{REGISTRY}/{IMAGE}"
ADDRESS_POOL = "10.172.0.0/16"  # swarm's own networks (ingress): away from the tests' 10.171.x subnets
HEARTBEAT = "1s"
ETCD_PREFIX = "/vxlanpy"


@dataclass
class SwarmNode(Engine):
    """One node: tests/plugin's Engine view (docker CLI, plugins, links) of a tests/multihost host."""

    role: str = ""
    host: Host | None = None
    node_id: str = ""

    def __post_init__(self) -> None:
        if self.host is None:
            raise ValueError("a SwarmNode needs its host")
        self.workdir = self.host.workdir
        self.netns = self.host.netns
        self.dockerd = self.host.dockerd
        self.registry = Registry(self.netns, self.workdir)

    def __repr__(self) -> str:
        return f"SwarmNode({self.role}, {self.ip})"

    @property
    def ip(self) -> str:
        assert self.host is not None
        return self.host.ip

    @property
    def alive(self) -> bool:
        return self.dockerd.alive and self.dockerd.client is not None

    def install_plugin(self, *settings: str) -> None:
        """The plugin from the node's registry, named SWARM_PLUGIN, configured and enabled."""
        self.docker(
            "plugin", "install", "--grant-all-permissions", "--disable", "--alias", SWARM_PLUGIN, REGISTRY_PLUGIN,
            timeout=300,
        )  # fmt: skip
        state = self.workdir / "state-managed"
        state.mkdir(parents=True, exist_ok=True)
        self.configure(SWARM_PLUGIN, f"state.source={state}", *settings)
        # Not Engine.enable, which times the start through the plugin's socket: here its path is too long for
        # AF_UNIX.  `docker plugin enable` returns once dockerd has activated the plugin.
        enabled = self.docker("plugin", "enable", SWARM_PLUGIN, check=False, timeout=60)
        if enabled.returncode != 0:
            raise RuntimeError(
                f"docker plugin enable on {self.role}: {enabled.stderr.strip()}\n{self.plugin_log(SWARM_PLUGIN)}"
            )

    def iptables_lines(self) -> list[str]:
        """Every rule and chain of the node's filter and nat tables (iptables -S)."""
        lines: list[str] = []
        for table in ("filter", "nat"):
            result = subprocess.run(
                ["ip", "netns", "exec", self.netns, "iptables", "-w", "-t", table, "-S"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            lines += [f"{table}: {line}" for line in result.stdout.splitlines()]
        return lines

    def container(self, container_id: str) -> Any:
        return self.client.containers.get(container_id)


@dataclass
class Swarm:
    """The three nodes, their etcd and the swarm; `nodes[0]` is the manager."""

    cluster: Cluster = field(default_factory=Cluster)
    nodes: list[SwarmNode] = field(default_factory=list)
    settings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for role, host in zip(ROLES, self.cluster.hosts, strict=True):
            host.dockerd.hostname = f"swarm-{role}"
            self.nodes.append(SwarmNode(role=role, host=host))

    @property
    def manager(self) -> SwarmNode:
        return self.nodes[0]

    @property
    def workers(self) -> list[SwarmNode]:
        return self.nodes[1:]

    def __getitem__(self, role: str) -> SwarmNode:
        return next(node for node in self.nodes if node.role == role)

    def by_id(self, node_id: str) -> SwarmNode:
        return next(node for node in self.nodes if node.node_id == node_id)

    # -- building

    def build(self, engine: Engine) -> None:
        """Everything up to a swarm of three Ready nodes, each with the plugin enabled (`engine`: the session's
        engine, whose registry holds the built plugin)."""
        started = time.monotonic()
        remove_stale_clusters()
        self.cluster.build()
        TIMINGS["swarm: namespaces, etcd, three dockerds"] = f"{time.monotonic() - started:.1f} s"
        # The busybox image into the registry storage the nodes' registries serve.
        engine.docker("tag", IMAGE, SERVICE_IMAGE)
        engine.docker("push", SERVICE_IMAGE, timeout=120)
        self.settings = (
            f"VXLANPY_STORE={ETCD_URL}",
            f"VXLANPY_LEASE_TTL={LEASE_TTL}",
            "VXLANPY_LOG_LEVEL=debug",
            "VXLANPY_SCOPE=global",
        )

        def prepare(node: SwarmNode) -> None:
            node.registry.storage = engine.registry.storage
            node.registry.start()
            node.install_plugin(*self.settings, f"VXLANPY_HOST={node.role}")
            node.docker("pull", SERVICE_IMAGE, timeout=120)

        self.cluster._parallel(prepare, self.nodes)  # type: ignore[arg-type]
        TIMINGS["swarm: plugins installed and enabled"] = f"{time.monotonic() - started:.1f} s"
        self.form()
        TIMINGS["swarm: three Ready nodes"] = f"{time.monotonic() - started:.1f} s"

    def form(self) -> None:
        manager = self.manager
        manager.docker(
            "swarm", "init", "--advertise-addr", manager.ip, "--listen-addr", f"{manager.ip}:2377",
            "--default-addr-pool", ADDRESS_POOL, "--dispatcher-heartbeat", HEARTBEAT, "--task-history-limit", "1",
        )  # fmt: skip
        token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        self.cluster._parallel(
            lambda node: node.docker(
                "swarm", "join", "--advertise-addr", node.ip, "--token", token, f"{manager.ip}:2377"
            ),
            self.workers,  # type: ignore[arg-type]
        )
        for node in self.nodes:
            node.node_id = node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        ready = wait_for(lambda: self.ready_nodes() == {node.node_id for node in self.nodes}, timeout=30, interval=0.2)
        assert ready, f"the swarm did not get 3 Ready nodes: {self.manager.docker('node', 'ls').stdout}"

    def ready_nodes(self) -> set[str]:
        return {node["ID"] for node in self.manager.client.api.nodes() if node["Status"]["State"] == "ready"}

    # -- services and tasks

    def tasks(self, service: str) -> list[dict[str, Any]]:
        """The service's tasks that run and are meant to (the manager's view: a dead node's tasks keep their last
        state, "running", while their desired state becomes "shutdown")."""
        found = self.manager.client.api.tasks(filters={"service": service, "desired-state": "running"})
        return [task for task in found if task["Status"]["State"] == "running" and task["DesiredState"] == "running"]

    def wait_tasks(
        self, service: str, count: int, nodes: set[str] | None = None, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Wait until `service` has `count` running tasks and no other one meant to run (on exactly the nodes of
        the roles `nodes`, if given)."""

        def settled() -> list[dict[str, Any]]:
            tasks = self.tasks(service)
            desired = self.manager.client.api.tasks(filters={"service": service, "desired-state": "running"})
            placed = {self.by_id(task["NodeID"]).role for task in tasks}
            if len(tasks) != count or len(desired) != count or (nodes is not None and placed != nodes):
                return []
            return tasks

        tasks = wait_for(settled, timeout=timeout, interval=0.3)
        if not tasks:
            listing = self.manager.docker("service", "ps", "--no-trunc", service, check=False)
            raise AssertionError(
                f"{service} did not get {count} running tasks"
                f"{'' if nodes is None else ' on ' + ', '.join(sorted(nodes))} within {timeout:.0f} s:\n"
                f"{listing.stdout}{listing.stderr}\n{self.plugin_logs()}"
            )
        return list(tasks)

    def task_container(self, task: dict[str, Any]) -> Any:
        node = self.by_id(task["NodeID"])
        return node.container(task["Status"]["ContainerStatus"]["ContainerID"])

    @staticmethod
    def task_address(task: dict[str, Any], network_id: str) -> str:
        for attachment in task.get("NetworksAttachments", []):
            if attachment["Network"]["ID"] == network_id:
                return str(attachment["Addresses"][0]).split("/")[0]
        raise AssertionError(f"task {task['ID']} has no address on {network_id}: {task.get('NetworksAttachments')}")

    # -- what a user sees

    def plugin_logs(self, lines: int = 25) -> str:
        """The end of every live node's plugin log, without the etcd client's chatter."""
        parts = []
        for node in self.nodes:
            if node.alive:
                try:
                    kept = [line for line in node.plugin_log(SWARM_PLUGIN, 2000).splitlines() if "urllib3" not in line]
                    parts.append(f"--- vxlanpy on {node.role}:\n" + "\n".join(kept[-lines:]))
                except Exception as exc:  # noqa: BLE001 - only a diagnostic
                    parts.append(f"--- vxlanpy on {node.role}: no log ({exc})")
        return "\n".join(parts)

    def etcd_keys(self) -> dict[str, str]:
        return self.cluster.etcd.get_prefix(f"{ETCD_PREFIX}/")

    def leftovers(self, network_id: str, vni: int) -> list[str]:
        """What vxlanpy still has of the network on any live node: its bridge and VXLAN device, a container veth
        on no bridge, iptables chains or rules naming its VNI, and etcd keys of its id or of its VNI."""
        found: list[str] = []
        for node in self.nodes:
            if not node.alive:
                continue
            links = node.ip_json("link", "show")
            own = [link["ifname"] for link in links if link["ifname"] in (f"vxbr-{vni}", f"vxlan-{vni}")]
            stray = [link["ifname"] for link in links if link["ifname"].startswith("vxh-") and "master" not in link]
            if own or stray:
                found.append(f"{node.role}: links {sorted(own + stray)}")
            rules = [line for line in node.iptables_lines() if f"-{vni} " in f"{line} " or f"vxbr-{vni} " in f"{line} "]
            found += [f"{node.role}: iptables {line}" for line in rules]
        for key in self.etcd_keys():
            if network_id in key or str(vni) in key.split("/"):
                found.append(f"etcd: {key}")
        return found

    def wait_no_leftovers(self, network_id: str, vni: int, timeout: float = 20.0) -> list[str]:
        left: list[str] = []

        def clean() -> bool:
            nonlocal left
            left = self.leftovers(network_id, vni)
            return not left

        wait_for(clean, timeout=timeout, interval=0.5)
        return left

    # -- between tests and teardown

    def remove_services_and_networks(self) -> list[str]:
        """Every service, every container and every network the tests made, on every live node."""
        problems: list[str] = []
        manager = self.manager
        if manager.alive and manager.client.info()["Swarm"]["ControlAvailable"]:
            for service in manager.client.services.list():
                try:
                    service.remove()
                except Exception as exc:  # noqa: BLE001 - keep cleaning
                    problems.append(f"service {service.name}: {exc}")
            # A service's containers go after the service; its network can only go once they have.
            wait_for(lambda: not any(n.client.api.containers(all=True) for n in self.nodes if n.alive), timeout=30)
        for node in self.nodes:
            if not node.alive:
                continue
            for container in node.client.api.containers(all=True):
                try:
                    node.client.api.remove_container(container["Id"], force=True)
                except docker.errors.NotFound:
                    pass
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"{node.role}: container {container['Names']}: {exc}")
        for node in [manager, *self.workers]:  # swarm networks on the manager first, then what is left locally
            if not node.alive:
                continue
            for network in node.client.networks.list():
                if network.name in ("host", "none", "bridge", "ingress", "docker_gwbridge"):
                    continue
                if network.attrs.get("Scope") == "swarm" and node is not manager:
                    continue  # the manager's removal reaches the workers
                removed = wait_for(partial(self._remove_network, network), timeout=10, interval=0.5)
                if not removed:
                    problems.append(f"{node.role}: network {network.name} could not be removed")
        return problems

    @staticmethod
    def _remove_network(network: Any) -> bool:
        try:
            network.remove()
        except Exception as exc:  # noqa: BLE001 - retried: endpoints may still be on their way out
            return "not found" in str(exc).lower() or "No such network" in str(exc)
        return True

    def teardown(self) -> list[str]:
        problems: list[str] = []
        try:
            problems += self.remove_services_and_networks()
        except Exception as exc:  # noqa: BLE001 - keep tearing down
            problems.append(f"removing services and networks: {exc}")

        def leave(node: SwarmNode) -> None:
            if node.alive:
                node.docker("swarm", "leave", "-f", check=False, timeout=60)

        def remove_plugins(node: SwarmNode) -> None:
            if node.alive:
                for plugin in node.plugins():
                    node.docker("plugin", "rm", "-f", plugin["Name"], check=False, timeout=60)
            node.registry.stop()

        self.cluster._parallel(leave, self.workers)  # type: ignore[arg-type]  # workers first: the manager's ends it
        leave(self.manager)
        self.cluster._parallel(remove_plugins, self.nodes)  # type: ignore[arg-type]
        problems += self.cluster.teardown()
        return problems


def service_answers(client_container: Any, target: str, port: int, tries: int) -> list[str]:
    """What `tries` TCP connections to target:port answered, each within 2 s ('' for a failed one)."""
    script = f"for i in $(seq {tries}); do nc -w 2 {target} {port} </dev/null || echo; done"
    code, output = exec_text(client_container, ["sh", "-c", script])
    return [line.strip() for line in output.splitlines()]
