"""A harness host's WireGuard interface as the dataplane-encrypted section reads it from outside the plugin: the
backend in use (what the plugin's doctor says, checked against the kind of the link the kernel holds), the
interface's transfer counters (the harness's `wg show` in the host's vxlanpy namespaces, where its private
/run/wireguard holds wireguard-go's UAPI socket) and the host's UDP receive-buffer drops.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tests.multihost.cluster import Host, netns_path
from tests.multihost.wireguard import WG_INTERFACE, WireGuardView

from vxlanpy.encryption_base import BACKEND_KERNEL, BACKEND_USERSPACE

from .runner import nsenter, run

# The kind of the link the backend makes: the kernel's own WireGuard link, or wireguard-go's TUN device.
LINK_KIND_BACKEND = {"wireguard": BACKEND_KERNEL, "tun": BACKEND_USERSPACE}
DOCTOR_CHECK = "wireguard"  # the name of doctor's check of the WireGuard mesh
_BACKEND_NAMED = re.compile(rf"\bbackend ({re.escape(BACKEND_USERSPACE)}|{re.escape(BACKEND_KERNEL)})\b")


@dataclass(frozen=True)
class Transfer:
    """Bytes through the interface, summed over its peers (encrypted, WireGuard's own headers included)."""

    received: int
    sent: int

    def __sub__(self, earlier: Transfer) -> Transfer:
        return Transfer(self.received - earlier.received, self.sent - earlier.sent)


def transfer_of(view: WireGuardView) -> Transfer:
    peers = view.peers.values()
    return Transfer(sum(peer.rx_bytes for peer in peers), sum(peer.tx_bytes for peer in peers))


def transfer(host: Host) -> Transfer:
    view = host.wireguard()
    if view is None:
        raise RuntimeError(f"{host.name} has no WireGuard interface {WG_INTERFACE} (`wg show` in its namespaces)")
    return transfer_of(view)


def backend_of_link(link: dict[str, Any] | None) -> str | None:
    """The backend by the kind of its link (`ip -d -j link show`): None when there is no such link."""
    kind = ((link or {}).get("linkinfo") or {}).get("info_kind")
    return LINK_KIND_BACKEND.get(str(kind))


def backend_in_findings(findings: list[dict[str, Any]]) -> str | None:
    """The backend `vxlanpy doctor --json` names in its "wireguard" check ("backend wireguard-go; interface ..."),
    None when no finding names one."""
    for finding in findings:
        if finding.get("check") != DOCTOR_CHECK:
            continue
        named = _BACKEND_NAMED.search(str(finding.get("summary") or ""))
        if named:
            return named[1]
    return None


def doctor_findings(host: Host) -> list[dict[str, Any]]:
    """`vxlanpy doctor --json` against the host's plugin."""
    result = host.cli("doctor", "--json", timeout=120)
    try:
        findings = json.loads(result.stdout)
    except ValueError:
        raise RuntimeError(
            f"`vxlanpy doctor --json` on {host.name} printed no JSON ({result.returncode}): {result.stderr[-400:]}"
        ) from None
    return [finding for finding in findings if isinstance(finding, dict)]


def host_backend(host: Host) -> dict[str, Any]:
    """The backend as the plugin's doctor names it (its WireGuard check passing) and as the link's kind shows it;
    a RuntimeError unless both name the same one."""
    link = host.link(WG_INTERFACE)
    by_link = backend_of_link(link)
    if link is None or by_link is None:
        raise RuntimeError(f"{host.name} has no WireGuard link {WG_INTERFACE} (kernel wireguard or wireguard-go's tun)")
    findings = doctor_findings(host)
    failed = [f["summary"] for f in findings if f.get("check") == DOCTOR_CHECK and f.get("status") == "fail"]
    if failed:
        raise RuntimeError(f"vxlanpy doctor on {host.name}: WireGuard check failed: {'; '.join(failed)}")
    by_plugin = backend_in_findings(findings)
    if by_plugin is None:
        said = [f.get("summary") for f in findings if f.get("check") == DOCTOR_CHECK]
        raise RuntimeError(f"vxlanpy doctor on {host.name} names no WireGuard backend; its wireguard check: {said}")
    if by_plugin != by_link:
        raise RuntimeError(f"on {host.name} vxlanpy doctor names the backend {by_plugin}, the link says {by_link}")
    return {"backend": by_link, "doctor": by_plugin, "link_kind": link["linkinfo"]["info_kind"]}


def parse_udp_rcvbuf_errors(snmp: str) -> int:
    """RcvbufErrors of /proc/net/snmp's Udp lines (a header line, then the values)."""
    header, values = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")][:2]
    return int(values[header.index("RcvbufErrors")])


def udp_rcvbuf_errors(host: Host) -> int:
    """UDP datagrams the host's namespace dropped because a socket's receive buffer was full (wireguard-go's,
    when it cannot keep up: what limits it on a busy machine)."""
    return parse_udp_rcvbuf_errors(run(nsenter(netns_path(host.netns), "cat", "/proc/net/snmp")).stdout)
