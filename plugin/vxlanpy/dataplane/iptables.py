"""The host firewall through iptables: every rule vxlanpy needs lives in vxlanpy's own chains.

The chains, their rules and why isolation takes no rule per network: see firewall_rules.py.

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

A network's chains are rewritten whole by one `iptables-restore --noflush` (nat, and filter for an internal
network; IPv6 only for an internal network): a chain vxlanpy knows to exist is declared, `:CHAIN - [0:0]`,
which flushes only that chain, a new one is made with `-N`; each table is one transaction, so the rules of a
network are never half-applied and calling `ensure_network` again changes nothing.  Removing a network is the
same restore with `-D`, `-F` and `-X` lines; in the plugin (`background_removal`) it runs on a thread of its
own (deferred.py), for every network queued meanwhile at once, since any deletion costs an nf_tables commit
about 10 ms of RCU grace period against 2-3 ms for a creation.  Every later operation on a network, and
reconciliation's view, first finishes what is queued; a crash in between leaves chains no row owns, which
reconciliation removes.  VXLANPY-INPUT is rewritten the same way, hook included when it is
missing, so a host never accepts VXLAN from everyone between two states of the VTEP list.
Nothing here touches a chain vxlanpy did not create, apart from adding and deleting its own jumps.

With the nf_tables backend an iptables process loads what it works on, so the cost of `-C`, `-D` or a
whole-table `-S` grows with the number of networks, and every process costs its start-up: checking each
jump with `-C` made creating and removing networks slower the more there were.  Instead the firewall keeps
in memory which per-network chains exist and which jumps their parent chains hold (`KnownTable`, per family and
table): read with one `iptables -S` per table on first use and at every reconciliation (`owned_vnis`), the
jumps again with `-S` of their parent chains in `ensure_base` (reconciliation, and periodically), updated
after each successful change, and forgotten after any failed one.  The lock serialises this process's
changes, so no jump is added twice; a change made behind vxlanpy's back (a flushed chain) is seen at the
next `ensure_base`, and the next `ensure_network` repairs it.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import replace

from ..errors import DataplaneError
from ..models import Endpoint, IPAddress, Network, PortMapping
from .deferred import Deferred
from .firewall_rules import (
    DNAT_CHAIN,
    DOCKER_USER_CHAIN,
    FORWARD_CHAIN,
    FORWARD_HOOK,
    INPUT_CHAIN,
    INPUT_HOOK,
    INTERNAL_CHAIN,
    PARENT_CHAINS,
    POSTROUTING_CHAIN,
    Family,
    KnownTable,
    Rule,
    Ruleset,
    command_error,
    deletions,
    dnat_rules,
    forward_chain_in_place,
    forward_rules,
    hook_first,
    internal_rules,
    isolation_rules,
    masquerade_rules,
    network_names,
    parse_dnat_rules,
    restore_section,
    rule_line,
    safe_name,
    vtep_filter_rules,
)
from .gateway_guard import GatewayGuard
from .notrack import BridgedNotrack
from .sysctl import Sysctls

log = logging.getLogger(__name__)

IP_FORWARD = "net/ipv4/ip_forward"

_IPTABLES: dict[Family, str] = {4: "iptables", 6: "ip6tables"}
_RESTORE: dict[Family, str] = {4: "iptables-restore", 6: "ip6tables-restore"}
# A bounded wait for the xtables lock: a stuck lock holder must not hang a Docker request forever.
_WAIT = ["-w", "10"]
_TIMEOUT = 30.0

# The tables vxlanpy uses (firewall_rules.PARENT_CHAINS: the chains in each that jump to a network's).
_TABLES: tuple[tuple[Family, str], ...] = ((4, "filter"), (4, "nat"), (6, "filter"))
# How iptables says "no such rule or chain": rc 1 "Bad rule" (nft, also for a missing chain),
# "No chain/target/match by that name" (legacy), "Chain 'X' does not exist" (nft, missing jump target).
_ABSENT = ("Bad rule", "No chain/target/match", "does not exist", "Couldn't load target")


# Per table: the network's chains there, and its jumps to them as (parent chain, rule).
_Layout = dict[tuple[Family, str], tuple[tuple[str, ...], list[tuple[str, Rule]]]]


class IptablesFirewall:
    """`Firewall` through the iptables tools; `netns` names a namespace under /run/netns (tests)."""

    def __init__(self, netns: str | None = None, background_removal: bool = False) -> None:
        self._netns = None if netns is None else safe_name(netns)
        self._prefix = [] if netns is None else ["nsenter", f"--net=/run/netns/{netns}"]
        # Held for every change and every read of the tables into `_known`: no jump is added twice, and
        # `_known` never misses a change this process made while it was being read.
        self._lock = threading.Lock()
        self._known: dict[tuple[Family, str], KnownTable] = {}  # empty: read again on next use
        self._gateway_guard = GatewayGuard(self._run)
        self._notrack = BridgedNotrack(self._run)
        # Through `_run` looked up at each call, as the other commands (tests count what runs).
        self._sysctls = Sysctls(lambda argv: self._run(argv), in_namespace=netns is not None)
        self._hooked: set[Family] = set()  # families whose FORWARD hook was put in place by this process
        self._doomed: set[int] = set()  # VNIs whose chains `remove_network` queued
        self._removals = Deferred(self._flush_removals, "vxlanpy-chain-removal") if background_removal else None

    # -- Firewall ------------------------------------------------------------------------------------

    def ensure_base(self) -> None:
        with self._lock:
            # One `-S CHAIN` per chain involved: unlike a whole table, its cost hardly grows with the networks.
            for family in (4, 6):
                self._ensure_forward_chains(family)
            self._gateway_guard.ensure()
            self._notrack.ensure()
            parents = {chain: self._list_chain(4, "nat", chain) for chain in PARENT_CHAINS["nat"]}
            commands = [f"-N {chain}" for chain, listing in parents.items() if listing is None]
            hooks = [("POSTROUTING", ["-j", POSTROUTING_CHAIN])]
            hooks += [
                (hook, ["-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN]) for hook in ("PREROUTING", "OUTPUT")
            ]
            for hook, rule in hooks:
                listing = self._list_chain(4, "nat", hook, missing_ok=False)
                if listing is None or not listing.has(hook, rule):
                    commands.append(rule_line(hook, rule))
            if commands:
                self._restore_sections(4, [restore_section("nat", {}, commands)], "the nat hooks")
            self._relearn_jumps(4, "nat", Ruleset.combine(parents.values()))
            # Last: where it fails (a read-only /proc/sys), isolation is in place all the same.
            self._ensure_ip_forward()

    def ensure_network(self, network: Network, endpoints: list[Endpoint]) -> None:
        bridge, chain, dnat = network_names(network.vni)
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
            self._remove_doomed_first()  # the same VNI may be queued for removal: that comes first
            self._doomed.discard(network.vni)  # if that failed, a later retry must not take the new chains
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
                self._sysctls.write(f"net/ipv4/conf/{bridge}/route_localnet", "1", missing_ok=True)
            if not self._gateway_guard.in_place:
                self._gateway_guard.ensure()

    def remove_network(self, vni: int) -> None:
        with self._lock:
            self._doomed.add(int(vni))
            if self._removals is None:
                self._remove_doomed()
                return
        self._removals.wake()

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for the removals queued in the background; False if `timeout` ran out first."""
        return True if self._removals is None else self._removals.settle(timeout)

    def sync_vtep_filter(
        self, ports: set[int], vteps: set[IPAddress], tunnel_ports: Mapping[int, str] | None = None
    ) -> None:
        rules: dict[Family, list[Rule]] = {
            family: vtep_filter_rules(ports, vteps, family, tunnel_ports) for family in (4, 6)
        }
        with self._lock:
            for family in (4, 6):
                if not ports and not tunnel_ports:
                    self._delete_rule(family, "filter", "INPUT", INPUT_HOOK)
                    self._delete_chain(family, "filter", INPUT_CHAIN)
                    continue
                # Hooking in the same restore as the chain's rules: never a hook without its rules.
                hooked = self._has_rule(family, "filter", "INPUT", INPUT_HOOK)
                hook = [] if hooked else [" ".join(["-I", "INPUT", "1", *INPUT_HOOK])]
                self._restore_sections(
                    family, [restore_section("filter", {INPUT_CHAIN: rules[family]}, hook)], INPUT_CHAIN
                )

    def owned_vnis(self) -> set[int]:
        with self._lock:
            self._remove_doomed_first()
            self._refresh()
            return {int(chain.rpartition("-")[2]) for known in self._known.values() for chain in known.chains}

    def published_ports(self, vni: int) -> dict[IPAddress, list[PortMapping]]:
        with self._lock:
            self._remove_doomed_first()
            listing = self._list_chain(4, "nat", network_names(vni)[2])
        return parse_dnat_rules(listing) if listing is not None else {}

    # -- helpers -------------------------------------------------------------------------------------

    @classmethod
    def _layout(cls, *vnis: int) -> _Layout:
        """Everything the networks may have in each table, as (chains, rules in the parent chains): what removing
        them deletes, where present.  The filter chains and their jumps are those of vxlanpy < 0.2."""
        filter_chains: tuple[str, ...] = ()
        nat_chains: tuple[str, ...] = ()
        forward: list[tuple[str, Rule]] = []
        nat: list[tuple[str, Rule]] = []
        for vni in sorted(vnis):
            bridge, chain, dnat = network_names(vni)
            filter_chains += (chain,)
            nat_chains += (chain, dnat)
            forward += [(FORWARD_CHAIN, ["-i", bridge, "-j", chain]), (FORWARD_CHAIN, ["-o", bridge, "-j", chain])]
            forward += [(INTERNAL_CHAIN, rule) for rule in isolation_rules(bridge)]
            nat += [(POSTROUTING_CHAIN, ["-j", chain]), (DNAT_CHAIN, ["-j", dnat])]
        return {
            (4, "filter"): (filter_chains, forward),
            (6, "filter"): (filter_chains, forward),
            (4, "nat"): (nat_chains, nat),
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
            added[table] = [rule_line(*jump) for jump in wanted if not known.jumps[rule_line(*jump)]]
            deleted[table] = [rule_line(*jump) for jump in stale if known.jumps[rule_line(*jump)]]
        sections = [
            restore_section(table, contents[table], added[table] + deletions(deleted[table], known), known.chains)
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
        chains: dict[str, list[Rule]] = {} if internal is not None else {INTERNAL_CHAIN: []}
        commands: list[str] = []
        rewrite = forward is None or not forward_chain_in_place(forward)
        if rewrite:
            chains[FORWARD_CHAIN] = forward_rules()  # declared, so flushed and filled in one transaction
            stale = sorted(chain for chain in self._known_table(family, "filter").chains if chain.startswith("VXP-"))
            commands += [f"-F {chain}" for chain in stale] + [f"-X {chain}" for chain in stale]
        hooks = self._list_chain(family, "filter", "FORWARD", missing_ok=False) or Ruleset({}, {})
        moved = hook_first(hooks, "FORWARD")
        if moved and family in self._hooked:
            self._log_displaced(family, hooks)
        commands += moved
        docker_user = self._list_chain(family, "filter", DOCKER_USER_CHAIN)
        if docker_user is not None:  # none with --iptables=false or Docker 29's nftables backend
            commands += hook_first(docker_user, DOCKER_USER_CHAIN)
        if chains or commands:
            existing = {FORWARD_CHAIN} if forward is not None else set()
            self._restore_sections(
                family, [restore_section("filter", chains, commands, existing)], "the FORWARD chains"
            )
        self._hooked.add(family)
        if rewrite:
            self._known.pop((family, "filter"), None)  # read again on next use
        else:
            self._relearn_jumps(family, "filter", Ruleset.combine([forward, internal]))

    @staticmethod
    def _log_displaced(family: Family, listing: Ruleset) -> None:
        hook = rule_line("FORWARD", FORWARD_HOOK)
        rules = listing.lines("FORWARD")
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
        if self._sysctls.read(IP_FORWARD) == "1":
            return
        try:
            self._sysctls.write(IP_FORWARD, "1", missing_ok=False)
        except DataplaneError as exc:
            raise DataplaneError(
                f"{exc.message.partition('. Hint:')[0]}: net.ipv4.ip_forward is off, and without it the containers "
                "of vxlanpy networks reach nothing outside their network and their published ports do not answer "
                "from other hosts. Hint: on the host, sysctl -w net.ipv4.ip_forward=1 and persist it in "
                "/etc/sysctl.d/ (dockerd sets it only with its iptables firewall backend and --ip-forward=true)"
            ) from exc
        forward = self._list_chain(4, "filter", "FORWARD")
        policy = forward.policies.get("FORWARD", "?") if forward is not None else "?"
        log.warning(
            "net.ipv4.ip_forward was off (dockerd with --ip-forward=false or its nftables backend?): vxlanpy turned "
            "it on for egress and published ports%s",
            ""
            if policy != "ACCEPT"
            else "; the FORWARD policy is ACCEPT, so this host now routes between all its interfaces, which "
            "vxlanpy's rules (its own bridges only) do not filter: consider `iptables -P FORWARD DROP` "
            "(vxlanpy accepts its own traffic explicitly)",
        )

    def _remove_doomed(self) -> None:
        """Remove the chains of every network queued by `remove_network`, in one restore per family: deleting
        anything costs an nf_tables commit about 10 ms (RCU), however much goes at once.  The lock is held."""
        if not self._doomed:
            return
        vnis, layout = sorted(self._doomed), self._layout(*self._doomed)
        self._doomed.clear()
        for family in (4, 6):
            try:
                self._remove_chains(family, layout)
            except DataplaneError:
                # Something vanished meanwhile (a jump deleted, a chain flushed and deleted by hand):
                # `_known` was forgotten with the failure, so the second try works from a fresh read.
                try:
                    self._remove_chains(family, layout)
                except DataplaneError:
                    self._doomed.update(vnis)  # the next flush tries again; reconciliation removes them otherwise
                    raise

    def _remove_doomed_first(self) -> None:
        """Before an operation that must see them done; a failure is left to the background and reconciliation
        (`_known` was forgotten with it, so the operation itself works from a fresh read)."""
        try:
            self._remove_doomed()
        except DataplaneError as exc:
            log.warning("removing the chains of deleted networks failed, to be tried again: %s", exc)

    def _flush_removals(self) -> None:
        with self._lock:
            self._remove_doomed()

    def _remove_chains(self, family: Family, layout: _Layout) -> None:
        """One restore deleting the jumps `_known` counts, then the chains it knows of; none if nothing is left."""
        plans: list[tuple[KnownTable, tuple[str, ...], list[str]]] = []
        sections = []
        for table in self._tables(family):
            known = self._known_table(family, table)
            chains, jumps = layout[(family, table)]
            present = tuple(chain for chain in chains if chain in known.chains)
            deleted = [rule_line(*jump) for jump in jumps if known.jumps[rule_line(*jump)]]
            if not present and not deleted:
                continue
            commands = deletions(deleted, known)
            commands += [f"-F {chain}" for chain in present] + [f"-X {chain}" for chain in present]
            sections.append(restore_section(table, {}, commands))
            plans.append((known, present, deleted))
        if not sections:
            return
        self._restore_sections(family, sections, "removal of " + ", ".join(layout[(4, "nat")][0]))
        for known, present, deleted in plans:
            known.chains.difference_update(present)
            for line in deleted:
                del known.jumps[line]

    def _refresh(self, tables: tuple[tuple[Family, str], ...] = _TABLES) -> None:
        """Read `tables` (`iptables -S`, one process each) into `_known`."""
        for family, table in tables:
            result = self._iptables(family, "-t", table, "-S")
            if result.returncode != 0:
                raise self._fail(f"{_IPTABLES[family]} -t {table} -S", result)
            self._known[(family, table)] = KnownTable.parse(Ruleset.parse(result.stdout), table)

    def _list_chain(self, family: Family, table: str, chain: str, missing_ok: bool = True) -> Ruleset | None:
        """`iptables -t TABLE -S CHAIN`, one line a rule; None when it fails and `missing_ok` (no such chain)."""
        result = self._iptables(family, "-t", table, "-S", chain)
        if result.returncode == 0:
            return Ruleset.parse(result.stdout)
        if missing_ok:
            return None
        raise self._fail(f"{_IPTABLES[family]} -t {table} -S {chain}", result)

    def _relearn_jumps(self, family: Family, table: str, listing: Ruleset) -> None:
        """Replace the jumps `_known` has for a table with those in `listing` (its parent chains, just read)."""
        known = self._known.get((family, table))
        if known is not None:  # otherwise the whole table is read on first use
            known.jumps = KnownTable.parse(listing, table).jumps

    def _known_table(self, family: Family, table: str) -> KnownTable:
        if (family, table) not in self._known:
            self._refresh(((family, table),))
        return self._known[(family, table)]

    def _fail(self, what: str, result: subprocess.CompletedProcess[str]) -> DataplaneError:
        """The error for a failed command; `_known` may be wrong after it, so it is read again on next use."""
        self._known.clear()
        return command_error(what, result)

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
