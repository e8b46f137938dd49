"""What the `vxlanpy` CLI talks to: the running plugin (HTTP on its Unix socket) and Docker (the docker SDK).

Both are small classes behind plain interfaces, so the CLI's unit tests inject fakes (or the real Flask app
through a transport function) instead of patching anything.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

EXIT_OK = 0
EXIT_FAILED = 1  # a check failed, or the plugin refused or failed the operation
EXIT_USAGE = 2  # bad arguments (Click's own usage errors use 2 as well)
EXIT_UNREACHABLE = 3  # the plugin or Docker cannot be reached

NETNS_DIR = Path("/run/netns")
PLUGINS_DIR = Path("/run/docker/plugins")
MANAGED_SOCKET = "vxlanpy.sock"  # config.json's Interface.Socket: dockerd puts it in PLUGINS_DIR/<plugin id>/
VXLANPY_DRIVER_NAME = re.compile(r"^(?:.+/)?vxlanpy(?::[A-Za-z0-9_.-]+)?$")  # vxlanpy, vxlanpy:latest, repo/vxlanpy:tag
Body = dict[str, Any]
# (HTTP method, path, JSON body or None, timeout) -> (status, raw response body)
Transport = Callable[[str, str, bytes | None, float], tuple[int, bytes]]


class CliError(Exception):
    """One line for the user, and the exit code that goes with it."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def unix_transport(path: str) -> Transport:
    def send(method: str, url: str, data: bytes | None, timeout: float) -> tuple[int, bytes]:
        connection = _UnixHTTPConnection(path, timeout)
        try:
            headers = {"Content-Type": "application/json"} if data is not None else {}
            connection.request(method, url, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    return send


def unreachable_message(path: str, exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if isinstance(exc, FileNotFoundError) or code == errno.ENOENT:
        return (
            f"cannot reach the plugin: {path} does not exist; is it running? "
            "(start it with `sudo vxlanpy serve` or scripts/run, or `docker plugin enable` a managed one; "
            "or point VXLANPY_SOCKET/--socket at its socket)"
        )
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM):
        return f"cannot reach the plugin: permission denied on {path}; run as root (or a member of its group)"
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return f"cannot reach the plugin: nothing answers on {path} (a stale socket: restart the plugin)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"cannot reach the plugin: no answer on {path} in time (is it stuck? see its log)"
    return f"cannot reach the plugin on {path}: {exc}"


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(str(path)) == 0


def managed_sockets(plugins_dir: Path = PLUGINS_DIR) -> list[str]:
    """The sockets of the running managed vxlanpy plugins (`docker plugin install`), as dockerd lays them out;
    a disabled plugin's socket file may stay behind, so only those that accept a connection count."""
    try:
        found = sorted(plugins_dir.glob(f"*/{MANAGED_SOCKET}"))
    except OSError:
        return []
    return [str(path) for path in found if path.is_socket() and _answers(path)]


def discover_socket(default: str, plugins_dir: Path = PLUGINS_DIR) -> str:
    """The socket to use when none was given: the default one when it exists (`vxlanpy serve`, systemd), else
    the one managed plugin's socket.  Several managed plugins: the user has to choose."""
    if os.path.exists(default):
        return default
    found = managed_sockets(plugins_dir)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise CliError(
            f"{default} does not exist and {len(found)} managed vxlanpy plugins run ({', '.join(found)}); "
            "choose one: vxlanpy --socket /run/docker/plugins/$(docker plugin inspect -f '{{.Id}}' NAME)/"
            f"{MANAGED_SOCKET}",
            EXIT_USAGE,
        )
    return default


class PluginClient:
    def __init__(self, socket_path: str, timeout: float = 30.0, transport: Transport | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.transport = transport or unix_transport(socket_path)

    def request(
        self, method: str, path: str, body: Body | None = None, timeout: float | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON); raises CliError(EXIT_UNREACHABLE) when the socket does not answer."""
        data = json.dumps(body).encode() if body is not None else None
        try:
            status, raw = self.transport(method, path, data, timeout or self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise CliError(unreachable_message(self.socket_path, exc), EXIT_UNREACHABLE) from None
        try:
            decoded = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            raise CliError(
                f"the plugin on {self.socket_path} answered {path} with something that is not JSON (HTTP {status}); "
                "is it vxlanpy, and as new as this CLI?",
                EXIT_FAILED,
            ) from None
        return status, decoded

    def call(self, method: str, path: str, body: Body | None = None, timeout: float | None = None) -> Body:
        status, decoded = self.request(method, path, body, timeout)
        if status >= 400:
            message = decoded.get("Err") if isinstance(decoded, dict) else None
            if status == 404 and not message:
                message = f"the plugin does not know {path}: is it older than this CLI? restart it"
            code = EXIT_USAGE if status == 400 else EXIT_FAILED  # 400: a bad option or address, as given
            raise CliError(str(message or f"the plugin answered HTTP {status}"), code)
        if not isinstance(decoded, dict):
            raise CliError(f"the plugin answered {path} with an unexpected body", EXIT_FAILED)
        return decoded


# -- Docker --------------------------------------------------------------------------------------------------


@dataclass
class DockerNetwork:
    id: str
    name: str
    driver: str
    ipam_driver: str = "default"
    subnets: list[str] = field(default_factory=list)
    # endpoint id -> (container id, container name)
    endpoints: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class DockerContainer:
    id: str
    name: str
    running: bool
    pid: int
    network_mode: str
    sandbox_key: str


class DockerView(Protocol):
    def vxlanpy_networks(self, ids: Collection[str] = ()) -> list[DockerNetwork]:
        """Docker's networks that are the plugin's: those whose id is in `ids` (the plugin's store: whatever
        name or alias the driver has), and those of a vxlanpy driver the store lacks (its state was lost)."""
        ...

    def is_vxlanpy_driver(self, name: str) -> bool:
        """Whether `name` is a driver name of vxlanpy: vxlanpy[:TAG], REPO/vxlanpy[:TAG], or the name (alias) of
        an installed managed plugin that serves vxlanpy's socket."""
        ...

    def network(self, ref: str) -> DockerNetwork | None: ...

    def container(self, ref: str) -> DockerContainer | None: ...

    def containers(self) -> list[tuple[str, str]]:
        """(id, name) of every container, running or not."""
        ...

    def published_ports(self) -> dict[str, list[str]]:
        """container id -> the ports Docker publishes for it, as `docker ps` lists them (HOST:PORT->PORT/PROTO)."""
        ...

    def subnets_in_use(self) -> set[str]:
        """The subnets of every Docker network, whatever its driver."""
        ...


def vxlanpy_plugin_drivers(plugins: list[dict[str, Any]]) -> set[str]:
    """The driver names of the installed managed plugins that are vxlanpy (`docker plugin ls`, any alias), as
    listed: NAME:TAG, the only form `docker network create -d` resolves (moby#33347)."""
    names: set[str] = set()
    for plugin in plugins:
        config = plugin.get("Config") or {}
        interface = config.get("Interface") or {}
        reference = str(plugin.get("PluginReference") or "")
        types = [str(t) for t in interface.get("Types") or ()]
        if interface.get("Socket") != MANAGED_SOCKET and not VXLANPY_DRIVER_NAME.match(reference):
            continue
        if not any(t.startswith("docker.networkdriver/") for t in types):
            continue
        name = str(plugin.get("Name") or "")
        if name:
            names.add(name)
    return names


def _network_from(attrs: dict[str, Any]) -> DockerNetwork:
    ipam = attrs.get("IPAM") or {}
    endpoints = {
        str(info.get("EndpointID")): (str(cid), str(info.get("Name") or cid[:12]))
        for cid, info in (attrs.get("Containers") or {}).items()
        if isinstance(info, dict) and info.get("EndpointID")
    }
    return DockerNetwork(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name") or ""),
        driver=str(attrs.get("Driver") or ""),
        ipam_driver=str(ipam.get("Driver") or "default"),
        subnets=[str(c.get("Subnet")) for c in ipam.get("Config") or () if c.get("Subnet")],
        endpoints=endpoints,
    )


class SdkDocker:
    """DockerView on the docker SDK's low-level client, connected on first use (DOCKER_HOST etc. honoured)."""

    def __init__(self, timeout: float = 30.0, drivers: Collection[str] = ()) -> None:
        self.timeout = timeout
        self.drivers = set(drivers)  # more driver names to take for vxlanpy's (recover --driver)
        self._api: Any = None
        self._plugin_drivers: set[str] | None = None

    def _client(self) -> Any:
        if self._api is None:
            try:
                import docker
            except ImportError:
                raise CliError("the docker SDK is not installed: pip install docker", EXIT_UNREACHABLE) from None
            try:
                self._api = docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=self.timeout)
            except docker.errors.DockerException as exc:
                raise CliError(f"cannot reach Docker: {_docker_reason(exc)}", EXIT_UNREACHABLE) from None
        return self._api

    def _call(self, action: Callable[[Any], Any]) -> Any:
        import docker.errors
        import requests.exceptions

        try:
            return action(self._client())
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise CliError(f"cannot reach Docker: {_docker_reason(exc)}", EXIT_UNREACHABLE) from None

    def plugin_drivers(self) -> set[str]:
        if self._plugin_drivers is None:
            self._plugin_drivers = vxlanpy_plugin_drivers(self._call(lambda api: api.plugins()) or [])
        return self._plugin_drivers

    def is_vxlanpy_driver(self, name: str) -> bool:
        return bool(VXLANPY_DRIVER_NAME.match(name)) or name in self.drivers or name in self.plugin_drivers()

    def vxlanpy_networks(self, ids: Collection[str] = ()) -> list[DockerNetwork]:
        wanted = set(ids)
        listed = self._call(lambda api: api.networks()) or []
        networks = []
        for item in listed:
            if str(item["Id"]) not in wanted and not self.is_vxlanpy_driver(str(item.get("Driver") or "")):
                continue
            ref = str(item["Id"])
            attrs = self._call(lambda api, ref=ref: api.inspect_network(ref))  # type: ignore[misc]
            if attrs is not None:
                networks.append(_network_from(attrs))
        return networks

    def network(self, ref: str) -> DockerNetwork | None:
        attrs = self._call(lambda api: api.inspect_network(ref))
        return _network_from(attrs) if attrs else None

    def container(self, ref: str) -> DockerContainer | None:
        attrs = self._call(lambda api: api.inspect_container(ref))
        if not attrs:
            return None
        state = attrs.get("State") or {}
        return DockerContainer(
            id=str(attrs["Id"]),
            name=str(attrs.get("Name") or "").lstrip("/"),
            running=bool(state.get("Running")),
            pid=int(state.get("Pid") or 0),
            network_mode=str((attrs.get("HostConfig") or {}).get("NetworkMode") or ""),
            sandbox_key=str((attrs.get("NetworkSettings") or {}).get("SandboxKey") or ""),
        )

    def subnets_in_use(self) -> set[str]:
        return subnets_of(self._call(lambda api: api.networks()) or [])

    def containers(self) -> list[tuple[str, str]]:
        listed = self._call(lambda api: api.containers(all=True)) or []
        return [(str(c["Id"]), str((c.get("Names") or ["/?"])[0]).lstrip("/")) for c in listed]

    def published_ports(self) -> dict[str, list[str]]:
        listed = self._call(lambda api: api.containers(all=True)) or []
        return {str(c["Id"]): docker_port_list(c.get("Ports") or []) for c in listed}


def docker_port_list(ports: list[Any]) -> list[str]:
    """The published entries of a container list's Ports (exposed-only ones have no PublicPort)."""
    shown = []
    for port in ports:
        if not isinstance(port, dict) or not port.get("PublicPort"):
            continue
        host_ip = str(port.get("IP") or "0.0.0.0")
        host = f"[{host_ip}]" if ":" in host_ip else host_ip
        shown.append(f"{host}:{port['PublicPort']}->{port.get('PrivatePort')}/{port.get('Type') or 'tcp'}")
    return sorted(set(shown))


def subnets_of(networks: list[Any]) -> set[str]:
    """The subnets in a Docker network listing (GET /networks carries each network's IPAM config)."""
    return {
        str(config["Subnet"])
        for network in networks
        if isinstance(network, dict)
        for config in ((network.get("IPAM") or {}).get("Config") or ())
        if isinstance(config, dict) and config.get("Subnet")
    }


@dataclass(frozen=True)
class DockerListing:
    """What the plugin itself reads of Docker's networks at start-up: their ids and subnets."""

    ids: frozenset[str]
    subnets: frozenset[str]


def docker_listing(timeout: float = 2.0) -> DockerListing | None:
    """Every Docker network, read by the plugin itself over Docker's Unix socket (DOCKER_HOST when it is
    unix://); None when Docker cannot be asked (a managed plugin sees no socket, dockerd is starting and waits
    for the plugin, DOCKER_HOST is TCP), and then nothing is removed or released on its word."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return None
    try:
        status, raw = unix_transport(host.removeprefix("unix://"))("GET", "/networks", None, timeout)
        listed = json.loads(raw) if status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    if not isinstance(listed, list):
        return None
    ids = frozenset(str(item.get("Id")) for item in listed if isinstance(item, dict) and item.get("Id"))
    return DockerListing(ids, frozenset(subnets_of(listed)))


def _docker_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if "Permission denied" in text:
        return "permission denied on the Docker socket; run as root or a member of the docker group"
    if "No such file" in text or "Connection refused" in text or "Connection aborted" in text:
        return "dockerd does not answer (is it running? is DOCKER_HOST right?)"
    return text[:200]


def netns_names(directory: Path = NETNS_DIR) -> list[str]:
    """Names of the `ip netns` namespaces on this host."""
    try:
        return sorted(entry.name for entry in directory.iterdir())
    except OSError:
        return []


def proc_netns(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


def is_root() -> bool:
    return os.geteuid() == 0
