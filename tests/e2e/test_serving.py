"""Stuck clients on the plugin's socket, as issue 12 found them: dockerd must still get its answers.

16 connections that sent half a request and 200 that sent nothing are held open on the real plugin's socket
(and topped up whenever the plugin closes one), while Plugin.Activate, `docker network create` and `docker run`
go on as usual."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..plugin_socket import plugin_call
from .helpers import PluginProcess, container_ip, ping_ok

pytestmark = pytest.mark.e2e

HALF_REQUEST = b"POST /Plugin.Activate HTTP/1.1\r\nHost: p\r\n"


class HeldOpen:
    """`idle` connections that send nothing and `half` that send half a request, kept at that count until
    closed: one the plugin closes (its request timed out) is replaced by a new one."""

    def __init__(self, path: str, idle: int, half: int) -> None:
        self.path = path
        self.sockets: dict[socket.socket, str] = {}
        self.replaced = 0
        self.opened_at = time.monotonic()
        self.stop = threading.Event()
        for kind, count in (("idle", idle), ("half", half)):
            for _ in range(count):
                self._open(kind)
        self.thread = threading.Thread(target=self._top_up, name="held-open", daemon=True)
        self.thread.start()

    def _open(self, kind: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
            if kind == "half":
                sock.sendall(HALF_REQUEST)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sockets[sock] = kind

    def _top_up(self) -> None:
        while not self.stop.wait(0.2):
            with selectors.DefaultSelector() as selector:
                for sock in self.sockets:
                    selector.register(sock, selectors.EVENT_READ, sock)
                ready: list[socket.socket] = [key.data for key, _ in selector.select(timeout=0)]
            for sock in ready:  # readable: the plugin closed it (after its 408, for a half request)
                kind = self.sockets.pop(sock)
                sock.close()
                if not self.stop.is_set():
                    self._open(kind)
                    self.replaced += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def held_open(plugin: PluginProcess) -> Iterator[HeldOpen]:
    held = HeldOpen(str(plugin.socket_path), idle=200, half=16)
    try:
        yield held
    finally:
        held.close()


def activate_seconds(plugin: PluginProcess) -> float:
    started = time.monotonic()
    status, body = plugin_call(str(plugin.socket_path), "/Plugin.Activate", timeout=1.0)  # TimeoutError past 1 s
    assert status == 200 and "NetworkDriver" in body["Implements"], body
    return time.monotonic() - started


def test_docker_works_while_stuck_clients_hold_the_socket(
    plugin: PluginProcess,
    held_open: HeldOpen,
    create_network: Callable[..., Any],
    run_container: Callable[..., Any],
) -> None:
    time.sleep(0.5)  # all of them connected and waiting
    latencies = [activate_seconds(plugin) for _ in range(5)]
    network = create_network(subnet="10.77.212.0/24")
    one, two = run_container(network), run_container(network)
    ok, output = ping_ok(one, container_ip(two, network))
    assert ok, f"{output}\nplugin log tail:\n{plugin.log_tail(30)}"
    time.sleep(max(0.0, 11.0 - (time.monotonic() - held_open.opened_at)))
    latencies.append(activate_seconds(plugin))  # after the plugin timed out (and we replaced) the half requests
    assert held_open.replaced >= 16, "the plugin closes a request that does not arrive in full within 10 s"
    third = run_container(network)
    assert third.status == "running"
    assert max(latencies) < 1.0, latencies
