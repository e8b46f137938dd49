"""The host firewall through iptables: every rule vxlanpy needs lives in vxlanpy's own chains.

Layout (filter in IPv4 and IPv6, nat in IPv4 only):

    filter FORWARD (position 1)   -> VXLANPY-FORWARD     -> VXLANPY-INTERNAL  isolation; internal networks
    nat    POSTROUTING            -> VXLANPY-POSTROUTING -> VXP-<vni>         MASQUERADE
    nat    PREROUTING, OUTPUT     -> VXLANPY-DNAT        -> VXPD-<vni>        published ports
    filter INPUT (position 1)     -> VXLANPY-INPUT                            VXLAN only from known VTEPs
    filter DOCKER-USER (pos. 1)   -> VXLANPY-FORWARD                          when dockerd runs (see ensure_base)
    ebtables filter OUTPUT        -> VXLANPY-OUT                              the gateways' own frames stay home

Isolation takes no rule per network: VXLANPY-FORWARD is the same few rules for every vxlanpy bridge
(`forward_rules`), so every forwarded packet of the host, Docker's too, crosses a handful of rules whatever
the number of networks, and creating a network writes nothing in the filter table.  Only an internal network
adds two rules to VXLANPY-INTERNAL.  (vxlanpy < 0.2 had a VXP-<vni> filter chain per network and two jumps
to it in VXLANPY-FORWARD: `ensure_base` rewrites that chain and deletes them.)

vxlanpy's isolation does not depend on Docker's firewall, nor on the FORWARD policy: VXLANPY-FORWARD accepts
what vxlanpy's networks need and drops everything else entering a vxlanpy bridge, so it holds with policy
ACCEPT or DROP, with dockerd's iptables chains (20.10-27: DOCKER-USER, DOCKER-ISOLATION-STAGE-1 and rules
straight in FORWARD; 28+: DOCKER-USER and DOCKER-FORWARD), with none (`--iptables=false`) and beside Docker 29's
nftables backend (tables `ip docker-bridges`, `ip6 docker-bridges`, no DOCKER-USER).  What it needs is to decide
first.  dockerd (re)inserts its jumps at the top of FORWARD whenever it starts (`-j DOCKER-FORWARD`, or 27's
`-i docker0 ! -o docker0 -j ACCEPT`, would let docker0's containers into a vxlanpy network), but it keeps
DOCKER-USER first and never flushes it: so the FORWARD hook is also put first in DOCKER-USER when that chain
exists, and `ensure_base` moves a displaced hook back to the top of both (the app calls it every few seconds).
An nftables base chain of someone else's on the forward hook is out of vxlanpy's reach: its drops hold whatever
vxlanpy accepts (an nftables accept only ends its own chain), at any priority; `vxlanpy doctor` names such a
chain with policy drop.  Isolation itself never depends on it: a drop is final in every chain.

`ensure_base` also turns net.ipv4.ip_forward on (egress, published ports from other hosts and the replies all
need it; dockerd with `--ip-forward=false` or 29's nftables backend leaves it to the host).  Where it cannot (a
read-only /proc/sys, as in a managed plugin) it fails saying what breaks and what to do, after everything else
is in place, as Docker 29 refuses to start then.  When it turned forwarding on itself while the FORWARD policy
is ACCEPT it logs so, since the host then routes between all its interfaces.

The bridge itself sends ARP, IPv6 RS and MLD from the gateway MAC, which every host shares; VXLANPY-OUT drops
those frames at the VXLAN ports so no host hears its own MAC from another.

A network's nat rules need two chains: the kernel refuses a rule jumping to a chain that holds DNAT from
POSTROUTING, and one holding MASQUERADE or `-o` from PREROUTING (both fail with EINVAL).

A network's chains are rewritten whole by one `iptables-restore --noflush` (nat, and filter for an internal
network; IPv6 only for an internal network): a chain vxlanpy knows to exist is declared, `:CHAIN - [0:0]`,
which flushes only that chain, a new one is made with `-N`; each table is one transaction, so the rules of a
network are never half-applied and calling `ensure_network` again changes nothing.  Removing a network is the
same restore with `-D`, `-F` and `-X` lines.  VXLANPY-INPUT is rewritten the same way, hook included when it is
missing, so a host never accepts VXLAN from everyone between two states of the VTEP list.
Nothing here touches a chain vxlanpy did not create, apart from adding and deleting its own jumps.

With the nf_tables backend an iptables process loads what it works on, so the cost of `-C`, `-D` or a
whole-table `-S` grows with the number of networks, and every process costs its start-up: checking each
jump with `-C` made creating and removing networks slower the more there were.  Instead the firewall keeps
in memory which per-network chains exist and which jumps their parent chains hold (`_Known`, per family and
table): read with one `iptables -S` per table on first use and at every reconciliation (`owned_vnis`), the
jumps again with `-S` of their parent chains in `ensure_base` (reconciliation, and periodically), updated
after each successful change, and forgotten after any failed one.  The lock serialises this process's
changes, so no jump is added twice; a change made behind vxlanpy's back (a flushed chain) is seen at the
next `ensure_base`, and the next `ensure_network` repairs it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from ..errors import DataplaneError
from ..models import PROTOCOL_NUMBERS, Endpoint, IPAddress, Network, PortMapping, bridge_name, gateway_mac
from .rtnl import set_ipv4_devconf

log = logging.getLogger(__name__)

Family = Literal[4, 6]
Rule = list[str]

FORWARD_CHAIN = "VXLANPY-FORWARD"
POSTROUTING_CHAIN = "VXLANPY-POSTROUTING"
DNAT_CHAIN = "VXLANPY-DNAT"
INPUT_CHAIN = "VXLANPY-INPUT"
INPUT_HOOK: list[str] = ["-j", INPUT_CHAIN]
FORWARD_HOOK: list[str] = ["-j", FORWARD_CHAIN]
INTERNAL_CHAIN = "VXLANPY-INTERNAL"
BRIDGES = "vxbr-+"  # every vxlanpy bridge (models.bridge_name)
DOCKER_USER_CHAIN = "DOCKER-USER"
IP_FORWARD = "net/ipv4/ip_forward"
BRIDGE_OUT_CHAIN = "VXLANPY-OUT"
_EBTABLES = ("ebtables", "ebtables-nft")
# Every anycast gateway MAC is 02:76:78 followed by the VNI (models.gateway_mac): one rule guards all networks.
_GATEWAY_MACS = f"{gateway_mac(0)}/ff:ff:ff:00:00:00"
_GUARD_RULE = ["-o", "vxlan-+", "-s", _GATEWAY_MACS, "-j", "DROP"]
_GUARD_LISTED = ["-s", _GATEWAY_MACS, "-o", "vxlan-+", "-j", "DROP"]  # as `ebtables -L` prints it

_IPTABLES: dict[Family, str] = {4: "iptables", 6: "ip6tables"}
_RESTORE: dict[Family, str] = {4: "iptables-restore", 6: "ip6tables-restore"}
# A bounded wait for the xtables lock: a stuck lock holder must not hang a Docker request forever.
_WAIT = ["-w", "10"]
_TIMEOUT = 30.0

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_OWNED_CHAIN = re.compile(r"^-N (VXPD?-(\d+))$")
# The tables vxlanpy uses, and in each the chains that hold the jumps to the per-network chains.
_TABLES: tuple[tuple[Family, str], ...] = ((4, "filter"), (4, "nat"), (6, "filter"))
# (VXLANPY-FORWARD holds the jumps of vxlanpy < 0.2's per-network filter chains, removed by `ensure_base`.)
_PARENTS = {"filter": (FORWARD_CHAIN, INTERNAL_CHAIN), "nat": (POSTROUTING_CHAIN, DNAT_CHAIN)}
# How iptables says "no such rule or chain": rc 1 "Bad rule" (nft, also for a missing chain),
# "No chain/target/match by that name" (legacy), "Chain 'X' does not exist" (nft, missing jump target).
_ABSENT = ("Bad rule", "No chain/target/match", "does not exist", "Couldn't load target")


def _safe(name: str) -> str:
    # An explicit check rather than `assert`, which `python -O` strips.
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"refusing to put unsafe name {name!r} into a firewall rule")
    return name


def _port(value: int) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"refusing to put invalid port {value!r} into a firewall rule")
    return str(value)


def _error(what: str, result: subprocess.CompletedProcess[str]) -> DataplaneError:
    stderr = " ".join(result.stderr.split()).rstrip(".") or f"exit status {result.returncode}"
    if "Permission denied" in stderr or "must be root" in stderr:
        hint = "run the plugin as root (it needs CAP_NET_ADMIN)"
    elif "lock" in stderr:
        hint = "another program holds the xtables lock; retry, and find what keeps holding it"
    elif "No chain/target/match" in stderr or "does not exist" in stderr:
        hint = "a chain vxlanpy needs is missing (was the firewall flushed?); restart the plugin to recreate it"
    elif "Couldn't load" in stderr or "No such file" in stderr or "Extension" in stderr:
        hint = "a netfilter module is missing; modprobe xt_conntrack xt_addrtype xt_nat xt_MASQUERADE"
    else:
        hint = "compare `iptables -S` and `iptables -t nat -S` with the rule above and check dmesg"
    return DataplaneError(f"{what} failed: {stderr}. Hint: {hint}")


def forward_rules() -> list[Rule]:
    """VXLANPY-FORWARD, the same in IPv4 and IPv6 and for every network: isolation needs no rule per network.

    A frame bridged inside one network passes FORWARD (br_netfilter) with the same bridge in and out, which
    `--physdev-is-bridged` tells apart from a packet routed from one vxlanpy bridge to another."""
    return [
        ["-i", BRIDGES, "-o", BRIDGES, "-m", "physdev", "--physdev-is-bridged", "-j", "ACCEPT"],  # in a network
        ["-i", BRIDGES, "-j", INTERNAL_CHAIN],  # internal networks: nothing else in or out
        ["-o", BRIDGES, "-j", INTERNAL_CHAIN],
        ["-o", BRIDGES, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
        ["-o", BRIDGES, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"],  # published ports
        ["-o", BRIDGES, "-j", "DROP"],  # nothing else enters a network (whatever the FORWARD policy)
        ["-i", BRIDGES, "-o", "docker0", "-j", "DROP"],  # nor reaches Docker's networks
        ["-i", BRIDGES, "-o", "br-+", "-j", "DROP"],
        ["-i", BRIDGES, "-j", "ACCEPT"],  # egress
    ]


def internal_rules(network: Network) -> list[Rule]:
    """The network's rules in VXLANPY-INTERNAL: an internal network's packets go nowhere but inside it."""
    if not network.internal:
        return []
    bridge = _safe(network.bridge)
    return [["-i", bridge, "-j", "DROP"], ["-o", bridge, "-j", "DROP"]]


def masquerade_rules(network: Network) -> list[Rule]:
    if not network.routes_egress:  # internal, or gateway=docker_gwbridge: Docker's bridge masquerades (no double NAT)
        return []
    bridge = _safe(network.bridge)
    rules = [
        ["-s", str(subnet.pool), "!", "-o", bridge, "-j", "MASQUERADE"]
        for subnet in network.ipv4
        if isinstance(subnet.pool, ipaddress.IPv4Network)
    ]
    # The host (127.0.0.1 included) reaching a published port: the reply must come back to the host.
    rules.append(["-o", bridge, "-m", "addrtype", "--src-type", "LOCAL", "-j", "MASQUERADE"])
    return rules


def dnat_rules(network: Network, endpoints: list[Endpoint]) -> list[Rule]:
    if not network.routes_egress:  # gateway=docker_gwbridge: Docker publishes the ports
        return []
    rules = []
    for endpoint in endpoints:
        if endpoint.ipv4 is None:
            continue
        for mapping in endpoint.ports:
            if isinstance(mapping.host_ip, ipaddress.IPv6Address):
                continue
            if mapping.proto not in PROTOCOL_NUMBERS:
                raise ValueError(f"refusing to put unknown protocol {mapping.proto!r} into a firewall rule")
            rule = ["-p", mapping.proto]
            # 0.0.0.0 means every address, like no -d at all; the hook already limits it to local ones.
            if mapping.host_ip is not None and not mapping.host_ip.is_unspecified:
                rule += ["-d", str(mapping.host_ip)]
            target = f"{endpoint.ipv4.ip}:{_port(mapping.container_port)}"
            rules.append([*rule, "--dport", _port(mapping.host_port), "-j", "DNAT", "--to-destination", target])
    return rules


def parse_dnat_rules(listing: list[str]) -> dict[IPAddress, list[PortMapping]]:
    """The inverse of `dnat_rules`, read from `iptables -t nat -S VXPD-<vni>` (which adds `-m tcp`, `/32`)."""
    published: dict[IPAddress, list[PortMapping]] = {}
    for line in listing:
        words = line.split()
        if words[:1] != ["-A"] or "DNAT" not in words:
            continue
        fields = dict(zip(words[2::2], words[3::2], strict=False))
        target, _, container_port = fields.get("--to-destination", "").rpartition(":")
        try:
            address = ipaddress.ip_address(target)
            host_ip = ipaddress.ip_interface(fields["-d"]).ip if "-d" in fields else None
            mapping = PortMapping(fields["-p"], int(container_port), int(fields["--dport"]), host_ip)
        except (KeyError, ValueError):
            continue  # not a rule vxlanpy writes
        published.setdefault(address, []).append(mapping)
    return published


def vtep_filter_rules(ports: set[int], vteps: set[IPAddress], family: Family) -> list[Rule]:
    """VXLANPY-INPUT for one family: per port, accept the VTEPs of that family, drop everyone else."""
    checked = []
    for vtep in vteps:
        if not isinstance(vtep, ipaddress.IPv4Address | ipaddress.IPv6Address) or vtep.is_unspecified:
            raise ValueError(f"refusing {vtep!r} as a VTEP in a firewall rule: not an IP address")
        if vtep.version == family:
            checked.append(vtep)
    sources = [str(vtep) for vtep in sorted(checked)]
    rules: list[Rule] = []
    for port in sorted({_port(port) for port in ports}, key=int):
        rules += [["-p", "udp", "--dport", port, "-s", source, "-j", "ACCEPT"] for source in sources]
        rules.append(["-p", "udp", "--dport", port, "-j", "DROP"])
    return rules


def _line(chain: str, rule: Rule, action: str = "-A") -> str:
    """A rule as `iptables -S` prints it, or as a restore file adds (`-A`, `-I`) or deletes it (`-D`)."""
    return " ".join([action, chain, *rule])


def _section(
    table: str, chains: dict[str, list[Rule]], commands: list[str], existing: set[str] | None = None
) -> list[str]:
    """One table of a restore file: `chains` emptied and filled, then `commands`, then COMMIT.

    A chain in `existing` (or every chain, when it is None) is declared, which flushes it; any other is created
    with `-N`.  With the nf_tables backend a declaration makes the restore read every chain of the table with
    its rules (24 ms with 1000 networks against 1.2 ms with none), while `-N` costs the same at any size."""
    declared = chains.keys() if existing is None else existing.intersection(chains)
    lines = [f"*{table}", *(f":{chain} - [0:0]" for chain in chains if chain in declared)]
    lines += [f"-N {chain}" for chain in chains if chain not in declared]
    lines += [_line(chain, rule) for chain, rules in chains.items() for rule in rules]
    return [*lines, *commands, "COMMIT"]


def _deletions(lines: list[str], known: _Known) -> list[str]:
    """`-D` commands for rules given as `-A` lines: as many as `known` counts of each (an older version may
    have added one twice)."""
    return ["-D" + line[2:] for line in lines for _ in range(known.jumps[line])]


def _first(listing: list[str], chain: str) -> list[str]:
    """Restore commands that put the FORWARD hook first in `chain` (as `listing` shows it) when it is not."""
    rules = [line for line in listing if line.startswith(f"-A {chain} ")]
    hook = _line(chain, FORWARD_HOOK)
    if rules[:1] == [hook]:
        return []
    return [_line(chain, FORWARD_HOOK, "-D")] * rules.count(hook) + [" ".join(["-I", chain, "1", *FORWARD_HOOK])]


@dataclass
class _Known:
    """What one table holds of vxlanpy's per-network state, as the firewall believes it: the VXP-/VXPD-
    chains, and how many times each rule of the chains jumping to them is there (a jump added twice by an
    older version is deleted twice)."""

    chains: set[str] = field(default_factory=set)
    jumps: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, listing: list[str], table: str) -> _Known:
        """From `iptables -t TABLE -S`, or from `-S PARENT` of its parent chains (the chains are then unknown)."""
        chains = {owned[1] for owned in map(_OWNED_CHAIN.fullmatch, listing) if owned is not None}
        prefixes = tuple(f"-A {parent} " for parent in _PARENTS[table])
        return cls(chains, Counter(line for line in listing if line.startswith(prefixes)))


# Per table: the network's chains there, and its jumps to them as (parent chain, rule).
_Layout = dict[tuple[Family, str], tuple[tuple[str, ...], list[tuple[str, Rule]]]]


class IptablesFirewall:
    """`Firewall` through the iptables tools; `netns` names a namespace under /run/netns (tests)."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = None if netns is None else _safe(netns)
        self._prefix = [] if netns is None else ["nsenter", f"--net=/run/netns/{netns}"]
        # Held for every change and every read of the tables into `_known`: no jump is added twice, and
        # `_known` never misses a change this process made while it was being read.
        self._lock = threading.Lock()
        self._known: dict[tuple[Family, str], _Known] = {}  # empty: read again on next use
        self._guarded = False  # whether VXLANPY-OUT is known to hold the gateway guard
        self._hooked: set[Family] = set()  # families whose FORWARD hook was put in place by this process

    # -- Firewall ------------------------------------------------------------------------------------

    def ensure_base(self) -> None:
        with self._lock:
            # One `-S CHAIN` per chain involved: unlike a whole table, its cost hardly grows with the networks.
            for family in (4, 6):
                self._ensure_forward_chains(family)
            self._ensure_bridge_out_chain()
            parents = {chain: self._list_chain(4, "nat", chain) for chain in _PARENTS["nat"]}
            commands = [f"-N {chain}" for chain, listing in parents.items() if listing is None]
            hooks = [("POSTROUTING", ["-j", POSTROUTING_CHAIN])]
            hooks += [
                (hook, ["-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN]) for hook in ("PREROUTING", "OUTPUT")
            ]
            for hook, rule in hooks:
                if _line(hook, rule) not in (self._list_chain(4, "nat", hook, missing_ok=False) or []):
                    commands.append(_line(hook, rule))
            if commands:
                self._restore_sections(4, [_section("nat", {}, commands)], "the nat hooks")
            self._relearn_jumps(4, "nat", [line for listing in parents.values() for line in listing or []])
            # Last: where it fails (a read-only /proc/sys), isolation is in place all the same.
            self._ensure_ip_forward()

    def ensure_network(self, network: Network, endpoints: list[Endpoint]) -> None:
        bridge, chain, dnat = self._names(network.vni)
        contents: dict[str, dict[str, list[Rule]]] = {
            "filter": {},
            "nat": {chain: masquerade_rules(network), dnat: dnat_rules(network, endpoints)},
        }
        # The rules in parent chains: wanted, and those of the other kind of network (the same VNI recreated
        # internal, or not), deleted where present.
        internal = [(INTERNAL_CHAIN, rule) for rule in internal_rules(replace(network, internal=True))]
        wanted, stale = (internal, []) if network.internal else ([], internal)
        jumps: dict[tuple[Family, str], tuple[list[tuple[str, Rule]], list[tuple[str, Rule]]]] = {
            (4, "filter"): (wanted, stale),
            (6, "filter"): (wanted, stale),
            (4, "nat"): ([(POSTROUTING_CHAIN, ["-j", chain]), (DNAT_CHAIN, ["-j", dnat])], []),
        }
        with self._lock:
            for family in (4, 6):
                try:
                    self._write_network(family, network.vni, contents, jumps)
                except DataplaneError:
                    # `_known` was wrong (a chain made or deleted behind vxlanpy's back): it was forgotten with
                    # the failure, so the second try works from a fresh read of the tables.
                    self._write_network(family, network.vni, contents, jumps)
            if network.routes_egress:
                # Lets a connection DNATed from 127.0.0.1 leave through the bridge instead of being dropped
                # as martian.  The links layer creates the bridge; without it there is nothing to set yet.
                self._set_sysctl(f"net/ipv4/conf/{bridge}/route_localnet", "1", missing_ok=True)
            if not self._guarded:
                self._ensure_bridge_out_chain()

    def remove_network(self, vni: int) -> None:
        layout = self._layout(vni)
        with self._lock:
            for family in (4, 6):
                try:
                    self._remove_chains(family, layout)
                except DataplaneError:
                    # Something vanished meanwhile (a jump deleted, a chain flushed and deleted by hand):
                    # `_known` was forgotten with the failure, so the second try works from a fresh read.
                    self._remove_chains(family, layout)

    def sync_vtep_filter(self, ports: set[int], vteps: set[IPAddress]) -> None:
        rules: dict[Family, list[Rule]] = {family: vtep_filter_rules(ports, vteps, family) for family in (4, 6)}
        with self._lock:
            for family in (4, 6):
                if not ports:
                    self._delete_rule(family, "filter", "INPUT", INPUT_HOOK)
                    self._delete_chain(family, "filter", INPUT_CHAIN)
                    continue
                # Hooking in the same restore as the chain's rules: never a hook without its rules.
                hooked = self._has_rule(family, "filter", "INPUT", INPUT_HOOK)
                hook = [] if hooked else [" ".join(["-I", "INPUT", "1", *INPUT_HOOK])]
                self._restore_sections(family, [_section("filter", {INPUT_CHAIN: rules[family]}, hook)], INPUT_CHAIN)

    def owned_vnis(self) -> set[int]:
        with self._lock:
            self._refresh()
            return {int(chain.rpartition("-")[2]) for known in self._known.values() for chain in known.chains}

    def published_ports(self, vni: int) -> dict[IPAddress, list[PortMapping]]:
        with self._lock:
            listing = self._list_chain(4, "nat", self._names(vni)[2]) or []
        return parse_dnat_rules(listing)

    # -- helpers -------------------------------------------------------------------------------------

    @staticmethod
    def _names(vni: int) -> tuple[str, str, str]:
        vni = int(vni)
        return _safe(bridge_name(vni)), _safe(f"VXP-{vni}"), _safe(f"VXPD-{vni}")

    @classmethod
    def _layout(cls, vni: int) -> _Layout:
        """Everything a network may have in each table, as (chains, rules in the parent chains): what removing
        it deletes, where present.  The filter chain and its jumps are those of vxlanpy < 0.2."""
        bridge, chain, dnat = cls._names(vni)
        forward = [(FORWARD_CHAIN, ["-i", bridge, "-j", chain]), (FORWARD_CHAIN, ["-o", bridge, "-j", chain])]
        forward += [(INTERNAL_CHAIN, ["-i", bridge, "-j", "DROP"]), (INTERNAL_CHAIN, ["-o", bridge, "-j", "DROP"])]
        return {
            (4, "filter"): ((chain,), forward),
            (6, "filter"): ((chain,), forward),
            (4, "nat"): ((chain, dnat), [(POSTROUTING_CHAIN, ["-j", chain]), (DNAT_CHAIN, ["-j", dnat])]),
        }

    @staticmethod
    def _tables(family: Family) -> list[str]:
        return [table for known_family, table in _TABLES if known_family == family]

    def _write_network(
        self,
        family: Family,
        vni: int,
        contents: dict[str, dict[str, list[Rule]]],
        jumps: dict[tuple[Family, str], tuple[list[tuple[str, Rule]], list[tuple[str, Rule]]]],
    ) -> None:
        """One restore of the network's chains in `family`, adding the rules in parent chains (`jumps`: wanted,
        stale) that `_known` lacks and deleting the stale ones it has: one process, no `-C`; none at all when
        there is nothing to change (IPv6, usually)."""
        tables = [(self._known_table(family, table), table) for table in self._tables(family)]
        added, deleted = {}, {}
        for known, table in tables:
            wanted, stale = jumps[(family, table)]
            added[table] = [_line(*jump) for jump in wanted if not known.jumps[_line(*jump)]]
            deleted[table] = [_line(*jump) for jump in stale if known.jumps[_line(*jump)]]
        sections = [
            _section(table, contents[table], added[table] + _deletions(deleted[table], known), known.chains)
            for known, table in tables
            if contents[table] or added[table] or deleted[table]
        ]
        if not sections:
            return
        self._restore_sections(family, sections, f"network {vni}")
        for known, table in tables:
            known.chains.update(contents[table])
            known.jumps.update(added[table])
            for line in deleted[table]:
                del known.jumps[line]

    def _ensure_forward_chains(self, family: Family) -> None:
        """VXLANPY-FORWARD holding `forward_rules`, VXLANPY-INTERNAL, and the hooks first in FORWARD and
        DOCKER-USER.  One `-S CHAIN` per chain involved, whose cost hardly grows with the networks; a restore
        only when something is missing or displaced.  A VXLANPY-FORWARD of an older layout (jumps to per-network
        VXP-<vni> chains) is rewritten, and those chains deleted, in the same transaction."""
        forward = self._list_chain(family, "filter", FORWARD_CHAIN)
        internal = self._list_chain(family, "filter", INTERNAL_CHAIN)
        wanted = [_line(FORWARD_CHAIN, rule) for rule in forward_rules()]
        chains: dict[str, list[Rule]] = {} if internal is not None else {INTERNAL_CHAIN: []}
        commands: list[str] = []
        rewrite = forward is None or [line for line in forward if line.startswith("-A ")] != wanted
        if rewrite:
            chains[FORWARD_CHAIN] = forward_rules()  # declared, so flushed and filled in one transaction
            stale = sorted(chain for chain in self._known_table(family, "filter").chains if chain.startswith("VXP-"))
            commands += [f"-F {chain}" for chain in stale] + [f"-X {chain}" for chain in stale]
        hooks = self._list_chain(family, "filter", "FORWARD", missing_ok=False) or []
        moved = _first(hooks, "FORWARD")
        if moved and family in self._hooked:
            self._log_displaced(family, hooks)
        commands += moved
        docker_user = self._list_chain(family, "filter", DOCKER_USER_CHAIN)
        if docker_user is not None:  # none with --iptables=false or Docker 29's nftables backend
            commands += _first(docker_user, DOCKER_USER_CHAIN)
        if chains or commands:
            existing = {FORWARD_CHAIN} if forward is not None else set()
            self._restore_sections(family, [_section("filter", chains, commands, existing)], "the FORWARD chains")
        self._hooked.add(family)
        if rewrite:
            self._known.pop((family, "filter"), None)  # read again on next use
        else:
            self._relearn_jumps(family, "filter", (forward or []) + (internal or []))

    @staticmethod
    def _log_displaced(family: Family, listing: list[str]) -> None:
        hook = _line("FORWARD", FORWARD_HOOK)
        rules = [line for line in listing if line.startswith("-A FORWARD ")]
        if hook not in rules:
            log.warning("%s FORWARD had lost vxlanpy's hook (flushed?): put back first", _IPTABLES[family])
            return
        above = rules[: rules.index(hook)]
        log.info(
            "%s FORWARD had %s above vxlanpy's hook (dockerd restarted?): hook moved back first",
            _IPTABLES[family],
            "; ".join(above[:3]) + (f" and {len(above) - 3} more" if len(above) > 3 else ""),
        )

    def _ensure_ip_forward(self) -> None:
        """Turn net.ipv4.ip_forward on, or fail saying what it breaks and how to fix it."""
        if self._read_sysctl(IP_FORWARD) == "1":
            return
        try:
            self._set_sysctl(IP_FORWARD, "1", missing_ok=False)
        except DataplaneError as exc:
            raise DataplaneError(
                f"{exc.message.partition('. Hint:')[0]}: net.ipv4.ip_forward is off, and without it the containers "
                "of vxlanpy networks reach nothing outside their network and their published ports do not answer "
                "from other hosts. Hint: on the host, sysctl -w net.ipv4.ip_forward=1 and persist it in "
                "/etc/sysctl.d/ (dockerd sets it only with its iptables firewall backend and --ip-forward=true)"
            ) from exc
        policy = next(
            (line.split()[2] for line in self._list_chain(4, "filter", "FORWARD") or [] if line.startswith("-P ")),
            "?",
        )
        log.warning(
            "net.ipv4.ip_forward was off (dockerd with --ip-forward=false or its nftables backend?): vxlanpy turned "
            "it on for egress and published ports%s",
            ""
            if policy != "ACCEPT"
            else "; the FORWARD policy is ACCEPT, so this host now routes between all its interfaces, which "
            "vxlanpy's rules (its own bridges only) do not filter: consider `iptables -P FORWARD DROP` "
            "(vxlanpy accepts its own traffic explicitly)",
        )

    def _read_sysctl(self, key: str) -> str | None:
        if self._netns is None:
            try:
                return Path("/proc/sys", key).read_text().strip()
            except OSError:
                return None
        result = self._run(["sysctl", "-n", key.replace("/", ".")])
        return result.stdout.strip() if result.returncode == 0 else None

    def _remove_chains(self, family: Family, layout: _Layout) -> None:
        """One restore deleting the jumps `_known` counts, then the chains it knows of; none if nothing is left."""
        plans: list[tuple[_Known, tuple[str, ...], list[str]]] = []
        sections = []
        for table in self._tables(family):
            known = self._known_table(family, table)
            chains, jumps = layout[(family, table)]
            present = tuple(chain for chain in chains if chain in known.chains)
            deleted = [_line(*jump) for jump in jumps if known.jumps[_line(*jump)]]
            if not present and not deleted:
                continue
            commands = _deletions(deleted, known)
            commands += [f"-F {chain}" for chain in present] + [f"-X {chain}" for chain in present]
            sections.append(_section(table, {}, commands))
            plans.append((known, present, deleted))
        if not sections:
            return
        self._restore_sections(family, sections, "removal of " + ", ".join(layout[(4, "nat")][0]))
        for known, present, deleted in plans:
            known.chains.difference_update(present)
            for line in deleted:
                del known.jumps[line]

    def _refresh(self, tables: tuple[tuple[Family, str], ...] = _TABLES) -> dict[tuple[Family, str], list[str]]:
        """Read `tables` (`iptables -S`, one process each) into `_known`; returns the listings."""
        listings = {}
        for family, table in tables:
            result = self._iptables(family, "-t", table, "-S")
            if result.returncode != 0:
                raise self._fail(f"{_IPTABLES[family]} -t {table} -S", result)
            listing = [" ".join(line.split()) for line in result.stdout.splitlines()]
            self._known[(family, table)] = _Known.parse(listing, table)
            listings[(family, table)] = listing
        return listings

    def _list_chain(self, family: Family, table: str, chain: str, missing_ok: bool = True) -> list[str] | None:
        """`iptables -t TABLE -S CHAIN`, one line a rule; None when it fails and `missing_ok` (no such chain)."""
        result = self._iptables(family, "-t", table, "-S", chain)
        if result.returncode == 0:
            return [" ".join(line.split()) for line in result.stdout.splitlines()]
        if missing_ok:
            return None
        raise self._fail(f"{_IPTABLES[family]} -t {table} -S {chain}", result)

    def _relearn_jumps(self, family: Family, table: str, listing: list[str]) -> None:
        """Replace the jumps `_known` has for a table with those in `listing` (its parent chains, just read)."""
        known = self._known.get((family, table))
        if known is not None:  # otherwise the whole table is read on first use
            known.jumps = _Known.parse(listing, table).jumps

    def _known_table(self, family: Family, table: str) -> _Known:
        if (family, table) not in self._known:
            self._refresh(((family, table),))
        return self._known[(family, table)]

    def _fail(self, what: str, result: subprocess.CompletedProcess[str]) -> DataplaneError:
        """The error for a failed command; `_known` may be wrong after it, so it is read again on next use."""
        self._known.clear()
        return _error(what, result)

    def _run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*self._prefix, *argv], input=stdin, check=False, capture_output=True, text=True, timeout=_TIMEOUT
            )
        except FileNotFoundError as exc:
            raise DataplaneError(
                f"cannot run {exc.filename or argv[0]}: not installed. Hint: install the iptables package"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise DataplaneError(
                f"{argv[0]} did not finish within {_TIMEOUT:.0f}s. Hint: check who holds the xtables lock"
            ) from exc

    def _iptables(self, family: Family, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([_IPTABLES[family], *_WAIT, *args])

    def _restore_sections(self, family: Family, sections: list[list[str]], what: str) -> None:
        """Run one `iptables-restore --noflush` of `sections` (one transaction per table, in order)."""
        lines = [line for section in sections for line in section]
        try:
            result = self._run([_RESTORE[family], "--noflush", *_WAIT], stdin="\n".join(lines) + "\n")
        except DataplaneError:
            self._known.clear()
            raise
        if result.returncode != 0:
            failed = re.search(r"line (\d+) failed", result.stderr)
            if failed is not None and 0 < int(failed[1]) <= len(lines):
                what += f" (line {failed[1]}: {lines[int(failed[1]) - 1]})"
            raise self._fail(f"{_RESTORE[family]} of {what}", result)

    # -- ebtables: the gateway's own frames never leave through the VXLAN port ------------------------------

    def _ebtables(self, *args: str) -> subprocess.CompletedProcess[str] | None:
        """Run ebtables; None when it is not installed (the guard is then skipped: it only stops log noise)."""
        for binary in _EBTABLES:
            try:
                return self._run([binary, *args])
            except DataplaneError:
                continue
        return None

    def _ensure_bridge_out_chain(self) -> None:
        """Create and hook VXLANPY-OUT if needed, holding the one guard rule and nothing else.

        One rule for every network, matching the gateway MACs by their common prefix, so creating a network
        runs no ebtables process (ebtables-nft takes 12-14 ms a call).  Older versions kept a rule per VNI:
        those are flushed here."""
        self._guarded = False
        listing = self._ebtables("-L", "OUTPUT")
        if listing is None:
            self._guarded = True  # no ebtables on this host: nothing to do, and nothing to retry
            return
        self._ebtables("-N", BRIDGE_OUT_CHAIN)  # "already exists" is fine
        if f"-j {BRIDGE_OUT_CHAIN}" not in listing.stdout:
            self._checked_ebtables("-I", "OUTPUT", "1", "-j", BRIDGE_OUT_CHAIN)
        rules = self._checked_ebtables("-L", BRIDGE_OUT_CHAIN)
        present = [line for line in rules.stdout.splitlines() if line.startswith("-")]
        if present != [" ".join(_GUARD_LISTED)]:
            self._checked_ebtables("-F", BRIDGE_OUT_CHAIN)
            self._checked_ebtables("-A", BRIDGE_OUT_CHAIN, *_GUARD_RULE)
        self._guarded = True

    def _checked_ebtables(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self._ebtables(*args)
        if result is None:
            raise DataplaneError("ebtables vanished while vxlanpy was using it. Hint: reinstall the ebtables package")
        if result.returncode != 0:
            raise _error(f"ebtables {' '.join(args)}", result)
        return result

    def _has_rule(self, family: Family, table: str, chain: str, rule: Rule) -> bool:
        result = self._iptables(family, "-t", table, "-C", chain, *rule)
        if result.returncode == 0:
            return True
        if result.returncode in (1, 2) and any(text in result.stderr for text in _ABSENT):
            return False
        raise self._fail(f"{_IPTABLES[family]} -t {table} -C {chain} {' '.join(rule)}", result)

    def _delete_rule(self, family: Family, table: str, chain: str, rule: Rule) -> None:
        while self._has_rule(family, table, chain, rule):  # a jump may have been added more than once
            result = self._iptables(family, "-t", table, "-D", chain, *rule)
            if result.returncode != 0:
                raise self._fail(f"{_IPTABLES[family]} -t {table} -D {chain} {' '.join(rule)}", result)

    def _delete_chain(self, family: Family, table: str, chain: str) -> None:
        for action in ("-F", "-X"):
            result = self._iptables(family, "-t", table, action, chain)
            if result.returncode != 0 and not any(text in result.stderr for text in _ABSENT):
                raise self._fail(f"{_IPTABLES[family]} -t {table} {action} {chain}", result)

    def _set_sysctl(self, key: str, value: str, missing_ok: bool) -> None:
        if self._netns is None:
            path = Path("/proc/sys", key)
            try:
                # Already set (dockerd sets ip_forward itself): nothing to write.  Inside a managed plugin
                # /proc/sys is mounted read-only, so the write below would fail even for a no-op.
                if path.read_text().strip() == value:
                    return
                path.write_text(value)
            except FileNotFoundError:
                if not missing_ok:
                    raise DataplaneError(f"/proc/sys/{key} does not exist. Hint: is this a Linux host?") from None
            except OSError as exc:
                devconf = _IPV4_DEVCONF_KEY.fullmatch(key)
                if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and devconf is not None:
                    # A read-only /proc/sys (managed plugin): the same per-device setting through netlink.
                    set_ipv4_devconf(devconf["dev"], devconf["name"], int(value))
                    return
                raise DataplaneError(
                    f"cannot write /proc/sys/{key}: {exc.strerror}. Hint: run as root with /proc/sys writable,"
                    f" or set it on the host (sysctl -w {key.replace('/', '.')}={value})"
                ) from exc
            return
        # /proc/sys/net shows the namespace of the reading process, hence sysctl run inside it.
        result = self._run(["sysctl", "-q", "-w", f"{key}={value}"])
        if result.returncode != 0 and not (missing_ok and "No such file" in result.stderr):
            raise _error(f"sysctl -w {key}={value}", result)


# A sysctl key that `rtnl.set_ipv4_devconf` can set through netlink when /proc/sys is read-only.
_IPV4_DEVCONF_KEY = re.compile(r"net/ipv4/conf/(?P<dev>[A-Za-z0-9_.-]{1,15})/(?P<name>route_localnet)")
