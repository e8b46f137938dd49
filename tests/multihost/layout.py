"""Names and addresses of the multi-host cluster, shared by its parts (see cluster.py for the layout)."""

from __future__ import annotations

from pathlib import Path

try:
    import docker
    import docker.errors
    import docker.types
except ImportError:  # pragma: no cover - the plugin depends on it
    docker = None  # type: ignore[assignment]

MH_DIR = Path(__file__).resolve().parent
REPO_ROOT = MH_DIR.parents[1]

PREFIX = "vxmh"
LABEL = "vxlanpy.test"
LABELS = {LABEL: "1"}
# What a module's fixture shares between its tests: left alone by the cleanup after each test, removed by the
# fixture (and by the session's teardown, should the fixture fail to)
MODULE_LABEL = "vxlanpy.test.module"
MODULE_LABELS = {MODULE_LABEL: "1"}
DRIVER = "vxlanpy"
IMAGE = "vxlanpy-test/busybox:latest"
HOST_BUSYBOX = Path("/bin/busybox")

UNDERLAY_PREFIX_LEN = 24
ETCD_IP = "10.250.0.254"
ETCD_PORT = 2379
ETCD_URL = f"etcd://{ETCD_IP}:{ETCD_PORT}"
HOST_NAMES = ("h1", "h2", "h3")
LEASE_TTL = 3
VXLAN_PORT = 4789


def host_ip(index: int) -> str:
    return f"10.250.0.{index}"
