"""`vxlanpy doctor`'s "wireguard" check: the WireGuard mesh of encrypted networks, as the plugin sees it (its
backend, interface and tunnel address), its peers against the hosts etcd publishes, and each encrypted network's
MTU against the underlay's less VXLAN's and WireGuard's overheads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...encryption_base import NO_WIREGUARD
from ..client import CliError
from .base import FAIL, OK, SKIP, WARN, Examination, Finding

CHECK = "wireguard"
VXLAN_OVERHEAD = 50  # the inner VXLAN runs over the tunnel's IPv4 or IPv6 address: 50 for IPv4 (see models)


def check_wireguard(exam: Examination) -> Iterator[Finding]:
    if exam.networks is None:
        yield Finding(SKIP, CHECK, "needs the plugin's state")
        return
    try:
        status, body = exam.plugin.request("GET", "/vxlanpy/wireguard")
    except CliError as exc:
        yield Finding(FAIL, CHECK, exc.message)
        return
    if status == 404 or not isinstance(body, dict):
        yield Finding(
            WARN, CHECK, "the plugin has no /vxlanpy/wireguard: it is older than this CLI", fix="restart the plugin"
        )
        return
    if status >= 400:
        yield Finding(FAIL, CHECK, str(body.get("Err") or f"the plugin answered HTTP {status}"))
        return
    if not body.get("in_use"):
        yield Finding(OK, CHECK, "not in use (no encrypted network on this host)")
        return
    yield from _interface(body)
    if body.get("interface_present"):
        yield from _peers(body)
    yield from _mtu(body)


def _interface(body: dict[str, Any]) -> Iterator[Finding]:
    backend, interface = body.get("backend"), body.get("interface")
    if not backend:
        yield Finding(
            FAIL,
            CHECK,
            "no WireGuard backend: neither kernel WireGuard nor wireguard-go",
            why=f"this host has encrypted networks, which cannot carry traffic: {body.get('backend_error') or ''}",
            fix=NO_WIREGUARD,
        )
        return
    if not body.get("interface_present"):
        yield Finding(
            FAIL,
            CHECK,
            f"backend {backend}, but interface {interface} does not exist",
            why="the encrypted networks' traffic has no way to the other hosts",
            fix="restart the plugin (it brings the interface up for its encrypted networks) and see its log",
        )
        return
    summary = (
        f"backend {backend}; interface {interface} up, tunnel address {body.get('tunnel')}, "
        f"UDP port {body.get('listen_port')}, public key {body.get('public_key')}"
    )
    if not body.get("up"):
        yield Finding(
            WARN,
            CHECK,
            summary + "; but this host's record is not published",
            why="the other hosts do not know this host's key: they cannot reach its encrypted networks",
            fix="restart the plugin; check that etcd answers (vxlanpy health)",
        )
        return
    yield Finding(OK, CHECK, summary)


def _peers(body: dict[str, Any]) -> Iterator[Finding]:
    missing, extra = body.get("missing") or [], body.get("extra") or []
    if missing or extra:
        wrong = [f"host {host} published in etcd but not a peer" for host in missing]
        wrong += [f"peer {key} published by no host" for key in extra]
        yield Finding(
            FAIL,
            CHECK,
            "peers differ from etcd: "
            + "; ".join(wrong[:4])
            + (f" (+{len(wrong) - 4} more)" if len(wrong) > 4 else ""),
            why="encrypted traffic to the hosts missing is lost, and a peer no host publishes is a removed host "
            "that can still reach this one",
            fix="restart the plugin (it resyncs the peers from etcd); check the etcd sync with vxlanpy health",
        )
        return
    peers = body.get("peers") or []
    silent = sum(1 for peer in peers if not peer.get("latest_handshake"))
    note = f" ({silent} without a handshake yet)" if silent else ""
    yield Finding(OK, CHECK, f"{len(peers)} peers, the hosts published in etcd{note}")


def _mtu(body: dict[str, Any]) -> Iterator[Finding]:
    underlay = body.get("underlay") or {}
    if "mtu" not in underlay:
        yield Finding(FAIL, CHECK, f"MTU: the underlay cannot be read: {underlay.get('error')}")
        return
    overhead = int(body.get("overhead") or 60)
    most = int(underlay["mtu"]) - VXLAN_OVERHEAD - overhead
    for network in body.get("networks") or []:
        mtu = network.get("mtu")
        if isinstance(mtu, int) and mtu > most:
            yield Finding(
                FAIL,
                CHECK,
                f"MTU of encrypted vni {network.get('vni')}: {mtu} + {VXLAN_OVERHEAD} (VXLAN) + {overhead} "
                f"(WireGuard) > underlay {underlay.get('dev')} MTU {underlay['mtu']}",
                why="full-size packets between hosts are dropped: small pings work, bulk transfers hang",
                fix=f"recreate the network with -o mtu={most}, or raise the MTU of {underlay.get('dev')}",
            )
        else:
            yield Finding(
                OK,
                CHECK,
                f"MTU of encrypted vni {network.get('vni')}: {mtu} <= {most} ({underlay.get('dev')} "
                f"{underlay['mtu']} - {VXLAN_OVERHEAD} - {overhead})",
            )
