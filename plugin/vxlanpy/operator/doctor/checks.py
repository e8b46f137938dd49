"""`vxlanpy doctor`'s checks of the host and of the plugin (see firewall.py for the firewall's), and the lines
that describe a reconciliation report."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import Any

from ...models import is_attachment_id
from ..client import CliError
from ..views import report_names
from .base import FAIL, OK, SKIP, WARN, Examination, Finding

MODULES = ("vxlan", "bridge", "br_netfilter")
PLUGIN_DIRS = ("/run/docker/plugins/", "/var/run/docker/plugins/")
OVERHEAD = {"vxlan": {4: 50, 6: 70}, "gretap": {4: 42, 6: 62}}  # see models: VXLAN_OVERHEAD_*, GRETAP_OVERHEAD_*


def check_modules(exam: Examination) -> Iterator[Finding]:
    for module in MODULES:
        check = f"kernel module {module}"
        if module == "br_netfilter":
            present = exam.probe.stat("/proc/sys/net/bridge") is not None
        else:
            present = exam.probe.stat(f"/sys/module/{module}") is not None
        if present:
            yield Finding(OK, check, "loaded")
            continue
        code, _, _ = exam.probe.run(["modprobe", "-n", "-q", module])
        if module == "br_netfilter":
            yield Finding(
                WARN,
                check,
                "not loaded",
                why="without it bridged frames bypass iptables; Docker normally loads it, and vxlanpy's rules "
                "for traffic inside a network then never apply",
                fix="modprobe br_netfilter (and add it to /etc/modules-load.d/)",
            )
        elif code == 0:
            yield Finding(OK, check, "not loaded yet; the kernel loads it when vxlanpy creates the first device")
        else:
            yield Finding(
                FAIL,
                check,
                "not loaded and not available",
                why=f"vxlanpy cannot create {'VXLAN devices' if module == 'vxlan' else 'bridges'} without it",
                fix="install the kernel's extra modules (e.g. linux-modules-extra-$(uname -r)), "
                f"then modprobe {module}",
            )


def check_socket(exam: Examination) -> Iterator[Finding]:
    path = exam.plugin.socket_path
    check = "plugin socket"
    info = exam.probe.stat(path)
    if info is None:
        yield Finding(
            FAIL,
            check,
            f"{path} does not exist",
            why="dockerd finds the plugin by this socket: no socket, no vxlanpy networks",
            fix="start the plugin: sudo vxlanpy serve (or scripts/run), or set VXLANPY_SOCKET/--socket",
        )
        return
    if not stat.S_ISSOCK(info.st_mode):
        yield Finding(FAIL, check, f"{path} is not a socket", fix=f"remove {path} and restart the plugin")
        return
    exam.socket_usable = True
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o006:
        yield Finding(
            WARN,
            check,
            f"{path} has mode {mode:04o}",
            why="any local user can drive the plugin through it (create devices, attach namespaces)",
            fix="restart the plugin: it creates its socket with mode 0660",
        )
    else:
        yield Finding(OK, check, f"{path} (mode {mode:04o}, owner uid {info.st_uid})")
    if not path.startswith(PLUGIN_DIRS):
        yield Finding(
            WARN,
            "plugin discovery",
            f"{path} is outside /run/docker/plugins",
            why="dockerd looks for plugin sockets in /run/docker/plugins only",
            fix="serve on /run/docker/plugins/vxlanpy.sock (the default VXLANPY_SOCKET)",
        )


def check_activation(exam: Examination) -> Iterator[Finding]:
    """Whether the plugin answers dockerd's handshake (Plugin.Activate) as a network driver."""
    if not exam.socket_usable:
        return
    check = "plugin answers dockerd"
    try:
        status, body = exam.plugin.request("POST", "/Plugin.Activate", {}, timeout=10)
    except CliError as exc:
        summary = exc.message
        why = "dockerd's requests to the plugin fail, so does every vxlanpy network command"
        fix = "restart the plugin and look at its log"
    else:
        implements = body.get("Implements") if isinstance(body, dict) else None
        if status == 200 and isinstance(implements, list) and "NetworkDriver" in implements:
            exam.plugin_ok = True
            yield Finding(OK, check, f"Plugin.Activate: {', '.join(map(str, implements))}")
            return
        summary = f"Plugin.Activate answered HTTP {status}: {str(body)[:120]}"
        why = "dockerd does not take it for a network driver"
        fix = "check that vxlanpy (not another program) serves this socket; restart it"
    yield Finding(FAIL, check, summary, why=why, fix=fix)


