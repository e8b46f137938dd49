"""How `vxlanpy doctor` reads the host's firewall: the path a packet takes through iptables' chains (read with
firewall_rules.Ruleset, the parser the firewall itself uses), and which firewall dockerd set up."""

from __future__ import annotations

from dataclasses import dataclass

from ...dataplane.firewall_rules import DOCKER_USER_CHAIN, FORWARD_HOOK, INPUT_CHAIN, Ruleset
from .base import NftChain

# Docker's chains that may come before vxlanpy's hook without deciding anything for vxlanpy's bridges: the
# isolation stages only drop traffic into Docker's own bridges.
HARMLESS_BEFORE_OURS = {"DOCKER-ISOLATION-STAGE-1"}
DOCKER_NFT_TABLES = {("ip", "docker-bridges"), ("ip6", "docker-bridges")}
# What iptables-nft itself makes in nftables: seen (and judged) through `iptables -S` already.
XTABLES = {"filter", "nat", "mangle", "raw", "security"}
XTABLES_CHAINS = {"INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"}


def target_of(rule: list[str]) -> str | None:
    for flag in ("-j", "-g"):
        if flag in rule and rule.index(flag) + 1 < len(rule):
            return rule[rule.index(flag) + 1]
    return None


def _ports(spec: str) -> list[tuple[int, int]]:
    ranges = []
    for part in spec.split(","):
        low, _, high = part.partition(":")
        if low.isdigit():
            ranges.append((int(low), int(high) if high.isdigit() else int(low)))
    return ranges


def rule_matches_vxlan(rule: list[str], port: int) -> str:
    """'all': the rule matches every VXLAN packet to `port`; 'some': some of them; 'none': none."""
    conditions = rule[: rule.index("-j")] if "-j" in rule else rule[: rule.index("-g")] if "-g" in rule else rule
    partial = False
    index = 0
    while index < len(conditions):
        token = conditions[index]
        value = conditions[index + 1] if index + 1 < len(conditions) else ""
        if token == "!":
            partial = True
            index += 2
            continue
        if token == "-p":
            if value not in ("udp", "17", "all"):
                return "none"
            index += 2
        elif token in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            if not any(low <= port <= high for low, high in _ports(value)):
                return "none"
            index += 2
        elif token == "-i" and value == "lo":
            return "none"
        elif token in ("--ctstate", "--state"):
            states = set(value.split(","))
            if states <= {"INVALID", "UNTRACKED"}:
                return "none"
            partial = True
            index += 2
        elif token == "-m":
            index += 2  # the match's own options follow and are judged one by one
        elif token.startswith("-"):
            partial = True
            index += 2 if value and not value.startswith("-") else 1
        else:
            index += 1
    return "some" if partial else "all"


def input_verdict(ruleset: Ruleset, chain: str, port: int, depth: int = 0) -> tuple[str, list[str], list[str]]:
    """Walk `chain` for a VXLAN packet to `port`: (verdict, the deciding rule, partial drops on the way).

    verdict: 'accept', 'drop', 'return' (fell through a user chain) or 'policy:<POLICY>' for a built-in chain."""
    partial: list[str] = []
    for rule in ruleset.rules.get(chain, []):
        target = target_of(rule)
        if target is None or target == INPUT_CHAIN:
            continue
        match = rule_matches_vxlan(rule, port)
        if match == "none":
            continue
        text = f"-A {chain} {' '.join(rule)}"
        if target == "ACCEPT" and match == "all":
            return "accept", [text], partial
        if target in ("DROP", "REJECT"):
            if match == "all":
                return "drop", [text], partial
            partial.append(text)
        elif target == "RETURN" and match == "all":
            return "return", [text], partial
        elif target in ruleset.rules and target not in ruleset.policies and depth < 5:
            verdict, deciding, more = input_verdict(ruleset, target, port, depth + 1)
            partial += more
            if verdict in ("accept", "drop") and match == "all":
                return verdict, [text, *deciding], partial
            if verdict == "drop":
                partial += [text, *deciding]
    if chain in ruleset.policies:
        return f"policy:{ruleset.policies[chain]}", [f"-P {chain} {ruleset.policies[chain]}"], partial
    return "return", [], partial


@dataclass
class Precedence:
    """How a forwarded packet reaches vxlanpy's FORWARD hook (`hook_precedence`)."""

    reached: bool  # whether it does
    path: list[str]  # the jumps that lead to the hook, the hook last
    strangers: list[str]  # the rules on the way that may decide before it


def hook_precedence(ruleset: Ruleset, chain: str = "FORWARD", depth: int = 0) -> Precedence:
    """Walk `chain` down to vxlanpy's FORWARD hook.

    An unconditional jump to a chain whose own walk reaches the hook with nothing deciding before it (DOCKER-USER
    with vxlanpy's hook first) lets vxlanpy decide first; a chain that does not reach it (DOCKER-FORWARD) but
    holds rules that may decide is one stranger, named by its jump."""
    strangers: list[str] = []
    for rule in ruleset.rules.get(chain, []):
        text = f"-A {chain} {' '.join(rule)}"
        if rule == FORWARD_HOOK:
            return Precedence(True, [text], strangers)
        target = target_of(rule)
        unconditional = len(rule) == 2
        if target is None or target in HARMLESS_BEFORE_OURS:
            continue
        if target == "RETURN":
            if unconditional:
                return Precedence(False, [], strangers)
            continue
        if target in ruleset.rules and target not in ruleset.policies and depth < 4:
            inner = hook_precedence(ruleset, target, depth + 1)
            if inner.reached:
                strangers += inner.strangers
                if unconditional:
                    return Precedence(True, [text, *inner.path], strangers)
            elif inner.strangers:
                strangers.append(text)
            continue
        strangers.append(text)
    return Precedence(False, [], strangers)


def firewall_layout(ruleset: Ruleset, nft_tables: set[tuple[str, str]]) -> str:
    """Which firewall dockerd set up, as `iptables -S` (filter) and nftables' table names show it."""
    chains = set(ruleset.rules)
    parts = []
    if "DOCKER-FORWARD" in chains:
        parts.append(
            "docker iptables with DOCKER-USER and DOCKER-FORWARD (28+)"
            if DOCKER_USER_CHAIN in chains
            else "docker iptables with DOCKER-FORWARD (28+) but no DOCKER-USER"
        )
    elif chains & {"DOCKER", DOCKER_USER_CHAIN, "DOCKER-ISOLATION-STAGE-1"}:
        parts.append("docker iptables (20.10-27)")
    docker_nft = sorted(f"{family} {table}" for family, table in nft_tables & DOCKER_NFT_TABLES)
    if docker_nft:
        parts.append(f"docker nftables tables present ({', '.join(docker_nft)}: 29+, firewall-backend nftables)")
    if not parts:
        parts.append("no docker chains (--iptables=false)")
    return "; ".join(parts)


def is_iptables_own(chain: NftChain) -> bool:
    """A base chain that iptables-nft made (`table ip filter`, chain FORWARD): `iptables -S` shows it."""
    return chain.family in ("ip", "ip6") and chain.table in XTABLES and chain.name in XTABLES_CHAINS
