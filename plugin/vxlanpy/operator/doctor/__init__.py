"""`vxlanpy doctor`: what can keep vxlanpy networks from working on this host, each with why and how to fix it.

The checks read the host (files under /proc and /sys, `iptables -S`, the plugin's socket) and never change
anything.  Each is a small function of the examination that yields Findings, so the CLI prints each one as soon
as it is known; `CHECKS` lists them in the order they run (a check that needs what an earlier one learned, the
plugin's state for instance, comes after it).  Everything the checks touch goes through `Probe`, which the unit
tests replace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ...dataplane.firewall_rules import Ruleset
from ..client import DockerView, PluginClient
from .base import FAIL, OK, SKIP, WARN, Check, Examination, Finding, LocalProbe, NftChain, Probe, parse_nft_chains
from .checks import (
    check_activation,
    check_docker_state,
    check_forwarding,
    check_health,
    check_modules,
    check_mtu,
    check_orphans,
    check_peers,
    check_socket,
    describe_report,
)
from .firewall import FIREWALL_CHECKS, check_vxlan_port
from .rules import firewall_layout, hook_precedence, input_verdict, is_iptables_own, rule_matches_vxlan
from .wireguard import check_wireguard

CHECKS: list[Check] = [
    check_modules,
    check_socket,
    check_activation,
    check_health,  # reads the plugin's networks, which the checks below look at
    check_docker_state,
    check_forwarding,
    *FIREWALL_CHECKS,
    check_mtu,
    check_wireguard,
    check_peers,
    check_orphans,
    check_vxlan_port,
]


class Doctor:
    def __init__(self, probe: Probe, plugin: PluginClient, docker: Callable[[], DockerView]) -> None:
        self.exam = Examination(probe, plugin, docker)

    def run(self) -> Iterator[Finding]:
        for check in CHECKS:
            yield from check(self.exam)


__all__ = [
    "CHECKS",
    "FAIL",
    "OK",
    "SKIP",
    "WARN",
    "Doctor",
    "Examination",
    "FIREWALL_CHECKS",
    "Finding",
    "LocalProbe",
    "NftChain",
    "Probe",
    "Ruleset",
    "describe_report",
    "firewall_layout",
    "hook_precedence",
    "input_verdict",
    "is_iptables_own",
    "parse_nft_chains",
    "rule_matches_vxlan",
]
