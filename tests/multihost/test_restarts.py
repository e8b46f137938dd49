"""dockerd restarts on a host of the cluster while containers run, with and without live-restore (issue 5).

One network (vxlanpy IPAM, VNI 320) on h1 and h2; h1's dockerd is restarted (SIGTERM, wait, start, in the same
mount namespace, as an init system would: see Dockerd.restart).  After each restart what a user sees is checked
(containers running or not, pings across hosts), and `state_problems` (the multi-host counterpart of
tests/e2e/test_reliability.py's `leaks()`) requires that h1's kernel links, the plugin's store and publication in
etcd (hosts/h1/endpoints/, live/320/ep/h1/), its address claims and IPAM reservations, h2's FDB and neighbour
entries and the plugin's own kernel-against-etcd check (/vxlanpy/peers, both hosts) hold exactly what h1's
running containers need.

h1's daemon.json (live-restore) is put back after each test whatever its outcome (`h1` fixture); etcd, the
plugins and the labelled containers and networks are restored/removed by conftest.py as after any test.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import pytest

from .cluster import (
    Cluster,
    Host,
    container_address,
    container_pid,
    icmp_echo,
    netns_pids,
    netns_socket,
    ping_until,
    plugin_get,
    process_name,
    wait_for,
)

SUBNET = "10.64.0.0/24"
VNI = 320
ZERO_MAC = "00:00:00:00:00:00"
# busybox `sleep` as PID 1 ignores SIGTERM, so each dockerd stop would wait 10 s per container: exit on TERM.
SERVE = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
CONVERGE = 5.0  # seconds allowed for entries to appear or vanish after a change

CreateNetwork = Callable[..., dict[str, Any]]


# --------------------------------------------------------------------------------------------- fixtures


def _leftover_mount_namespace(host: Host) -> str | None:
    """The mount namespace of a containerd shim still running in the host (live-restore containers), if any."""
    for pid in netns_pids(host.netns):
        if process_name(pid).startswith("containerd-shim"):
            return f"/proc/{pid}/ns/mnt"
    return None


@pytest.fixture
def h1(vx_cluster: Cluster) -> Iterator[Host]:
    """h1, whose dockerd the test may reconfigure and restart: afterwards dockerd runs again, without
    live-restore and with its original daemon.json, whatever the test did or where it failed."""
    host = vx_cluster["h1"]
    saved = dict(host.dockerd.config)
    yield host
    dockerd = host.dockerd
    if not host.plugin.alive:
        host.plugin.start()  # dockerd's cleanup of stopped containers goes through it
    if not dockerd.alive:
        dockerd.config = saved
        # Containers kept by live-restore are only reachable from their own mount namespace (shim sockets).
        dockerd.start(mount_namespace=_leftover_mount_namespace(host))
    elif dockerd.config != saved or host.docker.info().get("LiveRestoreEnabled"):
        # A SIGHUP only changes the options the file names: say false explicitly, then put the file back.
        dockerd.reload({**saved, "live-restore": False})
        assert wait_for(lambda: not host.docker.info().get("LiveRestoreEnabled"), timeout=10), (
            "h1's dockerd did not turn live-restore off on reload"
        )
        dockerd.config = saved
        dockerd.write_config()


# --------------------------------------------------------------------------------------------- helpers


def plugin_logs(cluster: Cluster, lines: int = 30) -> str:
    return "\n".join(f"--- vxlanpy log of {h.name}:\n{h.plugin.log_tail(lines)}" for h in cluster.hosts[:2])


def dockerd_log(host: Host, lines: int = 30) -> str:
    return f"--- dockerd log of {host.name}:\n{host.dockerd.log_tail(lines)}"


def run(host: Host, network: str, **kw: Any) -> Any:
    kw.setdefault("command", SERVE)
    return host.run_container(network, **kw)


def vx_links(host: Host) -> dict[str, str | None]:
    """Every vxlanpy link in the host namespace (vxbr-, vxlan-, vxh-, vxc-) -> its master."""
    return {
        link["ifname"]: link.get("master")
        for link in host.json(["ip", "-j", "link", "show"])
        if str(link.get("ifname", "")).startswith(("vxbr-", "vxlan-", "vxh-", "vxc-"))
    }


def running_endpoints(host: Host, network: str) -> dict[str, tuple[str, str]]:
    """Endpoint id -> (IPv4 address, MAC) of the running containers of `host` on `network`, as Docker sees them."""
    found = {}
    for container in host.docker.containers.list():
        settings = container.attrs["NetworkSettings"]["Networks"].get(network)
        if settings and settings.get("EndpointID"):
            found[settings["EndpointID"]] = (settings["IPAddress"], str(settings["MacAddress"]).lower())
    return found


def remote_entries(observer: Host, vtep: str) -> tuple[set[str], dict[str, str]]:
    """On `observer`: the MACs its vxlan-VNI sends to `vtep` (flood entry left out), and its PERMANENT
    neighbour entries on vxbr-VNI (IP -> MAC)."""
    macs = {
        entry["mac"].lower()
        for entry in observer.fdb(f"vxlan-{VNI}")
        if entry.get("dst") == vtep and entry["mac"] != ZERO_MAC
    }
    neighbours = {
        entry["dst"]: str(entry.get("lladdr", "")).lower()
        for entry in observer.neigh(f"vxbr-{VNI}")
        if "PERMANENT" in entry.get("state", [])
    }
    return macs, neighbours


def state_problems(cluster: Cluster, host: Host, peer: Host, network: str) -> list[str]:
    """What differs from exactly what `host`'s running containers on `network` need, on `host` (kernel links,
    the plugin's store and its publication in etcd), on `peer` (FDB and neighbour entries) and in the plugin's
    own comparison of kernel and store (/vxlanpy/peers); [] when everything agrees."""
    problems: list[str] = []
    expected = running_endpoints(host, network)
    links = vx_links(host)
    want_links = {f"vxbr-{VNI}", f"vxlan-{VNI}"} | {f"vxh-{endpoint[:11]}" for endpoint in expected}
    problems += [f"{host.name}: leaked link {name}" for name in sorted(set(links) - want_links)]
    problems += [f"{host.name}: missing link {name}" for name in sorted(want_links - set(links))]
    problems += [
        f"{host.name}: {name} is not a port of vxbr-{VNI} (master {master})"
        for name, master in sorted(links.items())
        if name.startswith("vxh-") and name in want_links and master != f"vxbr-{VNI}"
    ]
    prefix = "/vxlanpy"
    stored = {key.rsplit("/", 1)[1] for key in cluster.etcd.get_prefix(f"{prefix}/hosts/{host.name}/endpoints/")}
    published = {key.rsplit("/", 1)[1] for key in cluster.etcd.get_prefix(f"{prefix}/live/{VNI}/ep/{host.name}/")}
    for what, have in (("store (hosts/*/endpoints)", stored), ("etcd publication (live/*/ep)", published)):
        problems += [
            f"{host.name}: {what} keeps endpoint {e[:12]} of no running container" for e in have - set(expected)
        ]
        problems += [
            f"{host.name}: {what} lacks endpoint {e[:12]} of a running container" for e in set(expected) - have
        ]
    # Addresses: the segment's claims (addresses/VNI/IP = host/endpoint) and the IPAM reservations of this host.
    want_addresses = {address: endpoint for endpoint, (address, _) in expected.items()}
    claims = {
        key.rsplit("/", 1)[1]: value.partition("/")[2]
        for key, value in cluster.etcd.get_prefix(f"{prefix}/addresses/{VNI}/").items()
        if value.startswith(f"{host.name}/")
    }
    if claims != want_addresses:
        problems.append(f"{host.name}: address claims {claims}, expected {want_addresses}")
    pool = SUBNET.replace("/", "_")
    reserved = {
        key.rsplit("/", 1)[1]
        for key, value in cluster.etcd.get_prefix(f"{prefix}/ipam/addresses/{pool}/").items()
        if value.startswith(f"{host.name}/")
    }
    problems += [
        f"{host.name}: IPAM still reserves {a} for no running container" for a in sorted(reserved - set(want_addresses))
    ]
    problems += [
        f"{host.name}: IPAM does not reserve {a} of a running container" for a in sorted(set(want_addresses) - reserved)
    ]
    macs, neighbours = remote_entries(peer, host.vtep)
    want_macs = {mac for _, mac in expected.values()}
    problems += [f"{peer.name}: stale FDB entry {mac} -> {host.vtep}" for mac in sorted(macs - want_macs)]
    problems += [f"{peer.name}: no FDB entry {mac} -> {host.vtep}" for mac in sorted(want_macs - macs)]
    peer_local = {address for address, _ in running_endpoints(peer, network).values()}
    want_neighbours = {address: mac for address, mac in expected.values()}
    for address, mac in sorted(neighbours.items()):
        if address not in want_neighbours and address not in peer_local:
            problems.append(f"{peer.name}: stale neighbour entry {address} {mac}")
    for address, mac in sorted(want_neighbours.items()):
        if neighbours.get(address) != mac:
            problems.append(f"{peer.name}: neighbour {address} is {neighbours.get(address)}, expected {mac}")
    for side in (host, peer):
        network_id = side.docker.networks.get(network).id
        status, body = plugin_get(str(side.plugin.socket_path), f"/vxlanpy/peers/{network_id}")
        if status != 200 or not isinstance(body, dict) or body.get("match") is not True:
            problems.append(f"{side.name}: the plugin finds kernel and etcd differ (/vxlanpy/peers): {status} {body}")
    return problems


def assert_converges(cluster: Cluster, host: Host, peer: Host, network: str, when: str) -> None:
    converged = wait_for(lambda: not state_problems(cluster, host, peer, network), timeout=CONVERGE, interval=0.2)
    if converged:
        return
    found = state_problems(cluster, host, peer, network)
    pytest.fail(
        f"{when}: {host.name} and {peer.name} still do not hold exactly what {host.name}'s running containers "
        f"need after {CONVERGE:.0f} s:\n  " + "\n  ".join(found) + f"\n{plugin_logs(cluster)}\n{dockerd_log(host)}"
    )


def assert_pings(source: Any, target: str, label: str, cluster: Cluster, timeout: float = 10.0) -> None:
    ok, output = ping_until(source, target, timeout=timeout)
    assert ok, f"{label} ({target}) does not answer: {output.strip()}\n{plugin_logs(cluster)}"


def state(host: Host, container: Any) -> tuple[str, int]:
    container = host.docker.containers.get(container.id)
    return container.status, int(container.attrs["State"]["Pid"])


class PingLoop:
    """ICMP echo requests every `interval` s sent from inside a container's network namespace by the test itself
    (not through dockerd, which is what restarts), and the replies, matched by sequence number."""

    def __init__(self, container: Any, target: str, interval: float = 0.05) -> None:
        self.target = target
        self.interval = interval
        self.sock = netns_socket(f"/proc/{container_pid(container)}/ns/net", socket.AF_INET, socket.SOCK_RAW,
                                 socket.IPPROTO_ICMP)  # fmt: skip
        self.sock.settimeout(interval / 2)
        self.ident = secrets.randbelow(0xFFFF)
        self.sent: dict[int, float] = {}
        self.replied: set[int] = set()
        self._sending = threading.Event()
        self._sending.set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ping-{target}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seq, next_send = 0, time.monotonic()
        while not self._done.is_set():
            now = time.monotonic()
            if self._sending.is_set() and now >= next_send:
                seq += 1
                try:
                    self.sock.sendto(icmp_echo(self.ident, seq & 0xFFFF), (self.target, 0))
                except OSError:
                    pass  # counted as lost
                self.sent[seq] = now
                next_send += self.interval
            try:
                packet, (source, _) = self.sock.recvfrom(2048)
            except (TimeoutError, OSError):
                continue
            header = (packet[0] & 0x0F) * 4
            if source != self.target or len(packet) < header + 8:
                continue
            kind, _, _, ident, reply_seq = struct.unpack_from("!BBHHH", packet, header)
            if kind == 0 and ident == self.ident:
                self.replied.add(reply_seq)

    def stop_sending(self) -> None:
        self._sending.clear()

    def stop(self, grace: float = 1.0) -> list[int]:
        """Stop sending, wait `grace` s for the last replies; returns the sequence numbers never answered."""
        self.stop_sending()
        time.sleep(grace)
        self._done.set()
        self._thread.join(timeout=5)
        self.sock.close()
        return sorted(seq for seq in self.sent if (seq & 0xFFFF) not in self.replied)

    def summary(self, lost: list[int]) -> str:
        answered = sorted(self.sent[seq] for seq in self.sent if (seq & 0xFFFF) in self.replied)
        gap = max((b - a for a, b in pairwise(answered)), default=float("inf"))
        return (
            f"{len(self.sent)} echo requests every {self.interval * 1000:.0f} ms, {len(lost)} lost {lost[:40]}, "
            f"longest gap between answered requests {gap * 1000:.0f} ms"
        )


# --------------------------------------------------------------------------------------------- tests


def new_container_talks(cluster: Cluster, h1: Host, name: str, remote: Any, remote_ip: str) -> Any:
    """Start a new container on h1 and assert it pings h2's container both ways; returns it."""
    newcomer = run(h1, name)
    assert_pings(newcomer, remote_ip, "a new container on h1 -> h2", cluster)
    assert_pings(remote, container_address(newcomer, name)[0], "h2 -> a new container on h1", cluster)
    return newcomer


