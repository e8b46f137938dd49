"""The gateway guard: the frames a vxlanpy bridge sends from its gateway MAC never leave through a VXLAN port.

The bridge itself sends ARP, IPv6 RS and MLD from the gateway MAC, which every host shares; VXLANPY-OUT (ebtables
filter OUTPUT) drops those frames at the VXLAN ports so no host hears its own MAC from another."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from ..errors import DataplaneError
from ..models import gateway_mac
from .firewall_rules import command_error

BRIDGE_OUT_CHAIN = "VXLANPY-OUT"
_EBTABLES = ("ebtables", "ebtables-nft")
# Every anycast gateway MAC is 02:76:78 followed by the VNI (models.gateway_mac): one rule guards all networks.
_GATEWAY_MACS = f"{gateway_mac(0)}/ff:ff:ff:00:00:00"
_GUARD_RULE = ["-o", "vxlan-+", "-s", _GATEWAY_MACS, "-j", "DROP"]
_GUARD_LISTED = ["-s", _GATEWAY_MACS, "-o", "vxlan-+", "-j", "DROP"]  # as `ebtables -L` prints it


class GatewayGuard:
    """VXLANPY-OUT through ebtables; `run` runs a command (in the firewall's namespace)."""

    def __init__(self, run: Callable[[list[str]], subprocess.CompletedProcess[str]]) -> None:
        self._run = run
        self.in_place = False  # whether VXLANPY-OUT is known to hold the guard

    def _ebtables(self, *args: str) -> subprocess.CompletedProcess[str] | None:
        """Run ebtables; None when it is not installed (the guard is then skipped: it only stops log noise)."""
        for binary in _EBTABLES:
            try:
                return self._run([binary, *args])
            except DataplaneError:
                continue
        return None

    def ensure(self) -> None:
        """Create and hook VXLANPY-OUT if needed, holding the one guard rule and nothing else.

        One rule for every network, matching the gateway MACs by their common prefix, so creating a network
        runs no ebtables process (ebtables-nft takes 12-14 ms a call).  Older versions kept a rule per VNI:
        those are flushed here."""
        self.in_place = False
        listing = self._ebtables("-L", "OUTPUT")
        if listing is None:
            self.in_place = True  # no ebtables on this host: nothing to do, and nothing to retry
            return
        self._ebtables("-N", BRIDGE_OUT_CHAIN)  # "already exists" is fine
        if f"-j {BRIDGE_OUT_CHAIN}" not in listing.stdout:
            self._checked_ebtables("-I", "OUTPUT", "1", "-j", BRIDGE_OUT_CHAIN)
        rules = self._checked_ebtables("-L", BRIDGE_OUT_CHAIN)
        present = [line for line in rules.stdout.splitlines() if line.startswith("-")]
        if present != [" ".join(_GUARD_LISTED)]:
            self._checked_ebtables("-F", BRIDGE_OUT_CHAIN)
            self._checked_ebtables("-A", BRIDGE_OUT_CHAIN, *_GUARD_RULE)
        self.in_place = True

    def _checked_ebtables(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self._ebtables(*args)
        if result is None:
            raise DataplaneError("ebtables vanished while vxlanpy was using it. Hint: reinstall the ebtables package")
        if result.returncode != 0:
            raise command_error(f"ebtables {' '.join(args)}", result)
        return result
