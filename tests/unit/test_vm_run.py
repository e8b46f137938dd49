"""scripts/vm-run's own logic that needs no guest: its command line and how it reads Debian's kernel package."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.engines import FetchError
from tests.plugin_socket import START_SECONDS_ENV, PluginNotReady, wait_until_activated
from tests.vm import guest_flags, kernel_package, parse, parse_guest


def test_the_kernel_package_is_read_from_the_metapackage_depends() -> None:
    assert kernel_package("linux-image-6.1.0-50-amd64 (= 6.1.176-1)") == ("linux-image-6.1.0-50-amd64", "6.1.176-1")
    assert kernel_package("linux-image-6.12.117+deb13-amd64 (= 6.12.117-1), foo") == (
        "linux-image-6.12.117+deb13-amd64",
        "6.12.117-1",
    )


def test_a_depends_without_a_pinned_kernel_package_is_refused() -> None:
    with pytest.raises(FetchError, match="cannot read the kernel package"):
        kernel_package("linux-image-6.1.0-50-amd64")


def test_the_command_follows_the_options_and_keeps_its_own_arguments() -> None:
    args = parse(["--kernel", "trixie", "--dockerd", "--", "pytest", "-q", "--kernel", "x"])
    assert (args.kernel, args.dockerd, args.accel) == ("trixie", True, "auto")
    assert args.command == ["pytest", "-q", "--kernel", "x"]
    assert parse(["uname", "-r"]).kernel == "bookworm"


@pytest.mark.parametrize("argv", [[], ["--"], ["--kernel", "sid", "--", "true"]])
def test_no_command_or_an_unknown_kernel_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2


def test_the_guest_gets_the_flags_asked_for_and_keeps_the_command_whole() -> None:
    args = parse(["--private-tmp", "--dockerd", "--", "pytest", "--dockerd"])
    flags = guest_flags(args.dockerd, args.private_tmp)
    status_dir, parsed_flags, command = parse_guest(["/var/lib/vxlanpy-vm/runs/x", *flags, "--", *args.command])
    assert (str(status_dir), parsed_flags, command) == (
        "/var/lib/vxlanpy-vm/runs/x",
        {"--dockerd", "--private-tmp"},
        ["pytest", "--dockerd"],
    )
    assert parse_guest(["/d", "--", "true"])[1:] == (set(), ["true"])
    assert not parse(["true"]).private_tmp


def test_under_emulation_a_plugin_is_waited_for_as_long_as_the_guest_tier_allows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """scripts/test sets VXLANPY_TEST_PLUGIN_START_SECONDS for the guest: every harness waits that long at least."""
    monkeypatch.setenv(START_SECONDS_ENV, "0.5")
    started = time.monotonic()
    with pytest.raises(PluginNotReady, match="no answer to /Plugin.Activate"):
        wait_until_activated(str(tmp_path / "absent.sock"), 0.05)
    assert time.monotonic() - started >= 0.5
