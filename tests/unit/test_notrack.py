"""dataplane/notrack.py without a kernel: the nft script, the check of a listing, and a host without nft."""

from __future__ import annotations

import logging
import subprocess

import pytest

from vxlanpy.dataplane import notrack
from vxlanpy.dataplane.notrack import BridgedNotrack, notrack_rules, table_in_place, table_script

LISTING = """table bridge vxlanpy {
\tchain switched {
\t\ttype filter hook prerouting priority -300; policy accept;
\t\tiifname "vxh-*" meta pkttype other notrack
\t\tiifname "vxlan-*" meta pkttype other notrack
\t\tiifname "vxg-*" meta pkttype other notrack
\t}
}
"""


class Recorder:
    """Stands in for the firewall's command runner: answers `nft list` with `listing` (or rc 1 when None)."""

    def __init__(self, listing: str | None, write_rc: int = 0) -> None:
        self.listing, self.write_rc = listing, write_rc
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, stdin))
        if argv[1] == "list":
            rc = 0 if self.listing is not None else 1
            return subprocess.CompletedProcess(argv, rc, self.listing or "", "" if rc == 0 else "No such file")
        return subprocess.CompletedProcess(argv, self.write_rc, "", "Error: Could not process rule" * self.write_rc)


@pytest.fixture(autouse=True)
def nft_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notrack.shutil, "which", lambda name: f"/usr/sbin/{name}")


def test_the_script_replaces_the_table_whole_and_matches_every_vxlanpy_port() -> None:
    script = table_script()
    assert script.splitlines()[:2] == ["table bridge vxlanpy", "delete table bridge vxlanpy"]
    assert "hook prerouting priority -300" in script
    assert [rule.split('"')[1] for rule in notrack_rules()] == ["vxh-*", "vxlan-*", "vxg-*"]
    assert all(rule in script for rule in notrack_rules())


def test_a_table_in_place_is_only_read() -> None:
    run = Recorder(LISTING)
    BridgedNotrack(run).ensure()
    assert [argv[1] for argv, _ in run.calls] == ["list"]


@pytest.mark.parametrize("listing", [None, LISTING.replace('\t\tiifname "vxg-*" meta pkttype other notrack\n', "")])
def test_a_missing_or_changed_table_is_written(listing: str | None) -> None:
    assert not table_in_place(listing or "")
    run = Recorder(listing)
    guard = BridgedNotrack(run)
    guard.ensure()
    assert run.calls[-1] == (["nft", "-f", "-"], table_script()) and guard.in_place


def test_without_nft_or_kernel_support_the_plugin_goes_on_and_says_why_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    refused = BridgedNotrack(Recorder(None, write_rc=1))
    refused.ensure()
    refused.ensure()
    assert not refused.in_place
    assert [record.getMessage() for record in caplog.records if "conntrack" in record.getMessage()] == [
        "frames switched inside vxlanpy networks go through conntrack, which costs throughput: nft -f (table "
        "bridge vxlanpy) failed: Error: Could not process rule. Hint: does the kernel have nf_tables_bridge?"
    ]
    caplog.clear()
    monkeypatch.setattr(notrack.shutil, "which", lambda name: None)
    BridgedNotrack(Recorder(None)).ensure()
    assert "install the nftables package" in caplog.text
