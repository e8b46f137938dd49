"""The `vxlanpy` group, `serve`, and what the operator's commands share.

The tools talk to the running plugin over its socket (it owns the kernel objects and the store, so anything
that changes state goes through it, under the same locks as Docker's requests) and read Docker's names through
the docker SDK.  Exit codes: 0 fine, 1 something is wrong or was refused, 2 bad usage, 3 the plugin or Docker
cannot be reached.  Errors are one line on stderr; progress goes to stderr too, so stdout stays parseable.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ...config import DEFAULT_SOCKET, Settings
from ...errors import VxlanpyError
from ...models import GATEWAY_DOCKER
from ..client import (
    EXIT_FAILED,
    EXIT_USAGE,
    PLUGINS_DIR,
    CliError,
    DockerNetwork,
    DockerView,
    PluginClient,
    SdkDocker,
    discover_socket,
    netns_names,
)

DEBUG_ENV = "VXLANPY_DEBUG"


@dataclass
class Env:
    """What the commands use; the unit tests build one with fakes and pass it as Click's `obj`."""

    socket: str = DEFAULT_SOCKET
    timeout: float = 30.0
    # No --socket nor VXLANPY_SOCKET: fall back on a managed plugin's socket when the default one is missing.
    discover: bool = False
    plugins_dir: Path = PLUGINS_DIR
    make_plugin: Callable[[str, float], PluginClient] = PluginClient
    make_docker: Callable[[float], DockerView] = SdkDocker
    make_probe: Callable[[], Any] | None = None
    namespaces: Callable[[], list[str]] = netns_names
    _plugin: PluginClient | None = field(default=None, repr=False)
    _docker: DockerView | None = field(default=None, repr=False)

    def plugin(self) -> PluginClient:
        if self._plugin is None:
            if self.discover:
                self.socket = discover_socket(self.socket, self.plugins_dir)
            self._plugin = self.make_plugin(self.socket, self.timeout)
        return self._plugin

    def docker(self) -> DockerView:
        if self._docker is None:
            self._docker = self.make_docker(self.timeout)
        return self._docker

    def probe(self) -> Any:
        if self.make_probe is not None:
            return self.make_probe()
        from ..doctor import LocalProbe

        return LocalProbe()


