"""The plugin's own data model: what a network and an endpoint are, independent of the wire and the kernel.

Everything here is plain, immutable data that the store can persist and the dataplane can realise.
Interface names are derived from checked values only (a VNI, a hex endpoint id), never from user strings.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Prefixes of every kernel object vxlanpy owns.  Reconciliation relies on them together with the link alias.
BRIDGE_PREFIX = "vxbr-"
VXLAN_PREFIX = "vxlan-"
GRETAP_PREFIX = "vxg-"
VETH_HOST_PREFIX = "vxh-"
VETH_CONTAINER_PREFIX = "vxc-"
LINK_ALIAS_PREFIX = "vxlanpy:"

VXLAN_OVERHEAD_V4 = 50
VXLAN_OVERHEAD_V6 = 70
# gretap with a key: outer IP header (20; IPv6 40) + GRE with its key (8) + the inner Ethernet header (14).
GRETAP_OVERHEAD_V4 = 42
GRETAP_OVERHEAD_V6 = 62
IFNAME_MAX = 15

# `-o encap=`: how frames cross between hosts.  vxlan: one VXLAN device per network.  gretap: one keyed gretap
# (ip6gretap) port per peer on the network's bridge, the GRE key carrying the VNI.
ENCAP_VXLAN = "vxlan"
ENCAP_GRETAP = "gretap"
ENCAPS = (ENCAP_VXLAN, ENCAP_GRETAP)

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}

# `-o gateway=`: who is the containers' default gateway.  vxlanpy: the anycast gateway on the network's bridge,
# with vxlanpy's masquerade and DNAT.  docker_gwbridge: Join returns no gateway, so libnetwork adds a second
# interface on Docker's docker_gwbridge (as for overlay networks) and its bridge driver serves egress and -p,
# which then show in `docker port` and `docker ps`.
GATEWAY_VXLANPY = "vxlanpy"
GATEWAY_DOCKER = "docker_gwbridge"
GATEWAY_MODES = (GATEWAY_VXLANPY, GATEWAY_DOCKER)


def bridge_name(vni: int) -> str:
    return f"{BRIDGE_PREFIX}{vni}"


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def gretap_ports(config: NetworkConfig) -> dict[str, IPAddress]:
    """The gretap ports of a network by name, each with its peer: `vxg-<VNI>` for remote=, `vxg-<VNI>-<n>` for
    the n-th of peers=.  Built from the VNI and a position only; options.py refuses a peer list whose names would
    not fit IFNAMSIZ."""
    if config.encap != ENCAP_GRETAP:
        return {}
    if config.remote is not None:
        return {f"{GRETAP_PREFIX}{config.vni}": config.remote}
    return {f"{GRETAP_PREFIX}{config.vni}-{index}": peer for index, peer in enumerate(config.peers)}


def is_gretap_port_of(name: str, vni: int) -> bool:
    """Whether `name` has the shape of a gretap port of VNI `vni` (any position)."""
    base = f"{GRETAP_PREFIX}{vni}"
    return name == base or (name.startswith(f"{base}-") and name[len(base) + 1 :].isdigit())


def veth_names(endpoint_id: str) -> tuple[str, str]:
    """Host and container end names; endpoint ids are validated hex before they get here."""
    short = endpoint_id[:11]
    return f"{VETH_HOST_PREFIX}{short}", f"{VETH_CONTAINER_PREFIX}{short}"


def gateway_mac(vni: int) -> str:
    """The anycast gateway MAC: the same on every host of one VNI, locally administered (02:...)."""
    return f"02:76:78:{(vni >> 16) & 0xFF:02x}:{(vni >> 8) & 0xFF:02x}:{vni & 0xFF:02x}"


def endpoint_mac(address: ipaddress.IPv4Interface | None, endpoint_id: str) -> str:
    """Docker's bridge derives the MAC from the IPv4 address; do the same so MACs stay stable across restarts."""
    if address is not None:
        packed = address.ip.packed
        return "02:42:" + ":".join(f"{byte:02x}" for byte in packed)
    raw = bytes.fromhex(endpoint_id[:10])
    return "02:" + ":".join(f"{byte:02x}" for byte in raw)


