"""`vxlanpy doctor`: what can keep vxlanpy networks from working on this host, each with why and how to fix it.

The checks read the host (files under /proc and /sys, `iptables -S`, the plugin's socket) and never change
anything.  They are a generator of Findings, so the CLI prints each one as soon as it is known.  Everything the
checks touch goes through `Probe`, which the unit tests replace.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..dataplane.iptables import DOCKER_USER_CHAIN, FORWARD_CHAIN, FORWARD_HOOK, INTERNAL_CHAIN, forward_rules
from ..models import is_attachment_id
from .client import CliError, DockerView, PluginClient

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
MODULES = ("vxlan", "bridge", "br_netfilter")
PLUGIN_DIRS = ("/run/docker/plugins/", "/var/run/docker/plugins/")
# Docker's chains that may come before vxlanpy's hook without deciding anything for vxlanpy's bridges: the
# isolation stages only drop traffic into Docker's own bridges.
HARMLESS_BEFORE_OURS = {"DOCKER-ISOLATION-STAGE-1"}
DOCKER_NFT_TABLES = {("ip", "docker-bridges"), ("ip6", "docker-bridges")}
# What iptables-nft itself makes in nftables: seen (and judged) through `iptables -S` already.
XTABLES = {"filter", "nat", "mangle", "raw", "security"}
XTABLES_CHAINS = {"INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"}
IPTABLES_FILTER_PRIORITY = 0  # NF_IP_PRI_FILTER: where iptables' filter FORWARD runs on the forward hook
OVERHEAD = {4: 50, 6: 70}


@dataclass
class Finding:
    status: str
    check: str
    summary: str
    why: str = ""
    fix: str = ""


class Probe(Protocol):
    def read(self, path: str) -> str | None: ...

    def stat(self, path: str) -> os.stat_result | None: ...

    def run(self, argv: list[str]) -> tuple[int, str, str]: ...

    def is_root(self) -> bool: ...


class LocalProbe:
    def read(self, path: str) -> str | None:
        try:
            with open(path) as handle:
                return handle.read()
        except OSError:
            return None

    def stat(self, path: str) -> os.stat_result | None:
        try:
            return os.stat(path)
        except OSError:
            return None

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except FileNotFoundError:
            return 127, "", f"{argv[0]}: not installed"
        except subprocess.TimeoutExpired:
            return 124, "", f"{argv[0]} did not finish within 30 s"
        return result.returncode, result.stdout, result.stderr

    def is_root(self) -> bool:
        return os.geteuid() == 0


# -- iptables -S parsing -------------------------------------------------------------------------------------


@dataclass
class Ruleset:
    policies: dict[str, str]
    rules: dict[str, list[list[str]]]  # chain -> rules (the tokens after `-A CHAIN`)

    @classmethod
    def parse(cls, text: str) -> Ruleset:
        policies: dict[str, str] = {}
        rules: dict[str, list[list[str]]] = {}
        for line in text.splitlines():
            tokens = line.split()
            if len(tokens) >= 3 and tokens[0] == "-P":
                policies[tokens[1]] = tokens[2]
                rules.setdefault(tokens[1], [])
            elif len(tokens) >= 2 and tokens[0] == "-N":
                rules.setdefault(tokens[1], [])
            elif len(tokens) >= 2 and tokens[0] == "-A":
                rules.setdefault(tokens[1], []).append(tokens[2:])
        return cls(policies, rules)

    def has(self, chain: str, rule: list[str]) -> bool:
        return rule in self.rules.get(chain, [])


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
        if target is None or target == "VXLANPY-INPUT":
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


@dataclass
class NftChain:
    family: str
    table: str
    name: str
    hook: str | None
    priority: int | None
    policy: str | None

    @property
    def label(self) -> str:
        return f"{self.family} {self.table} {self.name}"


def parse_nft_chains(text: str) -> list[NftChain]:
    """The chains in `nft -j list chains`; [] for anything that is not its JSON."""
    try:
        items = json.loads(text).get("nftables", [])
    except (ValueError, AttributeError):
        return []
    chains = []
    for item in items if isinstance(items, list) else []:
        chain = item.get("chain") if isinstance(item, dict) else None
        if not isinstance(chain, dict):
            continue
        priority = chain.get("prio")
        chains.append(
            NftChain(
                str(chain.get("family", "?")),
                str(chain.get("table", "?")),
                str(chain.get("name", "?")),
                str(chain["hook"]) if "hook" in chain else None,
                priority if isinstance(priority, int) and not isinstance(priority, bool) else None,
                str(chain["policy"]) if "policy" in chain else None,
            )
        )
    return chains


def is_iptables_own(chain: NftChain) -> bool:
    """A base chain that iptables-nft made (`table ip filter`, chain FORWARD): `iptables -S` shows it."""
    return chain.family in ("ip", "ip6") and chain.table in XTABLES and chain.name in XTABLES_CHAINS


# -- the checks ----------------------------------------------------------------------------------------------


class Doctor:
    def __init__(
        self,
        probe: Probe,
        plugin: PluginClient,
        docker: Callable[[], DockerView],
    ) -> None:
        self.probe = probe
        self.plugin = plugin
        self.docker = docker
        self.networks: list[dict[str, Any]] | None = None
        self.plugin_ok = False

    def run(self) -> Iterator[Finding]:
        yield from self.modules()
        yield from self.socket()
        yield from self.health()
        yield from self.docker_state()
        yield from self.forwarding()
        yield from self.firewall()
        yield from self.mtu()
        yield from self.peers()
        yield from self.orphans()
        yield from self.vxlan_port()

    def modules(self) -> Iterator[Finding]:
        for module in MODULES:
            check = f"kernel module {module}"
            if module == "br_netfilter":
                present = self.probe.stat("/proc/sys/net/bridge") is not None
            else:
                present = self.probe.stat(f"/sys/module/{module}") is not None
            if present:
                yield Finding(OK, check, "loaded")
                continue
            code, _, _ = self.probe.run(["modprobe", "-n", "-q", module])
            if module == "br_netfilter":
                yield Finding(
                    WARN,
                    check,
                    "not loaded",
                    why="without it bridged frames bypass iptables; Docker normally loads it, and vxlanpy's rules "
                    "for traffic inside a network then never apply",
                    fix="modprobe br_netfilter (and add it to /etc/modules-load.d/)",
                )
            elif code == 0:
                yield Finding(OK, check, "not loaded yet; the kernel loads it when vxlanpy creates the first device")
            else:
                yield Finding(
                    FAIL,
                    check,
                    "not loaded and not available",
                    why=f"vxlanpy cannot create {'VXLAN devices' if module == 'vxlan' else 'bridges'} without it",
                    fix="install the kernel's extra modules (e.g. linux-modules-extra-$(uname -r)), "
                    f"then modprobe {module}",
                )

    def socket(self) -> Iterator[Finding]:
        path = self.plugin.socket_path
        check = "plugin socket"
        info = self.probe.stat(path)
        if info is None:
            yield Finding(
                FAIL,
                check,
                f"{path} does not exist",
                why="dockerd finds the plugin by this socket: no socket, no vxlanpy networks",
                fix="start the plugin: sudo vxlanpy serve (or scripts/run), or set VXLANPY_SOCKET/--socket",
            )
            return
        if not stat.S_ISSOCK(info.st_mode):
            yield Finding(FAIL, check, f"{path} is not a socket", fix=f"remove {path} and restart the plugin")
            return
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o006:
            yield Finding(
                WARN,
                check,
                f"{path} has mode {mode:04o}",
                why="any local user can drive the plugin through it (create devices, attach namespaces)",
                fix="restart the plugin: it creates its socket with mode 0660",
            )
        else:
            yield Finding(OK, check, f"{path} (mode {mode:04o}, owner uid {info.st_uid})")
        if not path.startswith(PLUGIN_DIRS):
            yield Finding(
                WARN,
                "plugin discovery",
                f"{path} is outside /run/docker/plugins",
                why="dockerd looks for plugin sockets in /run/docker/plugins only",
                fix="serve on /run/docker/plugins/vxlanpy.sock (the default VXLANPY_SOCKET)",
            )
        try:
            status, body = self.plugin.request("POST", "/Plugin.Activate", {}, timeout=10)
        except CliError as exc:
            yield Finding(
                FAIL,
                "plugin answers dockerd",
                exc.message,
                why="dockerd's requests to the plugin fail, so does every vxlanpy network command",
                fix="restart the plugin and look at its log",
            )
            return
        implements = body.get("Implements") if isinstance(body, dict) else None
        if status == 200 and isinstance(implements, list) and "NetworkDriver" in implements:
            self.plugin_ok = True
            yield Finding(OK, "plugin answers dockerd", f"Plugin.Activate: {', '.join(map(str, implements))}")
        else:
            yield Finding(
                FAIL,
                "plugin answers dockerd",
                f"Plugin.Activate answered HTTP {status}: {str(body)[:120]}",
                why="dockerd does not take it for a network driver",
                fix="check that vxlanpy (not another program) serves this socket; restart it",
            )

    def health(self) -> Iterator[Finding]:
        if not self.plugin_ok:
            yield Finding(SKIP, "state store", "needs the plugin")
            return
        try:
            status, body = self.plugin.request("GET", "/vxlanpy/health")
        except CliError as exc:
            yield Finding(FAIL, "state store", exc.message)
            return
        checks = body.get("checks") if isinstance(body, dict) else None
        if status == 404 or not isinstance(checks, dict):
            yield Finding(
                WARN,
                "state store",
                "the plugin has no /vxlanpy/health: it is older than this CLI",
                fix="restart the plugin from this version",
            )
            return
        for name, result in checks.items():
            label = {"store": "state store", "netlink": "netlink", "etcd": "etcd sync"}.get(name, str(name))
            if result.get("ok"):
                yield Finding(OK, label, f"{result.get('detail')} ({result.get('ms')} ms)")
            else:
                fixes = {
                    "store": "check VXLANPY_STORE / VXLANPY_STATE_DIR (disk full? permissions? etcd endpoints up?)",
                    "etcd": "check that the etcd endpoints answer from this host (VXLANPY_STORE, TLS files)",
                }
                fix = fixes.get(name, "see the plugin log")
                yield Finding(FAIL, label, str(result.get("detail")), why="new containers and networks fail", fix=fix)
        try:
            self.networks = self.plugin.call("GET", "/vxlanpy/ls").get("networks", [])
        except CliError as exc:
            yield Finding(FAIL, "plugin state", exc.message)

    def docker_state(self) -> Iterator[Finding]:
        if self.networks is None:
            yield Finding(SKIP, "Docker and plugin agree", "needs the plugin's state")
            return
        try:
            docker_networks = self.docker().vxlanpy_networks([network["id"] for network in self.networks])
        except CliError as exc:
            yield Finding(WARN, "Docker and plugin agree", exc.message, fix="start dockerd, or run as root")
            return
        ours = {network["id"]: network for network in self.networks}
        theirs = {network.id: network for network in docker_networks}
        problems = 0
        for network_id, docker_network in sorted(theirs.items(), key=lambda item: item[1].name):
            if network_id not in ours:
                problems += 1
                yield Finding(
                    FAIL,
                    "Docker and plugin agree",
                    f"Docker network {docker_network.name} ({network_id[:12]}) has no state in the plugin",
                    why="its containers cannot start (the plugin's state was lost or is another store)",
                    fix=f"docker network rm {docker_network.name}, then create it again; check VXLANPY_STORE",
                )
        for network_id, network in sorted(ours.items()):
            if network_id not in theirs:
                problems += 1
                yield Finding(
                    WARN,
                    "Docker and plugin agree",
                    f"the plugin holds network {network_id[:12]} (vni {network['vni']}) that Docker does not know",
                    why="its devices and VNI stay taken for nothing (Docker's state was reset?)",
                    fix=f"vxlanpy gc --forget {network_id[:12]}",
                )
        if not problems:
            yield Finding(OK, "Docker and plugin agree", f"{len(theirs)} vxlanpy networks in both")

    def forwarding(self) -> Iterator[Finding]:
        value = (self.probe.read("/proc/sys/net/ipv4/ip_forward") or "").strip()
        if value == "1":
            yield Finding(OK, "IPv4 forwarding", "on")
        else:
            yield Finding(
                FAIL,
                "IPv4 forwarding",
                f"net.ipv4.ip_forward is {value or 'unreadable'}",
                why="containers cannot reach anything beyond their network, published ports fail from other "
                "hosts (dockerd leaves it off with --ip-forward=false and with its nftables backend)",
                fix="sysctl -w net.ipv4.ip_forward=1, persisted in /etc/sysctl.d/; the plugin sets it at start "
                "where /proc/sys is writable (not as a managed plugin): restart it",
            )

    def _ruleset(self, family: int, table: str) -> Ruleset | str:
        tool = "iptables" if family == 4 else "ip6tables"
        code, out, err = self.probe.run([tool, "-w", "10", "-t", table, "-S"])
        if code != 0:
            return " ".join(err.split())[:160] or f"{tool} exit status {code}"
        return Ruleset.parse(out)

    def firewall(self) -> Iterator[Finding]:
        if not self.probe.is_root():
            yield Finding(SKIP, "firewall", "reading iptables needs root: run `sudo vxlanpy doctor`")
            return
        filter4 = self._ruleset(4, "filter")
        if isinstance(filter4, str):
            yield Finding(FAIL, "firewall", f"cannot read iptables: {filter4}", fix="install iptables; run as root")
            return
        nft = self._nft_chains()
        tables = {(chain.family, chain.table) for chain in nft or []}
        yield Finding(OK, "firewall layout", firewall_layout(filter4, tables))
        policy = filter4.policies.get("FORWARD", "?")
        notes = {
            "DROP": ": a bridge forwards only what rules allow",
            "ACCEPT": ": vxlanpy's rules isolate its networks all the same; other interfaces route unfiltered",
        }
        yield Finding(OK, "FORWARD policy", policy + notes.get(policy, ""))
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
        yield from self._nft_forward(nft)
        if filter4.rules.get(FORWARD_CHAIN) != forward_rules():
            yield Finding(
                FAIL,
                "vxlanpy's isolation rules",
                f"{FORWARD_CHAIN} does not hold them (flushed, edited, or an older vxlanpy's layout)",
                why="containers get nothing through, or networks are not isolated from each other",
                fix="vxlanpy gc (reconciliation rewrites the chain)",
            )
        else:
            yield Finding(OK, "vxlanpy's isolation rules", f"{FORWARD_CHAIN} in place")
        nat4 = self._ruleset(4, "nat")
        for network in self.networks or []:
            yield self._network_rules(network, filter4, nat4)

    def _nft_chains(self) -> list[NftChain] | None:
        """Every nftables chain (`nft -j list chains`), or None when nft is missing or fails."""
        code, out, _ = self.probe.run(["nft", "-j", "list", "chains"])
        return parse_nft_chains(out) if code == 0 else None

    def _nft_forward(self, chains: list[NftChain] | None) -> Iterator[Finding]:
        """nftables base chains on the forward hook besides iptables' own: a drop there is final whatever
        vxlanpy's iptables rules accept."""
        check = "nftables forward chains"
        if chains is None:
            yield Finding(SKIP, check, "no `nft` command: other nftables tables are not checked")
            return
        legacy = "legacy" in self.probe.run(["iptables", "--version"])[1]
        others = [
            chain
            for chain in chains
            if chain.hook == "forward"
            and chain.family in ("ip", "ip6", "inet")
            and (legacy or not is_iptables_own(chain))
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

    def _network_rules(self, network: dict[str, Any], filter4: Ruleset, nat4: Ruleset | str) -> Finding:
        vni = network["vni"]
        bridge, chain = f"vxbr-{vni}", f"VXP-{vni}"
        missing = []
        if network.get("internal"):
            for direction in ("-i", "-o"):
                if not filter4.has(INTERNAL_CHAIN, [direction, bridge, "-j", "DROP"]):
                    missing.append(f"{INTERNAL_CHAIN} {direction} {bridge}")
        if isinstance(nat4, Ruleset):
            if chain not in nat4.rules or f"VXPD-{vni}" not in nat4.rules:
                missing.append(f"nat {chain}/VXPD-{vni}")
            if not network.get("internal") and not nat4.has("VXLANPY-POSTROUTING", ["-j", chain]):
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
        return Finding(OK, check, f"nat chains {chain}, VXPD-{vni} and their hooks in place")

    def mtu(self) -> Iterator[Finding]:
        if self.networks is None:
            yield Finding(SKIP, "MTU", "needs the plugin's state")
            return
        for network in self.networks:
            vxlan: dict[str, Any] = next((d for d in network["devices"] if d["kind"] == "vxlan"), {})
            dev, local = vxlan.get("dev"), vxlan.get("local")
            check = f"MTU of vni {network['vni']}"
            if not dev:
                yield Finding(SKIP, check, "no underlay recorded")
                continue
            raw = (self.probe.read(f"/sys/class/net/{dev}/mtu") or "").strip()
            if not raw.isdigit():
                yield Finding(
                    FAIL,
                    check,
                    f"underlay {dev} does not exist",
                    why="the VXLAN device has no way out",
                    fix=f"bring {dev} back, or recreate the network with -o dev=<interface>",
                )
                continue
            overhead = OVERHEAD[6 if local and ":" in local else 4]
            underlay, mtu = int(raw), int(network["mtu"])
            if mtu + overhead > underlay:
                yield Finding(
                    FAIL,
                    check,
                    f"network MTU {mtu} + {overhead} bytes of VXLAN > underlay {dev} MTU {underlay}",
                    why="full-size packets between hosts are dropped: small pings work, bulk transfers hang",
                    fix=f"raise the MTU of {dev} to {mtu + overhead}, "
                    f"or recreate the network with -o mtu={underlay - overhead}",
                )
                continue
            wrong = []
            for device in network["devices"]:
                actual = (self.probe.read(f"/sys/class/net/{device['name']}/mtu") or "").strip()
                if actual.isdigit() and int(actual) != mtu:
                    wrong.append(f"{device['name']} has {actual}")
            if wrong:
                yield Finding(
                    FAIL, check, f"network MTU {mtu} but " + ", ".join(wrong), fix="vxlanpy gc (restores the MTU)"
                )
            else:
                yield Finding(OK, check, f"{mtu} + {overhead} <= {dev} {underlay}")

    def peers(self) -> Iterator[Finding]:
        for network in self.networks or []:
            check = f"peers of vni {network['vni']}"
            try:
                peers = self.plugin.call("GET", f"/vxlanpy/peers/{network['id']}")
            except CliError as exc:
                yield Finding(FAIL, check, exc.message)
                continue
            if peers.get("match"):
                yield Finding(OK, check, f"the kernel's FDB and neighbour entries match the {peers.get('source')}")
                continue
            wrong = [
                f"VTEP {v['address']} {'missing in kernel' if v['store'] else 'not in store'}"
                for v in peers.get("vteps", [])
                if v["store"] != v["kernel"]
            ]
            wrong += [
                f"entry {e['mac']} {'missing in kernel' if e['kernel'] is None else 'differs'}"
                for e in peers.get("entries", [])
                if not e["match"]
            ]
            wrong += [f"{peers['device']['name']} {d}" for d in peers.get("device", {}).get("differences", [])]
            yield Finding(
                FAIL,
                check,
                "; ".join(wrong[:4]) + (f" (+{len(wrong) - 4} more)" if len(wrong) > 4 else ""),
                why="traffic to the hosts concerned is lost or flooded",
                fix="vxlanpy gc (static peers), or restart the plugin (etcd); "
                f"details: vxlanpy peers {network['id'][:12]}",
            )

    def _names(self) -> dict[str, str]:
        from .views import report_names

        try:
            docker = self.docker()
            networks = self.networks or []
            ids = [network["id"] for network in networks]
            return report_names(networks, docker.vxlanpy_networks(ids), docker.containers(), [])
        except CliError:
            return {}

    def orphans(self) -> Iterator[Finding]:
        if not self.plugin_ok:
            yield Finding(SKIP, "orphans", "needs the plugin")
            return
        try:
            report = self.plugin.call("POST", "/vxlanpy/gc", {"dry_run": True}).get("report", {})
        except CliError as exc:
            yield Finding(FAIL, "orphans", f"reconciliation dry run failed: {exc.message}")
            return
        problems = describe_report(report, dry_run=True, names=self._names())
        if not problems:
            yield Finding(OK, "orphans", "none: the kernel matches the store (reconciliation dry run)")
        for line in problems:
            yield Finding(
                WARN if line.startswith("lost") else FAIL,
                "orphans",
                line,
                why="left behind by a crash, a reboot or a manual change",
                fix="vxlanpy gc" if not line.startswith("lost") else "restart that container",
            )

    def vxlan_port(self) -> Iterator[Finding]:
        if not self.probe.is_root():
            yield Finding(SKIP, "VXLAN port", "reading iptables needs root")
            return
        networks = self.networks or []
        remote = [n for n in networks if n.get("mode") not in (None, "local")]
        devices = [next(d for d in n["devices"] if d["kind"] == "vxlan") for n in remote]
        ports = sorted({int(device["dstport"]) for device in devices}) or [4789]
        families = {6 if ":" in (device.get("local") or "") else 4 for device in devices} or {4}
        severity = FAIL if remote else WARN
        for family in sorted(families):
            ruleset = self._ruleset(family, "filter")
            if isinstance(ruleset, str):
                yield Finding(WARN, f"VXLAN port (IPv{family})", f"cannot read the firewall: {ruleset}")
                continue
            for port in ports:
                check = f"VXLAN port udp/{port}" + (" (IPv6)" if family == 6 else "")
                verdict, deciding, partial = input_verdict(ruleset, "INPUT", port)
                ours = ruleset.has("INPUT", ["-j", "VXLANPY-INPUT"])
                note = "; vxlanpy's VTEP allow-list is in front" if ours else ""
                if verdict == "drop" or verdict in ("policy:DROP", "policy:REJECT"):
                    yield Finding(
                        severity,
                        check,
                        "dropped by " + " -> ".join(deciding) + note,
                        why="VXLAN from other hosts never arrives: containers on other hosts are unreachable"
                        + ("" if remote else " (no network uses other hosts yet)"),
                        fix=f"allow it before that rule: "
                        f"iptables -I INPUT -p udp --dport {port} -s <peer VTEP> -j ACCEPT",
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


def describe_report(report: dict[str, Any], dry_run: bool, names: dict[str, str] | None = None) -> list[str]:
    """One line per thing a reconciliation did (or would do); ensured endpoints are not actions."""
    names = names or {}
    verb = (lambda now, later: later) if dry_run else (lambda now, later: now)  # noqa: E731
    lines = []
    attached = {item["id"] for item in report.get("removed_attachments", [])}
    for vni in report.get("recreated_networks", []):
        name = names.get(f"vni:{vni}")
        lines.append(f"{verb('recreated', 'would recreate')} the devices of vni {vni}" + (f" ({name})" if name else ""))
    for link in report.get("removed_links", []):
        lines.append(f"{verb('removed', 'would remove')} orphan link {link}")
    for vni in report.get("removed_chains", []):
        lines.append(f"{verb('removed', 'would remove')} orphan firewall chains of vni {vni}")
    for endpoint in report.get("removed_endpoints", []):
        if endpoint in attached:
            continue
        if is_attachment_id(endpoint):
            who = names.get(endpoint, endpoint[:12])
            lines.append(f"{verb('removed', 'would remove')} attachment {who}: its namespace is gone")
        else:
            lines.append(f"{verb('removed', 'would remove')} stale endpoint {endpoint[:12]} (its sandbox is gone)")
    for item in report.get("removed_attachments", []):
        who = names.get(item["id"], item["id"][:12])
        lines.append(f"{verb('removed', 'would remove')} attachment {who}: {item['reason']}")
    for vni in report.get("expired_networks", []):
        lines.append(f"{verb('removed', 'would remove')} network of vni {vni}: its create never finished")
    if report.get("kept_links"):
        lines.append(
            f"lost state? kept {len(report['kept_links'])} links and {len(report.get('kept_chains', []))} chains of "
            "networks the store does not know: run `vxlanpy recover`"
        )
    for item in report.get("forgotten_networks", []):
        lines.append(f"{verb('forgot', 'would forget')} network {item['id'][:12]} (vni {item['vni']})")
    for item in report.get("released_pools", []):
        lines.append(
            f"{verb('released', 'would release')} pool {item['pool']} claimed by {item['claim']} "
            "(its network create never completed)"
        )
    for item in report.get("released_addresses", []):
        lines.append(f"{verb('released', 'would release')} address {item['address']} held by {item['holder']}")
    for endpoint in report.get("lost_endpoints", []):
        if endpoint not in attached:
            lines.append(f"lost endpoint {endpoint[:12]}: its veth is gone while joined; restart its container")
    return lines
