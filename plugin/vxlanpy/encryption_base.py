"""Encrypted networks (`-o encrypted`): the interfaces between the driver, the WireGuard dataplane and the
component that keeps this host's WireGuard interface in step with the cluster.

An encrypted network's VXLAN device sends to the other hosts' *tunnel addresses* instead of their underlay
addresses.  A tunnel address is unique in the cluster (allocated through etcd) and lives on this host's one
WireGuard interface; WireGuard carries it to the peer's underlay address and port, encrypted.  Everything else
(static FDB and neighbour entries, the VTEP allow-list, reconciliation) works as for plain networks: the VTEP an
encrypted network publishes is simply its host's tunnel address.

    driver ──> Encryption (encryption.py: etcd records, peers watch, rotation) ──> WireGuard (dataplane/wireguard.py)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .models import IPAddress

WG_OVERHEAD_V4 = 60  # outer IPv4 20 + UDP 8 + WireGuard's header 16 + its tag 16
WG_OVERHEAD_V6 = 80  # the same with an outer IPv6 header (40)
DEFAULT_WG_PORT = 51820
DEFAULT_WG_INTERFACE = "vxlanpy-wg"
DEFAULT_WG_SUBNET = "10.255.0.0/16"  # tunnel addresses, one per host (VXLANPY_WG_SUBNET)
# Encrypted networks' VXLAN runs on its own UDP port, inside the tunnel only: the host firewall drops that port
# unless it arrives on the WireGuard interface, so a frame crafted on the underlay never reaches such a network's
# bridge (a VXLAN socket is shared by every device on its port and finds the device by VNI alone).
ENCRYPTED_VXLAN_PORT = 4790

BACKEND_KERNEL = "kernel"
BACKEND_USERSPACE = "wireguard-go"
NO_WIREGUARD = (
    "encrypted networks need WireGuard, and this host has neither the kernel module nor wireguard-go: install "
    "wireguard-tools (the `wg` command) and either use a kernel with WireGuard (modprobe wireguard; every current "
    "distribution kernel has it) or install wireguard-go (apt-get install wireguard-tools wireguard-go)"
)


def wg_overhead(underlay_address: IPAddress | None) -> int:
    """WireGuard's bytes on top of VXLAN's, by the underlay's family (IPv4 when unknown)."""
    return WG_OVERHEAD_V6 if underlay_address is not None and underlay_address.version == 6 else WG_OVERHEAD_V4


@dataclass(frozen=True)
class WireGuardPeer:
    """Another host, as this host's WireGuard interface knows it."""

    public_key: str  # base64, 44 characters
    endpoint_address: IPAddress  # the peer's underlay address
    endpoint_port: int
    tunnel: IPAddress  # its tunnel address: the peer's allowed-ips (/32 or /128)


@dataclass(frozen=True)
class WireGuardState:
    """What the kernel (or wireguard-go) holds now for the interface: what doctor shows and tests read.
    Never the private key."""

    backend: str  # BACKEND_KERNEL or BACKEND_USERSPACE
    interface: str
    public_key: str
    listen_port: int
    peers: dict[str, WireGuardPeer] = field(default_factory=dict)  # by public key
    handshakes: dict[str, float] = field(default_factory=dict)  # public key -> latest handshake (epoch s, 0: never)


class WireGuard(Protocol):
    """This host's one WireGuard interface, kernel or wireguard-go behind one code path (`wg` drives both).
    Every method is idempotent; failures raise DataplaneError with a message that says what to do."""

    def backend(self) -> str:
        """BACKEND_KERNEL when the kernel has WireGuard, else BACKEND_USERSPACE when wireguard-go is installed;
        DataplaneError(NO_WIREGUARD) when neither (or when `wg` is missing)."""
        ...

    def generate_key(self, path: Path) -> str:
        """A new private key written to `path` (mode 0600, atomically: a crash leaves the old key or the new
        one); returns its public key.  The private key never leaves the file: not in argv, logs or errors."""
        ...

    def public_key(self, path: Path) -> str:
        """The public key of the private key in `path`."""
        ...

    def ensure_interface(
        self, name: str, private_key: Path, listen_port: int, address: IPAddress, prefix_len: int, mtu: int
    ) -> str:
        """The interface exists (created with the backend's means), holds this key and port, the address
        `address/prefix_len` (a route to the tunnel subnet through it) and `mtu`, and is up; returns the backend."""
        ...

    def set_private_key(self, name: str, private_key: Path) -> None:
        """Switch the interface to the key in `private_key` (rotation)."""
        ...

    def sync_peers(self, name: str, peers: list[WireGuardPeer], keepalive: int = 25) -> None:
        """Exactly these peers: others removed, changed ones corrected.  A peer is configured with a persistent
        keepalive, so a newly added peer (a host that joined, or one with a rotated key) gets a handshake at once."""
        ...

    def state(self, name: str) -> WireGuardState | None:
        """The interface as it is now, None when it does not exist."""
        ...

    def remove_interface(self, name: str) -> None:
        """Delete the interface (and stop its wireguard-go); a no-op when absent."""
        ...


@dataclass(frozen=True)
class Tunnel:
    """This host's end of the encrypted mesh, as an encrypted network's VXLAN device uses it."""

    interface: str  # the WireGuard interface: the VXLAN device's dev
    address: IPAddress  # this host's tunnel address: the VXLAN device's local, the VTEP it publishes
    port: int = ENCRYPTED_VXLAN_PORT  # the inner VXLAN port (see ENCRYPTED_VXLAN_PORT)


class Encryption(Protocol):
    """This host's WireGuard interface, kept in step with the cluster (encryption.WireGuardMesh).

    The driver calls tunnel() while validating a create (no kernel change), ensure() after the network's row is
    written and before its devices are built, and release_if_unused() after an encrypted network is deleted."""

    def tunnel(self) -> Tunnel:
        """This host's tunnel address (allocated through etcd once, then kept) and interface name."""
        ...

    def ensure(self) -> None:
        """The WireGuard interface up, with this host's key, tunnel address and port, and every other host that
        publishes a WireGuard record as a peer; this host's record published (public key, tunnel address,
        endpoint) under its lease.  DataplaneError(NO_WIREGUARD) when the host has no backend."""
        ...

    def release_if_unused(self, in_use: Callable[[], bool]) -> None:
        """When `in_use()` (asked under the component's lock) says no encrypted network is left on this host:
        unpublish this host's record and remove the interface.  The tunnel address stays allocated."""
        ...

    def rotate_key(self) -> dict[str, Any]:
        """A new keypair: switched locally, then published; the other hosts replace the peer when their watch
        sees it.  Returns {"public_key": new, "previous": old} (public keys only)."""
        ...

    def status(self) -> dict[str, Any]:
        """For doctor and `--json`: backend, interface, tunnel address, public key, listen port, peers (with
        latest handshakes), peers expected from etcd.  Never the private key."""
        ...
