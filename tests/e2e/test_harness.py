"""Checks of the harness itself: the busybox image runs, the test host answers, the plugin activates."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.engines import engine_name

from .helpers import LABELS, PluginProcess, TestHost, plugin_call

pytestmark = pytest.mark.e2e


def test_the_engine_is_the_one_asked_for(docker_client: Any) -> None:
    """scripts/test runs this tier on each engine of the README's table: prove which one answered."""
    assert str(docker_client.version()["Version"]).startswith(engine_name() + "."), docker_client.version()


def test_busybox_image_runs_applets(docker_client: Any, busybox_image: str) -> None:
    output = docker_client.containers.run(
        busybox_image,
        ["sh", "-c", "echo hello; ls /bin/ping /bin/httpd /bin/wget /bin/nc /bin/ip > /dev/null && echo ok"],
        network_mode="none",
        labels=dict(LABELS),
        remove=True,
    )
    assert output.decode().split() == ["hello", "ok"]


def test_testhost_answers_ping_from_root_namespace(testhost: TestHost) -> None:
    result = subprocess.run(
        ["/bin/busybox", "ping", "-c", "1", "-W", "2", testhost.ip], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    inside = testhost.run(["/bin/busybox", "ping", "-c", "1", "-W", "2", testhost.host_ip])
    assert inside.returncode == 0, inside.stdout + inside.stderr


def test_plugin_activates_as_network_driver(plugin: PluginProcess) -> None:
    status, body = plugin_call(str(plugin.socket_path), "/Plugin.Activate")
    assert status == 200
    assert body == {"Implements": ["NetworkDriver", "IpamDriver"]}