def check_health(exam: Examination) -> Iterator[Finding]:
    if not exam.plugin_ok:
        yield Finding(SKIP, "state store", "needs the plugin")
        return
    try:
        status, body = exam.plugin.request("GET", "/vxlanpy/health")
    except CliError as exc:
        yield Finding(FAIL, "state store", exc.message)
        return
    checks = body.get("checks") if isinstance(body, dict) else None
    if status == 404 or not isinstance(checks, dict):
        yield Finding(
            WARN,
            "state store",
            "the plugin has no /vxlanpy/health: it is older than this CLI",
            fix="restart the plugin from this version",
        )
        return
    for name, result in checks.items():
        label = {"store": "state store", "netlink": "netlink", "etcd": "etcd sync"}.get(name, str(name))
        if result.get("ok"):
            yield Finding(OK, label, f"{result.get('detail')} ({result.get('ms')} ms)")
        else:
            fixes = {
                "store": "check VXLANPY_STORE / VXLANPY_STATE_DIR (disk full? permissions? etcd endpoints up?)",
                "etcd": "check that the etcd endpoints answer from this host (VXLANPY_STORE, TLS files)",
            }
            fix = fixes.get(name, "see the plugin log")
            yield Finding(FAIL, label, str(result.get("detail")), why="new containers and networks fail", fix=fix)
    try:
        exam.networks = exam.plugin.call("GET", "/vxlanpy/ls").get("networks", [])
    except CliError as exc:
        yield Finding(FAIL, "plugin state", exc.message)


def check_docker_state(exam: Examination) -> Iterator[Finding]:
    if exam.networks is None:
        yield Finding(SKIP, "Docker and plugin agree", "needs the plugin's state")
        return
    try:
        docker_networks = exam.docker().vxlanpy_networks([network["id"] for network in exam.networks])
    except CliError as exc:
        yield Finding(WARN, "Docker and plugin agree", exc.message, fix="start dockerd, or run as root")
        return
    ours = {network["id"]: network for network in exam.networks}
    theirs = {network.id: network for network in docker_networks}
    problems = 0
    for network_id, docker_network in sorted(theirs.items(), key=lambda item: item[1].name):
        if network_id not in ours:
            problems += 1
            yield Finding(
                FAIL,
                "Docker and plugin agree",
                f"Docker network {docker_network.name} ({network_id[:12]}) has no state in the plugin",
                why="its containers cannot start (the plugin's state was lost or is another store)",
                fix=f"docker network rm {docker_network.name}, then create it again; check VXLANPY_STORE",
            )
    for network_id, network in sorted(ours.items()):
        if network_id not in theirs:
            problems += 1
            yield Finding(
                WARN,
                "Docker and plugin agree",
                f"the plugin holds network {network_id[:12]} (vni {network['vni']}) that Docker does not know",
                why="its devices and VNI stay taken for nothing (Docker's state was reset?)",
                fix=f"vxlanpy gc --forget {network_id[:12]}",
            )
    if not problems:
        yield Finding(OK, "Docker and plugin agree", f"{len(theirs)} vxlanpy networks in both")


