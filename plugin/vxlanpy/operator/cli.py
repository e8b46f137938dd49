"""The `vxlanpy` command: the plugin itself (`serve`) and the operator's tools.

The tools talk to the running plugin over its socket (it owns the kernel objects and the store, so anything
that changes state goes through it, under the same locks as Docker's requests) and read Docker's names through
the docker SDK.  Exit codes: 0 fine, 1 something is wrong or was refused, 2 bad usage, 3 the plugin or Docker
cannot be reached.  Errors are one line on stderr; progress goes to stderr too, so stdout stays parseable.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ..config import DEFAULT_SOCKET, Settings
from ..errors import VxlanpyError
from ..models import GATEWAY_DOCKER
from .attach import container_target, netns_target
from .client import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    PLUGINS_DIR,
    VXLANPY_DRIVER_NAME,
    CliError,
    DockerNetwork,
    DockerView,
    PluginClient,
    SdkDocker,
    discover_socket,
    netns_names,
    proc_netns,
    vxlanpy_plugin_drivers,
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
        from .doctor import LocalProbe

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
    from ..metrics import METRICS_ADDR_ENV, parse_metrics_addr
    from ..server import serve as run_server

    try:
        settings = Settings.from_env()
        metrics_addr = parse_metrics_addr(os.environ.get(METRICS_ADDR_ENV))
    except VxlanpyError as exc:
        click.echo(f"vxlanpy: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    run_server(settings, metrics_addr)


# -- helpers -----------------------------------------------------------------------------------------------------


def _docker_or_none(env: Env, action: Callable[[DockerView], Any], what: str) -> Any:
    """Docker's view when it answers; a warning and None when it does not (the plugin's own view still shows)."""
    try:
        return action(env.docker())
    except CliError as exc:
        progress(f"warning: {exc.message}; {what}")
        return None


def _listing(env: Env) -> tuple[list[dict[str, Any]], list[str]]:
    from .views import build_rows

    listing = env.plugin().call("GET", "/vxlanpy/ls")
    ids = [network["id"] for network in listing.get("networks", [])]
    docker_networks = _docker_or_none(env, lambda d: d.vxlanpy_networks(ids), "showing no Docker names")
    containers = _docker_or_none(env, lambda d: d.containers(), "") if docker_networks is not None else []
    # gateway=docker_gwbridge: Docker's bridge driver publishes the ports, so only Docker knows them.
    docker_ports = None
    if docker_networks is not None and any(
        (network.get("config") or {}).get("gateway") == GATEWAY_DOCKER for network in listing.get("networks", [])
    ):
        docker_ports = _docker_or_none(env, lambda d: d.published_ports(), "showing no ports published by Docker")
    return build_rows(listing, docker_networks, containers or [], env.namespaces(), docker_ports)


def _report_names(env: Env) -> dict[str, str]:
    """Names for what a reconciliation report mentions by id (best effort: {} when Docker does not answer)."""
    from .views import report_names

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
    docker = _docker_or_none(env, lambda d: d.network(ref), "looking the network up in the plugin only")
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


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


# -- ls / inspect -----------------------------------------------------------------------------------------------


@main.command("ls")
@click.option(
    "--json", "as_json", is_flag=True, help="A JSON list of objects keyed by the lower-case column names, and gateway."
)
@pass_env
def ls_command(env: Env, as_json: bool) -> None:
    """List vxlanpy networks: Docker name and id, VNI, mode, subnets, devices, MTU, peers and endpoints.

    \b
    Devices the kernel lacks are marked (missing); `vxlanpy gc` recreates them.
    Endpoints include containers attached with `vxlanpy attach`.

    \b
    Examples:
      vxlanpy ls
      vxlanpy ls --json | jq '.[] | {name, vni, mtu}'
    """
    from .views import render_table

    rows, warnings = _listing(env)
    if as_json:
        _print_json(rows)
    elif rows:
        click.echo(render_table(rows))
    else:
        click.echo("no vxlanpy networks (create one: docker network create -d vxlanpy NAME)")
    for warning in warnings:
        progress(f"warning: {warning}")


@main.command("inspect")
@click.argument("network")
@click.option("--json", "as_json", is_flag=True, help="A JSON list holding one object, as in `vxlanpy ls --json`.")
@pass_env
def inspect_command(env: Env, network: str, as_json: bool) -> None:
    """Show one network in detail: devices, underlay, peers and every endpoint.

    NETWORK is a Docker network name, id or id prefix (or a plugin network id prefix).

    \b
    Examples:
      vxlanpy inspect demo
      vxlanpy inspect --json demo
    """
    from .views import render_detail

    resolved = resolve_network(env, network)
    rows, _ = _listing(env)
    row = next((row for row in rows if row["id"] == resolved.id), None)
    if row is None:
        raise CliError(f"network {network} is not known to the plugin (its state is lost; see `vxlanpy doctor`)")
    if as_json:
        _print_json([row])
    else:
        click.echo(render_detail(row))


# -- peers ----------------------------------------------------------------------------------------------------


@main.command("peers")
@click.argument("network")
@click.option("--json", "as_json", is_flag=True, help="The comparison as JSON.")
@pass_env
def peers_command(env: Env, network: str, as_json: bool) -> None:
    """Show a network's remote VTEPs and the FDB and neighbour entries programmed in the kernel, and whether
    they match the store: the etcd view in multi-host mode, the static peers config on a single host.

    Exits 1 when the kernel does not match.

    \b
    Examples:
      vxlanpy peers demo
      vxlanpy peers --json demo | jq .match
    """
    from .views import render_peers

    resolved = resolve_network(env, network)
    peers = env.plugin().call("GET", f"/vxlanpy/peers/{resolved.id}")
    if as_json:
        _print_json(peers)
    else:
        click.echo(render_peers(resolved.name or resolved.id[:12], peers))
    if not peers.get("match"):
        sys.exit(EXIT_FAILED)


# -- doctor ---------------------------------------------------------------------------------------------------

_MARKS = {"ok": " ok ", "warn": "warn", "fail": "FAIL", "skip": "skip"}


@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="The findings as a JSON list.")
@pass_env
def doctor_command(env: Env, as_json: bool) -> None:
    """Check this host for what keeps vxlanpy networks from working, and say how to fix each problem.

    \b
    Checks: kernel modules (vxlan, bridge, br_netfilter); the plugin socket and whether
    it answers dockerd; the state store (and etcd sync); Docker's networks against the
    plugin's; IPv4 forwarding; the FORWARD policy and vxlanpy's chains and hooks; each
    network's MTU against its underlay; orphaned links, rules and endpoints
    (a reconciliation dry run); whether INPUT rules drop the VXLAN UDP port.

    Exits 1 when a check fails (warnings alone exit 0). Run it as root.

    \b
    Examples:
      sudo vxlanpy doctor
      sudo vxlanpy doctor --json | jq '.[] | select(.status == "fail")'
    """
    from dataclasses import asdict

    from .doctor import Doctor

    doctor = Doctor(env.probe(), env.plugin(), env.docker)
    findings = []
    if not as_json:
        progress(f"checking this host (plugin socket {env.plugin().socket_path}) ...")
    for finding in doctor.run():
        findings.append(finding)
        if as_json:
            continue
        click.echo(f"[{_MARKS[finding.status]}] {finding.check}: {finding.summary}")
        if finding.status in ("warn", "fail"):
            if finding.why:
                click.echo(f"       why: {finding.why}")
            if finding.fix:
                click.echo(f"       fix: {finding.fix}")
    failed = sum(1 for f in findings if f.status == "fail")
    warned = sum(1 for f in findings if f.status == "warn")
    if as_json:
        _print_json([asdict(f) for f in findings])
    else:
        verdict = "all good" if not failed and not warned else f"{failed} failed, {warned} warnings"
        click.echo(f"{len(findings)} checks: {verdict}")
    if failed:
        sys.exit(EXIT_FAILED)


# -- gc --------------------------------------------------------------------------------------------------------


@main.command("gc")
@click.option("--dry-run", is_flag=True, help="Only show what would be done.")
@click.option(
    "--forget",
    "forget",
    multiple=True,
    metavar="NETWORK_ID",
    help="Also delete a network the plugin holds but Docker does not know (see `vxlanpy doctor`). Repeatable.",
)
@pass_env
def gc_command(env: Env, dry_run: bool, forget: tuple[str, ...]) -> None:
    """Run reconciliation now, through the running plugin: recreate missing devices and rules, remove orphaned
    links, chains and stale endpoints, detach attachments whose container is gone, release their addresses,
    and release the IPAM pools of network creates that never completed (no network and no Docker network uses
    them, a minute after they were claimed; only when Docker answers).

    \b
    Examples:
      vxlanpy gc --dry-run
      vxlanpy gc
      vxlanpy gc --forget 3f2a9c1b7d0e
    """
    from .doctor import describe_report

    forget_ids = _forgettable(env, forget) if forget else []
    what = "dry run: nothing is changed" if dry_run else "repairing"
    progress(f"reconciling through the plugin on {env.plugin().socket_path} ({what}) ...")
    started = time.monotonic()
    names = _report_names(env)
    # Pool claims of creates that never completed are released only when Docker says which pools it uses.
    docker_pools = _docker_or_none(env, lambda d: d.subnets_in_use(), "keeping every IPAM pool claim")
    body: dict[str, Any] = {"dry_run": dry_run, "forget": forget_ids}
    if docker_pools is not None:
        body["docker_pools"] = sorted(docker_pools)
    result = env.plugin().call("POST", "/vxlanpy/gc", body)
    lines = describe_report(result.get("report", {}), dry_run, names)
    for line in lines:
        click.echo(f"  {line}")
    elapsed = (time.monotonic() - started) * 1000
    actions = sum(1 for line in lines if not line.startswith("lost"))
    if not lines:
        click.echo(f"nothing to do: the kernel matches the store ({elapsed:.0f} ms)")
    elif dry_run:
        click.echo(f"{actions} actions would be taken; run `vxlanpy gc` to take them ({elapsed:.0f} ms)")
    else:
        click.echo(f"done: {actions} actions ({elapsed:.0f} ms)")


def _forgettable(env: Env, refs: tuple[str, ...]) -> list[str]:
    networks = env.plugin().call("GET", "/vxlanpy/ls").get("networks", [])
    docker = env.docker()
    ids = []
    for ref in refs:
        matches = [network["id"] for network in networks if network["id"].startswith(ref.lower())]
        if len(matches) != 1:
            raise CliError(f"--forget {ref}: {'no' if not matches else 'more than one'} plugin network matches", 2)
        if docker.network(matches[0]) is not None:
            raise CliError(f"--forget {ref}: Docker still knows this network; remove it with docker network rm", 1)
        ids.append(matches[0])
    return ids


# -- node ls / node rm -------------------------------------------------------------------------------------------


@main.group("node", cls=VxlanpyGroup)
def node_group() -> None:
    """The hosts of a multi-host cluster: list them, remove one that is gone for good.

    \b
    Examples:
      vxlanpy node ls
      vxlanpy node ls --json
      vxlanpy node rm web3-1f2e3d4c
    """


@node_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of objects, one per host.")
@pass_env
def node_ls_command(env: Env, as_json: bool) -> None:
    """List the cluster's hosts: identity, hostname and VTEP; alive, or expired and when; networks, endpoints
    and addresses held.  On the SQLite store (a single host), this host.

    \b
    Examples:
      vxlanpy node ls
      vxlanpy node ls --json | jq -r '.[] | select(.state == "expired") | .id'
    """
    from .views import node_table

    result = env.plugin().call("GET", "/vxlanpy/nodes")
    nodes = result.get("nodes", [])
    if as_json:
        _print_json(nodes)
        return
    click.echo(node_table(nodes, time.time()))


@node_group.command("rm")
@click.argument("host")
@click.option("--force", is_flag=True, help="Remove it even though its lease is alive (its plugin still runs).")
@pass_env
def node_rm_command(env: Env, host: str, force: bool) -> None:
    """Remove HOST (an identity, as `vxlanpy node ls` shows it), a host that is gone for good: its addresses,
    VTEPs and records are released, and every other host drops its FDB and neighbour entries within seconds.
    Refused for a live host unless --force.

    \b
    Examples:
      vxlanpy node rm web3-1f2e3d4c
      vxlanpy node rm web3-1f2e3d4c --force
    """
    result = env.plugin().call("POST", "/vxlanpy/nodes/rm", {"host": host, "force": force})
    row = result.get("row") or {}
    click.echo(
        f"removed host {result.get('id')} (hostname {result.get('hostname') or 'unknown'}"
        f"{', forced: its lease was alive' if result.get('forced') else ''}): {result.get('keys', 0)} keys, "
        f"{row.get('endpoints', 0)} endpoints, {len(row.get('addresses') or [])} addresses released; "
        "the other hosts drop its entries within seconds"
    )


# -- recover -----------------------------------------------------------------------------------------------------


def _docker_inventory(env: Env) -> tuple[list[dict[str, Any]], set[str]]:
    """Every Docker network, inspected, with the containers on it (docker SDK, low-level client); and the driver
    names of the managed vxlanpy plugins installed (their aliases)."""
    try:
        import docker
        import requests.exceptions
    except ImportError:
        raise CliError("the docker SDK is not installed: pip install docker", EXIT_UNREACHABLE) from None
    try:
        api = docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=env.timeout)
        networks = [api.inspect_network(item["Id"]) for item in api.networks()]
        plugin_drivers = vxlanpy_plugin_drivers(api.plugins())
        containers: dict[str, dict[str, Any]] = {}
        for network in networks:
            for cid in network.get("Containers") or {}:
                if cid not in containers and not cid.startswith("ep-"):
                    try:
                        containers[cid] = api.inspect_container(cid)
                    except docker.errors.NotFound:
                        containers[cid] = {}
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise CliError(f"cannot reach Docker: {' '.join(str(exc).split())[:200]}", EXIT_UNREACHABLE) from None
    for network in networks:
        network["_containers"] = {cid: containers.get(cid, {}) for cid in network.get("Containers") or {}}
    return networks, plugin_drivers


def _published(container: dict[str, Any]) -> list[dict[str, Any]]:
    ports = []
    for key, bindings in ((container.get("HostConfig") or {}).get("PortBindings") or {}).items():
        number, _, proto = str(key).partition("/")
        for binding in bindings or []:
            host_port = str(binding.get("HostPort") or "0")  # empty: `-p PORT`, the host port left to vxlanpy
            if number.isascii() and number.isdigit() and host_port.isascii() and host_port.isdigit():
                ports.append(
                    {
                        "proto": proto or "tcp",
                        "container_port": int(number),
                        "host_port": int(host_port),
                        "host_ip": binding.get("HostIp") or None,
                    }
                )
    return ports


def _recovered_network(network: dict[str, Any], ours: Callable[[str], bool]) -> dict[str, Any]:
    """Docker's inspect of a network, in the form the plugin's recover step takes."""
    ipam = network.get("IPAM") or {}
    endpoints = []
    for cid, info in (network.get("Containers") or {}).items():
        if not isinstance(info, dict) or not info.get("EndpointID"):
            continue
        container = network["_containers"].get(cid) or {}
        endpoints.append(
            {
                "id": info["EndpointID"],
                "mac": info.get("MacAddress") or None,
                "ipv4": info.get("IPv4Address") or None,
                "ipv6": info.get("IPv6Address") or None,
                "sandbox": (container.get("NetworkSettings") or {}).get("SandboxKey") or None,
                "ports": _published(container),
            }
        )
    return {
        "id": network["Id"],
        "options": {str(k): str(v) for k, v in (network.get("Options") or {}).items()},
        "internal": bool(network.get("Internal")),
        "ipam_vxlanpy": ours(str(ipam.get("Driver") or "")),
        "subnets": [
            {"pool": c.get("Subnet"), "gateway": c.get("Gateway") or None}
            for c in ipam.get("Config") or ()
            if c.get("Subnet")
        ],
        "endpoints": endpoints,
    }


@main.command("recover")
@click.option("--dry-run", is_flag=True, help="Only show what would be done.")
@click.option(
    "--driver",
    "drivers",
    multiple=True,
    metavar="NAME",
    help="Also treat networks of this driver as vxlanpy's (besides vxlanpy, vxlanpy:TAG, REPO/vxlanpy:TAG and "
    "the names of the managed vxlanpy plugins installed, aliases included).",
)
@pass_env
def recover_command(env: Env, dry_run: bool, drivers: tuple[str, ...]) -> None:
    """Rebuild the plugin's state after it was lost (state.db deleted, emptied, read-only or replaced by a bad
    restore), from what survives, through the running plugin:

    \b
      1. a state.db deleted or replaced while the plugin runs is written back from the copy it holds open;
      2. each vxlanpy network Docker still knows gets its row back from `docker network inspect` (options,
         subnets, --internal) with the VNI of its devices in the kernel (labelled with the network id), and
         each of its containers whose veth survives gets its endpoint back (sandbox, published host ports;
         for -p PORT, the host port the kernel's DNAT rule still has); on vxlanpy's IPAM, the pools, gateways
         and addresses are reserved again;
      3. the devices of lost networks that Docker no longer knows are removed; reconciliation does the rest.

    A network is vxlanpy's when the store (or the kernel's devices) knows its id; with an empty store, when its
    driver is vxlanpy[:TAG], REPO/vxlanpy[:TAG], a managed vxlanpy plugin's name or alias (`docker plugin ls`),
    or a --driver.

    Start-up never removes the devices of networks the store does not know; `vxlanpy health` reports them.

    \b
    Examples:
      vxlanpy recover --dry-run
      vxlanpy recover
      vxlanpy recover --driver myregistry/vxlanpy:0.1.0
    """
    names = set(drivers)

    def ours(driver: str) -> bool:
        return driver in names or bool(VXLANPY_DRIVER_NAME.match(driver))

    verb = "would " if dry_run else ""
    started = time.monotonic()
    plugin = env.plugin()
    note = " (dry run: nothing is changed)" if dry_run else ""
    progress(f"recovering through the plugin on {plugin.socket_path}{note} ...")
    state = plugin.call("POST", "/vxlanpy/recover", {"step": "state", "dry_run": dry_run})
    actions = 0
    if state.get("store_file"):
        click.echo(f"  {state['store_file']}")
        actions += 1
    known = set(state.get("known", []))
    lost = {item["id"]: item for item in state.get("lost", [])}
    inventory, plugin_drivers = _docker_inventory(env)
    names |= plugin_drivers
    docker_ids = {str(network["Id"]) for network in inventory}
    for network in inventory:
        network_id = str(network["Id"])
        if not (network_id in known or network_id in lost or ours(str(network.get("Driver") or ""))):
            continue
        body = {"step": "adopt", "dry_run": dry_run, "network": _recovered_network(network, ours)}
        result = plugin.call("POST", "/vxlanpy/recover", body)
        name = network.get("Name") or network_id[:12]
        if result.get("adopted"):
            vni = result.get("vni")
            click.echo(f"  {verb}adopt network {name} ({network_id[:12]}, vni {vni if vni is not None else 'new'})")
            actions += 1
        for endpoint_id in result.get("endpoints", []):
            click.echo(f"  {verb}adopt endpoint {endpoint_id[:12]} on {name}")
            actions += 1
        for item in result.get("skipped", []):
            click.echo(f"  skipped endpoint {item['id'][:12]} on {name}: {item['reason']}")
        if result.get("ipam"):
            click.echo(f"  reserved again on {name}: {', '.join(result['ipam'])}")
    forget = sorted(network_id for network_id in lost if network_id not in docker_ids)
    final = plugin.call("POST", "/vxlanpy/recover", {"step": "finish", "dry_run": dry_run, "forget": forget})
    for item in final.get("removed_networks", []):
        click.echo(
            f"  {verb}remove the devices of network {item['id'][:12]} (vni {item['vni']}): Docker does not know it"
        )
        actions += 1
    from .doctor import describe_report

    for line in describe_report(final.get("report", {}), dry_run):
        click.echo(f"  {line}")
    elapsed = (time.monotonic() - started) * 1000
    if not actions:
        click.echo(f"nothing to recover: the store knows every vxlanpy network Docker has ({elapsed:.0f} ms)")
    else:
        click.echo(f"{'would take' if dry_run else 'done:'} {actions} actions ({elapsed:.0f} ms)")


# -- attach / detach -----------------------------------------------------------------------------------------------


@dataclass
class Target:
    target: str  # container:<id> or netns:<name>
    label: str
    netns: list[str]


def _target(env: Env, container: str | None, netns: str | None, attaching: bool) -> Target:
    from .attach import NETNS_NAME

    if netns is not None:
        if not NETNS_NAME.match(netns):
            raise CliError(f"--netns {netns!r} is not a valid namespace name", EXIT_USAGE)
        return Target(netns_target(netns), f"namespace {netns}", [f"/run/netns/{netns}"])
    assert container is not None
    found = env.docker().container(container)
    if found is None:
        if not attaching and len(container) == 64 and all(c in "0123456789abcdef" for c in container):
            return Target(container_target(container), f"container {container[:12]}", [])
        raise CliError(
            f"no such container: {container}"
            + ("" if attaching else " (if it was removed, `vxlanpy gc` cleans its attachment up)"),
            EXIT_FAILED,
        )
    label = f"container {found.name} ({found.id[:12]})"
    if attaching:
        if not found.running:
            raise CliError(f"{label} is not running; start it first", EXIT_FAILED)
        if found.network_mode != "none":
            raise CliError(
                f"{label} uses network mode {found.network_mode or '?'}, not none; "
                "connect it with `docker network connect` instead",
                EXIT_FAILED,
            )
    paths = [path for path in (found.sandbox_key, proc_netns(found.pid) if found.pid else "") if path]
    return Target(container_target(found.id), label, paths)


def _split_args(args: tuple[str, ...], netns: str | None, command: str) -> tuple[str | None, str]:
    if netns is not None:
        if len(args) != 1:
            raise click.UsageError(f"with --netns give only the network: vxlanpy {command} --netns NAME NETWORK")
        return None, args[0]
    if len(args) != 2:
        raise click.UsageError(f"give a container and a network: vxlanpy {command} CONTAINER NETWORK")
    return args[0], args[1]


@main.command("attach", context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, metavar="CONTAINER NETWORK")
@click.option("--netns", metavar="NAME", help="A named network namespace (ip netns) instead of a container.")
@click.option("--ip", "ipv4", metavar="ADDR", help="The IPv4 address (default: one from the network's IPAM).")
@click.option("--ip6", "ipv6", metavar="ADDR", help="The IPv6 address, on networks with an IPv6 subnet.")
@click.option("--ifname", metavar="NAME", help="The interface name inside (default: eth0 if free, else eth1, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the new endpoint as JSON.")
@pass_env
def attach_command(
    env: Env,
    args: tuple[str, ...],
    netns: str | None,
    ipv4: str | None,
    ipv6: str | None,
    ifname: str | None,
    as_json: bool,
) -> None:
    """Connect a container started with --network none (or a named namespace) to a vxlanpy network.

    The plugin creates a veth pair on the network's bridge, moves one end into the container
    (eth0 if free, else ethN) with the network's MTU, an address from the network's IPAM (or --ip)
    and a default route via the gateway (unless the network is --internal). The attachment is
    an endpoint of the network like Docker's own: restarts, `vxlanpy gc` and other hosts
    (multi-host mode) see it. It ends when the container stops; `vxlanpy detach` removes it.

    On Docker's default IPAM the highest free address of the subnet is taken (Docker allocates
    from the bottom); with `--ipam-driver vxlanpy` it is reserved, so Docker never hands it out.

    \b
    Examples:
      docker run -d --name solo --network none busybox sleep 1d
      vxlanpy attach solo demo
      vxlanpy attach solo demo --ip 10.42.0.200
      sudo ip netns add blue && vxlanpy attach --netns blue demo
    """
    container, network = _split_args(args, netns, "attach")
    addresses: dict[str, str | None] = {}
    for name, raw, version in (("ipv4", ipv4, 4), ("ipv6", ipv6, 6)):
        if raw is None:
            addresses[name] = None
            continue
        hint = "--ip" if version == 4 else "--ip6"
        try:
            parsed = ipaddress.ip_address(raw)
        except ValueError:
            raise click.BadParameter(f"{raw!r} is not an IP address", param_hint=hint) from None
        if parsed.version != version:
            raise click.BadParameter(f"{raw} is not IPv{version}", param_hint=hint)
        addresses[name] = str(parsed)
    target = _target(env, container, netns, attaching=True)
    resolved = resolve_network(env, network)
    name = resolved.name or resolved.id[:12]
    progress(f"attaching {target.label} to network {name} ...")
    result = env.plugin().call(
        "POST",
        "/vxlanpy/attach",
        {"network": resolved.id, "target": target.target, "netns": target.netns, "ifname": ifname, **addresses},
    )
    endpoint = result["endpoint"]
    if as_json:
        _print_json(result)
        return
    address = ", ".join(a for a in (endpoint.get("ipv4"), endpoint.get("ipv6")) if a)
    click.echo(
        f"attached {target.label} to {name}: {result['ifname']} {address} mac {endpoint['mac']} mtu {result['mtu']}"
    )
    for route in result.get("routes", []):
        click.echo(f"  route: {route}")
    for note in result.get("notes", []):
        click.echo(f"  note: {note}")


@main.command("detach")
@click.argument("args", nargs=-1, metavar="CONTAINER NETWORK")
@click.option("--netns", metavar="NAME", help="A named network namespace (ip netns) instead of a container.")
@pass_env
def detach_command(env: Env, args: tuple[str, ...], netns: str | None) -> None:
    """Remove what `vxlanpy attach` made: the interface in the container, its endpoint and its address.

    \b
    Examples:
      vxlanpy detach solo demo
      vxlanpy detach --netns blue demo
    """
    container, network = _split_args(args, netns, "detach")
    target = _target(env, container, netns, attaching=False)
    resolved = resolve_network(env, network)
    name = resolved.name or resolved.id[:12]
    progress(f"detaching {target.label} from network {name} ...")
    result = env.plugin().call("POST", "/vxlanpy/detach", {"network": resolved.id, "target": target.target})
    endpoint = result["endpoint"]
    click.echo(f"detached {target.label} from {name} ({endpoint.get('ipv4') or endpoint.get('ipv6')})")


# -- health ---------------------------------------------------------------------------------------------------------


@main.command("health")
@click.option("-q", "--quiet", is_flag=True, help="No output: the exit code only.")
@click.option("--json", "as_json", is_flag=True, help="The plugin's answer as JSON.")
@pass_env
def health_command(env: Env, quiet: bool, as_json: bool) -> None:
    """Ask the running plugin whether it is healthy (store, netlink, etcd sync): exit 0 if so, 1 if not.

    For systemd (ExecStartPost= or a timer) and container health checks. The same check
    answers on http://$VXLANPY_METRICS_ADDR/health when metrics are on.

    \b
    Examples:
      vxlanpy health
      vxlanpy health -q || systemctl restart vxlanpy
      vxlanpy --socket /run/docker/plugins/ID/vxlanpy.sock health
    """
    try:
        status, body = env.plugin().request("GET", "/vxlanpy/health", timeout=min(env.timeout, 10))
    except CliError as exc:
        if not quiet:
            click.echo(f"unhealthy: {exc.message}", err=True)
        sys.exit(EXIT_FAILED)
    checks = body.get("checks") if isinstance(body, dict) else None
    healthy = status == 200 and isinstance(checks, dict)
    if as_json and not quiet:
        _print_json(body)
    elif not quiet:
        if isinstance(checks, dict):
            parts = [f"{name} {'ok' if c.get('ok') else 'FAILED'} ({c.get('detail')})" for name, c in checks.items()]
            click.echo(f"{'healthy' if healthy else 'unhealthy'}: {'; '.join(parts)}")
        else:
            click.echo(f"unhealthy: the plugin answered HTTP {status} ({str(body)[:120]})")
    sys.exit(EXIT_OK if healthy else EXIT_FAILED)


__all__ = ["main", "Env", "EXIT_UNREACHABLE"]

if __name__ == "__main__":
    main()
