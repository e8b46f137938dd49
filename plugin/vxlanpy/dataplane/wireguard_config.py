"""What `NetlinkWireGuard` (wireguard.py) says to `wg` and reads from it, as pure functions: the checks on every
value that goes into an argv, `wg show NAME dump` parsed (its private key dropped), and the one `wg set` argv that
makes an interface's peers exactly the wanted ones.  FakeWireGuard makes the same checks."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..encryption_base import WireGuardPeer, WireGuardState
from ..errors import DataplaneError
from ..models import IPAddress

# A WireGuard key: 32 bytes in base64, so 43 characters of which the last carries 4 bits, then one "=".
_KEY = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
_KEY_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
_INTERFACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")


def is_key(text: str) -> bool:
    return _KEY.fullmatch(text) is not None


def scrub(text: str) -> str:
    """`text` with every key-shaped string replaced: nothing that could be a private key reaches a message."""
    return _KEY_IN_TEXT.sub("<key>", text)


def checked_key(key: str, what: str = "a WireGuard public key") -> str:
    if not isinstance(key, str) or not is_key(key):
        raise DataplaneError(f"{what} is not a WireGuard key (44 characters of base64); fix the published record")
    return key


def checked_interface(name: str) -> str:
    if not isinstance(name, str) or not _INTERFACE.fullmatch(name) or name in (".", ".."):
        raise DataplaneError(
            f"{name!r} is not a valid interface name (1-15 letters, digits, '_', '.', '-', not starting with '-' "
            "or '.'); set VXLANPY_WG_INTERFACE to one"
        )
    return name


def checked_listen_port(port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise DataplaneError(f"WireGuard listen port {port!r} is not 1-65535; fix VXLANPY_WG_PORT")
    return port


def endpoint_text(address: IPAddress, port: int) -> str:
    """An endpoint as wg takes and prints it: an IPv6 address in brackets."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def host_route(address: IPAddress) -> str:
    return f"{address}/{address.max_prefixlen}"


# -- `wg show NAME dump` ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DumpPeer:
    """One peer line of the dump (its preshared-key field dropped)."""

    public_key: str
    endpoint: tuple[IPAddress, int] | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # epoch seconds, 0: never
    keepalive: int  # 0: off


@dataclass(frozen=True)
class Dump:
    """The interface line of the dump without its private key, and the peers."""

    public_key: str  # "": no key set yet
    listen_port: int
    peers: dict[str, DumpPeer]


def parse_endpoint(text: str) -> tuple[IPAddress, int] | None:
    if text == "(none)":
        return None
    host, _, port = text.rpartition(":")
    address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]").partition("%")[0])
    return address, int(port)


def parse_dump(text: str) -> Dump:
    """Parse `wg show NAME dump`.  The first line is the interface: private key, public key, listen port, fwmark;
    the private key is never bound to a name.  Then one line per peer: public key, preshared key, endpoint,
    allowed ips, latest handshake, rx, tx, persistent keepalive.  An error never quotes the text."""
    lines = text.splitlines()
    if not lines:
        raise DataplaneError("`wg show dump` printed nothing; check that wg and the interface work (`wg show`)")
    fields = lines[0].split("\t")
    if len(fields) != 4:
        raise DataplaneError(f"cannot read `wg show dump`: its interface line has {len(fields)} fields, not 4")
    public_key = fields[1] if is_key(fields[1]) else ""
    try:
        listen_port = int(fields[2])
    except ValueError:
        raise DataplaneError("cannot read `wg show dump`: its listen port is not a number") from None
    del fields  # holds the private key
    peers = {}
    for number, line in enumerate(lines[1:], start=2):
        columns = line.split("\t")
        if len(columns) != 8 or not is_key(columns[0]):
            raise DataplaneError(f"cannot read `wg show dump`: line {number} is not a peer (8 fields, a key first)")
        try:
            peer = DumpPeer(
                public_key=columns[0],
                endpoint=parse_endpoint(columns[2]),
                allowed_ips=tuple(ip for ip in columns[3].split(",") if ip and ip != "(none)"),
                latest_handshake=int(columns[4]),
                keepalive=0 if columns[7] == "off" else int(columns[7]),
            )
        except ValueError:
            raise DataplaneError(f"cannot read `wg show dump`: line {number} has a malformed field") from None
        peers[peer.public_key] = peer
    return Dump(public_key=public_key, listen_port=listen_port, peers=peers)


