"""`vxlanpy doctor`, `gc` and `recover`: what is wrong on this host, and the repairs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from ..client import EXIT_FAILED, EXIT_UNREACHABLE, VXLANPY_DRIVER_NAME, CliError, vxlanpy_plugin_drivers
from .base import Env, docker_or_none, main, names_for_report, pass_env, print_json, progress

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
    (a reconciliation dry run); whether INPUT rules drop the VXLAN UDP port;
    encrypted networks' WireGuard: its backend (kernel or wireguard-go), interface,
    peers against the hosts etcd publishes, and each such network's MTU.

    Exits 1 when a check fails (warnings alone exit 0). Run it as root.

    \b
    Examples:
      sudo vxlanpy doctor
      sudo vxlanpy doctor --json | jq '.[] | select(.status == "fail")'
    """
    from dataclasses import asdict

    from ..doctor import Doctor

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
        print_json([asdict(f) for f in findings])
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
    from ..doctor import describe_report

    forget_ids = _forgettable(env, forget) if forget else []
    what = "dry run: nothing is changed" if dry_run else "repairing"
    progress(f"reconciling through the plugin on {env.plugin().socket_path} ({what}) ...")
    started = time.monotonic()
    names = names_for_report(env)
    # Pool claims of creates that never completed are released only when Docker says which pools it uses.
    docker_pools = docker_or_none(env, lambda d: d.subnets_in_use(), "keeping every IPAM pool claim")
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


_DRIVER_HELP = (
    "Also treat networks of this driver as vxlanpy's (besides vxlanpy, vxlanpy:TAG, REPO/vxlanpy:TAG and "
    "the names of the managed vxlanpy plugins installed, aliases included)."
)


@main.command("recover")
@click.option("--dry-run", is_flag=True, help="Only show what would be done.")
@click.option("--driver", "drivers", multiple=True, metavar="NAME", help=_DRIVER_HELP)
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
    from ..doctor import describe_report

    for line in describe_report(final.get("report", {}), dry_run):
        click.echo(f"  {line}")
    elapsed = (time.monotonic() - started) * 1000
    if not actions:
        click.echo(f"nothing to recover: the store knows every vxlanpy network Docker has ({elapsed:.0f} ms)")
    else:
        click.echo(f"{'would take' if dry_run else 'done:'} {actions} actions ({elapsed:.0f} ms)")
