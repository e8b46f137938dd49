"""Removing what a test or benchmark left behind: what it labelled, from any Docker engine, even when some of it
resists; and vxlanpy's global FORWARD hook, from a namespace where the suite ran the plugin."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import docker.errors


def remove_labelled(
    client: Any, label: str = "vxlanpy.test", containers: bool = True, networks: bool = True
) -> list[str]:
    """Force-remove the containers and networks labelled `label`=1; returns what could not be removed."""
    problems: list[str] = []
    selector = {"label": f"{label}=1"}
    if containers:
        for container in client.containers.list(all=True, filters=selector):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                problems.append(f"container {container.name}: {exc}")
    if networks:
        for network in client.networks.list(filters=selector):
            for attempt in range(3):  # an endpoint may still be on its way out
                try:
                    network.remove()
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError as exc:
                    if attempt == 2:
                        problems.append(f"network {network.name}: {exc}")
                    time.sleep(0.5)
    return problems


# vxlanpy's global FORWARD hook (plugin/vxlanpy/dataplane/iptables.py): VXLANPY-FORWARD, jumped to first from
# FORWARD and DOCKER-USER, and VXLANPY-INTERNAL below it, in iptables and ip6tables.  The plugin leaves it in place
# when it stops, on purpose (its isolation must outlive a restart); a test session that ran the plugin removes it.
FORWARD_HOOK_CHAIN = "VXLANPY-FORWARD"
FORWARD_HOOK_CHAINS = (FORWARD_HOOK_CHAIN, "VXLANPY-INTERNAL")  # in this order: the first jumps to the second
FORWARD_HOOK_PARENTS = ("FORWARD", "DOCKER-USER")
NOTRACK_TABLE = "vxlanpy"
_MOST_JUMPS = 100  # a bound on the jumps removed from one parent chain, should each deletion "succeed" forever


def remove_forward_hook(netns: str | None = None) -> list[str]:
    """Remove vxlanpy's FORWARD hook (its chains and every jump to them) from the filter tables of `netns`, or of
    the namespace this process runs in, and its nftables table `bridge vxlanpy`; returns what could not be
    removed.  Nothing else is touched."""
    problems: list[str] = []
    prefix = ["ip", "netns", "exec", netns] if netns else []
    for program in ("iptables", "ip6tables"):
        if shutil.which(program) is None:
            continue
        for problem in _remove_forward_hook(program, prefix):
            problems.append(f"{program}: {problem}")
    # The nftables table that keeps frames switched inside vxlanpy bridges out of conntrack (dataplane/notrack.py).
    if shutil.which("nft") is not None:
        argv = [*prefix, "nft", "list", "table", "bridge", NOTRACK_TABLE]
        if subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0:
            argv = [*prefix, "nft", "delete", "table", "bridge", NOTRACK_TABLE]
            deleted = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            if deleted.returncode != 0:
                problems.append(f"nft: could not delete table bridge {NOTRACK_TABLE}: {deleted.stderr.strip()}")
    return problems


def _remove_forward_hook(program: str, prefix: list[str]) -> Iterator[str]:
    def xtables(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [*prefix, program, "-w", "10", "-t", "filter", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    for parent in FORWARD_HOOK_PARENTS:
        for _ in range(_MOST_JUMPS):  # one jump is deleted per call; it fails once none is left (or no chain)
            if xtables("-D", parent, "-j", FORWARD_HOOK_CHAIN).returncode != 0:
                break
    present = [chain for chain in FORWARD_HOOK_CHAINS if xtables("-S", chain).returncode == 0]
    for chain in present:  # emptied first, so that VXLANPY-FORWARD's jumps no longer hold VXLANPY-INTERNAL
        xtables("-F", chain)
    for chain in present:
        deleted = xtables("-X", chain)
        if deleted.returncode != 0:
            yield f"could not delete chain {chain}: {deleted.stderr.strip()}"
