"""vxlanpy's firewall rules as data: what its chains hold, and the one reader of `iptables -S` listings.

Pure: nothing here runs a command.  The firewall (iptables.py) writes these rules and reads the kernel's
listings back with `Ruleset`; `vxlanpy doctor` judges the same listings against the same rules.

Layout (filter in IPv4 and IPv6, nat in IPv4 only):

    filter FORWARD (position 1)   -> VXLANPY-FORWARD     -> VXLANPY-INTERNAL  isolation; internal networks
    nat    POSTROUTING            -> VXLANPY-POSTROUTING -> VXP-<vni>         MASQUERADE
    nat    PREROUTING, OUTPUT     -> VXLANPY-DNAT        -> VXPD-<vni>        published ports
    filter INPUT (position 1)     -> VXLANPY-INPUT                            VXLAN only from known VTEPs
                                                                              (encrypted: only through WireGuard)
    filter DOCKER-USER (pos. 1)   -> VXLANPY-FORWARD                          when dockerd runs (see ensure_base)
    ebtables filter OUTPUT        -> VXLANPY-OUT                              the gateways' own frames stay home

Isolation takes no rule per network: VXLANPY-FORWARD is the same few rules for every vxlanpy bridge
(`forward_rules`), so every forwarded packet of the host, Docker's too, crosses a handful of rules whatever
the number of networks, and creating a network writes nothing in the filter table.  Only an internal network
adds two rules to VXLANPY-INTERNAL.  (vxlanpy < 0.2 had a VXP-<vni> filter chain per network and two jumps
to it in VXLANPY-FORWARD: `ensure_base` rewrites that chain and deletes them.)


A network's nat rules need two chains: the kernel refuses a rule jumping to a chain that holds DNAT from
POSTROUTING, and one holding MASQUERADE or `-o` from PREROUTING (both fail with EINVAL).
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..errors import DataplaneError
from ..models import PROTOCOL_NUMBERS, Endpoint, IPAddress, Network, PortMapping, bridge_name

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

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_OWNED_CHAIN = re.compile(r"^VXPD?-\d+$")
# The chains that hold the jumps to the per-network chains, per table.
# (VXLANPY-FORWARD holds the jumps of vxlanpy < 0.2's per-network filter chains, removed by `ensure_base`.)
PARENT_CHAINS = {"filter": (FORWARD_CHAIN, INTERNAL_CHAIN), "nat": (POSTROUTING_CHAIN, DNAT_CHAIN)}


def safe_name(name: str) -> str:
    # An explicit check rather than `assert`, which `python -O` strips.
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"refusing to put unsafe name {name!r} into a firewall rule")
    return name


def port_text(value: int) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"refusing to put invalid port {value!r} into a firewall rule")
    return str(value)


def network_names(vni: int) -> tuple[str, str, str]:
    """A network's bridge, its masquerade chain (VXP-<vni>) and its published ports' chain (VXPD-<vni>)."""
    vni = int(vni)
    return safe_name(bridge_name(vni)), safe_name(f"VXP-{vni}"), safe_name(f"VXPD-{vni}")


def command_error(what: str, result: subprocess.CompletedProcess[str]) -> DataplaneError:
    """The error for a failed iptables or ebtables command, with a hint at what to do."""
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


# -- `iptables -S` listings --------------------------------------------------------------------------------------


@dataclass
class Ruleset:
    """One table (or some chains of it) as `iptables -S` lists it."""

    policies: dict[str, str]  # built-in chain -> its policy
    rules: dict[str, list[Rule]]  # every chain listed -> its rules (the tokens after `-A CHAIN`), in order

    @classmethod
    def parse(cls, listing: str | Iterable[str]) -> Ruleset:
        """From the text of `iptables -S`, or from its lines."""
        policies: dict[str, str] = {}
        rules: dict[str, list[Rule]] = {}
        for line in listing.splitlines() if isinstance(listing, str) else listing:
            tokens = line.split()
            if len(tokens) >= 3 and tokens[0] == "-P":
                policies[tokens[1]] = tokens[2]
                rules.setdefault(tokens[1], [])
            elif len(tokens) >= 2 and tokens[0] == "-N":
                rules.setdefault(tokens[1], [])
            elif len(tokens) >= 2 and tokens[0] == "-A":
                rules.setdefault(tokens[1], []).append(tokens[2:])
        return cls(policies, rules)

    @classmethod
    def combine(cls, listings: Iterable[Ruleset | None]) -> Ruleset:
        """Listings of separate chains (`iptables -S CHAIN` each; None for a missing one) as one."""
        combined = cls({}, {})
        for listing in listings:
            if listing is not None:
                combined.policies.update(listing.policies)
                combined.rules.update(listing.rules)
        return combined

    def has(self, chain: str, rule: Rule) -> bool:
        return rule in self.rules.get(chain, [])

    def lines(self, chain: str) -> list[str]:
        """The chain's rules as `iptables -S` prints them."""
        return [rule_line(chain, rule) for rule in self.rules.get(chain, [])]


