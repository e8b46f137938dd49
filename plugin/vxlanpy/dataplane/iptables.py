"""The host firewall through iptables: every rule vxlanpy needs lives in vxlanpy's own chains.

Layout (filter in IPv4 and IPv6, nat in IPv4 only):

    filter FORWARD (position 1)   -> VXLANPY-FORWARD     -> VXP-<vni>   isolation, internal networks
    nat    POSTROUTING            -> VXLANPY-POSTROUTING -> VXP-<vni>   MASQUERADE
    nat    PREROUTING, OUTPUT     -> VXLANPY-DNAT        -> VXPD-<vni>  published ports
    filter INPUT (position 1)     -> VXLANPY-INPUT                      VXLAN only from known VTEPs (multi-host)
    filter DOCKER-USER (pos. 1)   -> VXLANPY-FORWARD                    when dockerd runs (see ensure_base)
    ebtables filter OUTPUT        -> VXLANPY-OUT                        the anycast gateway's own frames stay home

dockerd inserts its own FORWARD rules at the top when it starts (`-i docker0 ! -o docker0 -j ACCEPT` would let
docker0's containers into a vxlanpy network), but it always keeps its DOCKER-USER chain first and never flushes
it: so the FORWARD hook is also put first in DOCKER-USER, and `ensure_base` moves a displaced hook back to the
top (the app calls it periodically).  The bridge itself sends ARP, IPv6 RS and MLD from the gateway MAC, which
every host shares; VXLANPY-OUT drops those frames at the VXLAN port so no host hears its own MAC from another.

A network's nat rules need two chains: the kernel refuses a rule jumping to a chain that holds DNAT from
POSTROUTING, and one holding MASQUERADE or `-o` from PREROUTING (both fail with EINVAL).

Each per-network chain is rewritten whole by one `iptables-restore --noflush` per table and family:
declaring `:CHAIN - [0:0]` there flushes only that chain, and the restore is one transaction, so the
rules of a network are never half-applied and calling `ensure_network` again changes nothing.
VXLANPY-INPUT is rewritten the same way, hook included when it is missing, so a host never accepts
VXLAN from everyone between two states of the VTEP list.
Nothing here touches a chain vxlanpy did not create, apart from adding and deleting its own jumps.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import Literal

from ..errors import DataplaneError
from ..models import PROTOCOL_NUMBERS, Endpoint, IPAddress, Network, bridge_name, gateway_mac, vxlan_name

Family = Literal[4, 6]
Rule = list[str]

FORWARD_CHAIN = "VXLANPY-FORWARD"
POSTROUTING_CHAIN = "VXLANPY-POSTROUTING"
DNAT_CHAIN = "VXLANPY-DNAT"
INPUT_CHAIN = "VXLANPY-INPUT"
INPUT_HOOK: list[str] = ["-j", INPUT_CHAIN]
FORWARD_HOOK: list[str] = ["-j", FORWARD_CHAIN]
DOCKER_USER_CHAIN = "DOCKER-USER"
BRIDGE_OUT_CHAIN = "VXLANPY-OUT"
_EBTABLES = ("ebtables", "ebtables-nft")

_IPTABLES: dict[Family, str] = {4: "iptables", 6: "ip6tables"}
_RESTORE: dict[Family, str] = {4: "iptables-restore", 6: "ip6tables-restore"}
# A bounded wait for the xtables lock: a stuck lock holder must not hang a Docker request forever.
_WAIT = ["-w", "10"]
_TIMEOUT = 30.0

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_OWNED_CHAIN = re.compile(r"^-N VXPD?-(\d+)$", re.MULTILINE)
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


def filter_rules(network: Network) -> list[Rule]:
    """The filter chain of one network; the same for IPv4 and IPv6.  Every packet jumped here ends here."""
    bridge = _safe(network.bridge)
    rules = [["-i", bridge, "-o", bridge, "-j", "ACCEPT"]]  # inside the network (FORWARD policy is DROP)
    if not network.internal:
        rules += [
            ["-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
            ["-o", bridge, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"],  # published ports
        ]
    rules.append(["-o", bridge, "-j", "DROP"])  # nothing else enters the network
    for other in ("vxbr-+", "docker0", "br-+"):  # isolation from other vxlanpy and Docker networks
        rules.append(["-i", bridge, "-o", other, "-j", "DROP"])
    rules.append(["-i", bridge, "-j", "DROP" if network.internal else "ACCEPT"])
    return rules


def masquerade_rules(network: Network) -> list[Rule]:
    if network.internal:
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
    if network.internal:
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


class IptablesFirewall:
    """`Firewall` through the iptables tools; `netns` names a namespace under /run/netns (tests)."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = None if netns is None else _safe(netns)
        self._prefix = [] if netns is None else ["nsenter", f"--net=/run/netns/{netns}"]
        # Check-then-add is not atomic: serialise this process's own changes so no jump is added twice.
        self._lock = threading.Lock()
        self._bridge_out_ready = False

    # -- Firewall ------------------------------------------------------------------------------------

    def ensure_base(self) -> None:
        with self._lock:
            self._set_sysctl("net/ipv4/ip_forward", "1", missing_ok=False)
            for family in (4, 6):
                self._ensure_chain(family, "filter", FORWARD_CHAIN)
                self._ensure_first(family, "FORWARD", FORWARD_HOOK)
                if self._iptables(family, "-S", DOCKER_USER_CHAIN).returncode == 0:
                    self._ensure_first(family, DOCKER_USER_CHAIN, FORWARD_HOOK)
            self._ensure_bridge_out_chain()
            self._ensure_chain(4, "nat", POSTROUTING_CHAIN)
            self._ensure_chain(4, "nat", DNAT_CHAIN)
            self._ensure_rule(4, "nat", "POSTROUTING", ["-j", POSTROUTING_CHAIN])
            for hook in ("PREROUTING", "OUTPUT"):
                self._ensure_rule(4, "nat", hook, ["-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN])

    def ensure_network(self, network: Network, endpoints: list[Endpoint]) -> None:
        bridge, chain, dnat = self._names(network.vni)
        rules = filter_rules(network)
        nat = {chain: masquerade_rules(network), dnat: dnat_rules(network, endpoints)}
        with self._lock:
            for family in (4, 6):
                self._restore(family, "filter", {chain: rules})
                self._ensure_rule(family, "filter", FORWARD_CHAIN, ["-i", bridge, "-j", chain])
                self._ensure_rule(family, "filter", FORWARD_CHAIN, ["-o", bridge, "-j", chain])
            self._restore(4, "nat", nat)
            self._ensure_rule(4, "nat", POSTROUTING_CHAIN, ["-j", chain])
            self._ensure_rule(4, "nat", DNAT_CHAIN, ["-j", dnat])
            if not network.internal:
                # Lets a connection DNATed from 127.0.0.1 leave through the bridge instead of being dropped
                # as martian.  The links layer creates the bridge; without it there is nothing to set yet.
                self._set_sysctl(f"net/ipv4/conf/{bridge}/route_localnet", "1", missing_ok=True)
            self._bridge_out(network, "-A")

    def remove_network(self, vni: int) -> None:
        bridge, chain, dnat = self._names(vni)
        with self._lock:
            for family in (4, 6):
                self._delete_rule(family, "filter", FORWARD_CHAIN, ["-i", bridge, "-j", chain])
                self._delete_rule(family, "filter", FORWARD_CHAIN, ["-o", bridge, "-j", chain])
                self._delete_chain(family, "filter", chain)
            self._delete_rule(4, "nat", POSTROUTING_CHAIN, ["-j", chain])
            self._delete_rule(4, "nat", DNAT_CHAIN, ["-j", dnat])
            self._delete_chain(4, "nat", chain)
            self._delete_chain(4, "nat", dnat)
            self._bridge_out_rule(vni, "-D")

    def sync_vtep_filter(self, ports: set[int], vteps: set[IPAddress]) -> None:
        rules: dict[Family, list[Rule]] = {family: vtep_filter_rules(ports, vteps, family) for family in (4, 6)}
        with self._lock:
            for family in (4, 6):
                if not ports:
                    self._delete_rule(family, "filter", "INPUT", INPUT_HOOK)
                    self._delete_chain(family, "filter", INPUT_CHAIN)
                    continue
                # Hooking in the same restore as the chain's rules: never a hook without its rules.
                hook = (
                    [] if self._has_rule(family, "filter", "INPUT", INPUT_HOOK) else [["-I", "INPUT", "1", *INPUT_HOOK]]
                )
                self._restore(family, "filter", {INPUT_CHAIN: rules[family]}, hook)

    def owned_vnis(self) -> set[int]:
        vnis: set[int] = set()
        tables: tuple[tuple[Family, str], ...] = ((4, "filter"), (4, "nat"), (6, "filter"))
        for family, table in tables:
            result = self._iptables(family, "-t", table, "-S")
            if result.returncode != 0:
                raise _error(f"{_IPTABLES[family]} -t {table} -S", result)
            vnis.update(int(vni) for vni in _OWNED_CHAIN.findall(result.stdout))
        return vnis

    # -- helpers -------------------------------------------------------------------------------------

    @staticmethod
    def _names(vni: int) -> tuple[str, str, str]:
        vni = int(vni)
        return _safe(bridge_name(vni)), _safe(f"VXP-{vni}"), _safe(f"VXPD-{vni}")

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

    def _restore(
        self, family: Family, table: str, chains: dict[str, list[Rule]], commands: list[Rule] | None = None
    ) -> None:
        """Rewrite `chains` whole in one transaction, then run `commands` (full rule commands) in it too."""
        lines = [f"*{table}", *(f":{chain} - [0:0]" for chain in chains)]
        lines += [" ".join(["-A", chain, *rule]) for chain, rules in chains.items() for rule in rules]
        lines += [" ".join(command) for command in commands or ()]
        lines.append("COMMIT")
        result = self._run([_RESTORE[family], "--noflush", *_WAIT], stdin="\n".join(lines) + "\n")
        if result.returncode != 0:
            raise _error(f"{_RESTORE[family]} of {', '.join(chains)} in table {table}", result)

    def _ensure_first(self, family: Family, chain: str, rule: Rule) -> None:
        """Make `rule` the first rule of the filter `chain`, moving it there if something was put above it."""
        result = self._iptables(family, "-S", chain)
        if result.returncode != 0:
            raise _error(f"{_IPTABLES[family]} -S {chain}", result)
        rules = [line for line in result.stdout.splitlines() if line.startswith(f"-A {chain} ")]
        if rules and rules[0] == " ".join(["-A", chain, *rule]):
            return
        self._delete_rule(family, "filter", chain, rule)
        inserted = self._iptables(family, "-I", chain, "1", *rule)
        if inserted.returncode != 0:
            raise _error(f"{_IPTABLES[family]} -I {chain} 1 {' '.join(rule)}", inserted)

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
        listing = self._ebtables("-L", "OUTPUT")
        self._bridge_out_ready = True
        if listing is None:
            return
        self._ebtables("-N", BRIDGE_OUT_CHAIN)  # "already exists" is fine
        if f"-j {BRIDGE_OUT_CHAIN}" not in listing.stdout:
            result = self._ebtables("-I", "OUTPUT", "1", "-j", BRIDGE_OUT_CHAIN)
            if result is not None and result.returncode != 0:
                raise _error("ebtables -I OUTPUT 1 -j VXLANPY-OUT", result)

    def _bridge_out(self, network: Network, action: str) -> None:
        if not self._bridge_out_ready:
            self._ensure_bridge_out_chain()
        self._bridge_out_rule(network.vni, "-D")  # delete, then add: idempotent without ebtables' missing -C
        if action == "-A":
            self._bridge_out_rule(network.vni, "-A")

    def _bridge_out_rule(self, vni: int, action: str) -> None:
        rule = ["-o", _safe(vxlan_name(vni)), "-s", gateway_mac(vni), "-j", "DROP"]
        result = self._ebtables(action, BRIDGE_OUT_CHAIN, *rule)
        if result is not None and result.returncode != 0 and action == "-A":
            raise _error(f"ebtables -A {BRIDGE_OUT_CHAIN} {' '.join(rule)}", result)

    def _has_rule(self, family: Family, table: str, chain: str, rule: Rule) -> bool:
        result = self._iptables(family, "-t", table, "-C", chain, *rule)
        if result.returncode == 0:
            return True
        if result.returncode in (1, 2) and any(text in result.stderr for text in _ABSENT):
            return False
        raise _error(f"{_IPTABLES[family]} -t {table} -C {chain} {' '.join(rule)}", result)

    def _ensure_rule(self, family: Family, table: str, chain: str, rule: Rule, first: bool = False) -> None:
        if self._has_rule(family, table, chain, rule):
            return
        where = ["-I", chain, "1"] if first else ["-A", chain]
        result = self._iptables(family, "-t", table, *where, *rule)
        if result.returncode != 0:
            raise _error(f"{_IPTABLES[family]} -t {table} {' '.join(where)} {' '.join(rule)}", result)

    def _delete_rule(self, family: Family, table: str, chain: str, rule: Rule) -> None:
        while self._has_rule(family, table, chain, rule):  # a jump may have been added more than once
            result = self._iptables(family, "-t", table, "-D", chain, *rule)
            if result.returncode != 0:
                raise _error(f"{_IPTABLES[family]} -t {table} -D {chain} {' '.join(rule)}", result)

    def _ensure_chain(self, family: Family, table: str, chain: str) -> None:
        result = self._iptables(family, "-t", table, "-N", chain)
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise _error(f"{_IPTABLES[family]} -t {table} -N {chain}", result)

    def _delete_chain(self, family: Family, table: str, chain: str) -> None:
        for action in ("-F", "-X"):
            result = self._iptables(family, "-t", table, action, chain)
            if result.returncode != 0 and not any(text in result.stderr for text in _ABSENT):
                raise _error(f"{_IPTABLES[family]} -t {table} {action} {chain}", result)

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
                    _set_ipv4_devconf(devconf["dev"], devconf["name"], int(value))
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


# -- per-device IPv4 settings through netlink (for a read-only /proc/sys) ---------------------------------

_IPV4_DEVCONF_KEY = re.compile(r"net/ipv4/conf/(?P<dev>[A-Za-z0-9_.-]{1,15})/(?P<name>route_localnet)")
_IPV4_DEVCONF = {"route_localnet": 26}  # IPV4_DEVCONF_ROUTE_LOCALNET, include/uapi/linux/ip.h
_RTM_SETLINK, _NLMSG_ERROR, _NLM_F_REQUEST, _NLM_F_ACK = 19, 2, 0x1, 0x4
_IFLA_AF_SPEC, _IFLA_INET_CONF = 26, 1


def _nla(kind: int, payload: bytes) -> bytes:
    header = struct.pack("=HH", 4 + len(payload), kind)
    return header + payload + b"\0" * (-len(payload) % 4)


def _set_ipv4_devconf(dev: str, name: str, value: int) -> None:
    """`sysctl net.ipv4.conf.<dev>.<name>=<value>` as RTM_SETLINK IFLA_AF_SPEC/AF_INET/IFLA_INET_CONF.

    The kernel reads IFLA_INET_CONF as nested attributes whose type is the IPV4_DEVCONF_* index.  This needs
    CAP_NET_ADMIN only, not a writable /proc/sys.  A missing device is not an error (as for the sysctl).
    """
    try:
        index = socket.if_nametoindex(dev)
    except OSError:
        return
    conf = _nla(_IFLA_INET_CONF, _nla(_IPV4_DEVCONF[name], struct.pack("=I", value)))
    attrs = _nla(_IFLA_AF_SPEC, _nla(socket.AF_INET, conf))
    ifinfo = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
    body = ifinfo + attrs
    message = struct.pack("=IHHII", 16 + len(body), _RTM_SETLINK, _NLM_F_REQUEST | _NLM_F_ACK, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(_TIMEOUT)
        try:
            sock.send(message)
            reply = sock.recv(65536)
        except OSError as exc:
            raise DataplaneError(f"netlink: setting {name} on {dev} failed: {exc}") from exc
    if len(reply) >= 20 and struct.unpack_from("=H", reply, 4)[0] == _NLMSG_ERROR:
        code = -struct.unpack_from("=i", reply, 16)[0]
        if code == errno.ENODEV:
            return
        if code:
            raise DataplaneError(
                f"netlink: setting {name}={value} on {dev} failed: {errno.errorcode.get(code, code)} "
                f"({os.strerror(code)}). Hint: the plugin needs CAP_NET_ADMIN"
            )