class VxlanpyGroup(click.Group):
    """Turns every error into one line and an exit code: never a traceback (unless VXLANPY_DEBUG=1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            click.echo(f"vxlanpy: {exc.message}", err=True)
            ctx.exit(exc.code)
        except VxlanpyError as exc:
            click.echo(f"vxlanpy: {exc.message}", err=True)
            ctx.exit(EXIT_USAGE if exc.status == 400 else EXIT_FAILED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("vxlanpy: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            click.echo(
                f"vxlanpy: internal error ({type(exc).__name__}: {exc}); rerun with {DEBUG_ENV}=1 for details",
                err=True,
            )
            ctx.exit(EXIT_FAILED)


def progress(message: str) -> None:
    click.echo(message, err=True)


pass_env = click.make_pass_decorator(Env)


@click.group(cls=VxlanpyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--socket",
    "socket_path",
    envvar="VXLANPY_SOCKET",
    default=DEFAULT_SOCKET,
    show_default=True,
    help="The plugin's socket (env VXLANPY_SOCKET); when neither is given and the default is missing, "
    "the socket of the managed plugin (/run/docker/plugins/ID/vxlanpy.sock) if one runs.",
)
@click.option("--timeout", type=click.FloatRange(1, 600), default=30.0, show_default=True, help="Seconds per request.")
@click.pass_context
def main(ctx: click.Context, socket_path: str, timeout: float) -> None:
    """vxlanpy: a Docker network plugin for VXLAN networks, and the tools to operate it.

    \b
    Examples:
      sudo vxlanpy serve                          # run the plugin in the foreground
      docker network create -d vxlanpy -o vni=42 --subnet 10.42.0.0/24 demo
      vxlanpy ls                                  # networks, devices, peers, endpoints
      vxlanpy inspect demo
      vxlanpy peers demo                          # FDB/neighbour entries against the store
      sudo vxlanpy doctor                         # what is wrong on this host, and how to fix it
      vxlanpy attach mycontainer demo             # wire a --network none container in
      vxlanpy gc --dry-run                        # what reconciliation would repair
      vxlanpy health                              # exit 0 when the plugin is healthy
      vxlanpy node ls                             # the cluster's hosts (etcd), alive or expired
      vxlanpy rotate-key                          # a new WireGuard key (encrypted networks)

    \b
    Exit codes: 0 fine, 1 something is wrong or was refused, 2 bad usage,
    3 the plugin or Docker cannot be reached.
    """
    if ctx.obj is None:
        given = ctx.get_parameter_source("socket_path") is not click.core.ParameterSource.DEFAULT
        ctx.obj = Env(socket=socket_path, timeout=timeout, discover=not given)
    elif ctx.get_parameter_source("socket_path") is not click.core.ParameterSource.DEFAULT:
        ctx.obj.socket = socket_path


# -- serve -----------------------------------------------------------------------------------------------------


@main.command()
def serve() -> None:
    """Serve the plugin on $VXLANPY_SOCKET (default /run/docker/plugins/vxlanpy.sock), in the foreground.

    \b
    Configuration comes from the environment (see README):
      VXLANPY_SOCKET, VXLANPY_STATE_DIR, VXLANPY_STORE, VXLANPY_LOG_LEVEL,
      VXLANPY_DEV, VXLANPY_VNI_RANGE, VXLANPY_THREADS,
      VXLANPY_METRICS_ADDR (e.g. 127.0.0.1:9478: Prometheus /metrics and /health; off by default)

    \b
    Example:
      sudo VXLANPY_METRICS_ADDR=127.0.0.1:9478 vxlanpy serve
    """
    from ...metrics import METRICS_ADDR_ENV, parse_metrics_addr
    from ...server import serve as run_server

    try:
        settings = Settings.from_env()
        metrics_addr = parse_metrics_addr(os.environ.get(METRICS_ADDR_ENV))
    except VxlanpyError as exc:
        click.echo(f"vxlanpy: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    run_server(settings, metrics_addr)


# -- helpers -----------------------------------------------------------------------------------------------------


def docker_or_none(env: Env, action: Callable[[DockerView], Any], what: str) -> Any:
    """Docker's view when it answers; a warning and None when it does not (the plugin's own view still shows)."""
    try:
        return action(env.docker())
    except CliError as exc:
        progress(f"warning: {exc.message}; {what}")
        return None


def network_rows(env: Env) -> tuple[list[dict[str, Any]], list[str]]:
    from ..views import build_rows

    listing = env.plugin().call("GET", "/vxlanpy/ls")
    ids = [network["id"] for network in listing.get("networks", [])]
    docker_networks = docker_or_none(env, lambda d: d.vxlanpy_networks(ids), "showing no Docker names")
    containers = docker_or_none(env, lambda d: d.containers(), "") if docker_networks is not None else []
    # gateway=docker_gwbridge: Docker's bridge driver publishes the ports, so only Docker knows them.
    docker_ports = None
    if docker_networks is not None and any(
        (network.get("config") or {}).get("gateway") == GATEWAY_DOCKER for network in listing.get("networks", [])
    ):
        docker_ports = docker_or_none(env, lambda d: d.published_ports(), "showing no ports published by Docker")
    return build_rows(listing, docker_networks, containers or [], env.namespaces(), docker_ports)


def names_for_report(env: Env) -> dict[str, str]:
    """Names for what a reconciliation report mentions by id (best effort: {} when Docker does not answer)."""
    from ..views import report_names

    try:
        networks = env.plugin().call("GET", "/vxlanpy/ls").get("networks", [])
        docker = env.docker()
        ids = [network["id"] for network in networks]
        return report_names(networks, docker.vxlanpy_networks(ids), docker.containers(), env.namespaces())
    except CliError:
        return {}


@dataclass
class Resolved:
    id: str
    name: str | None
    docker: DockerNetwork | None


def resolve_network(env: Env, ref: str) -> Resolved:
    """NETWORK as Docker knows it (name, id or id prefix), else a plugin network id prefix.

    A Docker network is vxlanpy's when the plugin's store holds its id, whatever the driver's name (a managed
    plugin's is vxlanpy/vxlanpy:latest, or its alias); or, its state lost, when its driver is vxlanpy's."""
    docker = docker_or_none(env, lambda d: d.network(ref), "looking the network up in the plugin only")
    networks = env.plugin().call("GET", "/vxlanpy/ls").get("networks", [])
    if docker is not None:
        if docker.id not in {network["id"] for network in networks} and not env.docker().is_vxlanpy_driver(
            docker.driver
        ):
            raise CliError(
                f"network {docker.name} is not vxlanpy's: it uses the {docker.driver} driver, "
                "and the plugin holds no network with its id",
                EXIT_FAILED,
            )
        return Resolved(docker.id, docker.name, docker)
    if len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref):
        matches = [network["id"] for network in networks if network["id"].startswith(ref)]
        if len(matches) == 1:
            return Resolved(matches[0], None, None)
        if len(matches) > 1:
            raise CliError(f"{ref} matches {len(matches)} networks; give more of the id", EXIT_USAGE)
    raise CliError(f"no such network: {ref} (neither Docker nor the plugin knows it)", EXIT_FAILED)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))
