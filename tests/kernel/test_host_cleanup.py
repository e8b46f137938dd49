"""tests/docker_cleanup.remove_forward_hook: what the suites that run vxlanpy in the host namespace call at the end
of their session, here on the plugin's real FORWARD hook in a throwaway namespace standing in for the host."""

from __future__ import annotations

import subprocess

import pytest

from tests.docker_cleanup import remove_forward_hook
from vxlanpy.dataplane.iptables import IptablesFirewall

from .conftest import Namespaces

pytestmark = pytest.mark.kernel


def filter_rules(netns: str, program: str) -> list[str]:
    """`iptables -S` (filter) inside `netns`, as a user reads it."""
    argv = ["ip", "netns", "exec", netns, program, "-w", "10", "-S"]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout.splitlines()


def xtables(netns: str, program: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, program, "-w", "10", *args], capture_output=True, check=True)


def test_the_forward_hook_goes_with_every_jump_and_nothing_else(namespaces: Namespaces) -> None:
    host = namespaces.new()
    for program in ("iptables", "ip6tables"):
        # As dockerd leaves it (20.10-27): DOCKER-USER jumped to from FORWARD, ending in RETURN; a user's rule.
        xtables(host, program, "-N", "DOCKER-USER")
        xtables(host, program, "-A", "DOCKER-USER", "-j", "RETURN")
        xtables(host, program, "-A", "FORWARD", "-j", "DOCKER-USER")
        xtables(host, program, "-A", "FORWARD", "-i", "eth9", "-j", "ACCEPT")
    before = {program: filter_rules(host, program) for program in ("iptables", "ip6tables")}
    IptablesFirewall(netns=host).ensure_base()
    for program in ("iptables", "ip6tables"):
        hooked = filter_rules(host, program)
        assert "-A FORWARD -j VXLANPY-FORWARD" in hooked and "-A DOCKER-USER -j VXLANPY-FORWARD" in hooked, hooked
        assert "-N VXLANPY-INTERNAL" in hooked, hooked
    xtables(host, "iptables", "-A", "FORWARD", "-j", "VXLANPY-FORWARD")  # a second jump: both must go
    tables = subprocess.run(["ip", "netns", "exec", host, "nft", "list", "tables"], capture_output=True, text=True)
    assert "bridge vxlanpy" in tables.stdout, "ensure_base writes the notrack table (dataplane/notrack.py)"

    assert remove_forward_hook(host) == []

    for program in ("iptables", "ip6tables"):
        after = filter_rules(host, program)
        assert not [line for line in after if "VXLANPY" in line], after
        assert after == before[program], "only vxlanpy's hook may go"
    tables = subprocess.run(["ip", "netns", "exec", host, "nft", "list", "tables"], capture_output=True, text=True)
    assert "bridge vxlanpy" not in tables.stdout, "the notrack table goes too"
    assert remove_forward_hook(host) == [], "nothing to remove is no problem"
