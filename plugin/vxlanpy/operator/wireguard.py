"""The WireGuard mesh of encrypted networks as the operator sees it: its status (for `vxlanpy doctor`) and key
rotation (`vxlanpy rotate-key`).  Public keys only: the private key never leaves the state dir's file."""

from __future__ import annotations

from ..errors import Conflict
from ..models import Network
from .context import Body, Concern

SINGLE_HOST = (
    "this plugin keeps its state in a single-host (SQLite) store: encrypted networks, and the WireGuard keys "
    "rotate-key replaces, need the etcd store (VXLANPY_STORE=etcd://...)"
)
NOT_IN_USE = (
    "no encrypted network on this host, so no WireGuard key is in use: there is nothing to rotate "
    "(the key is made when the first network created with -o encrypted needs it)"
)


def is_encrypted(network: Network) -> bool:
    return network.config.encrypted


class Keys(Concern):
    """The mesh's status and key rotation."""

    def _encrypted_networks(self) -> list[Network]:
        return [network for network in self.shared.store.list_networks() if is_encrypted(network)]

    def wireguard(self) -> Body:
        """The mesh's status (encryption_base.Encryption.status), with this host's encrypted networks."""
        networks = [
            {"id": network.network_id, "vni": network.vni, "mtu": network.config.mtu}
            for network in self._encrypted_networks()
        ]
        encryption = self.shared.encryption
        if encryption is None:
            return {"multi_host": False, "in_use": False, "networks": networks}
        return {"multi_host": True, "in_use": bool(networks), "networks": networks, **encryption.status()}

    def rotate_key(self) -> Body:
        """A new keypair for this host's WireGuard interface; the other hosts switch when they see it."""
        encryption = self.shared.encryption
        if encryption is None:
            raise Conflict(SINGLE_HOST)
        if not self._encrypted_networks():
            raise Conflict(NOT_IN_USE)
        with self.shared.lock:
            return encryption.rotate_key()