def test_dockerd_restart_without_live_restore(
    vx_cluster: Cluster, h1: Host, create_network: CreateNetwork, capsys: pytest.CaptureFixture[str]
) -> None:
    name = create_network(subnet=SUBNET, vni=VNI, hosts=("h1", "h2"))["h1"].name
    h2 = vx_cluster["h2"]
    always = run(h1, name, restart_policy={"Name": "always"})
    plain = run(h1, name)
    remote = run(h2, name)
    remote_ip = container_address(remote, name)[0]
    plain_ip, plain_mac, _ = container_address(plain, name)
    plain_veth = f"vxh-{plain.attrs['NetworkSettings']['Networks'][name]['EndpointID'][:11]}"
    assert_pings(always, remote_ip, "before the restart, h1 -> h2", vx_cluster)
    assert_converges(vx_cluster, h1, h2, name, "before the restart")

    started = time.monotonic()
    h1.dockerd.restart()
    took = time.monotonic() - started
    with capsys.disabled():
        print(f"\nh1's dockerd restarted (no live-restore) in {took:.1f}s")

    assert name in {n.name for n in h1.docker.networks.list()}, "the network is gone from h1 after the restart"
    assert wait_for(lambda: state(h1, always)[0] == "running", timeout=10), (
        f"the --restart always container is {state(h1, always)[0]} after the restart\n{dockerd_log(h1)}"
    )
    assert state(h1, plain)[0] == "exited", f"the container without restart policy is {state(h1, plain)[0]}"
    # Before anything new starts (it may take the freed address, and so the same MAC): the stopped container's
    # veth and entries are gone, on h1 and on h2, and nothing else is left over.
    assert_converges(vx_cluster, h1, h2, name, "after the restart")
    assert plain_veth not in vx_links(h1), f"{plain_veth} of the stopped container is still on h1"
    macs, neighbours = remote_entries(h2, h1.vtep)
    assert plain_mac not in macs and plain_ip not in neighbours, (plain_mac, plain_ip, macs, neighbours)

    assert_pings(h1.docker.containers.get(always.id), remote_ip, "the restarted --restart always container -> h2",
                 vx_cluster)  # fmt: skip
    always_ip = container_address(h1.docker.containers.get(always.id), name)[0]
    assert_pings(remote, always_ip, "h2 -> the restarted --restart always container", vx_cluster)
    new_container_talks(vx_cluster, h1, name, remote, remote_ip)
    assert_converges(vx_cluster, h1, h2, name, "with a new container after the restart")


