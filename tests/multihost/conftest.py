"""Multi-host harness: three Docker hosts, an underlay and etcd on this one machine (see cluster.py).

* The whole suite is skipped, naming what is missing (root, dockerd, containerd, etcd, iproute2, iptables, the
  docker SDK, busybox), and fails instead under scripts/test (VXLANPY_FORBID_SKIPS=1, tests/tiers.py).
* `cluster` (session) builds the namespaces, etcd and one dockerd per host (with the busybox image);
  `vx_cluster` (session) additionally starts vxlanpy on every host, with VXLANPY_STORE=etcd://10.250.0.254:2379.
  Tests of plain Docker use `cluster`; tests of vxlanpy use `vx_cluster`.
* `etcd_members` (module) moves vxlanpy on every host to a 3-member etcd cluster with client TLS (its own CA
  and certificates, made with openssl), and back to the session's etcd afterwards.
* After every test, whatever its outcome: etcd and the plugins are started again if the test stopped them,
  then every container and network labelled vxlanpy.test=1 is removed from every host.
* At the end of the session everything is torn down: containers, networks, vxlanpy, dockerd (and its
  containerd), etcd, the namespaces and /tmp/vxmh-<hex>.  What cannot be removed is reported as an error.
  A session that was killed outright is cleaned up by the next one (namespaces whose owner pid is gone).

Run it (root, about 1.5 minutes):   sudo .venv/bin/python -m pytest -q tests/multihost
Keep every log (dockerd, vxlanpy, etcd) of a session:   VXMH_KEEP_LOGS=/tmp/vxmh-logs sudo -E ...
"""

from __future__ import annotations

import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engines import engine_major
from tests.etcd_server import EtcdCluster, make_tls
from tests.tiers import mark_unavailable, missing_programs

from .cluster import (
    ETCD_IP,
    Cluster,
    missing_prerequisites,
    netns_socket,
    remove_stale_clusters,
)

MH_DIR = Path(__file__).resolve().parent
# What test_encryption.py runs itself (wireguard-go is vxlanpy's to find, where the kernel has no WireGuard)
ENCRYPTION_PROGRAMS = ("wg", "tcpdump", "nsenter", "docker")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if MH_DIR in Path(str(item.path)).resolve().parents]
    if not ours:
        return
    reason = missing_prerequisites()
    encryption = [item for item in ours if Path(str(item.path)).name == "test_encryption.py"]
    if reason is None and encryption and (missing := missing_programs(*ENCRYPTION_PROGRAMS)):
        mark_unavailable(encryption, f"the encrypted networks' tests need {missing}")
    if reason is None:
        # `min_engine(N)`: what engine N added; deselected (it does not apply), not skipped, on older engines.
        dropped = [
            item for item in ours if (mark := item.get_closest_marker("min_engine")) and mark.args[0] > engine_major()
        ]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item not in dropped]
        return
    mark_unavailable(ours, reason)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    remove_stale_clusters()
    built = Cluster()
    try:
        built.build()
    except BaseException:
        problems = built.teardown()
        if problems:
            print("multihost teardown after a failed build:\n  " + "\n  ".join(problems))
        raise
    print(f"\nmultihost cluster {built.suffix} up: " + ", ".join(f"{k} {v:.1f}s" for k, v in built.timings.items()))
    yield built
    problems = built.teardown()
    assert not problems, "multihost teardown:\n  " + "\n  ".join(problems)


@pytest.fixture(scope="session")
def vx_cluster(cluster: Cluster) -> Cluster:
    """The cluster with vxlanpy running on every host (the session fails here if it cannot start)."""
    try:
        cluster.start_plugins()
    except RuntimeError as exc:
        for host in cluster.hosts:
            host.plugin.stop()
        pytest.fail(f"vxlanpy cannot run in multi-host mode: {exc}", pytrace=False)
    cluster.plugins_wanted = True
    return cluster


MEMBERS_ETCD_TIMEOUT = 3  # VXLANPY_ETCD_TIMEOUT of the plugins on `etcd_members`


@pytest.fixture(scope="module")
def etcd_members(vx_cluster: Cluster) -> Iterator[EtcdCluster]:
    """vxlanpy on every host moved to a 3-member etcd cluster in the underlay namespace (10.250.0.254, one
    client port per member, https with client certificates; peers on the namespace's loopback), with
    VXLANPY_STORE listing the three members, VXLANPY_ETCD_CA/_CERT/_KEY and VXLANPY_ETCD_TIMEOUT=3.
    Afterwards, whatever the outcome: the test's containers and networks removed (while the plugins still
    use the members), the plugins back on the session's etcd, the members and their files gone."""
    root = vx_cluster.workdir / f"etcd-members-{secrets.token_hex(3)}"
    tls = make_tls(root / "tls", addresses=(ETCD_IP,))

    def connect(host: str, port: int, timeout: float) -> socket.socket:
        sock = netns_socket(vx_cluster.underlay)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    members = EtcdCluster(
        3, root=root, client_host=ETCD_IP, tls=tls, wrapper=["ip", "netns", "exec", vx_cluster.underlay],
        connect=connect,
    )  # fmt: skip
    members.start()
    saved = {host.name: (host.plugin.store_url, dict(host.plugin.extra_env)) for host in vx_cluster.hosts}

    def move(store_url: Callable[[str], str], env: Callable[[str], dict[str, str]]) -> None:
        def restart(host: Any) -> None:
            host.plugin.stop()
            host.plugin.store_url, host.plugin.extra_env = store_url(host.name), env(host.name)
            host.plugin.start()

        vx_cluster._parallel(restart, vx_cluster.hosts)

    problems: list[str] = []
    try:
        timeout = {"VXLANPY_ETCD_TIMEOUT": str(MEMBERS_ETCD_TIMEOUT)}
        move(lambda _: members.url, lambda _: {**tls.env, **timeout})
        yield members
    finally:
        try:
            problems = vx_cluster.clean()
        finally:
            try:
                move(lambda name: saved[name][0], lambda name: saved[name][1])
            finally:
                members.destroy()
                shutil.rmtree(root, ignore_errors=True)
    assert not problems, "cleanup on the etcd members failed:\n  " + "\n  ".join(problems)


@pytest.fixture(autouse=True)
def _clean_after_test(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("skip") is not None or "cluster" not in request.fixturenames:
        yield
        return
    built: Cluster = request.getfixturevalue("cluster")
    yield
    built.ensure_up(with_plugins=built.plugins_wanted)
    problems = built.clean()
    assert not problems, "cleanup after the test failed:\n  " + "\n  ".join(problems)


@pytest.fixture
def create_network(vx_cluster: Cluster) -> Callable[..., dict[str, Any]]:
    """create_network(subnet=..., vni=..., hosts=("h1","h2","h3"), ipam="vxlanpy"|None, name=...) ->
    {host name: docker Network}: the same network created on each of `hosts` (labelled)."""

    return vx_cluster.create_network
