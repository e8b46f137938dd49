"""The plugin's attack surface as a user would check it: who may talk to the socket, and nothing on TCP."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from .helpers import PluginProcess

pytestmark = pytest.mark.e2e


def test_socket_is_root_only_and_group_restricted(plugin: PluginProcess) -> None:
    info = os.stat(plugin.socket_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert info.st_uid == 0
    assert stat.S_IMODE(info.st_mode) & 0o007 == 0, oct(info.st_mode)  # nothing for "others": 0660 or stricter


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _tcp_listeners() -> dict[str, int]:
    """inode -> local port of every listening TCP socket on this host."""
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listening[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return listening


def _configured_port(pid: int) -> int | None:
    """The port of VXLANPY_METRICS_ADDR, the one TCP listener a user can ask for."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for item in environ:
        if item.startswith(b"VXLANPY_METRICS_ADDR=") and b":" in item:
            return int(item.rsplit(b":", 1)[1])
    return None


def test_no_tcp_listener_unless_configured(plugin: PluginProcess) -> None:
    assert plugin.process is not None
    pids = [plugin.process.pid] + [
        int(child.name) for child in Path(f"/proc/{plugin.process.pid}/task").iterdir() if child.name.isdigit()
    ]
    children = Path(f"/proc/{plugin.process.pid}/task/{plugin.process.pid}/children").read_text().split()
    inodes: set[str] = set()
    for pid in {*pids, *map(int, children)}:
        inodes |= _socket_inodes(pid)
    assert inodes, "could not see the plugin's sockets"
    allowed = _configured_port(plugin.process.pid)
    ports = [port for inode, port in _tcp_listeners().items() if inode in inodes]
    assert [port for port in ports if port != allowed] == []