def check_forwarding(exam: Examination) -> Iterator[Finding]:
    value = (exam.probe.read("/proc/sys/net/ipv4/ip_forward") or "").strip()
    if value == "1":
        yield Finding(OK, "IPv4 forwarding", "on")
    else:
        yield Finding(
            FAIL,
            "IPv4 forwarding",
            f"net.ipv4.ip_forward is {value or 'unreadable'}",
            why="containers cannot reach anything beyond their network, published ports fail from other "
            "hosts (dockerd leaves it off with --ip-forward=false and with its nftables backend)",
            fix="sysctl -w net.ipv4.ip_forward=1, persisted in /etc/sysctl.d/; the plugin sets it at start "
            "where /proc/sys is writable (not as a managed plugin): restart it",
        )


def check_mtu(exam: Examination) -> Iterator[Finding]:
    if exam.networks is None:
        yield Finding(SKIP, "MTU", "needs the plugin's state")
        return
    for network in exam.networks:
        tunnel: dict[str, Any] = next((d for d in network["devices"] if d["kind"] in OVERHEAD), {})
        dev, local = tunnel.get("dev"), tunnel.get("local")
        check = f"MTU of vni {network['vni']}"
        if not dev:
            yield Finding(SKIP, check, "no underlay recorded")
            continue
        raw = (exam.probe.read(f"/sys/class/net/{dev}/mtu") or "").strip()
        if not raw.isdigit():
            yield Finding(
                FAIL,
                check,
                f"underlay {dev} does not exist",
                why="the VXLAN device has no way out",
                fix=f"bring {dev} back, or recreate the network with -o dev=<interface>",
            )
            continue
        encap = str(tunnel.get("kind"))
        overhead = OVERHEAD[encap][6 if local and ":" in local else 4]
        underlay, mtu = int(raw), int(network["mtu"])
        if mtu + overhead > underlay:
            yield Finding(
                FAIL,
                check,
                f"network MTU {mtu} + {overhead} bytes of {'GRE' if encap == 'gretap' else 'VXLAN'} "
                f"> underlay {dev} MTU {underlay}",
                why="full-size packets between hosts are dropped: small pings work, bulk transfers hang",
                fix=f"raise the MTU of {dev} to {mtu + overhead}, "
                f"or recreate the network with -o mtu={underlay - overhead}",
            )
            continue
        wrong = []
        for device in network["devices"]:
            actual = (exam.probe.read(f"/sys/class/net/{device['name']}/mtu") or "").strip()
            if actual.isdigit() and int(actual) != mtu:
                wrong.append(f"{device['name']} has {actual}")
        if wrong:
            yield Finding(
                FAIL, check, f"network MTU {mtu} but " + ", ".join(wrong), fix="vxlanpy gc (restores the MTU)"
            )
        else:
            yield Finding(OK, check, f"{mtu} + {overhead} <= {dev} {underlay}")


def check_peers(exam: Examination) -> Iterator[Finding]:
    for network in exam.networks or []:
        check = f"peers of vni {network['vni']}"
        try:
            peers = exam.plugin.call("GET", f"/vxlanpy/peers/{network['id']}")
        except CliError as exc:
            yield Finding(FAIL, check, exc.message)
            continue
        if peers.get("match"):
            yield Finding(OK, check, f"the kernel's FDB and neighbour entries match the {peers.get('source')}")
            continue
        wrong = [
            f"VTEP {v['address']} {'missing in kernel' if v['store'] else 'not in store'}"
            for v in peers.get("vteps", [])
            if v["store"] != v["kernel"]
        ]
        wrong += [
            f"entry {e['mac']} {'missing in kernel' if e['kernel'] is None else 'differs'}"
            for e in peers.get("entries", [])
            if not e["match"]
        ]
        wrong += [f"{peers['device']['name']} {d}" for d in peers.get("device", {}).get("differences", [])]
        yield Finding(
            FAIL,
            check,
            "; ".join(wrong[:4]) + (f" (+{len(wrong) - 4} more)" if len(wrong) > 4 else ""),
            why="traffic to the hosts concerned is lost or flooded",
            fix=f"vxlanpy gc (static peers), or restart the plugin (etcd); details: vxlanpy peers {network['id'][:12]}",
        )


