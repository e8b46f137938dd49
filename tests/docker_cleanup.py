"""Removing what a test or benchmark labelled, from any Docker engine, even when some of it resists."""

from __future__ import annotations

import time
from typing import Any

import docker.errors


def remove_labelled(
    client: Any, label: str = "vxlanpy.test", containers: bool = True, networks: bool = True
) -> list[str]:
    """Force-remove the containers and networks labelled `label`=1; returns what could not be removed."""
    problems: list[str] = []
    selector = {"label": f"{label}=1"}
    if containers:
        for container in client.containers.list(all=True, filters=selector):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                problems.append(f"container {container.name}: {exc}")
    if networks:
        for network in client.networks.list(filters=selector):
            for attempt in range(3):  # an endpoint may still be on its way out
                try:
                    network.remove()
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError as exc:
                    if attempt == 2:
                        problems.append(f"network {network.name}: {exc}")
                    time.sleep(0.5)
    return problems