@dataclass(frozen=True)
class Subnet:
    """One IPAM pool handed to the network: the pool and the gateway inside it."""

    pool: IPNetwork
    gateway: IPInterface | None

    def to_dict(self) -> dict[str, Any]:
        return {"pool": str(self.pool), "gateway": str(self.gateway) if self.gateway else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subnet:
        gateway = data.get("gateway")
        return cls(
            pool=ipaddress.ip_network(data["pool"]),
            gateway=ipaddress.ip_interface(gateway) if gateway else None,
        )


@dataclass(frozen=True)
class NetworkConfig:
    """The validated, user-chosen VXLAN parameters of a network (the `-o` options)."""

    vni: int
    dstport: int = 4789
    dev: str | None = None
    local: IPAddress | None = None
    ttl: int | None = None
    learning: bool = True
    remote: IPAddress | None = None
    peers: tuple[IPAddress, ...] = ()
    group: IPAddress | None = None
    mtu: int = 1450
    gateway: str = GATEWAY_VXLANPY
    encap: str = ENCAP_VXLAN
    # -o encrypted: VXLAN inside this host's WireGuard tunnel (local = the tunnel address, dev = its interface)
    encrypted: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("local", "remote", "group"):
            data[key] = str(data[key]) if data[key] is not None else None
        data["peers"] = [str(peer) for peer in self.peers]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        def addr(value: str | None) -> IPAddress | None:
            return ipaddress.ip_address(value) if value else None

        return cls(
            vni=int(data["vni"]),
            dstport=int(data["dstport"]),
            dev=data.get("dev"),
            local=addr(data.get("local")),
            ttl=data.get("ttl"),
            learning=bool(data.get("learning", True)),
            remote=addr(data.get("remote")),
            peers=tuple(ipaddress.ip_address(peer) for peer in data.get("peers", ())),
            group=addr(data.get("group")),
            mtu=int(data["mtu"]),
            gateway=str(data.get("gateway") or GATEWAY_VXLANPY),  # rows written before the option existed
            encap=str(data.get("encap") or ENCAP_VXLAN),  # the same
            encrypted=data.get("encrypted") is True,  # the same: rows without it are plain networks
        )


@dataclass(frozen=True)
class Network:
    network_id: str
    config: NetworkConfig
    ipv4: tuple[Subnet, ...] = ()
    ipv6: tuple[Subnet, ...] = ()
    internal: bool = False

    @property
    def vni(self) -> int:
        return self.config.vni

    @property
    def bridge(self) -> str:
        return bridge_name(self.config.vni)

    @property
    def vxlan(self) -> str:
        return vxlan_name(self.config.vni)

    @property
    def gateway_mac(self) -> str:
        return gateway_mac(self.config.vni)

    @property
    def tunnels(self) -> tuple[str, ...]:
        """The links that carry the network to other hosts: its VXLAN device, or its gretap ports."""
        if self.config.encap == ENCAP_GRETAP:
            return tuple(gretap_ports(self.config))
        return (self.vxlan,)

    @property
    def alias(self) -> str:
        return f"{LINK_ALIAS_PREFIX}net:{self.network_id}"

    @property
    def routes_egress(self) -> bool:
        """Whether vxlanpy is the containers' gateway: Join returns it, and vxlanpy masquerades and publishes."""
        return not self.internal and self.config.gateway == GATEWAY_VXLANPY

    @property
    def gateways(self) -> tuple[IPInterface, ...]:
        return tuple(subnet.gateway for subnet in (*self.ipv4, *self.ipv6) if subnet.gateway is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "network_id": self.network_id,
            "config": self.config.to_dict(),
            "ipv4": [subnet.to_dict() for subnet in self.ipv4],
            "ipv6": [subnet.to_dict() for subnet in self.ipv6],
            "internal": self.internal,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Network:
        return cls(
            network_id=data["network_id"],
            config=NetworkConfig.from_dict(data["config"]),
            ipv4=tuple(Subnet.from_dict(item) for item in data.get("ipv4", ())),
            ipv6=tuple(Subnet.from_dict(item) for item in data.get("ipv6", ())),
            internal=bool(data.get("internal", False)),
        )


@dataclass(frozen=True)
class PortMapping:
    """One published port: HOST_IP:HOST_PORT -> container CONTAINER_PORT."""

    proto: str
    container_port: int
    host_port: int
    host_ip: IPAddress | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "container_port": self.container_port,
            "host_port": self.host_port,
            "host_ip": str(self.host_ip) if self.host_ip else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PortMapping:
        host_ip = data.get("host_ip")
        return cls(
            proto=data["proto"],
            container_port=int(data["container_port"]),
            host_port=int(data["host_port"]),
            host_ip=ipaddress.ip_address(host_ip) if host_ip else None,
        )


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    network_id: str
    mac: str
    ipv4: ipaddress.IPv4Interface | None = None
    ipv6: ipaddress.IPv6Interface | None = None
    ports: tuple[PortMapping, ...] = field(default=())
    sandbox_key: str | None = None
    created: float = 0.0  # time.time() at CreateEndpoint: tells a stale, never-joined endpoint from a new one

    @property
    def host_veth(self) -> str:
        return veth_names(self.endpoint_id)[0]

    @property
    def container_veth(self) -> str:
        return veth_names(self.endpoint_id)[1]

    @property
    def alias(self) -> str:
        return f"{LINK_ALIAS_PREFIX}ep:{self.endpoint_id}"

    def with_ports(self, ports: tuple[PortMapping, ...]) -> Endpoint:
        return replace(self, ports=ports)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint_id": self.endpoint_id,
            "network_id": self.network_id,
            "mac": self.mac,
            "ipv4": str(self.ipv4) if self.ipv4 else None,
            "ipv6": str(self.ipv6) if self.ipv6 else None,
            "ports": [port.to_dict() for port in self.ports],
            "sandbox_key": self.sandbox_key,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Endpoint:
        return cls(
            endpoint_id=data["endpoint_id"],
            network_id=data["network_id"],
            mac=data["mac"],
            ipv4=ipaddress.IPv4Interface(data["ipv4"]) if data.get("ipv4") else None,
            ipv6=ipaddress.IPv6Interface(data["ipv6"]) if data.get("ipv6") else None,
            ports=tuple(PortMapping.from_dict(item) for item in data.get("ports", ())),
            sandbox_key=data.get("sandbox_key"),
            created=float(data.get("created", 0.0)),
        )


# A network's id: libnetwork's 64 hex characters, or for a swarm network (a global-scope plugin) swarmkit's 25
# lowercase base-36 characters.  Endpoint ids are always libnetwork's.
NETWORK_ID = re.compile(r"^(?:[0-9a-f]{64}|[0-9a-z]{25})$")
NETWORK_ID_FORM = "64 lowercase hex characters, or 25 lowercase letters and digits for a swarm network"


# Attachments (`vxlanpy attach`) are endpoints whose id is derived from what they attach and the network id, with
# a check so that an attachment is told from one of Docker's random ids (a false positive has a chance of 2^-64).
_ATTACH_HASH_PREFIX = b"vxlanpy-attach\0"
_ATTACH_CHECK_PREFIX = b"vxlanpy-attach-check\0"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def attachment_id(target: str, network_id: str) -> str:
    digest = hashlib.sha256(_ATTACH_HASH_PREFIX + target.encode() + b"\0" + network_id.encode()).hexdigest()[:48]
    return digest + _attachment_check(digest)


def is_attachment_id(endpoint_id: str) -> bool:
    return bool(_HEX64.match(endpoint_id)) and _attachment_check(endpoint_id[:48]) == endpoint_id[48:]


def _attachment_check(digest: str) -> str:
    return hashlib.sha256(_ATTACH_CHECK_PREFIX + digest.encode()).hexdigest()[:16]