def _names(exam: Examination) -> dict[str, str]:
    try:
        docker = exam.docker()
        networks = exam.networks or []
        ids = [network["id"] for network in networks]
        return report_names(networks, docker.vxlanpy_networks(ids), docker.containers(), [])
    except CliError:
        return {}


def check_orphans(exam: Examination) -> Iterator[Finding]:
    if not exam.plugin_ok:
        yield Finding(SKIP, "orphans", "needs the plugin")
        return
    try:
        report = exam.plugin.call("POST", "/vxlanpy/gc", {"dry_run": True}).get("report", {})
    except CliError as exc:
        yield Finding(FAIL, "orphans", f"reconciliation dry run failed: {exc.message}")
        return
    problems = describe_report(report, dry_run=True, names=_names(exam))
    if not problems:
        yield Finding(OK, "orphans", "none: the kernel matches the store (reconciliation dry run)")
    for line in problems:
        yield Finding(
            WARN if line.startswith("lost") else FAIL,
            "orphans",
            line,
            why="left behind by a crash, a reboot or a manual change",
            fix="vxlanpy gc" if not line.startswith("lost") else "restart that container",
        )


def describe_report(report: dict[str, Any], dry_run: bool, names: dict[str, str] | None = None) -> list[str]:
    """One line per thing a reconciliation did (or would do); ensured endpoints are not actions."""
    names = names or {}
    verb = (lambda now, later: later) if dry_run else (lambda now, later: now)  # noqa: E731
    lines = []
    attached = {item["id"] for item in report.get("removed_attachments", [])}
    for vni in report.get("recreated_networks", []):
        name = names.get(f"vni:{vni}")
        lines.append(f"{verb('recreated', 'would recreate')} the devices of vni {vni}" + (f" ({name})" if name else ""))
    for link in report.get("removed_links", []):
        lines.append(f"{verb('removed', 'would remove')} orphan link {link}")
    for vni in report.get("removed_chains", []):
        lines.append(f"{verb('removed', 'would remove')} orphan firewall chains of vni {vni}")
    for endpoint in report.get("removed_endpoints", []):
        if endpoint in attached:
            continue
        if is_attachment_id(endpoint):
            who = names.get(endpoint, endpoint[:12])
            lines.append(f"{verb('removed', 'would remove')} attachment {who}: its namespace is gone")
        else:
            lines.append(f"{verb('removed', 'would remove')} stale endpoint {endpoint[:12]} (its sandbox is gone)")
    for item in report.get("removed_attachments", []):
        who = names.get(item["id"], item["id"][:12])
        lines.append(f"{verb('removed', 'would remove')} attachment {who}: {item['reason']}")
    for vni in report.get("expired_networks", []):
        lines.append(f"{verb('removed', 'would remove')} network of vni {vni}: its create never finished")
    kept_links, kept_chains = report.get("kept_links", []), report.get("kept_chains", [])
    if kept_links:
        kept = f"kept {len(kept_links)} links and {len(kept_chains)} chains of networks the store does not know"
        lines.append(f"lost state? {kept}: run `vxlanpy recover`")
    for item in report.get("forgotten_networks", []):
        lines.append(f"{verb('forgot', 'would forget')} network {item['id'][:12]} (vni {item['vni']})")
    for item in report.get("released_pools", []):
        lines.append(
            f"{verb('released', 'would release')} pool {item['pool']} claimed by {item['claim']} "
            "(its network create never completed)"
        )
    for item in report.get("released_addresses", []):
        lines.append(f"{verb('released', 'would release')} address {item['address']} held by {item['holder']}")
    for endpoint in report.get("lost_endpoints", []):
        if endpoint not in attached:
            lines.append(f"lost endpoint {endpoint[:12]}: its veth is gone while joined; restart its container")
    return lines
