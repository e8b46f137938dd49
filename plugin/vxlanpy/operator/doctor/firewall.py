"""`vxlanpy doctor`'s firewall checks: vxlanpy's chains and hooks as the firewall writes them (the same rules,
from firewall_rules), what may decide before them, and whether VXLAN reaches this host."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...dataplane.firewall_rules import (
    FORWARD_CHAIN,
    INPUT_HOOK,
    INTERNAL_CHAIN,
    POSTROUTING_CHAIN,
    Ruleset,
    forward_chain_in_place,
    isolation_rules,
    network_names,
)
from ...dataplane.notrack import TABLE as NOTRACK_TABLE
from ...dataplane.notrack import table_in_place
from .base import FAIL, OK, SKIP, WARN, Examination, Finding, NftChain
from .rules import DOCKER_NFT_TABLES, firewall_layout, hook_precedence, input_verdict, is_iptables_own

IPTABLES_FILTER_PRIORITY = 0  # NF_IP_PRI_FILTER: where iptables' filter FORWARD runs on the forward hook


def check_firewall_readable(exam: Examination) -> Iterator[Finding]:
    """Says why the other firewall checks are silent: no root, or no readable iptables."""
    if not exam.probe.is_root():
        yield Finding(SKIP, "firewall", "reading iptables needs root: run `sudo vxlanpy doctor`")
        return
    filter4 = exam.ruleset(4, "filter")
    if isinstance(filter4, str):
        yield Finding(FAIL, "firewall", f"cannot read iptables: {filter4}", fix="install iptables; run as root")


def check_firewall_layout(exam: Examination) -> Iterator[Finding]:
    filter4 = exam.filter4()
    if filter4 is None:
        return
    tables = {(chain.family, chain.table) for chain in exam.nft_chains() or []}
    yield Finding(OK, "firewall layout", firewall_layout(filter4, tables))
    policy = filter4.policies.get("FORWARD", "?")
    notes = {
        "DROP": ": a bridge forwards only what rules allow",
        "ACCEPT": ": vxlanpy's rules isolate its networks all the same; other interfaces route unfiltered",
    }
    yield Finding(OK, "FORWARD policy", policy + notes.get(policy, ""))


def check_forward_hook(exam: Examination) -> Iterator[Finding]:
    filter4 = exam.filter4()
    if filter4 is None:
        return
    precedence = hook_precedence(filter4)
    if not precedence.reached:
        yield Finding(
            FAIL,
            "vxlanpy's FORWARD hook",
            "missing (was the firewall flushed, or Docker restarted without vxlanpy?)",
            why="with the DROP policy containers get nothing through; with ACCEPT networks are not isolated",
            fix="vxlanpy gc (reconciliation puts vxlanpy's chains and hooks back)",
        )
    elif precedence.strangers:
        strangers = precedence.strangers
        yield Finding(
            WARN,
            "vxlanpy's FORWARD hook",
            "does not decide first: " + "; ".join(strangers[:3]) + (" ..." if len(strangers) > 3 else ""),
            why="these rules decide before vxlanpy's (Docker re-added its own rules above vxlanpy's on a "
            "restart?); e.g. `-j DOCKER-FORWARD` or `-i docker0 ! -o docker0 -j ACCEPT` lets containers on "
            "docker0 into vxlanpy networks. The plugin moves its hook back within seconds: if this stays, "
            "is it running?",
            fix="iptables -D FORWARD -j VXLANPY-FORWARD && iptables -I FORWARD 1 -j VXLANPY-FORWARD "
            "(ip6tables too), or restart the plugin",
        )
    else:
        yield Finding(OK, "vxlanpy's FORWARD hook", "decides first: " + " -> ".join(precedence.path))


def check_nft_forward(exam: Examination) -> Iterator[Finding]:
    if exam.filter4() is not None:
        yield from _nft_forward(exam, exam.nft_chains())


def check_isolation_rules(exam: Examination) -> Iterator[Finding]:
    filter4 = exam.filter4()
    if filter4 is None:
        return
    if not forward_chain_in_place(filter4):
        yield Finding(
            FAIL,
            "vxlanpy's isolation rules",
            f"{FORWARD_CHAIN} does not hold them (flushed, edited, or an older vxlanpy's layout)",
            why="containers get nothing through, or networks are not isolated from each other",
            fix="vxlanpy gc (reconciliation rewrites the chain)",
        )
    else:
        yield Finding(OK, "vxlanpy's isolation rules", f"{FORWARD_CHAIN} in place")


def check_switched_frames_untracked(exam: Examination) -> Iterator[Finding]:
    """The nftables table that keeps frames switched inside a network out of conntrack (dataplane/notrack.py)."""
    if exam.filter4() is None:
        return
    check = "frames switched inside a network"
    code, out, _ = exam.probe.run(["nft", "list", "table", "bridge", NOTRACK_TABLE])
    why = "br_netfilter hands them to conntrack, which costs throughput between containers (isolation is unaffected)"
    if code == 0 and table_in_place(out):
        yield Finding(OK, check, f"skip conntrack (nft table bridge {NOTRACK_TABLE})")
    elif code == 127:
        yield Finding(
            WARN, check, "go through conntrack: nft is not installed", why=why, fix="apt-get install nftables"
        )
    else:
        yield Finding(
            WARN,
            check,
            f"go through conntrack: nft table bridge {NOTRACK_TABLE} is missing or changed",
            why=why + "; the plugin's log says why it could not write it (a kernel without nftables' bridge family?)",
            fix="vxlanpy gc (reconciliation writes the table again)",
        )


def check_network_firewalls(exam: Examination) -> Iterator[Finding]:
    filter4 = exam.filter4()
    if filter4 is None:
        return
    nat4 = exam.ruleset(4, "nat")
    for network in exam.networks or []:
        yield _network_rules(network, filter4, nat4)


def _nft_forward(exam: Examination, chains: list[NftChain] | None) -> Iterator[Finding]:
    """nftables base chains on the forward hook besides iptables' own: a drop there is final whatever
    vxlanpy's iptables rules accept."""
    check = "nftables forward chains"
    if chains is None:
        yield Finding(SKIP, check, "no `nft` command: other nftables tables are not checked")
        return
    legacy = "legacy" in exam.probe.run(["iptables", "--version"])[1]
    others = [
        chain
        for chain in chains
        if chain.hook == "forward" and chain.family in ("ip", "ip6", "inet") and (legacy or not is_iptables_own(chain))
    ]
    if not others:
        yield Finding(OK, check, "none besides iptables' own")
        return
    for chain in sorted(others, key=lambda c: (c.priority or 0, c.label)):
        priority = chain.priority if chain.priority is not None else 0
        order = (
            "before iptables'"
            if priority < IPTABLES_FILTER_PRIORITY
            else "after iptables'"
            if priority > IPTABLES_FILTER_PRIORITY
            else "at the same priority as iptables'"
        )
        summary = f"{chain.label}: priority {priority} ({order}), policy {chain.policy or '?'}"
        if chain.policy != "drop":
            yield Finding(OK, check, summary + ": only its drop rules could stop what vxlanpy accepts")
            continue
        docker = (chain.family, chain.table) in DOCKER_NFT_TABLES
        yield Finding(
            WARN,
            check,
            summary,
            why="an nftables accept only ends its own chain: what vxlanpy's rules accept (egress, published "
            "ports, traffic inside a network) is still dropped by this chain's policy, at any priority; "
            "vxlanpy's drops, hence isolation, hold all the same"
            + (". Docker sets this policy when it had to turn IP forwarding on itself" if docker else ""),
            fix=(
                "set net.ipv4.ip_forward=1 in /etc/sysctl.d/ before dockerd starts, and restart dockerd"
                if docker
                else f"accept vxlanpy's bridges first in that chain: nft insert rule {chain.label} iifname "
                f'"vxbr-*" accept; nft insert rule {chain.label} oifname "vxbr-*" accept '
                "(vxlanpy's iptables rules still drop what must not pass)"
            ),
        )


