"""A three-host cluster on one machine: network namespaces, one dockerd per host, etcd, vxlanpy per host.

Layout (every name carries a per-session hex suffix, e.g. ``vxmh-ul-1a2b3c``)::

    vxmh-ul-<hex>            the underlay: Linux bridge ``ul0`` holding 10.250.0.254/24, where etcd listens
      ├─ veth ─ vxmh-h1-<hex> eth0 10.250.0.1/24   dockerd + vxlanpy "h1"
      ├─ veth ─ vxmh-h2-<hex> eth0 10.250.0.2/24   dockerd + vxlanpy "h2"
      └─ veth ─ vxmh-h3-<hex> eth0 10.250.0.3/24   dockerd + vxlanpy "h3"

Each host's dockerd runs in the host's network namespace *and* in a mount namespace of its own
(``ip netns exec NS unshare -m -- /bin/sh script``), where the script mounts the cgroup hierarchies again (``ip
netns exec`` remounts /sys), binds a private directory over ``/run/docker`` (so dockerd finds exactly that host's
vxlanpy at ``/run/docker/plugins/vxlanpy.sock``) and a tmpfs over ``/run/containerd`` (so each dockerd starts
its own containerd, whose shim sockets stay private), then execs dockerd with its own data and exec roots.

Everything lives under one short temporary directory ``/tmp/vxmh-<hex>`` (Unix socket paths must stay short).
Traffic only ever goes to addresses inside the namespaces created here.

This module is the Cluster facade; the parts live beside it, by concern: layout (names, addresses), netns
(commands, sockets and HTTP inside a namespace), processes (children in a session of their own), etcd_process,
dockerd (and the busybox image), plugin_process (vxlanpy), hosts, containers (what tests ask of a container),
packets (VXLAN, ARP, ICMP, captures) and convergence.  Every name the suites import from here still is.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.docker_cleanup import remove_labelled
from tests.plugin_socket import plugin_call, plugin_get
from tests.tiers import first_reason, missing_programs, needs_root

# The parts, by concern; every name the suites, tests/bench, tests/plugin and scripts/bench import from here.
from .containers import container_address, container_pid, exec_text, in_subnet, ping, ping_until
from .convergence import ConvergenceResult, measure_convergence, median, prepare_observer
from .dockerd import Dockerd, busybox_rootfs_tar, cgroup_mount_script, import_image
from .etcd_process import Etcd
from .hosts import Host
from .layout import (
    DRIVER,
    ETCD_IP,
    ETCD_PORT,
    ETCD_URL,
    HOST_BUSYBOX,
    HOST_NAMES,
    IMAGE,
    LABEL,
    LABELS,
    LEASE_TTL,
    MH_DIR,
    MODULE_LABEL,
    MODULE_LABELS,
    PREFIX,
    REPO_ROOT,
    UNDERLAY_PREFIX_LEN,
    VXLAN_PORT,
    docker,
    host_ip,
)
from .netns import netns_http, netns_path, netns_pids, netns_socket, run
from .packets import (
    Pinger,
    Sniffer,
    broadcast_arp_frame,
    first_echo_reply,
    icmp_echo,
    marked_frame,
    ping_df,
    send_udp,
    vxlan_packet,
)
from .plugin_process import Plugin, vxlanpy_command
from .processes import ManagedProcess, kill_pids, pid_alive, process_name, with_descendants

__all__ = [
    "DRIVER",
    "ETCD_IP",
    "ETCD_PORT",
    "ETCD_URL",
    "HOST_BUSYBOX",
    "HOST_NAMES",
    "IMAGE",
    "LABEL",
    "LABELS",
    "LEASE_TTL",
    "MH_DIR",
    "MODULE_LABEL",
    "MODULE_LABELS",
    "PREFIX",
    "REPO_ROOT",
    "UNDERLAY_PREFIX_LEN",
    "VXLAN_PORT",
    "Cluster",
    "ConvergenceResult",
    "Dockerd",
    "Etcd",
    "Host",
    "ManagedProcess",
    "Pinger",
    "Plugin",
    "Sniffer",
    "broadcast_arp_frame",
    "busybox_rootfs_tar",
    "cgroup_mount_script",
    "container_address",
    "container_pid",
    "docker",
    "exec_text",
    "first_echo_reply",
    "host_ip",
    "icmp_echo",
    "import_image",
    "in_subnet",
    "kill_pids",
    "marked_frame",
    "measure_convergence",
    "median",
    "missing_prerequisites",
    "netns_http",
    "netns_path",
    "netns_pids",
    "netns_socket",
    "ping",
    "ping_df",
    "ping_until",
    "plugin_call",
    "plugin_get",
    "prepare_observer",
    "process_name",
    "remove_stale_clusters",
    "run",
    "send_udp",
    "underlay_mac",
    "vxlan_packet",
    "vxlanpy_command",
    "wait_for",
    "with_descendants",
]


def underlay_mac(address: str) -> str:
    """A fixed, locally administered MAC for an underlay address (02:76:6d:68 = "vmh", then its last two octets),
    as the underlay bridge has: an outsider namespace made again for the same address gets the same MAC, so the
    hosts' ARP entry for it from an earlier test is not stale."""
    third, fourth = (int(octet) for octet in address.split(".")[2:])
    return f"02:76:6d:68:{third:02x}:{fourth:02x}"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Call `predicate` until it returns something truthy (returned) or `timeout` passes (returns the last)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def missing_prerequisites() -> str | None:
    """Why the multi-host suite cannot run here (naming what to install), or None."""
    return first_reason(
        lambda: needs_root("the multi-host suite (namespaces, dockerd, etcd)"),
        lambda: missing_programs("dockerd", "containerd", "etcd", "ip", "bridge", "unshare", "iptables", "mount"),
        lambda: "the docker SDK is not installed: pip install -e '.[test]'" if docker is None else None,
        lambda: None if HOST_BUSYBOX.exists() else f"{HOST_BUSYBOX} not found: apt-get install busybox-static",
        lambda: None if Path("/proc/self/ns/net").exists() else "this kernel has no network namespaces",
    )