@pytest.mark.smoke
def test_dockerd_restart_with_live_restore_keeps_containers_talking(
    vx_cluster: Cluster, h1: Host, create_network: CreateNetwork, capsys: pytest.CaptureFixture[str]
) -> None:
    name = create_network(subnet=SUBNET, vni=VNI, hosts=("h1", "h2"))["h1"].name
    h2 = vx_cluster["h2"]
    h1.dockerd.reload({"live-restore": True})  # as `systemctl reload docker` after editing daemon.json
    assert wait_for(lambda: h1.docker.info().get("LiveRestoreEnabled"), timeout=10), "live-restore did not take"
    old = run(h1, name)
    stay = run(h1, name)
    remote = run(h2, name)
    remote_ip = container_address(remote, name)[0]
    old_ip, old_mac, _ = container_address(old, name)
    for container in (old, stay):
        assert_pings(container, remote_ip, "before the restart, h1 -> h2", vx_cluster)
    assert_converges(vx_cluster, h1, h2, name, "before the restart")
    pids = {c.name: state(h1, c)[1] for c in (old, stay)}

    loops = {c.name: PingLoop(c, remote_ip) for c in (old, stay)}
    down: dict[str, Any] = {}

    def while_down() -> None:
        down["alive"] = {n: os.path.exists(f"/proc/{pid}") for n, pid in pids.items()}
        down["sent"] = {n: len(loop.sent) for n, loop in loops.items()}
        time.sleep(1.0)  # a second without dockerd at all
        down["replied"] = {n: len(loop.replied) for n, loop in loops.items()}

    try:
        started = time.monotonic()
        h1.dockerd.restart(while_down=while_down)
        took = time.monotonic() - started
        time.sleep(1.0)  # and a second after it is back, while it restores its containers
    finally:
        for loop in loops.values():
            loop.stop_sending()
        lost = {n: loop.stop() for n, loop in loops.items()}
    report = "; ".join(f"{n}: {loops[n].summary(lost[n])}" for n in loops)
    with capsys.disabled():
        print(f"\nh1's dockerd restarted with live-restore in {took:.1f}s; pings from h1 to h2 meanwhile: {report}")
    assert all(down["alive"].values()), f"containers died while dockerd was down: {down}"
    for n, loop in loops.items():
        assert len(loop.sent) > 20, f"{n}: the ping loop hardly ran: {report}"
        assert down["replied"][n] > down["sent"][n], f"{n}: no reply while dockerd was down: {down}, {report}"
        assert len(lost[n]) <= 2, f"{n} lost pings to h2 across the restart: {report}\n{plugin_logs(vx_cluster)}"
    for container in (old, stay):
        status, pid = state(h1, container)
        assert (status, pid) == ("running", pids[container.name]), (
            f"{container.name} is {status} with pid {pid} after the restart (was running with pid "
            f"{pids[container.name]}): live-restore did not keep it\n{dockerd_log(h1)}"
        )
    assert_converges(vx_cluster, h1, h2, name, "after the live-restore restart")

    # The restored containers are managed as before: stopping one removes its entries everywhere.
    h1.docker.containers.get(old.id).stop(timeout=5)
    assert_converges(vx_cluster, h1, h2, name, "after stopping a container restored by live-restore")
    macs, neighbours = remote_entries(h2, h1.vtep)
    assert old_mac not in macs and old_ip not in neighbours, (old_mac, old_ip, macs, neighbours)
    h1.docker.containers.get(old.id).remove()
    assert_pings(h1.docker.containers.get(stay.id), remote_ip, "a restored container -> h2", vx_cluster)
    new_container_talks(vx_cluster, h1, name, remote, remote_ip)
    assert_converges(vx_cluster, h1, h2, name, "with a new container after the live-restore restart")


