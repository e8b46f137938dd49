"""`vxlanpy attach` and `detach`: containers and named namespaces wired to a network outside Docker."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import click

from ..attach import container_target, netns_target
from ..client import EXIT_FAILED, EXIT_USAGE, CliError, proc_netns
from .base import Env, main, pass_env, print_json, progress, resolve_network

# -- attach / detach -----------------------------------------------------------------------------------------------


@dataclass
class Target:
    target: str  # container:<id> or netns:<name>
    label: str
    netns: list[str]


def _target(env: Env, container: str | None, netns: str | None, attaching: bool) -> Target:
    from ..attach import NETNS_NAME

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
        print_json(result)
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
