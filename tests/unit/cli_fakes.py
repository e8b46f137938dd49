"""Fakes for the CLI's unit tests: Docker, the namespaces an attachment enters, and the host doctor reads.

The plugin itself is real: the CLI talks to `create_app()` on in-package fakes through a transport function
that hands each request to Flask's test client.  Nothing is patched.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from click.testing import CliRunner, Result

from vxlanpy.app import create_app
from vxlanpy.config import Settings
from vxlanpy.errors import DataplaneError
from vxlanpy.operator.cli import Env, main
from vxlanpy.operator.client import CliError, DockerContainer, DockerNetwork, PluginClient
from vxlanpy.operator.reading import expected_vxlan_device
from vxlanpy.operator.sandbox import Plumbed, Plumbing, choose_ifname
from vxlanpy.wiring import Components, assemble

from .conftest import Harness

HOST = "testhost"


class FakeSandboxes:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.alive = harness.live_sandboxes  # one view of which namespaces exist, for the driver and for us
        self.interfaces: dict[str, set[str]] = {}  # netns path -> interface names
        self.plumbed: list[Plumbing] = []
        self.fail = False

    def netns_exists(self, path: str) -> bool:
        return path in self.alive

    def plumb(self, plumbing: Plumbing) -> Plumbed:
        if self.fail:
            raise DataplaneError("injected failure in plumb")
        names = self.interfaces.setdefault(plumbing.netns, {"lo"})
        ifname = choose_ifname(plumbing.ifname, names)
        names.add(ifname)
        self.plumbed.append(plumbing)
        return Plumbed(ifname, [f"default via {gateway} dev {ifname}" for gateway in plumbing.gateways])

    def vxlan_device(self, name: str) -> dict[str, Any] | None:
        for network in self.harness.links.networks.values():
            if network.vxlan == name:
                return expected_vxlan_device(network)
        return None

    def stop(self, path: str) -> None:
        """The namespace dies: its veth pairs die with it."""
        self.alive.discard(path)
        for veth, endpoint in list(self.harness.links.endpoints.items()):
            if endpoint.sandbox_key == path:
                del self.harness.links.endpoints[veth]


class FakeDocker:
    def __init__(self) -> None:
        self.networks: dict[str, DockerNetwork] = {}
        self.by_name: dict[str, DockerContainer] = {}
        self.down = False
        self.boom = False
        self.ports: dict[str, list[str]] = {}  # container id -> published ports, as Docker lists them
        self.drivers = {"vxlanpy"}  # driver names taken for vxlanpy's (a managed plugin adds its name and aliases)

    def _check(self) -> None:
        if self.boom:
            raise RuntimeError("the fake exploded")
        if self.down:
            raise CliError("cannot reach Docker: dockerd does not answer", 3)

    def vxlanpy_networks(self, ids: Collection[str] = ()) -> list[DockerNetwork]:
        self._check()
        return [n for n in self.networks.values() if n.id in ids or self.is_vxlanpy_driver(n.driver)]

    def is_vxlanpy_driver(self, name: str) -> bool:
        return name in self.drivers

    def network(self, ref: str) -> DockerNetwork | None:
        self._check()
        for network in self.networks.values():
            if ref in (network.name, network.id) or (len(ref) >= 3 and network.id.startswith(ref)):
                return network
        return None

    def container(self, ref: str) -> DockerContainer | None:
        self._check()
        for container in self.by_name.values():
            if ref in (container.name, container.id) or (len(ref) >= 3 and container.id.startswith(ref)):
                return container
        return None

    def containers(self) -> list[tuple[str, str]]:
        self._check()
        return [(c.id, c.name) for c in self.by_name.values()]

    def published_ports(self) -> dict[str, list[str]]:
        self._check()
        return dict(self.ports)

    def subnets_in_use(self) -> set[str]:
        self._check()
        return {subnet for network in self.networks.values() for subnet in network.subnets}


@dataclass
class FakeProbe:
    files: dict[str, str] = field(default_factory=dict)
    stats: dict[str, os.stat_result] = field(default_factory=dict)
    commands: dict[tuple[str, ...], tuple[int, str, str]] = field(default_factory=dict)
    root: bool = True
    ran: list[tuple[str, ...]] = field(default_factory=list)  # every command, in order

    def read(self, path: str) -> str | None:
        return self.files.get(path)

    def stat(self, path: str) -> os.stat_result | None:
        return self.stats.get(path)

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        self.ran.append(tuple(argv))
        return self.commands.get(tuple(argv), (127, "", f"{argv[0]}: not installed"))

    def is_root(self) -> bool:
        return self.root


def socket_stat(mode: int = 0o660) -> os.stat_result:
    return os.stat_result((stat.S_IFSOCK | mode, 0, 0, 1, 0, 0, 0, 0, 0, 0))


def dir_stat() -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 1, 0, 0, 0, 0, 0, 0))


class CliHarness:
    """The real plugin app (on fakes) behind the CLI, with fake Docker, namespaces and host."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.sandboxes = FakeSandboxes(harness)
        self.docker = FakeDocker()
        self.probe = FakeProbe()
        self.namespaces: list[str] = []
        self.serve(assemble(harness.driver, Settings(host=HOST), sandboxes=self.sandboxes))
        self.plugin_up = True
        self.socket = "/run/docker/plugins/vxlanpy.sock"

    def serve(self, components: Components) -> None:
        """The CLI talks to an app on these components from now on."""
        self.components = components
        self.app = create_app(components)
        self.flask = self.app.test_client()

    def transport(self, method: str, path: str, data: bytes | None, timeout: float) -> tuple[int, bytes]:
        if not self.plugin_up:
            raise FileNotFoundError(2, "No such file or directory")
        response = self.flask.open(path, method=method, data=data or b"")
        return response.status_code, response.data

    def env(self) -> Env:
        return Env(
            socket=self.socket,
            make_plugin=lambda socket, timeout: PluginClient(socket, timeout, transport=self.transport),
            make_docker=lambda timeout: self.docker,
            make_probe=lambda: self.probe,
            namespaces=lambda: list(self.namespaces),
        )

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(main, list(args), obj=self.env(), catch_exceptions=False)

    # -- scenery -------------------------------------------------------------------------------------------

    def docker_network(
        self,
        network_id: str,
        name: str,
        endpoints: dict[str, tuple[str, str]] | None = None,
        driver: str = "vxlanpy",
    ) -> None:
        self.docker.networks[name] = DockerNetwork(
            network_id, name, driver, subnets=["10.1.0.0/24"], endpoints=endpoints or {}
        )

    def container(self, name: str, cid: str, mode: str = "none", running: bool = True) -> DockerContainer:
        sandbox = f"/var/run/docker/netns/{cid[:12]}"
        container = DockerContainer(cid, name, running, 4242 if running else 0, mode, sandbox if running else "")
        self.docker.by_name[name] = container
        if running:
            self.sandboxes.alive.add(sandbox)
        return container
