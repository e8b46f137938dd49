"""`vxlanpy ls`, `inspect`, `peers`, `node ls/rm` and `health`: what the plugin holds, with Docker's names."""

from __future__ import annotations

import sys
import time

import click

from ..client import EXIT_FAILED, EXIT_OK, CliError
from .base import Env, VxlanpyGroup, main, network_rows, pass_env, print_json, progress, resolve_network

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
    from ..views import render_table

    rows, warnings = network_rows(env)
    if as_json:
        print_json(rows)
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
    from ..views import render_detail

    resolved = resolve_network(env, network)
    rows, _ = network_rows(env)
    row = next((row for row in rows if row["id"] == resolved.id), None)
    if row is None:
        raise CliError(f"network {network} is not known to the plugin (its state is lost; see `vxlanpy doctor`)")
    if as_json:
        print_json([row])
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
    from ..views import render_peers

    resolved = resolve_network(env, network)
    peers = env.plugin().call("GET", f"/vxlanpy/peers/{resolved.id}")
    if as_json:
        print_json(peers)
    else:
        click.echo(render_peers(resolved.name or resolved.id[:12], peers))
    if not peers.get("match"):
        sys.exit(EXIT_FAILED)


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
    from ..views import node_table

    result = env.plugin().call("GET", "/vxlanpy/nodes")
    nodes = result.get("nodes", [])
    if as_json:
        print_json(nodes)
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
        print_json(body)
    elif not quiet:
        if isinstance(checks, dict):
            parts = [f"{name} {'ok' if c.get('ok') else 'FAILED'} ({c.get('detail')})" for name, c in checks.items()]
            click.echo(f"{'healthy' if healthy else 'unhealthy'}: {'; '.join(parts)}")
        else:
            click.echo(f"unhealthy: the plugin answered HTTP {status} ({str(body)[:120]})")
    sys.exit(EXIT_OK if healthy else EXIT_FAILED)