def state_of(backend: str, interface: str, dump: Dump) -> WireGuardState:
    """The WireGuardState of a dump.  A peer without an endpoint or an allowed IP (not one vxlanpy set up) has no
    WireGuardPeer form and is left out; sync_peers still removes it."""
    peers, handshakes = {}, {}
    for key, peer in dump.peers.items():
        if peer.endpoint is None or not peer.allowed_ips:
            continue
        tunnel = ipaddress.ip_interface(peer.allowed_ips[0]).ip
        peers[key] = WireGuardPeer(key, peer.endpoint[0], peer.endpoint[1], tunnel)
        handshakes[key] = float(peer.latest_handshake)
    return WireGuardState(backend, interface, dump.public_key, dump.listen_port, peers, handshakes)


# -- `wg set NAME peer ...` ---------------------------------------------------------------------------------


def peer_args(peer: WireGuardPeer, keepalive: int) -> list[str]:
    return [
        "peer",
        peer.public_key,
        "endpoint",
        endpoint_text(peer.endpoint_address, peer.endpoint_port),
        "allowed-ips",
        host_route(peer.tunnel),
        "persistent-keepalive",
        str(keepalive),
    ]


def is_current(present: DumpPeer, wanted: WireGuardPeer, keepalive: int) -> bool:
    return (
        present.endpoint == (wanted.endpoint_address, wanted.endpoint_port)
        and present.allowed_ips == (host_route(wanted.tunnel),)
        and present.keepalive == keepalive
    )


def checked_peers(peers: list[WireGuardPeer], keepalive: int) -> dict[str, WireGuardPeer]:
    """The peers by key, after checking what goes into argv: a bad value is refused, never passed on."""
    if not isinstance(keepalive, int) or not 0 <= keepalive <= 65535:
        raise DataplaneError(f"persistent keepalive {keepalive!r} is not 0-65535 seconds")
    wanted: dict[str, WireGuardPeer] = {}
    tunnels: dict[IPAddress, str] = {}
    for peer in peers:
        checked_key(peer.public_key)
        if not isinstance(peer.endpoint_port, int) or not 1 <= peer.endpoint_port <= 65535:
            raise DataplaneError(f"peer {peer.public_key} has endpoint port {peer.endpoint_port!r}, not 1-65535")
        try:
            ipaddress.ip_address(peer.endpoint_address)  # a str would be passed on as it is
            ipaddress.ip_address(peer.tunnel)
        except ValueError:
            raise DataplaneError(f"peer {peer.public_key} has an endpoint or tunnel that is no IP address") from None
        other = tunnels.setdefault(peer.tunnel, peer.public_key)
        if other != peer.public_key:
            raise DataplaneError(
                f"peers {other} and {peer.public_key} both claim tunnel address {peer.tunnel}; tunnel addresses "
                "must be unique in the cluster: remove the stale host (`vxlanpy node rm`)"
            )
        wanted[peer.public_key] = peer
    return wanted


def sync_args(interface: str, present: Dump, peers: list[WireGuardPeer], keepalive: int) -> list[str] | None:
    """The one `wg set` argv that turns `present` into exactly `peers`, None when nothing differs.  Removals
    come first: an allowed IP belongs to one peer of an interface, so a peer re-added under a new key (rotation)
    must not meet its old self still holding the tunnel address."""
    wanted = checked_peers(peers, keepalive)
    args: list[str] = []
    for key in sorted(present.peers.keys() - wanted.keys()):
        args += ["peer", key, "remove"]
    for key, peer in sorted(wanted.items()):
        current = present.peers.get(key)
        if current is None or not is_current(current, peer, keepalive):
            args += peer_args(peer, keepalive)
    return ["set", checked_interface(interface), *args] if args else None


def hint(stderr: str) -> str:
    if "Operation not permitted" in stderr or "Permission denied" in stderr:
        return "run the plugin as root (it needs CAP_NET_ADMIN)"
    if "Address already in use" in stderr:
        return "another program uses this UDP port: free it or set VXLANPY_WG_PORT to another port"
    if "No such device" in stderr or "Unable to access interface" in stderr:
        return "the WireGuard interface is gone (or its wireguard-go stopped): restart the plugin to recreate it"
    if "Protocol not supported" in stderr:
        return "the kernel has no WireGuard: load it (modprobe wireguard) or install wireguard-go"
    return "check the interface with `wg show` and the plugin's log"
