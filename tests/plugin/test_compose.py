"""The Compose files of examples/ with the managed plugin, under Compose v1 (1.29) or v2 (VXLANPY_TEST_COMPOSE)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.engines import compose_versions
from tests.multihost.cluster import exec_text, ping

from .harness import LOCAL_PLUGIN, REPO_ROOT, TIMINGS, Engine

EXAMPLES = REPO_ROOT / "examples"


@pytest.fixture(scope="module", params=compose_versions(), ids=lambda version: f"compose-{version}")
def managed(request: pytest.FixtureRequest, engine: Engine, built: str) -> Iterator[Engine]:
    """The managed plugin enabled, and docker-compose of each version VXLANPY_TEST_COMPOSE asks for."""
    previous, engine.compose_version = engine.compose_version, request.param
    try:
        with engine.active(LOCAL_PLUGIN, engine.workdir / "state-compose"):
            yield engine
    finally:
        engine.compose_version = previous


def service(engine: Engine, example: str, project: str, name: str, driver: str | None) -> Any:
    container_id = engine.compose(EXAMPLES / example, project, "ps", "-q", name, driver=driver).stdout.strip()
    assert container_id, f"service {name} of {example} is not running"
    return engine.client.containers.get(container_id)


def wget(container: Any, url: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        code, output = exec_text(container, ["wget", "-q", "-O", "-", url])
        if code == 0 or time.monotonic() > deadline:
            assert code == 0, f"wget {url} from {container.name}: {output}"
            return output
        time.sleep(0.2)


def compose_web(engine: Engine, driver: str | None) -> None:
    """examples/web: up, the client reaches the web server by name, the options reach the kernel, down."""
    project = f"vxplweb{secrets.token_hex(2)}"
    started = time.monotonic()
    try:
        engine.compose(EXAMPLES / "web", project, "up", "-d", driver=driver)
        TIMINGS[f"docker-compose {engine.compose_version} up examples/web ({driver or 'vxlanpy'})"] = (
            f"{time.monotonic() - started:.1f} s"
        )
        client = service(engine, "web", project, "client", driver)
        assert wget(client, "http://web/") == "hello from web\n"
        ok, output = ping(client, "web")
        assert ok, output

        network = json.loads(engine.docker("network", "inspect", f"{project}_vxnet").stdout)[0]
        assert network["Driver"] == (driver or "vxlanpy") and network["IPAM"]["Driver"] == (driver or "vxlanpy")
        assert network["IPAM"]["Config"][0]["Subnet"] == "10.42.42.0/24"
        vxlan = engine.link("vxlan-4242")
        assert vxlan is not None and vxlan["mtu"] == 1400, vxlan
        assert engine.link("vxbr-4242") is not None
    finally:
        down = engine.compose(EXAMPLES / "web", project, "down", driver=driver, check=False)
    assert down.returncode == 0, down.stderr
    assert f"{project}_vxnet" not in {n.name for n in engine.client.networks.list()}
    assert not engine.links(), f"devices left after docker-compose down: {sorted(engine.links())}"


def test_compose_web_with_the_managed_plugin(managed: Engine) -> None:
    compose_web(managed, LOCAL_PLUGIN)


def test_compose_two_tier_isolates_the_back_network(managed: Engine) -> None:
    engine, project, driver = managed, f"vxpltt{secrets.token_hex(2)}", LOCAL_PLUGIN
    try:
        engine.compose(EXAMPLES / "two-tier", project, "up", "-d", driver=driver)
        client = service(engine, "two-tier", project, "client", driver)
        web = service(engine, "two-tier", project, "web", driver)
        db = service(engine, "two-tier", project, "db", driver)
        assert wget(client, "http://web/") == "hello from web\n"
        ok, output = ping(web, "db")
        assert ok, f"web cannot reach db on the back network: {output}"
        db_address = db.attrs["NetworkSettings"]["Networks"][f"{project}_back"]["IPAddress"]
        ok, output = ping(client, db_address)
        assert not ok, f"the client reached db across networks: {output}"
        back = json.loads(engine.docker("network", "inspect", f"{project}_back").stdout)[0]
        assert back["Internal"] is True
        assert engine.link("vxlan-4302")["mtu"] == 1300  # type: ignore[index]
    finally:
        down = engine.compose(EXAMPLES / "two-tier", project, "down", driver=driver, check=False)
    assert down.returncode == 0, down.stderr
    assert not engine.links(), f"devices left after docker-compose down: {sorted(engine.links())}"
