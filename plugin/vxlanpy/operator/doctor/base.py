"""What every check of `vxlanpy doctor` works with: its findings, the probe through which it reads the host, and
the examination that carries what earlier checks learned to later ones."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...dataplane.firewall_rules import Ruleset
from ..client import DockerView, PluginClient

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass
class Finding:
    status: str
    check: str
    summary: str
    why: str = ""
    fix: str = ""


class Probe(Protocol):
    def read(self, path: str) -> str | None: ...

    def stat(self, path: str) -> os.stat_result | None: ...

    def run(self, argv: list[str]) -> tuple[int, str, str]: ...

    def is_root(self) -> bool: ...


class LocalProbe:
    def read(self, path: str) -> str | None:
        try:
            with open(path) as handle:
                return handle.read()
        except OSError:
            return None

    def stat(self, path: str) -> os.stat_result | None:
        try:
            return os.stat(path)
        except OSError:
            return None

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except FileNotFoundError:
            return 127, "", f"{argv[0]}: not installed"
        except subprocess.TimeoutExpired:
            return 124, "", f"{argv[0]} did not finish within 30 s"
        return result.returncode, result.stdout, result.stderr

    def is_root(self) -> bool:
        return os.geteuid() == 0


@dataclass
class NftChain:
    family: str
    table: str
    name: str
    hook: str | None
    priority: int | None
    policy: str | None

    @property
    def label(self) -> str:
        return f"{self.family} {self.table} {self.name}"


def parse_nft_chains(text: str) -> list[NftChain]:
    """The chains in `nft -j list chains`; [] for anything that is not its JSON."""
    try:
        items = json.loads(text).get("nftables", [])
    except (ValueError, AttributeError):
        return []
    chains = []
    for item in items if isinstance(items, list) else []:
        chain = item.get("chain") if isinstance(item, dict) else None
        if not isinstance(chain, dict):
            continue
        priority = chain.get("prio")
        chains.append(
            NftChain(
                str(chain.get("family", "?")),
                str(chain.get("table", "?")),
                str(chain.get("name", "?")),
                str(chain["hook"]) if "hook" in chain else None,
                priority if isinstance(priority, int) and not isinstance(priority, bool) else None,
                str(chain["policy"]) if "policy" in chain else None,
            )
        )
    return chains


@dataclass
class Examination:
    """What the checks read the host and the plugin through, and what earlier checks learned for later ones.
    The firewall is read once per table (`iptables -S`) and nftables once, whatever the number of checks."""

    probe: Probe
    plugin: PluginClient
    docker: Callable[[], DockerView]
    socket_usable: bool = False  # the plugin's socket exists and is a socket
    plugin_ok: bool = False  # the plugin answers dockerd's handshake
    networks: list[dict[str, Any]] | None = None  # the plugin's listing (`/vxlanpy/ls`), once read
    _rulesets: dict[tuple[int, str], Ruleset | str] = field(default_factory=dict)
    _nft_read: bool = False
    _nft: list[NftChain] | None = None

    def ruleset(self, family: int, table: str) -> Ruleset | str:
        """A table as `iptables -S` lists it, or why it cannot be read."""
        if (family, table) not in self._rulesets:
            tool = "iptables" if family == 4 else "ip6tables"
            code, out, err = self.probe.run([tool, "-w", "10", "-t", table, "-S"])
            failure = " ".join(err.split())[:160] or f"{tool} exit status {code}"
            self._rulesets[(family, table)] = Ruleset.parse(out) if code == 0 else failure
        return self._rulesets[(family, table)]

    def filter4(self) -> Ruleset | None:
        """IPv4's filter table, or None when it cannot be read (`check_firewall_readable` says why)."""
        if not self.probe.is_root():
            return None
        filter4 = self.ruleset(4, "filter")
        return filter4 if isinstance(filter4, Ruleset) else None

    def nft_chains(self) -> list[NftChain] | None:
        """Every nftables chain (`nft -j list chains`), or None when nft is missing or fails."""
        if not self._nft_read:
            code, out, _ = self.probe.run(["nft", "-j", "list", "chains"])
            self._nft, self._nft_read = (parse_nft_chains(out) if code == 0 else None), True
        return self._nft


Check = Callable[[Examination], Iterator[Finding]]
