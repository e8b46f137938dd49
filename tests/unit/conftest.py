"""Unit-test wiring: the real driver and protocol on in-package fakes; no root, no kernel, no patching."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from vxlanpy.app import create_app
from vxlanpy.config import Settings
from vxlanpy.dataplane.fake import FakeFirewall, FakeLinks
from vxlanpy.driver import Driver
from vxlanpy.store.memory import MemoryStore
from vxlanpy.wiring import assemble

from ..etcd_server import EtcdServer

NET = "a" * 64
NET2 = "b" * 64
EP = "c" * 64
EP2 = "d" * 64


class Harness:
    def __init__(self, scope: str = "local") -> None:
        """scope "global": a swarm node's plugin (VXLANPY_SCOPE=global), its VNI reservations in the store."""
        self.store = MemoryStore()
        self.links = FakeLinks()
        self.firewall = FakeFirewall()
        self.busy_ports: set[int] = set()
        self.live_sandboxes: set[str] = set()
        self.now = 1000.0
        self.driver = Driver(
            self.store,
            self.links,
            self.firewall,
            vni_range=(100, 102),
            port_is_free=lambda mapping: mapping.host_port not in self.busy_ports,
            clock=lambda: self.now,
            sandbox_exists=lambda path: path in self.live_sandboxes,
            swarm=self.store if scope == "global" else None,
        )
        self.client: FlaskClient = create_app(assemble(self.driver, Settings(scope=scope))).test_client()

    def call(self, method: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        response = self.client.post(f"/{method}", data=data)
        return response.status_code, json.loads(response.data)

    def create_network(
        self, network_id: str = NET, generic: dict[str, Any] | None = None, **extra: Any
    ) -> tuple[int, dict[str, Any]]:
        body = {
            "NetworkID": network_id,
            "Options": {"com.docker.network.generic": generic or {}, **extra.pop("options", {})},
            "IPv4Data": extra.pop(
                "ipv4", [{"AddressSpace": "LocalDefault", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}]
            ),
            "IPv6Data": extra.pop("ipv6", []),
        }
        return self.call("NetworkDriver.CreateNetwork", body)

    def create_endpoint(
        self, endpoint_id: str = EP, network_id: str = NET, **interface: str
    ) -> tuple[int, dict[str, Any]]:
        interface.setdefault("Address", "10.1.0.2/24")
        return self.call(
            "NetworkDriver.CreateEndpoint",
            {"NetworkID": network_id, "EndpointID": endpoint_id, "Interface": interface, "Options": {}},
        )


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One throwaway etcd for the unit session (no root needed); skipped where etcd is not installed."""
    try:
        server = EtcdServer()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    server.start()
    yield server
    server.destroy()
