"""Reaching into the cluster's network namespaces: commands, sockets made inside a namespace, HTTP through them."""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import socket
import subprocess
import threading
from typing import Any


def run(argv: list[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def netns_path(netns: str) -> str:
    """The namespace file of a named namespace (`ip netns`), or a /proc/PID/ns/net path as is."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


def netns_socket(
    netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A socket created inside network namespace `netns` (a name or a path such as /proc/PID/ns/net).

    A socket belongs to the namespace it was created in, whatever thread uses it afterwards, so it is made in
    a throwaway thread that first enters the namespace (setns only changes the calling thread).
    """
    outcome: dict[str, Any] = {}

    def enter_and_create() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            outcome["socket"] = socket.socket(family, kind, proto)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=enter_and_create, name=f"setns-{netns}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["socket"]


class _NetnsHTTPConnection(http.client.HTTPConnection):
    def __init__(self, netns: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        sock = netns_socket(self._netns)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def netns_http(
    netns: str, method: str, host: str, port: int, path: str, body: Any = None, timeout: float = 3.0
) -> tuple[int, Any]:
    """An HTTP request made from inside `netns`; returns (status, decoded JSON or text)."""
    connection = _NetnsHTTPConnection(netns, host, port, timeout)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        raw = response.read().decode("utf-8", "replace")
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw
    finally:
        connection.close()


def netns_pids(netns: str) -> list[int]:
    result = run(["ip", "netns", "pids", netns], check=False)
    return [int(token) for token in result.stdout.split() if token.isdigit()]
