"""Validation of the `-o KEY=VALUE` network options, in iproute2's vocabulary.

Everything a user can get wrong is refused here, before any kernel change, with a message that names the
option and says what would be accepted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .dataplane.base import Underlay
from .digits import ascii_int
from .encryption_base import ENCRYPTED_VXLAN_PORT, Tunnel, wg_overhead
from .errors import Conflict, InvalidOption
from .models import (
    ENCAP_GRETAP,
    ENCAP_VXLAN,
    ENCAPS,
    GATEWAY_DOCKER,
    GATEWAY_MODES,
    GATEWAY_VXLANPY,
    GRETAP_OVERHEAD_V4,
    GRETAP_OVERHEAD_V6,
    IFNAME_MAX,
    VXLAN_OVERHEAD_V4,
    VXLAN_OVERHEAD_V6,
    IPAddress,
    IPNetwork,
    Network,
    NetworkConfig,
    Subnet,
    gretap_ports,
)

DOCKER_MTU_OPTION = "com.docker.network.driver.mtu"
VALID_OPTIONS = (
    "vni",
    "dstport",
    "dev",
    "local",
    "ttl",
    "learning",
    "remote",
    "peers",
    "group",
    "mtu",
    DOCKER_MTU_OPTION,
    "gateway",
    "encap",
    "encrypted",
)
PEER_MODES = ("remote", "peers", "group")
NOT_FOR_GRETAP = ("group", "dstport", "learning")  # VXLAN's own: multicast, its UDP port, its FDB learning
MAX_VNI = 16777215
MIN_MTU = 576  # the smallest datagram every IPv4 host must accept
INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
ENCRYPTION_NEEDS_ETCD = (
    "encryption needs the etcd store (VXLANPY_STORE=etcd://...): the hosts' WireGuard keys are per host and "
    "rotate, and are carried through etcd; a network option cannot carry them"
)
# What an encrypted network's VXLAN device takes from this host's WireGuard tunnel instead of the options.
NOT_FOR_ENCRYPTED = ("local", "dev")


@dataclass(frozen=True)
class RequestedNetwork:
    """What the user asked for: the VNI when given (None: allocate one) and the rest of the configuration."""

    vni: int | None
    config_for: Callable[[int], NetworkConfig]
    underlay: Underlay | None = None  # the interface VXLAN leaves by (see check_subnets_clear_of_underlay)
    gateway: str = GATEWAY_VXLANPY  # -o gateway= (see check_gateway_mode)
    encrypted: bool = False  # -o encrypted: the driver gives config_for's result the tunnel's local and dev


def parse_network_options(
    raw: Mapping[str, object],
    underlay_of: Callable[[str | None], Underlay],
    default_dev: str | None = None,
    multi_host: bool = False,
) -> RequestedNetwork:
    """Validate the options; `underlay_of(dev)` describes the underlay interface (dev None = default route).

    In multi-host mode (an etcd store) peers come from the store, so the static peer modes are refused and
    learning is off unless asked for: the FDB is programmed statically."""
    options = _as_strings(raw)
    unknown = sorted(set(options) - set(VALID_OPTIONS))
    if unknown:
        raise InvalidOption(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"valid options are: {', '.join(VALID_OPTIONS)}"
        )

    vni = _int_option(options, "vni", 1, MAX_VNI)
    dstport = _int_option(options, "dstport", 1, 65535)
    ttl = _int_option(options, "ttl", 1, 255)
    learning = _bool_option(options, "learning")
    remote = _address_option(options, "remote")
    group = _address_option(options, "group")
    peers = _peers_option(options)
    local = _address_option(options, "local")
    gateway = _gateway_option(options)
    encrypted = _encrypted_option(options, multi_host)
    encap = _encap_option(options, multi_host)

    modes = [mode for mode in PEER_MODES if mode in options]
    if multi_host and modes:
        raise InvalidOption(
            f"option {modes[0]} does not apply with an etcd store: vxlanpy finds the peers of each VNI in etcd; "
            f"remove -o {modes[0]}"
        )
    if len(modes) > 1:
        raise InvalidOption(
            f"options {' and '.join(modes)} cannot be combined; choose one peer mode: remote=IP (point to point), "
            "peers=IP,IP,... (static list) or group=MULTICAST_IP"
        )
    if remote is not None and (remote.is_multicast or remote.is_unspecified):
        raise InvalidOption(f"remote={remote} must be a unicast address; for multicast use group={remote}")
    if group is not None and not group.is_multicast:
        raise InvalidOption(f"group={group} is not a multicast address; use e.g. group=239.1.1.1, or remote={group}")
    for peer in peers:
        if peer.is_multicast or peer.is_unspecified:
            raise InvalidOption(f"peers: {peer} must be a unicast address")

    dev = options.get("dev") or default_dev
    if dev is not None and not INTERFACE_NAME.match(dev):
        raise InvalidOption(f"dev={dev!r} is not a valid interface name (1-15 letters, digits, '_', '.', '-')")
    underlay = underlay_of(dev)

    families = {address.version for address in (remote, group, local, *peers) if address is not None}
    if len(families) > 1:
        raise InvalidOption("remote, peers, group and local must all be IPv4 or all be IPv6, not a mix")
    family = families.pop() if families else 4
    if local is None:
        local = next((address for address in underlay.addresses if address.version == family), None)
        if local is None and (remote or group or peers):
            raise InvalidOption(
                f"underlay interface {underlay.dev} has no IPv{family} address to send VXLAN from; "
                "set -o local=ADDRESS or -o dev=INTERFACE"
            )
    elif local not in underlay.addresses:
        raise InvalidOption(
            f"local={local} is not an address of the underlay interface {underlay.dev}; "
            f"use one of: {', '.join(map(str, underlay.addresses)) or 'none'}, or set -o dev=INTERFACE"
        )

    if encrypted:
        # VXLAN to the (IPv4) tunnel address, inside WireGuard over the underlay's own family.
        outer = local or next(iter(sorted(underlay.addresses, key=lambda address: address.version)), None)
        overhead = VXLAN_OVERHEAD_V4 + wg_overhead(outer)
    elif encap == ENCAP_GRETAP:
        overhead = GRETAP_OVERHEAD_V6 if family == 6 else GRETAP_OVERHEAD_V4
    else:
        overhead = VXLAN_OVERHEAD_V6 if family == 6 else VXLAN_OVERHEAD_V4
    mtu = _mtu_option(options, underlay.mtu - overhead, underlay, overhead, encap, encrypted)
    chosen_local = local

    def config_for(chosen_vni: int) -> NetworkConfig:
        return NetworkConfig(
            vni=chosen_vni,
            dstport=dstport if dstport is not None else ENCRYPTED_VXLAN_PORT if encrypted else 4789,
            dev=underlay.dev,
            local=chosen_local,
            ttl=ttl,
            learning=(not multi_host) if learning is None else learning,
            remote=remote,
            peers=peers,
            group=group,
            mtu=mtu,
            gateway=gateway,
            encap=encap,
            encrypted=encrypted,
        )

    if encap == ENCAP_GRETAP:
        _check_gretap_names(config_for(vni or MAX_VNI))
    return RequestedNetwork(vni=vni, config_for=config_for, underlay=underlay, gateway=gateway, encrypted=encrypted)


def check_gateway_mode(gateway: str, internal: bool, has_ipv4: bool) -> None:
    """gateway=docker_gwbridge works through libnetwork's docker_gwbridge, which it adds only to a container of
    a non-internal network whose Join returns no gateway, and which is IPv4: refuse what it could not serve."""
    if gateway != GATEWAY_DOCKER:
        return
    if internal:
        raise InvalidOption(
            "gateway=docker_gwbridge does not apply to an --internal network: it has no way out for Docker to "
            "serve; drop -o gateway=docker_gwbridge, or --internal"
        )
    if not has_ipv4:
        raise InvalidOption(
            "gateway=docker_gwbridge needs an IPv4 subnet: docker_gwbridge serves IPv4 egress and published ports "
            "only; give the network an IPv4 subnet (drop --ipv4=false), or drop -o gateway=docker_gwbridge"
        )


def check_port_kind(config: NetworkConfig, networks: Iterable[Network]) -> None:
    """One UDP port carries either plain or encrypted VXLAN on a host: the firewall lets an encrypted
    network's port in only through WireGuard, which would cut a plain network on it off."""
    if config.encap != ENCAP_VXLAN:
        return
    for other in networks:
        if other.config.encap != ENCAP_VXLAN or other.config.dstport != config.dstport:
            continue
        if other.config.encrypted != config.encrypted:
            this, theirs = ("encrypted", "plain") if config.encrypted else ("plain", "encrypted")
            raise Conflict(
                f"dstport {config.dstport} is used by the {theirs} network {other.network_id[:12]} (vni "
                f"{other.vni}) on this host, and a port carries either plain or encrypted VXLAN (the firewall "
                f"admits an encrypted network's port through WireGuard only); give this {this} network "
                "another -o dstport"
            )