def _network_rules(network: dict[str, Any], filter4: Ruleset, nat4: Ruleset | str) -> Finding:
    vni = network["vni"]
    bridge, chain, dnat = network_names(vni)
    missing = []
    if network.get("internal"):
        missing += [
            f"{INTERNAL_CHAIN} {rule[0]} {bridge}"
            for rule in isolation_rules(bridge)
            if not filter4.has(INTERNAL_CHAIN, rule)
        ]
    if isinstance(nat4, Ruleset):
        if chain not in nat4.rules or dnat not in nat4.rules:
            missing.append(f"nat {chain}/{dnat}")
        if not network.get("internal") and not nat4.has(POSTROUTING_CHAIN, ["-j", chain]):
            missing.append("masquerade hook")
    check = f"firewall of vni {vni}"
    if missing:
        return Finding(
            FAIL,
            check,
            "missing: " + ", ".join(missing),
            why="the network's containers lose isolation, egress or published ports",
            fix="vxlanpy gc (reconciliation rewrites the network's chains)",
        )
    return Finding(OK, check, f"nat chains {chain}, {dnat} and their hooks in place")


def check_vxlan_port(exam: Examination) -> Iterator[Finding]:
    if not exam.probe.is_root():
        yield Finding(SKIP, "VXLAN port", "reading iptables needs root")
        return
    networks = exam.networks or []
    # Only VXLAN devices: a gretap network's ports carry GRE (IP protocol 47), not UDP (see the README).
    in_use = [n for n in networks if n.get("mode") not in (None, "local")]
    devices = [device for n in in_use for device in n["devices"] if device["kind"] == "vxlan"]
    remote = bool(devices)
    ports = sorted({int(device["dstport"]) for device in devices}) or [4789]
    families = {6 if ":" in (device.get("local") or "") else 4 for device in devices} or {4}
    severity = FAIL if remote else WARN
    for family in sorted(families):
        ruleset = exam.ruleset(family, "filter")
        if isinstance(ruleset, str):
            yield Finding(WARN, f"VXLAN port (IPv{family})", f"cannot read the firewall: {ruleset}")
            continue
        for port in ports:
            check = f"VXLAN port udp/{port}" + (" (IPv6)" if family == 6 else "")
            verdict, deciding, partial = input_verdict(ruleset, "INPUT", port)
            ours = ruleset.has("INPUT", INPUT_HOOK)
            note = "; vxlanpy's VTEP allow-list is in front" if ours else ""
            if verdict == "drop" or verdict in ("policy:DROP", "policy:REJECT"):
                yield Finding(
                    severity,
                    check,
                    "dropped by " + " -> ".join(deciding) + note,
                    why="VXLAN from other hosts never arrives: containers on other hosts are unreachable"
                    + ("" if remote else " (no network uses other hosts yet)"),
                    fix=f"allow it before that rule: iptables -I INPUT -p udp --dport {port} -s <peer VTEP> -j ACCEPT",
                )
            elif partial:
                yield Finding(
                    WARN,
                    check,
                    "dropped for some sources or interfaces: " + "; ".join(partial[:3]) + note,
                    why="VTEPs these rules match cannot reach this host",
                    fix="check that no peer VTEP matches them",
                )
            else:
                how = "accepted by " + " -> ".join(deciding) if deciding else verdict
                yield Finding(OK, check, f"not filtered ({how}){note}")


# What `vxlanpy doctor` checks of the firewall, in order (the VXLAN port comes last, after the plugin's state).
FIREWALL_CHECKS = [
    check_firewall_readable,
    check_firewall_layout,
    check_forward_hook,
    check_nft_forward,
    check_isolation_rules,
    check_switched_frames_untracked,
    check_network_firewalls,
]
