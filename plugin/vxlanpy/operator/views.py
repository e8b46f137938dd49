"""What the CLI shows: the plugin's state joined with Docker's names, as rows, tables and detail views."""

from __future__ import annotations

import time
from typing import Any

from ..models import GATEWAY_DOCKER, GATEWAY_VXLANPY, attachment_id
from .attach import container_target, netns_target
from .client import DockerNetwork

COLUMNS = ("NAME", "ID", "VNI", "MODE", "SUBNETS", "DEVICES", "MTU", "PEERS", "ENDPOINTS")
Row = dict[str, Any]


def table(headers: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def owners(
    network_ids: list[str],
    docker_networks: list[DockerNetwork],
    containers: list[tuple[str, str]],
    namespaces: list[str],
) -> dict[str, str]:
    """endpoint id -> who uses it: Docker's containers by their endpoint, attachments by their derived id."""
    found: dict[str, str] = {}
    for network in docker_networks:
        for endpoint_id, (_, name) in network.endpoints.items():
            found[endpoint_id] = name
    for network_id in network_ids:
        for container_id, name in containers:
            found.setdefault(attachment_id(container_target(container_id), network_id), name)
        for namespace in namespaces:
            found.setdefault(attachment_id(netns_target(namespace), network_id), f"netns:{namespace}")
    return found


def report_names(
    networks: list[dict[str, Any]],
    docker_networks: list[DockerNetwork],
    containers: list[tuple[str, str]],
    namespaces: list[str],
) -> dict[str, str]:
    """Names for a reconciliation report: "vni:N" -> network name, endpoint id -> "container on network"."""
    docker_names = {network.id: network.name for network in docker_networks}
    who = owners([n["id"] for n in networks], docker_networks, containers, namespaces)
    names: dict[str, str] = {}
    for network in networks:
        network_name = docker_names.get(network["id"], network["id"][:12])
        names[f"vni:{network['vni']}"] = network_name
        for endpoint in network["endpoints"]:
            if endpoint["id"] in who:
                names[endpoint["id"]] = f"{who[endpoint['id']]} on {network_name}"
    return names


def build_rows(
    listing: dict[str, Any],
    docker_networks: list[DockerNetwork] | None,
    containers: list[tuple[str, str]],
    namespaces: list[str],
    docker_ports: dict[str, list[str]] | None = None,
) -> tuple[list[Row], list[str]]:
    """(rows keyed by the lower-case column names, warnings).  Docker's view may be missing (None).

    `docker_ports` (container id -> ports Docker publishes) fills the ports of gateway=docker_gwbridge networks'
    endpoints, which Docker's bridge driver publishes on the container's docker_gwbridge endpoint."""
    plugin_networks = listing.get("networks", [])
    docker_by_id = {network.id: network for network in docker_networks or []}
    who = owners([n["id"] for n in plugin_networks], docker_networks or [], containers, namespaces)
    container_of = {
        endpoint_id: container_id
        for network in docker_networks or []
        for endpoint_id, (container_id, _) in network.endpoints.items()
    }
    rows: list[Row] = []
    warnings: list[str] = []
    for network in plugin_networks:
        docker = docker_by_id.get(network["id"])
        if docker is None and docker_networks is not None:
            warnings.append(
                f"network {network['id'][:12]} (vni {network['vni']}) is unknown to Docker; see `vxlanpy doctor`"
            )
        gateway = (network.get("config") or {}).get("gateway") or GATEWAY_VXLANPY
        endpoints = []
        for endpoint in network["endpoints"]:
            row = {**endpoint, "container": who.get(endpoint["id"]), "ports_by": "vxlanpy"}
            if gateway == GATEWAY_DOCKER:
                published = (docker_ports or {}).get(container_of.get(endpoint["id"], ""))
                row.update(ports=published or [], ports_by="docker" if docker_ports is not None else "unknown")
            endpoints.append(row)
        rows.append(
            {
                "name": docker.name if docker else None,
                "id": network["id"],
                "vni": network["vni"],
                "mode": network["mode"],
                "gateway": gateway,
                "subnets": network["subnets"],
                "devices": network["devices"],
                "mtu": network["mtu"],
                "peers": network["peers"],
                "endpoints": endpoints,
            }
        )
    known = {network["id"] for network in plugin_networks}
    for docker in sorted(docker_networks or [], key=lambda n: n.name):
        if docker.id in known:
            continue
        warnings.append(f"Docker network {docker.name} has no state in the plugin; see `vxlanpy doctor`")
        rows.append(
            {
                "name": docker.name,
                "id": docker.id,
                "vni": None,
                "mode": None,
                "gateway": None,
                "subnets": [{"pool": subnet, "gateway": None} for subnet in docker.subnets],
                "devices": [],
                "mtu": None,
                "peers": [],
                "endpoints": [
                    {"id": endpoint_id, "container": name, "kind": "docker"}
                    for endpoint_id, (_, name) in docker.endpoints.items()
                ],
            }
        )
    rows.sort(key=lambda row: (row["name"] is None, row["name"] or "", row["vni"] or 0))
    return rows, warnings


def _peer(peer: dict[str, Any]) -> str:
    return f"{peer['host']}={peer['address']}" if peer.get("host") else str(peer["address"])


def _device(device: dict[str, Any]) -> str:
    return device["name"] if device.get("present") else f"{device['name']}(missing)"


def _endpoints_cell(endpoints: list[dict[str, Any]]) -> str:
    attached = sum(1 for endpoint in endpoints if endpoint.get("kind") == "attached")
    return f"{len(endpoints)} ({attached} attached)" if attached else str(len(endpoints))


def _peers_cell(peers: list[dict[str, Any]]) -> str:
    if not peers:
        return "-"
    if len(peers) > 3:
        return f"{len(peers)} VTEPs"
    prefix = "group " if peers[0].get("source") == "group" else ""
    return prefix + ",".join(_peer(peer) for peer in peers)


def cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def table_row(row: Row) -> list[str]:
    return [
        cell(row["name"]),
        row["id"][:12],
        cell(row["vni"]),
        cell(row["mode"]),
        ",".join(subnet["pool"] for subnet in row["subnets"]) or "-",
        ",".join(_device(device) for device in row["devices"]) or "-",
        cell(row["mtu"]),
        _peers_cell(row["peers"]),
        _endpoints_cell(row["endpoints"]),
    ]


def render_table(rows: list[Row]) -> str:
    return table(COLUMNS, [table_row(row) for row in rows])


def render_detail(row: Row) -> str:
    def field(label: str, value: str) -> str:
        return f"{label + ':':<11}{value}"

    lines = [field("name", cell(row["name"])), field("id", row["id"]), field("vni", cell(row["vni"]))]
    lines.append(field("mode", cell(row["mode"])))
    lines.append(field("gateway", GATEWAY_TEXT.get(row.get("gateway") or "", cell(row.get("gateway")))))
    subnets = [
        subnet["pool"] + (f" gateway {subnet['gateway'].split('/')[0]}" if subnet.get("gateway") else "")
        for subnet in row["subnets"]
    ]
    lines.append(field("subnets", ", ".join(subnets) or "-"))
    devices = []
    for device in row["devices"]:
        state = "present" if device.get("present") else "MISSING"
        extra = ""
        if device["kind"] == "vxlan":
            extra = f"; underlay {cell(device.get('dev'))}, local {cell(device.get('local'))}, port {device['dstport']}"
        elif device["kind"] == "gretap":
            extra = f"; underlay {cell(device.get('dev'))}, local {cell(device.get('local'))}, to {device['remote']}"
        devices.append(f"{device['name']} ({device['kind']}, {state}{extra})")
    lines.append(field("devices", ("\n" + " " * 11).join(devices) or "-"))
    lines.append(field("mtu", cell(row["mtu"])))
    peers = [f"{_peer(peer)} ({peer['source']})" for peer in row["peers"]]
    lines.append(field("peers", ", ".join(peers) or "- (none: local network, or no other host yet)"))
    lines.append(field("endpoints", _endpoints_cell(row["endpoints"])))
    if row["endpoints"]:
        headers = ["CONTAINER", "KIND", "ENDPOINT", "IPV4", "IPV6", "MAC", "VETH", "PORTS"]
        body = [
            [
                cell(endpoint.get("container")),
                cell(endpoint.get("kind")),
                endpoint["id"][:12],
                cell(endpoint.get("ipv4")),
                cell(endpoint.get("ipv6")),
                cell(endpoint.get("mac")),
                cell(endpoint.get("veth")) + ("" if endpoint.get("veth_present", True) else "(missing)"),
                _ports_cell(endpoint),
            ]
            for endpoint in row["endpoints"]
        ]
        lines.append("  " + table(headers, body).replace("\n", "\n  "))
    return "\n".join(lines)


GATEWAY_TEXT = {
    GATEWAY_VXLANPY: "vxlanpy (gateway on the bridge; vxlanpy masquerades and publishes -p)",
    GATEWAY_DOCKER: "docker_gwbridge (Docker serves egress and -p through docker_gwbridge)",
}


def _ports_cell(endpoint: dict[str, Any]) -> str:
    if endpoint.get("ports_by") == "unknown":
        return "?(published by Docker; Docker does not answer)"
    return ",".join(endpoint.get("ports") or []) or "-"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def render_peers(name: str, peers: dict[str, Any]) -> str:
    learning = "on" if peers["learning"] else "off"
    lines = [
        f"network {name} (vni {peers['vni']}): mode {peers['mode']}, learning {learning}; "
        f"compared with the {peers['source']}",
        "",
    ]
    if peers["vteps"]:
        rows = [
            [
                vtep["address"],
                cell(vtep.get("host")),
                _yes(vtep["store"]),
                _yes(vtep["kernel"]),
                "ok" if vtep["store"] == vtep["kernel"] else ("missing in kernel" if vtep["store"] else "not in store"),
            ]
            for vtep in peers["vteps"]
        ]
        lines.append(table(["REMOTE VTEP", "HOST", "STORE", "KERNEL", "STATUS"], rows))
    else:
        lines.append("remote VTEPs (flood list): none")
    lines.append("")
    if peers["entries"]:
        rows = []
        for entry in peers["entries"]:
            seen = entry["kernel"] or entry["store"]
            if entry["match"]:
                status = "ok"
            elif entry["store"] is None:
                status = "not in store"
            elif entry["kernel"] is None:
                status = "missing in kernel"
            else:
                status = f"differs (kernel: {entry['kernel']['vtep']} {','.join(entry['kernel']['addresses'])})"
            rows.append(
                [entry["mac"], seen["vtep"], ",".join(seen["addresses"]) or "-", cell(entry.get("host")), status]
            )
        lines.append(table(["MAC", "VTEP", "ADDRESSES", "HOST", "STATUS"], rows))
    else:
        learned = " (learning is on: the kernel learns remote MACs itself)" if peers["learning"] else ""
        lines.append(f"remote FDB/neighbour entries: none{learned}")
    device = peers["device"]
    lines.append("")
    if "ports" in device:  # encap=gretap: one port per peer
        missing = device["missing"]
        state = f"MISSING in the kernel: {', '.join(missing)}" if missing else "all present"
        lines.append(f"gretap ports {', '.join(device['ports'])}: {state}")
    elif device["kernel"] is None:
        lines.append(f"device {device['name']}: MISSING in the kernel")
    else:
        kernel = device["kernel"]
        summary = (
            f"vni {kernel['vni']}, port {kernel['port']}, local {cell(kernel['local'])}, "
            f"remote/group {cell(kernel['destination'])}, learning {'on' if kernel['learning'] else 'off'}, "
            f"mtu {kernel['mtu']}, {'up' if kernel['up'] else 'DOWN'}"
        )
        differs = "; differs from the store: " + ", ".join(device["differences"]) if device["differences"] else ""
        lines.append(f"device {device['name']}: {summary}{differs}")
    lines.append(
        "result: the kernel matches the store"
        if peers["match"]
        else "result: the kernel does NOT match the store; `vxlanpy gc` (single host) or a plugin restart resyncs it"
    )
    return "\n".join(lines)


NODE_COLUMNS = ("HOST", "HOSTNAME", "VTEP", "STATE", "NETWORKS", "ENDPOINTS", "ADDRESSES")


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def node_state(node: Row, now: float) -> str:
    """ "alive", or "expired" with when: the lease runs out at most a TTL after the last refresh of the record."""
    if node.get("state") == "alive":
        return "alive (this host)" if node.get("this_host") else "alive"
    when = node.get("expired_at") or node.get("last_seen")
    if not isinstance(when, (int, float)):
        return "expired (when unknown: no node record)"
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(when))
    return f"expired {stamp} ({_ago(now - when)})"


def node_table(nodes: list[Row], now: float) -> str:
    rows = [
        [
            str(node["id"]),
            str(node.get("hostname") or "-"),
            (",".join(node.get("vteps") or []) or "-") + (f" wg:{node['tunnel']}" if node.get("tunnel") else ""),
            node_state(node, now),
            str(node.get("networks", 0)),
            str(node.get("endpoints", 0)),
            str(len(node.get("addresses") or [])),
        ]
        for node in nodes
    ]
    return table(NODE_COLUMNS, rows)
