"""End-to-end harness: the real plugin process, the local Docker engine, and a test host in a namespace.

The whole e2e suite is skipped (with the reason) when not running as root or when no Docker engine answers.
Every container and network a test creates carries the label `vxlanpy.test=1`; they are removed after each
test whatever its outcome, and at the end of the session no vxlanpy link (vxbr-/vxlan-/vxh-) may remain; the
plugin's FORWARD hook (VXLANPY-FORWARD, VXLANPY-INTERNAL) is removed from the host's firewall once it has stopped.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker_cleanup import remove_forward_hook
from tests.tiers import mark_unavailable, needs_root

from .helpers import (
    DRIVER,
    E2E_DIR,
    HOST_BUSYBOX,
    IMAGE,
    LABELS,
    TESTHOST_HOST_IP,
    TESTHOST_PREFIX,
    IPRoute,
    PluginProcess,
    TestHost,
    addresses_in,
    busybox_rootfs_tar,
    docker,
    elf_is_static,
    ip_cmd,
    links,
    remove_labelled,
    remove_stale_testhosts,
    socket_answers,
    unique_name,
)

# --------------------------------------------------------------------------------------------- skipping


def _skip_reason() -> str | None:
    if (reason := needs_root("the e2e suite")) is not None:
        return reason
    if docker is None:
        return "the docker SDK is not installed: pip install -e '.[test]'"
    if IPRoute is None:
        return "pyroute2 is not installed: pip install -e '.[test]'"
    try:
        client = docker.from_env(version="auto", timeout=10)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means no usable engine
        return f"no Docker engine is reachable ({exc}); start dockerd or run ./scripts/test"
    return None


def _engine_major() -> int:
    client = docker.from_env(version="auto", timeout=10)
    try:
        return int(str(client.version().get("Version", "0")).split(".")[0])
    finally:
        client.close()


def _deselect_for_older_engines(config: pytest.Config, items: list[pytest.Item], ours: list[pytest.Item]) -> None:
    """Tests marked `min_engine(N)` exercise what engine N added: on an older engine they are deselected (they
    do not apply there), not skipped.  scripts/test runs the tier on every engine the README lists."""
    marked = [item for item in ours if item.get_closest_marker("min_engine") is not None]
    if not marked:
        return
    major = _engine_major()
    dropped = [item for item in marked if int(item.get_closest_marker("min_engine").args[0]) > major]  # type: ignore[union-attr]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if E2E_DIR in Path(str(item.path)).resolve().parents]
    if not ours:
        return
    reason = _skip_reason()
    if reason is None:
        _deselect_for_older_engines(config, items, ours)
        return
    mark_unavailable(ours, reason)


# --------------------------------------------------------------------------------------------- docker


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    client = docker.from_env(version="auto", timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> str:
    """A tiny image holding the host's static busybox, imported with `docker import` (no registry needed)."""
    if not HOST_BUSYBOX.exists():
        pytest.fail(f"{HOST_BUSYBOX} is missing: apt-get install busybox-static")
    if not elf_is_static(HOST_BUSYBOX.resolve()):
        pytest.fail(f"{HOST_BUSYBOX} is not statically linked: apt-get install busybox-static")
    busybox = HOST_BUSYBOX.resolve().read_bytes()
    digest = hashlib.sha256(busybox).hexdigest()[:16]
    try:
        existing = docker_client.images.get(IMAGE)
        if (existing.labels or {}).get("vxlanpy.busybox") == digest:
            return IMAGE
    except docker.errors.ImageNotFound:
        pass
    listing = subprocess.run([str(HOST_BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    applets = listing.stdout.split()
    data = busybox_rootfs_tar(busybox, applets)
    repository, tag = IMAGE.rsplit(":", 1)
    docker_client.api.import_image_from_data(
        data,
        repository=repository,
        tag=tag,
        changes=[
            f"LABEL vxlanpy.busybox={digest}",
            "ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin",
            'CMD ["/bin/sh"]',
        ],
    )
    docker_client.images.get(IMAGE)
    return IMAGE


METRICS_ENV = "VXLANPY_METRICS_ADDR"


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MetricsPluginProcess(PluginProcess):
    """The plugin with its Prometheus listener on a loopback port (VXLANPY_METRICS_ADDR), for every (re)start.

    The variable goes to the plugin's environment only: setting it in this process's, even for the moment of a
    start, broke the threads of a churn test that iterated os.environ meanwhile (the docker SDK does, for proxies:
    "KeyError: 'VXLANPY_METRICS_ADDR'")."""

    def __init__(self, workdir: Path, metrics_port: int) -> None:
        super().__init__(workdir)
        self.metrics_port = metrics_port
        self.extra_env[METRICS_ENV] = self.metrics_addr

    @property
    def metrics_addr(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"


@pytest.fixture(scope="session")
def _forward_hook_removed_at_the_end() -> Iterator[None]:
    """After the session's plugin has stopped (it needs this fixture, so this ends after it): its FORWARD hook,
    which a stopping plugin leaves in place on purpose, is taken out of the host's firewall."""
    yield
    problems = remove_forward_hook()
    assert not problems, "removing vxlanpy's FORWARD hook at the end of the e2e session:\n  " + "\n  ".join(problems)


@pytest.fixture(scope="session")
def plugin(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, _forward_hook_removed_at_the_end: None
) -> Iterator[PluginProcess]:
    process = MetricsPluginProcess(tmp_path_factory.mktemp("vxlanpy-plugin"), free_loopback_port())
    process.start()
    yield process
    process.stop()
    if process.socket_path.exists() and not socket_answers(process.socket_path):
        process.socket_path.unlink()


@pytest.fixture(scope="session")
def testhost() -> Iterator[TestHost]:
    remove_stale_testhosts()
    taken = addresses_in(f"{TESTHOST_HOST_IP}/{TESTHOST_PREFIX}")
    if taken:
        pytest.fail(f"198.51.100.0/24 is already in use on this machine ({', '.join(taken)}); the test host needs it")
    suffix = secrets.token_hex(3)
    host = TestHost(netns=f"vxe-out-{suffix}", host_if=f"vxeo-{suffix}")
    peer = f"vxei-{suffix}"
    try:
        ip_cmd("netns", "add", host.netns)
        ip_cmd("link", "add", host.host_if, "type", "veth", "peer", "name", peer)
        ip_cmd("link", "set", peer, "netns", host.netns)
        ip_cmd("addr", "add", f"{host.host_ip}/{TESTHOST_PREFIX}", "dev", host.host_if)
        ip_cmd("link", "set", host.host_if, "mtu", "1500", "up")
        ip_cmd("-n", host.netns, "link", "set", "lo", "up")
        ip_cmd("-n", host.netns, "link", "set", peer, "name", "eth0")
        ip_cmd("-n", host.netns, "addr", "add", f"{host.ip}/{TESTHOST_PREFIX}", "dev", "eth0")
        ip_cmd("-n", host.netns, "addr", "add", f"{host.ip2}/{TESTHOST_PREFIX}", "dev", "eth0")
        ip_cmd("-n", host.netns, "link", "set", "eth0", "up")
        yield host
    finally:
        subprocess.run(["ip", "link", "del", host.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, check=False)


@pytest.fixture(scope="session")
def _session_guard(docker_client: Any, plugin: PluginProcess) -> Iterator[None]:
    """Starts from a clean slate and, at the end, checks nothing vxlanpy owns is left in the kernel."""
    leftovers = remove_labelled(docker_client)
    before = links()
    yield
    problems = remove_labelled(docker_client)
    remaining = links()
    message = []
    if problems:
        message.append("could not remove: " + "; ".join(problems))
    if remaining:
        message.append(f"links left behind at the end of the e2e session: {sorted(remaining)}")
        if before:
            message.append(f"(already there when the session started: {sorted(before)})")
    if leftovers:
        message.append("could not remove at session start: " + "; ".join(leftovers))
    assert not message, "\n".join(message)


@pytest.fixture(autouse=True)
def _cleanup(request: pytest.FixtureRequest) -> Iterator[None]:
    """Remove this test's containers and networks after it, pass or fail (e2e tests only).

    Then check that removing them took every vxlanpy link the test made with it, so that a leak is
    reported against the test that caused it.
    """
    if request.node.get_closest_marker("skip") is not None:
        yield
        return
    client = request.getfixturevalue("docker_client")
    plugin_process: PluginProcess = request.getfixturevalue("plugin")
    request.getfixturevalue("_session_guard")
    before = links()
    yield
    if not plugin_process.alive:
        plugin_process.start()  # the plugin has to answer for `docker network rm`
    problems = remove_labelled(client)
    assert not problems, "cleanup failed: " + "; ".join(problems) + f"\nplugin log tail:\n{plugin_process.log_tail()}"
    deadline = time.monotonic() + 3
    while (leaked := links() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leaked, (
        f"links left behind after this test's containers and networks were removed: {sorted(leaked)}"
        f"\nplugin log tail:\n{plugin_process.log_tail(30)}"
    )


@pytest.fixture
def create_network(docker_client: Any, plugin: PluginProcess) -> Callable[..., Any]:
    """create_network(vni=..., subnet="10.77.N.0/24", options={...}, ...) -> docker Network (labelled)."""

    def _create(
        *,
        vni: int | None = None,
        subnet: str | None = None,
        gateway: str | None = None,
        ip_range: str | None = None,
        subnet6: str | None = None,
        options: dict[str, str] | None = None,
        internal: bool = False,
        name: str | None = None,
        ipam_driver: str | None = None,
    ) -> Any:
        opts = dict(options or {})
        if vni is not None:
            opts.setdefault("vni", str(vni))
        pools = []
        if subnet is not None:
            pools.append(docker.types.IPAMPool(subnet=subnet, gateway=gateway, iprange=ip_range))
        if subnet6 is not None:
            pools.append(docker.types.IPAMPool(subnet=subnet6))
        ipam = (
            docker.types.IPAMConfig(driver=ipam_driver or "default", pool_configs=pools)
            if pools or ipam_driver
            else None
        )
        return docker_client.networks.create(
            name or unique_name("vxt-net"),
            driver=DRIVER,
            options=opts,
            ipam=ipam,
            internal=internal,
            enable_ipv6=subnet6 is not None,
            labels=dict(LABELS),
            check_duplicate=True,
        )

    return _create


@pytest.fixture
def run_container(docker_client: Any, busybox_image: str) -> Callable[..., Any]:
    """run_container(network, **kw) -> a running, labelled busybox container (`sleep 3600` unless `command=`)."""

    def _run(network: Any, **kw: Any) -> Any:
        kw.setdefault("command", ["sleep", "3600"])
        kw.setdefault("name", unique_name("vxt-c"))
        labels = dict(LABELS)
        labels.update(kw.pop("labels", {}) or {})
        network_name = network if isinstance(network, str) else network.name
        container = docker_client.containers.run(busybox_image, detach=True, network=network_name, labels=labels, **kw)
        container.reload()
        return container

    return _run
