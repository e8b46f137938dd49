"""Multi-host harness: three Docker hosts, an underlay and etcd on this one machine (see cluster.py).

* The whole suite is skipped, with the reason, when not root or when dockerd, containerd, etcd, iproute2,
  iptables or the docker SDK are missing.
* `cluster` (session) builds the namespaces, etcd and one dockerd per host (with the busybox image);
  `vx_cluster` (session) additionally starts vxlanpy on every host, with VXLANPY_STORE=etcd://10.250.0.254:2379.
  Tests of plain Docker use `cluster`; tests of vxlanpy use `vx_cluster`.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engines import engine_major

from .cluster import (
    DRIVER,
    LABELS,
    Cluster,
    docker,
    missing_prerequisites,
    remove_stale_clusters,
)

MH_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if MH_DIR in Path(str(item.path)).resolve().parents]
    if not ours:
        return
    reason = missing_prerequisites()
    if reason is None:
        # `min_engine(N)`: what engine N added; deselected (it does not apply), not skipped, on older engines.
        dropped = [
            item for item in ours if (mark := item.get_closest_marker("min_engine")) and mark.args[0] > engine_major()
        ]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item not in dropped]
        return
    for item in ours:
        item.add_marker(pytest.mark.skip(reason=reason))


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

    def _create(
        *,
        subnet: str,
        vni: int,
        hosts: tuple[str, ...] = ("h1", "h2", "h3"),
        ipam: str | None = "vxlanpy",
        name: str | None = None,
        options: dict[str, str] | None = None,
        gateway: str | None = None,
    ) -> dict[str, Any]:
        name = name or f"vxmh-net{vni}-{secrets.token_hex(3)}"
        opts = {"vni": str(vni), **(options or {})}
        made = {}
        for host_name in hosts:
            host = vx_cluster[host_name]
            pool = docker.types.IPAMPool(subnet=subnet, gateway=gateway)
            ipam_config = (
                docker.types.IPAMConfig(driver=ipam, pool_configs=[pool])
                if ipam
                else docker.types.IPAMConfig(pool_configs=[pool])
            )
            made[host_name] = host.docker.networks.create(
                name, driver=DRIVER, options=opts, ipam=ipam_config, labels=dict(LABELS), check_duplicate=True
            )
        return made

    return _create
