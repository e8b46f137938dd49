"""What the tests read of a host's WireGuard interface (`wg show ... dump`, inside the host's vxlanpy namespaces),
and the cleanup of what vxlanpy's encryption leaves in a host's namespace (wireguard-go, its interface, its socket).

`wg` finds an interface's UAPI socket at /var/run/wireguard/<interface>.sock, which in the harness is the host's
private directory bound over /run/wireguard in its vxlanpy's mount namespace (plugin_process.py): `wg` runs in that
mount namespace and the host's network namespace (nsenter -t PID -m -n), where PID is the host's vxlanpy or, when
it is stopped, the wireguard-go it started (which daemonises into the same namespaces and outlives it).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from vxlanpy.encryption_base import DEFAULT_WG_INTERFACE

from .netns import netns_pids, run
from .processes import pid_alive, process_name

WG_INTERFACE = DEFAULT_WG_INTERFACE  # every host uses the default name, as a real host does
WIREGUARD_GO = "wireguard-go"


@dataclass(frozen=True)
class WireGuardPeerView:
    public_key: str
    endpoint: str  # "address:port", "(none)" before the first packet from a peer without one
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # epoch seconds, 0: never
    rx_bytes: int
    tx_bytes: int
    keepalive: str  # seconds or "off"


@dataclass(frozen=True)
class WireGuardView:
    """`wg show IFACE dump` without its private key field, which is dropped while parsing and never kept."""

    public_key: str
    listen_port: int
    peers: dict[str, WireGuardPeerView] = field(default_factory=dict)  # by public key

    def peer_for_tunnel(self, tunnel: str) -> WireGuardPeerView | None:
        return next((peer for peer in self.peers.values() if f"{tunnel}/32" in peer.allowed_ips), None)


def parse_wg_dump(text: str) -> WireGuardView:
    """The interface line is `private-key public-key listen-port fwmark`; each peer line is `public-key
    preshared-key endpoint allowed-ips latest-handshake transfer-rx transfer-tx persistent-keepalive`."""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines or len(lines[0]) < 3:
        raise ValueError("wg show dump: no interface line")
    _, public_key, listen_port = lines[0][:3]
    peers = {}
    for fields in lines[1:]:
        if len(fields) < 8:
            raise ValueError(f"wg show dump: a peer line with {len(fields)} fields")
        key, _, endpoint, allowed, handshake, rx, tx, keepalive = fields[:8]
        allowed_ips = tuple(sorted(ip for ip in allowed.split(",") if ip and ip != "(none)"))
        peers[key] = WireGuardPeerView(key, endpoint, allowed_ips, int(handshake), int(rx), int(tx), keepalive)
    return WireGuardView(public_key, int(listen_port), peers)


def wireguard_go_pids(netns: str) -> list[int]:
    """The wireguard-go processes running in network namespace `netns`."""
    return [pid for pid in netns_pids(netns) if process_name(pid) == WIREGUARD_GO]


def wg_show(pid: int, interface: str = WG_INTERFACE) -> WireGuardView | None:
    """The interface as `wg` sees it from the namespaces of `pid`; None when it does not exist there."""
    result = run(["nsenter", "-t", str(pid), "-m", "-n", "wg", "show", interface, "dump"], check=False)
    if result.returncode != 0:
        if "No such device" in result.stderr or "Unable to access interface" in result.stderr:
            return None
        raise RuntimeError(f"wg show {interface} (namespaces of pid {pid}) failed: {result.stderr.strip()}")
    return parse_wg_dump(result.stdout)


def _terminate(pids: list[int], timeout: float = 5.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)  # wireguard-go removes its interface and socket on SIGTERM
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wireguard_leftovers(netns: str, wireguard_dir: Path, interface: str = WG_INTERFACE) -> list[str]:
    """What vxlanpy's encryption left in a host: wireguard-go processes, the interface, UAPI sockets."""
    found = [f"{WIREGUARD_GO} running (pid {pid})" for pid in wireguard_go_pids(netns)]
    if run(["ip", "-n", netns, "link", "show", interface], check=False).returncode == 0:
        found.append(f"interface {interface}")
    if wireguard_dir.is_dir():
        found.extend(f"socket {path}" for path in sorted(wireguard_dir.glob("*.sock")))
    return found


def remove_wireguard(netns: str, wireguard_dir: Path, interface: str = WG_INTERFACE) -> list[str]:
    """End every wireguard-go in `netns` (by pid), delete the interface and the sockets left in the host's
    directory; returns what was found (empty when nothing was left)."""
    found = wireguard_leftovers(netns, wireguard_dir, interface)
    if not found:
        return []
    _terminate(wireguard_go_pids(netns))
    run(["ip", "-n", netns, "link", "del", interface], check=False)  # a kernel interface, or a TUN outliving it
    for path in wireguard_dir.glob("*.sock") if wireguard_dir.is_dir() else []:
        path.unlink(missing_ok=True)
    still = wireguard_leftovers(netns, wireguard_dir, interface)
    return found + [f"could not remove: {', '.join(still)}"] if still else found
