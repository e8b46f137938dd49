"""Frames switched inside a vxlanpy bridge skip connection tracking.

On a Docker host br_netfilter hands every bridged frame to the IPv4 and IPv6 hooks: dockerd turns
net.bridge.bridge-nf-call-iptables on, and a bridge's own nf_call_iptables can only add to that sysctl.  So each
frame one container sends another, on this host or through a VXLAN port, costs a conntrack lookup on both hosts,
and each flow an entry, for nothing: vxlanpy's FORWARD rules accept such frames without looking at their state.

The frames that do need conntrack are routed through the gateway (egress masquerade, published ports, the host
itself): they are addressed to the bridge's own MAC, and the bridge marks them "to this host" before its
prerouting hook runs.  Every other unicast frame that enters a vxlanpy bridge through a container's veth or a
tunnel port is switched inside the network, so one rule per kind of port marks it untracked, at the bridge's
prerouting hook, before br_netfilter.

The IPv4 hooks (iptables' raw table) see a bridged frame only after br_netfilter has rewritten its packet type
to "host", hence nft: a table of vxlanpy's own (`bridge vxlanpy`), written whole in one transaction, touching
nothing else.  Where `nft` is not installed this is skipped: the frames are tracked as before, which costs
speed, never correctness.

One consequence is handled in firewall_rules.masquerade_rules: a container reaching a published port of its own
network (hairpin) is masqueraded, since the reply would otherwise be switched straight back, untracked, and
never un-DNATed.  Docker's bridge answers hairpin connections from the gateway's address too (its userland proxy).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable

from ..models import GRETAP_PREFIX, VETH_HOST_PREFIX, VXLAN_PREFIX

log = logging.getLogger(__name__)

TABLE = "vxlanpy"
CHAIN = "switched"
# Before br_netfilter (priority 0), which hands the frame to conntrack.
PRIORITY = -300
PORTS = (f"{VETH_HOST_PREFIX}*", f"{VXLAN_PREFIX}*", f"{GRETAP_PREFIX}*")


def notrack_rules() -> list[str]:
    """The chain's rules, as `nft list table bridge vxlanpy` prints them."""
    return [f'iifname "{port}" meta pkttype other notrack' for port in PORTS]


def table_script() -> str:
    """An `nft -f` script that replaces the table whole, in one transaction (declared first so that the delete
    never fails)."""
    body = "\n".join(f"        {rule}" for rule in notrack_rules())
    return (
        f"table bridge {TABLE}\n"
        f"delete table bridge {TABLE}\n"
        f"table bridge {TABLE} {{\n"
        f"    chain {CHAIN} {{\n"
        f"        type filter hook prerouting priority {PRIORITY}; policy accept;\n"
        f"{body}\n"
        "    }\n"
        "}\n"
    )


def table_in_place(listing: str) -> bool:
    """Whether `nft list table bridge vxlanpy` shows exactly the rules above."""
    rules = [line.strip() for line in listing.splitlines() if line.strip().startswith("iifname")]
    return rules == notrack_rules() and "hook prerouting" in listing


class BridgedNotrack:
    """The `bridge vxlanpy` table through nft; `run` runs a command (in the firewall's namespace).

    Never fatal: where the table cannot be written (no nft, a kernel without nftables' bridge family) the plugin
    works as before, slower, and says so once in its log."""

    def __init__(self, run: Callable[[list[str], str | None], subprocess.CompletedProcess[str]]) -> None:
        self._run = run
        self.in_place = False
        self._warned = False

    def ensure(self) -> None:
        """Write the table when it is missing or differs; one `nft list` when it is in place."""
        if shutil.which("nft") is None:
            self._warn("nft is not installed. Hint: install the nftables package")
            return
        listing = self._run(["nft", "list", "table", "bridge", TABLE], None)
        if listing.returncode == 0 and table_in_place(listing.stdout):
            self.in_place = True
            return
        result = self._run(["nft", "-f", "-"], table_script())
        if result.returncode != 0:
            stderr = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
            self._warn(f"nft -f (table bridge {TABLE}) failed: {stderr}. Hint: does the kernel have nf_tables_bridge?")
            return
        self.in_place = True

    def _warn(self, why: str) -> None:
        self.in_place = False
        if not self._warned:
            self._warned = True
            log.warning("frames switched inside vxlanpy networks go through conntrack, which costs throughput: %s", why)