# --------------------------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    workdir: Path = field(init=False)
    underlay: str = field(init=False)
    hosts: list[Host] = field(default_factory=list)
    etcd: Etcd = field(init=False)
    extra_netns: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)

    UNDERLAY_BRIDGE = "ul0"

    def __post_init__(self) -> None:
        self.workdir = Path(f"/tmp/{PREFIX}-{self.suffix}")
        self.underlay = f"{PREFIX}-ul-{self.suffix}"
        self.etcd = Etcd(self.underlay, self.workdir)
        for index, name in enumerate(HOST_NAMES, start=1):
            netns = f"{PREFIX}-{name}-{self.suffix}"
            hostdir = self.workdir / name
            dockerd = Dockerd(netns, hostdir)
            plugin = Plugin(
                name, netns, hostdir, dockerd.plugins_dir / "vxlanpy.sock", ETCD_URL, docker_socket=dockerd.socket_path
            )
            self.hosts.append(Host(name, index, netns, hostdir, dockerd, plugin))

    def __getitem__(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    @property
    def namespaces(self) -> list[str]:
        return [self.underlay, *(host.netns for host in self.hosts), *self.extra_netns]

    # -- building

    def build(self) -> None:
        started = time.monotonic()
        self.workdir.mkdir(mode=0o700)
        (self.workdir / "owner.pid").write_text(f"{os.getpid()}\n")
        self._build_underlay()
        for host in self.hosts:
            self._build_host_namespace(host)
        self.timings["namespaces"] = time.monotonic() - started
        self.etcd.start()
        self.timings["etcd"] = time.monotonic() - started
        rootfs = busybox_rootfs_tar()

        def start_host(host: Host) -> None:
            host.dockerd.start()
            import_image(host.docker, rootfs)

        self._parallel(start_host, self.hosts)
        self.timings["dockerd"] = time.monotonic() - started

    def start_plugins(self) -> None:
        started = time.monotonic()
        self._parallel(lambda host: host.plugin.start(), self.hosts)
        self.timings["plugins"] = time.monotonic() - started

    @staticmethod
    def _parallel(action: Callable[[Host], Any], hosts: Iterable[Host]) -> list[Any]:
        hosts = list(hosts)
        with ThreadPoolExecutor(max_workers=len(hosts) or 1) as pool:
            futures = [pool.submit(action, host) for host in hosts]
            return [future.result() for future in futures]

    def _build_underlay(self) -> None:
        ns = self.underlay
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # A fixed MAC: a bridge otherwise takes the lowest MAC of its ports, which changes when a port comes or
        # goes (e.g. the outsider namespace) and blackholes 10.250.0.254 (etcd) until the hosts' ARP caches expire.
        run(["ip", "-n", ns, "link", "add", self.UNDERLAY_BRIDGE, "address", underlay_mac(ETCD_IP), "type", "bridge"])
        run(["ip", "-n", ns, "addr", "add", f"{ETCD_IP}/{UNDERLAY_PREFIX_LEN}", "dev", self.UNDERLAY_BRIDGE])
        run(["ip", "-n", ns, "link", "set", self.UNDERLAY_BRIDGE, "up"])
        # A fresh namespace has no iptables rules; keep bridged underlay frames out of netfilter altogether.
        for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
            run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.bridge.{name}=0"], check=False)

    def _attach(self, netns: str, port: str, address: str, mac: str | None = None) -> None:
        """A veth from the underlay bridge (port `port`) to `netns`, where it is named eth0 and holds `address`
        (and `mac`, when given)."""
        ul = self.underlay
        run(["ip", "-n", ul, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns])
        if mac is not None:
            run(["ip", "-n", netns, "link", "set", "eth0", "address", mac])
        run(["ip", "-n", ul, "link", "set", port, "master", self.UNDERLAY_BRIDGE, "up"])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        run(["ip", "-n", netns, "addr", "add", f"{address}/{UNDERLAY_PREFIX_LEN}", "dev", "eth0"])
        run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", netns, "route", "add", "default", "via", ETCD_IP])

    def _build_host_namespace(self, host: Host) -> None:
        run(["ip", "netns", "add", host.netns])
        self._attach(host.netns, f"p-{host.name}", host.ip)
        run(["ip", "netns", "exec", host.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])

    @contextmanager
    def outsider(self, address: str = "10.250.0.99", label: str = "out") -> Iterator[str]:
        """A namespace on the underlay that is not a vxlanpy host (for spoofing tests); removed afterwards."""
        netns = f"{PREFIX}-{label}-{self.suffix}"
        port = f"p-{label}"
        run(["ip", "netns", "add", netns])
        self.extra_netns.append(netns)
        try:
            self._attach(netns, port, address, mac=underlay_mac(address))
            yield netns
        finally:
            run(["ip", "-n", self.underlay, "link", "del", port], check=False)
            run(["ip", "netns", "del", netns], check=False)
            self.extra_netns.remove(netns)

    # -- networks

    def create_network(
        self,
        *,
        subnet: str,
        vni: int,
        hosts: tuple[str, ...] = HOST_NAMES,
        ipam: str | None = "vxlanpy",
        name: str | None = None,
        options: dict[str, str] | None = None,
        gateway: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """{host name: docker Network}: the same vxlanpy network created on each of `hosts`, labelled LABELS (removed
        after the test) unless `labels` says otherwise."""
        name = name or f"{PREFIX}-net{vni}-{secrets.token_hex(3)}"
        opts = {"vni": str(vni), **(options or {})}
        made = {}
        for host_name in hosts:
            pool = docker.types.IPAMPool(subnet=subnet, gateway=gateway)
            ipam_config = (
                docker.types.IPAMConfig(driver=ipam, pool_configs=[pool])
                if ipam
                else docker.types.IPAMConfig(pool_configs=[pool])
            )
            made[host_name] = self[host_name].docker.networks.create(
                name,
                driver=DRIVER,
                options=opts,
                ipam=ipam_config,
                labels=dict(LABELS if labels is None else labels),
                check_duplicate=True,
            )
        return made

    # -- between tests

    def ensure_up(self, with_plugins: bool) -> None:
        """Put back what a test may have stopped: etcd, and (when vxlanpy is in use) every host's plugin."""
        if not self.etcd.alive:
            self.etcd.start()
        if with_plugins:
            self._parallel(lambda host: host.plugin.ensure_running(), self.hosts)

    def clean(self) -> list[str]:
        """Remove every labelled container on every host, then every labelled network."""
        problems: list[str] = []
        for result in self._parallel(lambda host: remove_labelled(host.docker, networks=False), self.hosts):
            problems.extend(result)
        for result in self._parallel(lambda host: remove_labelled(host.docker, containers=False), self.hosts):
            problems.extend(result)
        return problems

    # -- teardown

    def teardown(self) -> list[str]:
        """Remove everything the cluster made, whatever state it is in; returns what could not be removed."""
        problems: list[str] = []
        for host in self.hosts:
            if host.dockerd.client is not None and host.dockerd.alive:
                try:
                    if not host.plugin.alive and self.plugins_wanted:
                        host.plugin.start()  # vxlanpy networks can only be removed while it answers
                except Exception as exc:  # noqa: BLE001 - keep tearing down
                    problems.append(f"restarting vxlanpy on {host.name} for the cleanup: {exc}")
        if not self.etcd.alive and self.plugins_wanted:
            try:
                self.etcd.start()
            except Exception as exc:  # noqa: BLE001
                problems.append(f"restarting etcd for the cleanup: {exc}")
        for host in self.hosts:
            if host.dockerd.client is not None and host.dockerd.alive:
                try:
                    for label in (LABEL, MODULE_LABEL):
                        problems.extend(f"{host.name}: {p}" for p in remove_labelled(host.docker, label))
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"{host.name}: cleanup: {exc}")
        for host in self.hosts:
            host.plugin.stop()
        for host in self.hosts:  # the encrypted networks are gone: nothing of their WireGuard may be left
            left = host.remove_wireguard()
            if left:
                problems.append(f"{host.name}: left behind by vxlanpy's encryption, removed: {', '.join(left)}")
        self._parallel(lambda host: host.dockerd.stop(), self.hosts)
        self.etcd.stop()
        for netns in list(self.extra_netns):
            run(["ip", "netns", "del", netns], check=False)
        # Anything still running in our namespaces was started by us (containerd, shims): end it by pid.
        for netns in self.namespaces:
            pids = netns_pids(netns) if Path(netns_path(netns)).exists() else []
            if pids:
                everything = with_descendants(pids)
                names = ", ".join(f"{pid} ({process_name(pid)})" for pid in everything)
                problems.append(f"processes still running in {netns}, killed: {names}")
                kill_pids(everything)
        for netns in reversed(self.namespaces):
            if Path(netns_path(netns)).exists():
                result = run(["ip", "netns", "del", netns], check=False)
                if result.returncode != 0:
                    problems.append(f"ip netns del {netns}: {result.stderr.strip()}")
        keep = os.environ.get("VXMH_KEEP_LOGS")
        if keep:  # for debugging: keep every log (dockerd, vxlanpy, etcd) of the session
            target = Path(keep) / self.suffix
            for log in self.workdir.glob("**/*.log"):
                destination = target / log.relative_to(self.workdir)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(log, destination)
        mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(self.workdir) in line]
        for line in mounts:
            problems.append(f"mount left behind: {line}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.workdir.exists():
            problems.append(f"could not delete {self.workdir}")
        return problems

    plugins_wanted: bool = False


def remove_stale_clusters() -> list[str]:
    """Remove what an earlier, killed session left: namespaces vxmh-*-<hex> whose owner process is gone."""
    removed: list[str] = []
    listing = run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in listing.stdout.splitlines() if line.split()]
    suffixes = {name.rsplit("-", 1)[1] for name in names if name.startswith(f"{PREFIX}-") and name.count("-") == 2}
    for suffix in sorted(suffixes):
        owner = Path(f"/tmp/{PREFIX}-{suffix}/owner.pid")
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid and pid_alive(pid):
            continue  # another session is running right now
        for name in names:
            if name.startswith(f"{PREFIX}-") and name.endswith(f"-{suffix}"):
                kill_pids(with_descendants(netns_pids(name)))
                run(["ip", "netns", "del", name], check=False)
                removed.append(name)
        shutil.rmtree(f"/tmp/{PREFIX}-{suffix}", ignore_errors=True)
    return removed