def test_plugin_restarted_while_dockerd_is_down(
    vx_cluster: Cluster, h1: Host, create_network: CreateNetwork, capsys: pytest.CaptureFixture[str]
) -> None:
    name = create_network(subnet=SUBNET, vni=VNI, hosts=("h1", "h2"))["h1"].name
    h2 = vx_cluster["h2"]
    always = run(h1, name, restart_policy={"Name": "always"})
    plain = run(h1, name)
    remote = run(h2, name)
    remote_ip = container_address(remote, name)[0]
    assert_pings(always, remote_ip, "before the restart, h1 -> h2", vx_cluster)

    h1.plugin.kill9()
    started = time.monotonic()
    timings: dict[str, float] = {}

    def while_down() -> None:
        timings["dockerd stopped"] = time.monotonic() - started
        h1.plugin.start()
        timings["plugin started"] = time.monotonic() - started

    h1.dockerd.restart(while_down=while_down)
    timings["dockerd started"] = time.monotonic() - started
    with capsys.disabled():
        print("\nplugin killed, then h1's dockerd stopped and started around a plugin start: "
              + ", ".join(f"{k} after {v:.1f}s" for k, v in timings.items()))  # fmt: skip

    assert wait_for(lambda: state(h1, always)[0] == "running", timeout=10), (
        f"the --restart always container is {state(h1, always)[0]}\n{dockerd_log(h1)}\n{plugin_logs(vx_cluster)}"
    )
    assert state(h1, plain)[0] == "exited", f"the container without restart policy is {state(h1, plain)[0]}"
    assert_converges(vx_cluster, h1, h2, name, "after the plugin and dockerd restarts")
    always = h1.docker.containers.get(always.id)
    assert_pings(always, remote_ip, "the restarted --restart always container -> h2", vx_cluster)
    newcomer = new_container_talks(vx_cluster, h1, name, remote, remote_ip)
    assert_pings(remote, container_address(always, name)[0], "h2 -> the --restart always container", vx_cluster)
    assert_converges(vx_cluster, h1, h2, name, "with a new container")
    newcomer.remove(force=True)
    assert_converges(vx_cluster, h1, h2, name, "after removing the new container")
