"""NetlinkWireGuard against the real kernel and the real wg and wireguard-go, inside throwaway network namespaces.

Each "host" is a namespace on one underlay bridge (test_netlink.Lab) with its WireGuard interface made by
NetlinkWireGuard, an encrypted network's VXLAN device on top (local = the tunnel address, port 4790, peers = the
other hosts' tunnel addresses), a bridge and a "container": the datapath of `-o encrypted`, without Docker.

Which backends run depends on the kernel: wireguard-go always (a test forces it even where the kernel has
WireGuard), kernel WireGuard where the kernel ships it (Debian's kernels; scripts/vm-run runs this tier in such a
guest).  On a kernel without it (this project's development machine) the tests instead assert the fallback to
wireguard-go and the refusal of a forced kernel backend.  The first test checks that the choice matches what the
kernel ships, so neither set is ever silently skipped.

wireguard-go's UAPI sockets (/var/run/wireguard/NAME.sock) are shared by every namespace here: each host's
interface has a name of its own.  Every interface is removed at teardown (that stops its wireguard-go), and the
tests check that nothing is left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from vxlanpy.dataplane.wireguard import UAPI_DIR, NetlinkWireGuard
from vxlanpy.dataplane.wireguard_config import is_key
from vxlanpy.encryption_base import (
    BACKEND_KERNEL,
    BACKEND_USERSPACE,
    ENCRYPTED_VXLAN_PORT,
    NO_WIREGUARD,
    WG_OVERHEAD_V4,
    WireGuardPeer,
)
from vxlanpy.errors import DataplaneError
from vxlanpy.models import Network

from .conftest import Namespaces
from .kernel_modules import kernel_ships, module_loads
from .test_gretap import full_size_datagram_crosses
from .test_netlink import UNDERLAY_A, UNDERLAY_B, Lab, link, make_network, must_link, ping, run, unreachable
from .test_netlink import pytestmark as netlink_marks

pytestmark = [
    *netlink_marks,
    pytest.mark.skipif(
        not (shutil.which("wg") and shutil.which("wireguard-go")),
        reason="needs wireguard-tools (wg) and wireguard-go",
    ),
]

UNDERLAY_C = "10.99.0.3"
PORT = 51820
WG_MTU = 1500 - WG_OVERHEAD_V4  # on the Lab's 1500-byte underlay
INNER_MTU = WG_MTU - 50  # VXLAN over IPv4 inside the tunnel
MESH_SECONDS = 10


KERNEL_WG = module_loads("wireguard")
BACKENDS = [BACKEND_USERSPACE, BACKEND_KERNEL] if KERNEL_WG else [BACKEND_USERSPACE]


def test_kernel_wireguard_is_found_exactly_when_the_kernel_ships_it() -> None:
    assert KERNEL_WG == kernel_ships("wireguard"), (
        f"wireguard {'loads' if KERNEL_WG else 'does not load'} but the kernel's module lists "
        f"{'do not list' if KERNEL_WG else 'list'} it"
    )


# -- what is left behind ------------------------------------------------------------------------------------


def wireguard_go_processes(name: str) -> list[int]:
    """Live (not zombie) wireguard-go processes serving interface `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and len(argv) >= 2 and argv[0].endswith(b"wireguard-go") and argv[1] == name.encode():
            found.append(int(entry.name))
    return found


def leftovers(ns: str, name: str) -> list[str]:
    found = []
    if link(ns, name) is not None:
        found.append(f"link {name}")
    if (UAPI_DIR / f"{name}.sock").exists():
        found.append(f"socket {UAPI_DIR / name}.sock")
    found += [f"wireguard-go pid {pid}" for pid in wireguard_go_processes(name)]
    return found


# -- the lab ------------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    """Wait until `condition` holds, at most `seconds` (then go on: what follows checks the outcome)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


@dataclass
class Host:
    ns: str
    wireguard: NetlinkWireGuard
    interface: str
    key: Path
    public_key: str
    underlay: IPv4Address
    tunnel: IPv4Address
    network: Network | None = None
    container: str | None = None

    def as_peer(self) -> WireGuardPeer:
        return WireGuardPeer(self.public_key, self.underlay, PORT, self.tunnel)


class WireGuardLab:
    """Hosts joined by a veth underlay, each with its WireGuard interface (named apart: see the module's doc)."""

    def __init__(self, namespaces: Namespaces, tmp_path: Path, backend: str) -> None:
        self.lab = Lab(namespaces)
        self.namespaces = namespaces
        self.tmp_path = tmp_path
        self.backend = backend
        self.tag = secrets.token_hex(3)
        self.hosts: list[Host] = []

    def host(self, underlay: str, tunnel: str) -> Host:
        ns = self.lab.host(underlay)
        name = f"wg{self.tag}{len(self.hosts)}"
        wireguard = NetlinkWireGuard(ns, backend=self.backend)
        self.namespaces.close_later(lambda: wireguard.remove_interface(name))
        state_dir = self.tmp_path / name
        state_dir.mkdir(mode=0o700)
        key = state_dir / "wireguard.key"
        public_key = wireguard.generate_key(key)
        assert wireguard.ensure_interface(name, key, PORT, ip_address(tunnel), 16, WG_MTU) == self.backend
        host = Host(ns, wireguard, name, key, public_key, IPv4Address(underlay), IPv4Address(tunnel))
        self.hosts.append(host)
        return host

    def mesh(self) -> float:
        """Every host a peer of every other, with their first handshakes started one host at a time; returns how
        long until every pair had shaken hands.

        A peer added with a persistent keepalive gets a keepalive at once, which starts a handshake.  Were both
        ends of a pair to start one at the same moment, the two would cross: each answers the other's and drops
        the answer to its own; WireGuard rate-limits the next initiation to 5 s after the last handshake message
        it sent, and wireguard-go (0.0.20220316) was seen to end up sending on a session its peer does not have.
        In the cluster a joining host configures its peers before it publishes its record, so its own handshakes
        have been dropped (nobody knows its key yet) before the other hosts add it and start theirs.  Here all
        peers are first added without keepalive (nothing is sent), then each host in turn gets the keepalive
        and its handshakes complete before the next one's start."""
        started = time.monotonic()
        for keepalive in (0, 25):
            for host in self.hosts:
                others = [other for other in self.hosts if other is not host]
                host.wireguard.sync_peers(host.interface, [other.as_peer() for other in others], keepalive)
                if keepalive:
                    wait_for(lambda host=host: self.handshaken(host), seconds=MESH_SECONDS)
                    assert self.handshaken(host), f"no handshake after {MESH_SECONDS} s\n{self.describe()}"
        elapsed = time.monotonic() - started
        print(f"\nhandshakes of {len(self.hosts)} hosts ({self.backend}) done after {elapsed:.2f} s")
        return elapsed

    def handshaken(self, host: Host) -> bool:
        state = host.wireguard.state(host.interface)
        return state is not None and len(state.handshakes) == len(self.hosts) - 1 and all(state.handshakes.values())

    def describe(self) -> str:
        """What a failure report needs: each host's `wg show`, UDP sockets and WireGuard link."""
        parts = []
        for host in self.hosts:
            for argv in (
                ("wg", "show", host.interface),
                ("ss", "-uanp"),
                ("ip", "-s", "link", "show", "dev", host.interface),
            ):
                result = run(host.ns, *argv, check=False)
                parts.append(f"[{host.ns}] {' '.join(argv)}:\n{result.stdout}{result.stderr}")
        return "\n".join(parts)

    def encrypted_network(self, vni: int = 4242) -> None:
        """On every host: the VXLAN device over the tunnel, its bridge, and a container at 192.168.77.(11+i)."""
        for index, host in enumerate(self.hosts):
            others = tuple(str(other.tunnel) for other in self.hosts if other is not host)
            host.network = make_network(
                vni, dev=host.interface, local=str(host.tunnel), dstport=ENCRYPTED_VXLAN_PORT, mtu=INNER_MTU,
                peers=others,
            )  # fmt: skip
            self.lab.links[host.ns].ensure_network(host.network)
            host.container = self.lab.container(host.ns, host.network, f"192.168.77.{11 + index}/24")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def wg_lab(namespaces: Namespaces, tmp_path: Path, backend: str) -> Iterator[WireGuardLab]:
    yield WireGuardLab(namespaces, tmp_path, backend)


def container_of(host: Host) -> str:
    assert host.container is not None
    return host.container


# -- the datapath -------------------------------------------------------------------------------------------


def test_containers_on_three_hosts_reach_each_other_through_wireguard(wg_lab: WireGuardLab, backend: str) -> None:
    hosts = [
        wg_lab.host(UNDERLAY_A, "10.255.0.1"),
        wg_lab.host(UNDERLAY_B, "10.255.0.2"),
        wg_lab.host(UNDERLAY_C, "10.255.0.3"),
    ]
    wg_lab.mesh()
    wg_lab.encrypted_network()

    a, b, c = (container_of(host) for host in hosts)
    for source, address in ((a, "192.168.77.12"), (a, "192.168.77.13"), (b, "192.168.77.13")):
        assert ping(source, address), f"no reply from {address}\n{wg_lab.describe()}"
    assert full_size_datagram_crosses(c, a, "192.168.77.13", INNER_MTU), "a full-size datagram did not cross"

    kind = {BACKEND_KERNEL: "wireguard", BACKEND_USERSPACE: "tun"}[backend]
    for host in hosts:
        wg_link = must_link(host.ns, host.interface)
        assert wg_link["linkinfo"]["info_kind"] == kind and wg_link["mtu"] == WG_MTU and "UP" in wg_link["flags"]
        state = host.wireguard.state(host.interface)
        assert state is not None and state.backend == backend and state.public_key == host.public_key
        assert state.listen_port == PORT
        assert state.peers == {other.public_key: other.as_peer() for other in hosts if other is not host}
        assert all(when > 0 for when in state.handshakes.values()), f"a peer never shook hands: {state.handshakes}"
        # What `wg` itself shows: the keepalive that makes a new peer shake hands at once.
        keepalives = run(host.ns, "wg", "show", host.interface, "persistent-keepalive").stdout.split()
        assert keepalives[1::2] == ["25", "25"], keepalives
    # The VXLAN device sends to tunnel addresses on the inner port; the underlay sees only WireGuard's.
    vxlan = must_link(hosts[0].ns, "vxlan-4242")["linkinfo"]["info_data"]
    assert (vxlan["local"], vxlan["port"]) == ("10.255.0.1", ENCRYPTED_VXLAN_PORT)


def test_a_removed_peer_loses_the_path(wg_lab: WireGuardLab) -> None:
    host_a, host_b = wg_lab.host(UNDERLAY_A, "10.255.0.1"), wg_lab.host(UNDERLAY_B, "10.255.0.2")
    wg_lab.mesh()
    wg_lab.encrypted_network()
    assert ping(container_of(host_a), "192.168.77.12")

    host_a.wireguard.sync_peers(host_a.interface, [])

    state = host_a.wireguard.state(host_a.interface)
    assert state is not None and state.peers == {}
    assert run(host_a.ns, "wg", "show", host_a.interface, "peers").stdout.strip() == ""
    assert unreachable(container_of(host_a), "192.168.77.12"), "traffic still flows to a removed peer"
    assert unreachable(container_of(host_b), "192.168.77.11"), "a removed peer still reaches this host"


PROBE_SERVER = """
import socket
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("0.0.0.0", 7778))
print("ready", flush=True)
while True:
    data, sender = server.recvfrom(100)
    server.sendto(data, sender)
"""
PROBE_CLIENT = """
import json, socket, sys, time
address, seconds = sys.argv[1], float(sys.argv[2])
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.settimeout(0.01)
replies, start, sent = [], time.monotonic(), 0
print("ready", flush=True)
while time.monotonic() - start < seconds:
    client.sendto(str(sent).encode(), (address, 7778))
    sent += 1
    deadline = time.monotonic() + 0.01
    while time.monotonic() < deadline:
        try:
            client.recv(100)
            replies.append(time.monotonic() - start)
        except (TimeoutError, OSError):
            pass
print(json.dumps({"sent": sent, "replies": replies, "seconds": time.monotonic() - start}))
"""


def test_key_rotation_keeps_traffic_flowing(wg_lab: WireGuardLab, backend: str) -> None:
    """What `vxlanpy rotate-key` does on host A (new key file, set_private_key) and then, when its watch sees the
    new record, on host B (sync_peers with A's new key), three times under a stream of echo probes; the largest
    gap between replies is measured each time.  A's first packet after the switch starts a handshake under its new
    key, which B drops until it knows that key; B's new peer then starts one at once.  Should B's and A's cross
    (see WireGuardLab.mesh), A's next one waits for the 5 s rate limit: so the median is held to a second and
    the worst to one REKEY_TIMEOUT and a second."""
    host_a, host_b = wg_lab.host(UNDERLAY_A, "10.255.0.1"), wg_lab.host(UNDERLAY_B, "10.255.0.2")
    wg_lab.mesh()
    wg_lab.encrypted_network()
    assert ping(container_of(host_a), "192.168.77.12")
    server = subprocess.Popen(
        ["ip", "netns", "exec", container_of(host_b), sys.executable, "-c", PROBE_SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    gaps = []
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        for _ in range(3):
            old_key = host_a.public_key
            gap, answered, switched = rotation_gap(host_a, host_b)
            gaps.append(gap)
            print(
                f"\nkey rotation ({backend}): largest gap between replies {gap * 1000:.0f} ms (probe every 10 ms, "
                f"{answered} answered; switching both hosts took {switched * 1000:.0f} ms)"
            )
            assert host_a.public_key != old_key
            state_b = host_b.wireguard.state(host_b.interface)
            assert state_b is not None and list(state_b.peers) == [host_a.public_key]
    finally:
        server.kill()
        server.wait(timeout=10)

    assert sorted(gaps)[1] < 1.0, f"rotation stopped traffic for {[round(gap, 2) for gap in gaps]} s"
    assert max(gaps) < 6.0, f"rotation stopped traffic for {[round(gap, 2) for gap in gaps]} s"
    assert ping(container_of(host_a), "192.168.77.12")


def rotation_gap(host_a: Host, host_b: Host) -> tuple[float, str, float]:
    """Rotate A's key under a 4 s stream of probes from A's container to B's; (largest gap, answered, switch time)."""
    client = subprocess.Popen(
        ["ip", "netns", "exec", container_of(host_a), sys.executable, "-c", PROBE_CLIENT, "192.168.77.12", "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "ready"
        time.sleep(1.5)
        rotated_at = time.monotonic()
        host_a.public_key = host_a.wireguard.generate_key(host_a.key)
        host_a.wireguard.set_private_key(host_a.interface, host_a.key)
        host_b.wireguard.sync_peers(host_b.interface, [host_a.as_peer()])
        switched = time.monotonic() - rotated_at
        result = json.loads(client.communicate(timeout=30)[0])
    finally:
        client.kill()
        client.wait(timeout=10)
    replies = [0.0, *result["replies"], result["seconds"]]
    gap = max(later - earlier for earlier, later in zip(replies, replies[1:], strict=False))
    return gap, f"{len(result['replies'])}/{result['sent']}", switched


# -- the interface ------------------------------------------------------------------------------------------


def test_generate_key_makes_a_0600_key_that_replaces_the_old_one_whole(namespaces: Namespaces, tmp_path: Path) -> None:
    wireguard = NetlinkWireGuard(namespaces.new())
    key = tmp_path / "wireguard.key"
    umask = os.umask(0)  # the mode is given at creation, whatever the umask
    try:
        first = wireguard.generate_key(key)
        first_inode = key.stat().st_ino
        second = wireguard.generate_key(key)
    finally:
        os.umask(umask)

    assert is_key(first) and is_key(second) and first != second
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.stat().st_ino != first_inode, "the key was rewritten in place, not replaced by a rename"
    assert [path.name for path in tmp_path.iterdir()] == ["wireguard.key"]
    with key.open("rb") as private:
        derived = subprocess.run(["wg", "pubkey"], stdin=private, capture_output=True, text=True, check=True)
    assert derived.stdout.strip() == second == wireguard.public_key(key)


def test_ensure_interface_is_idempotent_corrects_drift_and_adopts_after_a_restart(
    wg_lab: WireGuardLab, backend: str
) -> None:
    host = wg_lab.host(UNDERLAY_A, "10.255.0.1")
    before = must_link(host.ns, host.interface)
    daemons = wireguard_go_processes(host.interface)
    assert len(daemons) == (1 if backend == BACKEND_USERSPACE else 0)

    run(host.ns, "ip", "addr", "add", "10.254.0.9/24", "dev", host.interface)
    run(host.ns, "ip", "link", "set", host.interface, "mtu", "1300", "down")
    run(host.ns, "wg", "set", host.interface, "listen-port", "40000")
    # A restarted plugin: a new object, the interface (and wireguard-go) still there.
    restarted = NetlinkWireGuard(host.ns, backend=backend)
    assert restarted.ensure_interface(host.interface, host.key, PORT, ip_address("10.255.0.1"), 16, WG_MTU) == backend

    after = must_link(host.ns, host.interface)
    assert after["ifindex"] == before["ifindex"] and wireguard_go_processes(host.interface) == daemons
    assert after["mtu"] == WG_MTU and "UP" in after["flags"]
    shown = json.loads(run(host.ns, "ip", "-j", "addr", "show", "dev", host.interface).stdout)[0]["addr_info"]
    assert [(entry["local"], entry["prefixlen"]) for entry in shown if entry["family"] == "inet"] == [
        ("10.255.0.1", 16)
    ]
    state = restarted.state(host.interface)
    assert state is not None and (state.listen_port, state.public_key) == (PORT, host.public_key)


def test_remove_interface_leaves_no_link_process_or_socket(wg_lab: WireGuardLab, backend: str) -> None:
    host = wg_lab.host(UNDERLAY_A, "10.255.0.1")
    assert leftovers(host.ns, host.interface) != []

    host.wireguard.remove_interface(host.interface)

    assert leftovers(host.ns, host.interface) == []
    assert host.wireguard.state(host.interface) is None
    host.wireguard.remove_interface(host.interface)  # absent: a no-op


def test_a_link_of_that_name_that_is_not_wireguard_is_refused_and_kept(namespaces: Namespaces, tmp_path: Path) -> None:
    ns = namespaces.new()
    name = f"wg{secrets.token_hex(3)}x"
    run(ns, "ip", "link", "add", name, "type", "bridge")
    wireguard = NetlinkWireGuard(ns, backend=BACKEND_USERSPACE)
    key = tmp_path / "wireguard.key"
    wireguard.generate_key(key)

    for attempt in (
        lambda: wireguard.ensure_interface(name, key, PORT, ip_address("10.255.0.1"), 16, WG_MTU),
        lambda: wireguard.remove_interface(name),
    ):
        with pytest.raises(DataplaneError) as refused:
            attempt()
        assert "is not a WireGuard interface (of kind bridge)" in str(refused.value)
        assert "VXLANPY_WG_INTERFACE" in str(refused.value)
    assert must_link(ns, name)["linkinfo"]["info_kind"] == "bridge"


def test_without_wireguard_go_userspace_is_refused_naming_what_to_install(
    namespaces: Namespaces, tmp_path: Path
) -> None:
    ns = namespaces.new()
    name = f"wg{secrets.token_hex(3)}y"
    wireguard = NetlinkWireGuard(ns, backend=BACKEND_USERSPACE, wireguard_go=str(tmp_path / "missing"))
    key = tmp_path / "wireguard.key"
    wireguard.generate_key(key)
    with pytest.raises(DataplaneError) as refused:
        wireguard.ensure_interface(name, key, PORT, ip_address("10.255.0.1"), 16, WG_MTU)
    assert str(refused.value) == NO_WIREGUARD
    assert leftovers(ns, name) == []


def probe_links(ns: str) -> list[str]:
    shown = json.loads(run(ns, "ip", "-j", "link", "show").stdout)
    return [entry["ifname"] for entry in shown if entry["ifname"].startswith("vxwgprobe")]


if not KERNEL_WG:

    def test_without_kernel_wireguard_wireguard_go_is_chosen_and_kernel_refused(
        namespaces: Namespaces, tmp_path: Path
    ) -> None:
        ns = namespaces.new()
        assert NetlinkWireGuard(ns).backend() == BACKEND_USERSPACE
        with pytest.raises(DataplaneError) as refused:
            NetlinkWireGuard(ns, backend=BACKEND_KERNEL).backend()
        assert "modprobe wireguard" in str(refused.value) and "wireguard-go" in str(refused.value)
        assert probe_links(ns) == [], "the probe left its link"

        name = f"wg{secrets.token_hex(3)}z"
        wireguard = NetlinkWireGuard(ns)
        namespaces.close_later(lambda: wireguard.remove_interface(name))
        key = tmp_path / "wireguard.key"
        wireguard.generate_key(key)
        assert wireguard.ensure_interface(name, key, PORT, ip_address("10.255.0.1"), 16, WG_MTU) == BACKEND_USERSPACE
        assert must_link(ns, name)["linkinfo"]["info_kind"] == "tun"

else:

    def test_with_kernel_wireguard_the_kernel_is_chosen_unless_userspace_is_forced(
        namespaces: Namespaces, tmp_path: Path
    ) -> None:
        ns = namespaces.new()
        assert NetlinkWireGuard(ns).backend() == BACKEND_KERNEL
        assert NetlinkWireGuard(ns, backend=BACKEND_USERSPACE).backend() == BACKEND_USERSPACE
        assert probe_links(ns) == [], "the probe left its link"

        key = tmp_path / "wireguard.key"
        NetlinkWireGuard(ns).generate_key(key)
        for chosen, kind in ((None, "wireguard"), (BACKEND_USERSPACE, "tun")):
            name = f"wg{secrets.token_hex(3)}{kind[0]}"
            wireguard = NetlinkWireGuard(ns, backend=chosen)
            namespaces.close_later(lambda wireguard=wireguard, name=name: wireguard.remove_interface(name))
            wireguard.ensure_interface(name, key, PORT, ip_address("10.255.0.1"), 16, WG_MTU)
            assert must_link(ns, name)["linkinfo"]["info_kind"] == kind
            wireguard.remove_interface(name)
            assert leftovers(ns, name) == []
