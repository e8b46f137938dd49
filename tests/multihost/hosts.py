"""A host of the cluster: its namespace, dockerd and vxlanpy, and what tests look at inside it."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.docker_cleanup import remove_labelled

from .dockerd import Dockerd
from .layout import IMAGE, LABELS, host_ip
from .netns import netns_socket, run
from .plugin_process import Plugin, operator_cli
from .wireguard import WireGuardView, remove_wireguard, wg_show, wireguard_go_pids, wireguard_leftovers


@dataclass
class Host:
    name: str
    index: int
    netns: str
    workdir: Path
    dockerd: Dockerd
    plugin: Plugin

    @property
    def ip(self) -> str:
        """The host's underlay address, which is also its VTEP."""
        return host_ip(self.index)

    vtep = ip

    @property
    def docker(self) -> Any:
        if self.dockerd.client is None:
            raise RuntimeError(f"dockerd of {self.name} is not running")
        return self.dockerd.client

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.ip}, {self.netns})"

    # -- commands inside the host namespace

    def exec_ip(self, argv: list[str], timeout: float = 20.0, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `argv` (e.g. ["bridge", "-j", "fdb", "show", "dev", "vxlan-300"]) inside the host namespace."""
        return run(["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout)

    def json(self, argv: list[str]) -> Any:
        """Run a `-j` command inside the host namespace; [] when the device does not exist."""
        result = self.exec_ip(argv)
        if result.returncode != 0:
            if "does not exist" in result.stderr or "Cannot find device" in result.stderr:
                return []
            raise RuntimeError(f"{' '.join(argv)} on {self.name} failed: {result.stderr.strip()}")
        return json.loads(result.stdout) if result.stdout.strip() else []

    def fdb(self, dev: str) -> list[dict[str, Any]]:
        """The VXLAN device's own forwarding entries (those with a `dst`), not the bridge's learnt ones."""
        return [entry for entry in self.json(["bridge", "-j", "fdb", "show", "dev", dev]) if "dst" in entry]

    def neigh(self, dev: str) -> list[dict[str, Any]]:
        return [entry for entry in self.json(["ip", "-j", "neigh", "show", "dev", dev]) if "dst" in entry]

    def link(self, dev: str) -> dict[str, Any] | None:
        links = self.json(["ip", "-d", "-j", "link", "show", dev])
        return links[0] if links else None

    def has_link(self, dev: str) -> bool:
        return self.exec_ip(["ip", "link", "show", dev]).returncode == 0

    def counter(self, dev: str, name: str = "rx_packets") -> int:
        result = self.exec_ip(["cat", f"/sys/class/net/{dev}/statistics/{name}"], check=True)
        return int(result.stdout.strip())

    # -- vxlanpy as an operator sees it

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`vxlanpy ARGS` against this host's plugin, e.g. host.cli("node", "ls", "--json")."""
        return operator_cli(self.plugin.socket_path, *args, timeout=timeout)

    def wireguard(self) -> WireGuardView | None:
        """The host's WireGuard interface (`wg show`, in its vxlanpy's namespaces); None when it has none."""
        pid = self.plugin.pid if self.plugin.alive else next(iter(wireguard_go_pids(self.netns)), None)
        return None if pid is None else wg_show(pid)

    def wireguard_leftovers(self) -> list[str]:
        return wireguard_leftovers(self.netns, self.plugin.wireguard_dir)

    def remove_wireguard(self) -> list[str]:
        """End what vxlanpy's encryption left here (wireguard-go, the interface, sockets); returns what was found."""
        return remove_wireguard(self.netns, self.plugin.wireguard_dir)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
        return netns_socket(self.netns, family, kind, proto)

    # -- containers and networks

    def run_container(
        self,
        network: Any,
        *,
        ip: str | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        **kw: Any,
    ) -> Any:
        """A running busybox container (`sleep 3600` unless `command=`) on `network` (name or object), labelled
        LABELS (removed after the test) unless `labels` says otherwise (e.g. MODULE_LABELS)."""
        client = self.docker
        network_name = network if isinstance(network, str) else network.name
        kw.setdefault("command", ["sleep", "3600"])
        labels = dict(LABELS if labels is None else labels)
        if ip is not None:
            kw["networking_config"] = {network_name: client.api.create_endpoint_config(ipv4_address=ip)}
        container = client.containers.run(
            IMAGE,
            detach=True,
            network=network_name,
            labels=labels,
            name=name or f"vxmh-{self.name}-{secrets.token_hex(4)}",
            **kw,
        )
        container.reload()
        return container

    def kill9(self) -> None:
        """Simulate the host dying, as far as the cluster is concerned: SIGKILL its vxlanpy (workers included)."""
        self.plugin.kill9()

    def remove_labelled(self) -> list[str]:
        return remove_labelled(self.docker)