def check_subnets_clear_of_tunnel(tunnel: Tunnel, pools: Iterable[IPNetwork]) -> None:
    """An encrypted network's subnet must not hold this host's tunnel address: the bridge's connected route
    would take the VXLAN traffic meant for the WireGuard interface."""
    for pool in pools:
        if tunnel.address in pool:
            raise InvalidOption(
                f"subnet {pool} contains this host's WireGuard tunnel address {tunnel.address} ({tunnel.interface}); "
                "choose a --subnet outside the tunnel subnet (VXLANPY_WG_SUBNET, 10.255.0.0/16 by default)"
            )


def check_subnets_clear_of_underlay(underlay: Underlay, pools: Iterable[IPNetwork]) -> None:
    """Refuse an overlay subnet holding the underlay's own address or its default gateway: the network's bridge
    would get a connected route over them, and the host would send its own (VXLAN) traffic into the bridge."""
    for pool in pools:
        own = [address for address in underlay.addresses if address in pool]
        gateways = [gateway for gateway in underlay.gateways if gateway in pool]
        if not own and not gateways:
            continue
        what = []
        if own:
            what.append(f"{underlay.dev}'s address{'es' if len(own) > 1 else ''} {', '.join(map(str, own))}")
        if gateways:
            plural = "s" if len(gateways) > 1 else ""
            what.append(f"the default gateway{plural} {', '.join(map(str, gateways))} via {underlay.dev}")
        raise InvalidOption(
            f"subnet {pool} overlaps the underlay interface {underlay.dev}: it contains {' and '.join(what)}; "
            "the host would route its own traffic into the network's bridge. Choose a --subnet that does not "
            "contain them, or send VXLAN through another interface with -o dev=INTERFACE"
        )


