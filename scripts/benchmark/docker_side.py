"""The Docker engine as the single-host sections use it: the client, the busybox image, networks, containers."""

from __future__ import annotations

import secrets
from contextlib import ExitStack
from typing import Any

from tests.e2e.helpers import HOST_BUSYBOX, busybox_rootfs_tar, elf_is_static

from .runner import quiet, run

BENCH_LABEL = "vxlanpy.bench"
BENCH_LABELS = {BENCH_LABEL: "1"}
IMAGE = "vxlanpy-bench/busybox:latest"


def docker_client() -> Any:
    import docker

    client = docker.from_env(version="auto", timeout=300)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no usable engine
        raise SystemExit(f"bench: no Docker engine answers ({exc}); start dockerd (scripts/test starts one)") from None
    return client


def ensure_image(client: Any, stack: ExitStack) -> None:
    """A busybox image made from the host's static busybox with `docker import` (no registry); removed at exit."""
    import docker.errors

    try:
        client.images.get(IMAGE)
        return  # left by an earlier run that was killed: reuse it, and remove it at exit like our own
    except docker.errors.ImageNotFound:
        pass
    finally:
        stack.callback(lambda: quiet(lambda: client.images.remove(IMAGE, force=True)))
    if not HOST_BUSYBOX.exists() or not elf_is_static(HOST_BUSYBOX.resolve()):
        raise SystemExit("bench: /bin/busybox must be a static busybox: apt-get install busybox-static")
    applets = run([str(HOST_BUSYBOX), "--list"]).stdout.split()
    data = busybox_rootfs_tar(HOST_BUSYBOX.resolve().read_bytes(), applets)
    repository, tag = IMAGE.rsplit(":", 1)
    client.api.import_image_from_data(
        data, repository=repository, tag=tag, changes=["ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin", 'CMD ["/bin/sh"]']
    )


def create_docker_network(client: Any, name: str, driver: str, subnet: str, options: dict[str, str]) -> Any:
    import docker.types

    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
    return client.networks.create(name, driver=driver, options=options, ipam=ipam, labels=dict(BENCH_LABELS))


def start_container(client: Any, network: str) -> Any:
    container = client.containers.run(
        IMAGE, ["sleep", "3600"], detach=True, network=network, labels=dict(BENCH_LABELS),
        name=f"vxbench-{secrets.token_hex(4)}",
    )  # fmt: skip
    container.reload()
    return container


def container_netns(container: Any) -> str:
    container.reload()
    return f"/proc/{int(container.attrs['State']['Pid'])}/ns/net"


def docker_cli_network_create(name: str, driver: str, subnet: str, options: dict[str, str]) -> list[str]:
    argv = ["docker", "network", "create", "-d", driver, "--subnet", subnet, "--label", f"{BENCH_LABEL}=1"]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    return [*argv, name]