def forward_chain_in_place(ruleset: Ruleset) -> bool:
    """Whether VXLANPY-FORWARD holds exactly `forward_rules`."""
    return ruleset.rules.get(FORWARD_CHAIN) == forward_rules()


# -- the rules ---------------------------------------------------------------------------------------------------


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
    return isolation_rules(network.bridge) if network.internal else []


def isolation_rules(bridge: str) -> list[Rule]:
    """The rules in VXLANPY-INTERNAL that keep an internal network's bridge to itself."""
    bridge = safe_name(bridge)
    return [["-i", bridge, "-j", "DROP"], ["-o", bridge, "-j", "DROP"]]


def masquerade_rules(network: Network) -> list[Rule]:
    if not network.routes_egress:  # internal, or gateway=docker_gwbridge: Docker's bridge masquerades (no double NAT)
        return []
    bridge = safe_name(network.bridge)
    pools = [str(subnet.pool) for subnet in network.ipv4 if isinstance(subnet.pool, ipaddress.IPv4Network)]
    rules = [["-s", pool, "!", "-o", bridge, "-j", "MASQUERADE"] for pool in pools]
    # A container reaching a published port of its own network (hairpin): the reply would be switched straight
    # back, untracked (notrack.py), so the connection comes from the gateway instead, as with Docker's proxy.
    rules += [["-s", pool, "-o", bridge, "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"] for pool in pools]
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
            target = f"{endpoint.ipv4.ip}:{port_text(mapping.container_port)}"
            rules.append([*rule, "--dport", port_text(mapping.host_port), "-j", "DNAT", "--to-destination", target])
    return rules


def parse_dnat_rules(listing: Ruleset) -> dict[IPAddress, list[PortMapping]]:
    """The inverse of `dnat_rules`, read from `iptables -t nat -S VXPD-<vni>` (which adds `-m tcp`, `/32`)."""
    published: dict[IPAddress, list[PortMapping]] = {}
    for rule in (rule for rules in listing.rules.values() for rule in rules):
        if "DNAT" not in rule:
            continue
        fields = dict(zip(rule[0::2], rule[1::2], strict=False))
        target, _, container_port = fields.get("--to-destination", "").rpartition(":")
        try:
            address = ipaddress.ip_address(target)
            host_ip = ipaddress.ip_interface(fields["-d"]).ip if "-d" in fields else None
            mapping = PortMapping(fields["-p"], int(container_port), int(fields["--dport"]), host_ip)
        except (KeyError, ValueError):
            continue  # not a rule vxlanpy writes
        published.setdefault(address, []).append(mapping)
    return published


def interface_text(name: str) -> str:
    """An interface name for `-i`: a valid ifname, which cannot be read as an option or a negation."""
    if not isinstance(name, str) or name.startswith("-"):
        raise ValueError(f"refusing to put invalid interface name {name!r} into a firewall rule")
    return safe_name(name)