def _as_strings(raw: Mapping[str, object]) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidOption(f"option {key} must be a string, got {type(value).__name__}")
        options[key] = str(value).strip()
    return options


def _int_option(options: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = options.get(name)
    if raw is None:
        return None
    value = ascii_int(raw, low, high)
    if value is None:
        raise InvalidOption(f"{name}={_shown(raw)} is not valid; use a whole number from {low} to {high}")
    return value


def _shown(raw: str) -> str:
    """A user's value in a message: quoted, and cut short when it is long."""
    return repr(raw) if len(raw) <= 64 else f"{raw[:32]!r}... ({len(raw)} characters)"


def _bool_option(options: Mapping[str, str], name: str) -> bool | None:
    raw = options.get(name)
    if raw is None:
        return None
    if raw.lower() in TRUE_WORDS:
        return True
    if raw.lower() in FALSE_WORDS:
        return False
    raise InvalidOption(f"{name}={raw!r} is not valid; use true or false")


def _choice_option(options: Mapping[str, str], name: str, choices: tuple[str, ...], choose: str) -> str:
    """One of `choices` (the first when the option is absent or empty); `choose` says what each means."""
    raw = options.get(name)
    if raw is None or raw == "":
        return choices[0]
    if raw not in choices:
        raise InvalidOption(f"{name}={_shown(raw)} is not valid; {choose}")
    return raw


def _gateway_option(options: Mapping[str, str]) -> str:
    return _choice_option(
        options,
        "gateway",
        GATEWAY_MODES,
        "use gateway=vxlanpy (the default: vxlanpy's own gateway, egress and published ports) or "
        "gateway=docker_gwbridge (Docker's docker_gwbridge serves egress and -p, so `docker port` and `docker ps` "
        "show the ports; a second interface per container)",
    )


def _encrypted_option(options: Mapping[str, str], multi_host: bool) -> bool:
    """-o encrypted: Docker sends a bare `-o encrypted` as an empty value, which means true (as for overlay)."""
    if options.get("encrypted") == "":
        encrypted = True
    else:
        encrypted = bool(_bool_option(options, "encrypted"))
    if not encrypted:
        return False
    modes = [mode for mode in PEER_MODES if mode in options]
    if modes:
        raise InvalidOption(
            f"option {modes[0]} does not apply to an encrypted network: encrypted networks find their peers and "
            f"their WireGuard keys through etcd; remove -o {modes[0]} and use the etcd store (VXLANPY_STORE=etcd://...)"
        )
    if options.get("encap") == ENCAP_GRETAP:
        raise InvalidOption(
            "encap=gretap cannot be encrypted: encrypted networks carry VXLAN inside WireGuard; drop -o encap=gretap"
        )
    if not multi_host:
        raise InvalidOption(f"-o encrypted is not available here: {ENCRYPTION_NEEDS_ETCD}")
    for name in NOT_FOR_ENCRYPTED:
        if name in options:
            raise InvalidOption(
                f"option {name} does not apply to an encrypted network: its VXLAN device sends from this host's "
                f"WireGuard tunnel address through the WireGuard interface; remove -o {name}"
            )
    return True


def _encap_option(options: Mapping[str, str], multi_host: bool) -> str:
    raw = _choice_option(
        options,
        "encap",
        ENCAPS,
        "use encap=vxlan (the default) or encap=gretap (one GRE port per peer, with remote= or peers=)",
    )
    if raw != ENCAP_GRETAP:
        return raw
    if multi_host:
        raise InvalidOption(
            "encap=gretap needs remote= or peers=; the etcd store's automatic peers use VXLAN: drop -o encap=gretap"
        )
    for name in NOT_FOR_GRETAP:
        if name in options:
            raise InvalidOption(f"option {name} does not apply to encap=gretap (it is VXLAN's); remove -o {name}")
    if "remote" not in options and "peers" not in options:
        raise InvalidOption(
            "encap=gretap needs remote=IP (point to point) or peers=IP,IP,... (a static list): GRE has no "
            "multicast group and learns no peers"
        )
    return raw


def _check_gretap_names(config: NetworkConfig) -> None:
    """A gretap port's name holds the VNI and the peer's position, within the kernel's 15 characters."""
    longest = max(gretap_ports(config), key=len)
    if len(longest) > IFNAME_MAX:
        most = 10 ** (IFNAME_MAX - len(f"vxg-{config.vni}-"))
        raise InvalidOption(
            f"peers= lists {len(config.peers)} addresses; with encap=gretap a network can have at most {most} peers "
            f"(its ports are named vxg-VNI-N, at most {IFNAME_MAX} characters)"
        )


def _parse_address(name: str, raw: str) -> IPAddress:
    try:
        return ipaddress.ip_address(raw)
    except ValueError:
        raise InvalidOption(f"{name}={raw!r} is not an IP address") from None


def _address_option(options: Mapping[str, str], name: str) -> IPAddress | None:
    raw = options.get(name)
    return None if raw is None else _parse_address(name, raw)


def _peers_option(options: Mapping[str, str]) -> tuple[IPAddress, ...]:
    raw = options.get("peers")
    if raw is None:
        return ()
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        raise InvalidOption("peers is empty; use peers=IP,IP,...")
    peers = tuple(_parse_address("peers", item) for item in items)
    if len(set(peers)) != len(peers):
        raise InvalidOption(f"peers={raw!r} lists an address twice")
    return peers


def _mtu_option(
    options: Mapping[str, str], default: int, underlay: Underlay, overhead: int, encap: str, encrypted: bool = False
) -> int:
    values = {name: options[name] for name in ("mtu", DOCKER_MTU_OPTION) if name in options}
    if len(set(values.values())) > 1:
        raise InvalidOption(f"mtu and {DOCKER_MTU_OPTION} disagree ({', '.join(values.values())}); give only one")
    if not values:
        return default
    name, raw = next(iter(values.items()))
    mtu = ascii_int(raw, 0, 1 << 32)
    if mtu is None:
        raise InvalidOption(f"{name}={_shown(raw)} is not valid; use a whole number from {MIN_MTU} to {default}")
    if mtu < MIN_MTU:
        raise InvalidOption(f"{name}={mtu} is too small; use at least {MIN_MTU}")
    if mtu > default:
        if encrypted:
            wireguard = overhead - VXLAN_OVERHEAD_V4
            adds = f"VXLAN adds {VXLAN_OVERHEAD_V4} bytes and WireGuard {wireguard} ({overhead} in all)"
        else:
            adds = f"{'GRE' if encap == ENCAP_GRETAP else 'VXLAN'} adds {overhead} bytes"
        raise InvalidOption(
            f"{name}={mtu} is too big for the underlay {underlay.dev} (MTU {underlay.mtu}) "
            f"once {adds}; use at most {default}, or raise the underlay MTU"
        )
    return mtu


def no_subnet_message(ipv4_enabled: bool | None, ipv6_enabled: bool | None) -> str:
    if ipv4_enabled is False and not ipv6_enabled:
        return (
            "the network would have no addresses: --ipv4=false turns IPv4 off and IPv6 is off too; "
            "add --ipv6 (and --subnet with an IPv6 prefix if Docker has no default IPv6 pool), or drop --ipv4=false"
        )
    return "Docker gave the network neither an IPv4 nor an IPv6 subnet; create it with --subnet"


def refuse_several_subnets(ipv4: tuple[Subnet, ...], ipv6: tuple[Subnet, ...]) -> None:
    """One subnet per IP family, as Docker's bridge driver ("bridge driver doesn't support multiple subnets"):
    Join gives a container one gateway per family, so one on a second subnet would get the first subnet's
    gateway, which it has no route to, and could not start."""
    for family, subnets in (("IPv4", ipv4), ("IPv6", ipv6)):
        if len(subnets) > 1:
            pools = ", ".join(str(subnet.pool) for subnet in subnets)
            raise InvalidOption(
                f"a vxlanpy network takes one {family} subnet, not {len(subnets)} ({pools}); as with Docker's "
                "bridge driver, create one network per subnet (containers can join several networks), or give "
                "one larger --subnet and choose addresses with --ip-range"
            )


def check_in_subnets(
    what: str, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None, subnets: tuple[Subnet, ...]
) -> None:
    if address is None or not subnets:
        return
    if not any(address.ip in subnet.pool for subnet in subnets):
        pools = ", ".join(str(subnet.pool) for subnet in subnets)
        raise InvalidOption(f"{what} {address} is outside the network's subnets ({pools})")
