"""`FakeWireGuard`: the `WireGuard` protocol in memory, for unit tests of the driver and the mesh component.

It behaves as the real one does where callers can tell: keys are written to files (mode 0600, atomically) and
read back from them, every method checks what the real one checks (key shapes, a unique tunnel address per peer,
an existing key file and interface), and `available_backend = None` makes backend() and a create fail with
NO_WIREGUARD.  Nothing it returns or records holds a private key: the key stays in its file, and the public key
is derived from it (a hash standing in for X25519).

    fake = FakeWireGuard()                    # wireguard-go available; FakeWireGuard(BACKEND_KERNEL) ...
    fake.interfaces["vxlanpy-wg"].peers       # what sync_peers left, by public key
    fake.fail["sync_peers"] = DataplaneError("...")   # every call of that method raises it until removed
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..encryption_base import BACKEND_USERSPACE, NO_WIREGUARD, WireGuardPeer, WireGuardState
from ..errors import DataplaneError
from ..models import IPAddress
from .wireguard_config import checked_interface, checked_listen_port, checked_peers, is_key


@dataclass
class FakeInterface:
    """One interface as the fake holds it.  `key_file` is the path of its private key, never the key."""

    name: str
    backend: str
    key_file: Path
    public_key: str
    listen_port: int
    address: IPAddress
    prefix_len: int
    mtu: int
    up: bool = True
    keepalive: int = 0
    peers: dict[str, WireGuardPeer] = field(default_factory=dict)
    handshakes: dict[str, float] = field(default_factory=dict)


class FakeWireGuard:
    def __init__(self, available_backend: str | None = BACKEND_USERSPACE) -> None:
        self.available_backend = available_backend  # None: neither backend, as on a host without WireGuard
        self.interfaces: dict[str, FakeInterface] = {}
        self.fail: dict[str, Exception] = {}  # method name -> what every call of it raises
        self.calls: list[tuple[str, str]] = []  # (method, interface or key file), in order
        self.keys_generated = 0

    def _enter(self, method: str, subject: str) -> None:
        self.calls.append((method, subject))
        failure = self.fail.get(method)
        if failure is not None:
            raise failure

    def _interface(self, name: str) -> FakeInterface:
        interface = self.interfaces.get(checked_interface(name))
        if interface is None:
            raise DataplaneError(
                f"cannot configure {name}: wg says: Unable to access interface: No such device; restart the plugin "
                "to recreate it"
            )
        return interface

    # -- the WireGuard protocol -------------------------------------------------------------------------

    def backend(self) -> str:
        self._enter("backend", "")
        if self.available_backend is None:
            raise DataplaneError(NO_WIREGUARD)
        return self.available_backend

    def generate_key(self, path: Path) -> str:
        path = Path(path)
        self._enter("generate_key", str(path))
        temporary = path.with_name(f".{path.name}.new")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            raise DataplaneError(f"cannot write a WireGuard key in {path.parent}: {error.strerror}") from error
        with os.fdopen(fd, "w") as file:
            file.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        os.replace(temporary, path)
        self.keys_generated += 1
        return self.public_key(path)

    def public_key(self, path: Path) -> str:
        self._enter("public_key", str(path))
        try:
            private = Path(path).read_text().strip()
        except OSError as error:
            raise DataplaneError(f"cannot read the WireGuard key {path}: {error.strerror}") from error
        if not is_key(private):
            raise DataplaneError(f"cannot derive a WireGuard public key: {path} holds no WireGuard key")
        return fake_public_key(private)

    def ensure_interface(
        self, name: str, private_key: Path, listen_port: int, address: IPAddress, prefix_len: int, mtu: int
    ) -> str:
        self._enter("ensure_interface", name)
        name = checked_interface(name)
        checked_listen_port(listen_port)
        public = self.public_key(private_key)
        interface = self.interfaces.get(name)
        if interface is None:
            backend = self.backend()
            interface = FakeInterface(name, backend, Path(private_key), public, listen_port, address, prefix_len, mtu)
            self.interfaces[name] = interface
        else:
            interface.key_file, interface.public_key = Path(private_key), public
            interface.listen_port, interface.address, interface.prefix_len = listen_port, address, prefix_len
            interface.mtu, interface.up = mtu, True
        return interface.backend

    def set_private_key(self, name: str, private_key: Path) -> None:
        self._enter("set_private_key", name)
        interface = self._interface(name)
        interface.public_key = self.public_key(private_key)
        interface.key_file = Path(private_key)
        interface.handshakes = dict.fromkeys(interface.peers, 0.0)  # a new key means new sessions

    def sync_peers(self, name: str, peers: list[WireGuardPeer], keepalive: int = 25) -> None:
        self._enter("sync_peers", name)
        interface = self._interface(name)
        wanted = checked_peers(peers, keepalive)
        interface.handshakes = {
            key: interface.handshakes.get(key, 0.0) if interface.peers.get(key) == peer else 0.0
            for key, peer in wanted.items()
        }
        interface.peers = dict(wanted)
        interface.keepalive = keepalive

    def state(self, name: str) -> WireGuardState | None:
        self._enter("state", name)
        interface = self.interfaces.get(checked_interface(name))
        if interface is None:
            return None
        return WireGuardState(
            interface.backend,
            interface.name,
            interface.public_key,
            interface.listen_port,
            dict(interface.peers),
            dict(interface.handshakes),
        )

    def remove_interface(self, name: str) -> None:
        self._enter("remove_interface", name)
        self.interfaces.pop(checked_interface(name), None)

    # -- for tests --------------------------------------------------------------------------------------

    def handshake(self, name: str, public_key: str, when: float | None = None) -> None:
        """Record a handshake with peer `public_key`, as if its host answered (now, or at `when`)."""
        interface = self._interface(name)
        if public_key not in interface.peers:
            raise KeyError(f"{public_key} is not a peer of {name}")
        interface.handshakes[public_key] = time.time() if when is None else when


def fake_public_key(private_key: str) -> str:
    """A stand-in for X25519: a well-formed key, the same for the same private key, revealing nothing of it."""
    digest = bytearray(hashlib.sha256(b"vxlanpy fake wireguard public key\0" + private_key.encode()).digest())
    digest[0] &= 248  # clamped as a Curve25519 key, for looks only
    return base64.b64encode(bytes(digest)).decode()