def vtep_filter_rules(
    ports: set[int], vteps: set[IPAddress], family: Family, tunnel_ports: Mapping[int, str] | None = None
) -> list[Rule]:
    """VXLANPY-INPUT for one family: per port, accept the VTEPs of that family, drop everyone else.

    `tunnel_ports` (encrypted networks' ports, each with its WireGuard interface) are dropped first unless they
    arrive on that interface: a frame crafted on the underlay never reaches an encrypted network's bridge, even
    from a source address that is a VTEP's (the tunnel addresses are the VTEPs of encrypted networks)."""
    tunnels = {port_text(port): interface_text(interface) for port, interface in (tunnel_ports or {}).items()}
    checked = []
    for vtep in vteps:
        if not isinstance(vtep, ipaddress.IPv4Address | ipaddress.IPv6Address) or vtep.is_unspecified:
            raise ValueError(f"refusing {vtep!r} as a VTEP in a firewall rule: not an IP address")
        if vtep.version == family:
            checked.append(vtep)
    sources = [str(vtep) for vtep in sorted(checked)]
    rules: list[Rule] = []
    for port in sorted({port_text(port) for port in ports} | set(tunnels), key=int):
        if port in tunnels:
            rules.append(["!", "-i", tunnels[port], "-p", "udp", "--dport", port, "-j", "DROP"])
        rules += [["-p", "udp", "--dport", port, "-s", source, "-j", "ACCEPT"] for source in sources]
        rules.append(["-p", "udp", "--dport", port, "-j", "DROP"])
    return rules


# -- restore files -----------------------------------------------------------------------------------------------


def rule_line(chain: str, rule: Rule, action: str = "-A") -> str:
    """A rule as `iptables -S` prints it, or as a restore file adds (`-A`, `-I`) or deletes it (`-D`)."""
    return " ".join([action, chain, *rule])


def restore_section(
    table: str, chains: dict[str, list[Rule]], commands: list[str], existing: set[str] | None = None
) -> list[str]:
    """One table of a restore file: `chains` emptied and filled, then `commands`, then COMMIT.

    A chain in `existing` (or every chain, when it is None) is declared, which flushes it; any other is created
    with `-N`.  With the nf_tables backend a declaration makes the restore read every chain of the table with
    its rules (24 ms with 1000 networks against 1.2 ms with none), while `-N` costs the same at any size."""
    declared = chains.keys() if existing is None else existing.intersection(chains)
    lines = [f"*{table}", *(f":{chain} - [0:0]" for chain in chains if chain in declared)]
    lines += [f"-N {chain}" for chain in chains if chain not in declared]
    lines += [rule_line(chain, rule) for chain, rules in chains.items() for rule in rules]
    return [*lines, *commands, "COMMIT"]


def deletions(lines: list[str], known: KnownTable) -> list[str]:
    """`-D` commands for rules given as `-A` lines: as many as `known` counts of each (an older version may
    have added one twice)."""
    return ["-D" + line[2:] for line in lines for _ in range(known.jumps[line])]


def hook_first(listing: Ruleset, chain: str) -> list[str]:
    """Restore commands that put the FORWARD hook first in `chain` (as `listing` shows it) when it is not."""
    rules = listing.rules.get(chain, [])
    if rules[:1] == [FORWARD_HOOK]:
        return []
    removed = [rule_line(chain, FORWARD_HOOK, "-D")] * rules.count(FORWARD_HOOK)
    return [*removed, " ".join(["-I", chain, "1", *FORWARD_HOOK])]


@dataclass
class KnownTable:
    """What one table holds of vxlanpy's per-network state, as the firewall believes it: the VXP-/VXPD-
    chains, and how many times each rule of the chains jumping to them is there (a jump added twice by an
    older version is deleted twice)."""

    chains: set[str] = field(default_factory=set)
    jumps: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, listing: Ruleset, table: str) -> KnownTable:
        """From `iptables -t TABLE -S`, or from `-S PARENT` of its parent chains (the chains are then unknown)."""
        chains = {chain for chain in listing.rules if _OWNED_CHAIN.fullmatch(chain)}
        return cls(chains, Counter(line for parent in PARENT_CHAINS[table] for line in listing.lines(parent)))
