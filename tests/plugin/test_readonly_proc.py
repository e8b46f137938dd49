"""The firewall where a managed plugin runs: /proc/sys mounted read-only (Docker's default for any container).

Reproduced without Docker: a private network and mount namespace (`unshare --net --mount`) where /proc/sys
is bound read-only, as runc does it.  There, writing a sysctl fails with EROFS, so vxlanpy must leave
ip_forward alone when dockerd already set it, and set route_localnet through netlink instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import vxlanpy

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("iptables") is None, reason="needs unshare"),
]

SCRIPT = r"""
import subprocess
from vxlanpy.dataplane.iptables import IptablesFirewall
from vxlanpy.errors import DataplaneError
from vxlanpy.models import Network, NetworkConfig
subprocess.run(["ip", "link", "add", "vxbr-77", "type", "bridge"], check=True)
try:
    open("/proc/sys/net/ipv4/conf/vxbr-77/route_localnet", "w").write("1")
    print("writable")
except OSError as exc:
    print(f"errno {exc.errno}")
firewall = IptablesFirewall()
try:
    firewall.ensure_base()
    firewall.ensure_network(Network("n" * 64, NetworkConfig(vni=77)), [])
    firewall.ensure_network(Network("m" * 64, NetworkConfig(vni=78)), [])  # no bridge yet: nothing to set
    print(open("/proc/sys/net/ipv4/conf/vxbr-77/route_localnet").read().strip())
except DataplaneError as exc:
    print(f"error: {exc}")
"""


def run_read_only(ip_forward: str) -> list[str]:
    shell = (
        f"sysctl -qw net.ipv4.ip_forward={ip_forward} && mount --make-rprivate / && "
        'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$0" -c "$1"'
    )
    plugin_dir = os.path.dirname(os.path.dirname(vxlanpy.__file__))
    result = subprocess.run(
        ["unshare", "--net", "--mount", "sh", "-c", shell, sys.executable, SCRIPT],
        env={**os.environ, "PYTHONPATH": plugin_dir},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_route_localnet_goes_through_netlink_when_proc_sys_is_read_only() -> None:
    assert run_read_only("1") == ["errno 30", "1"]  # EROFS for the write, then set anyway


def test_ip_forward_off_on_a_read_only_proc_sys_is_a_clear_error() -> None:
    lines = run_read_only("0")
    assert lines[0] == "errno 30"
    assert lines[1].startswith("error: cannot write /proc/sys/net/ipv4/ip_forward: Read-only file system"), lines
    assert "sysctl -w net.ipv4.ip_forward=1" in lines[1]
