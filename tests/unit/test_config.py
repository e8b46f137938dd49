from __future__ import annotations

import pytest

from vxlanpy.config import Settings
from vxlanpy.errors import InvalidOption


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.socket == "/run/docker/plugins/vxlanpy.sock"
    assert settings.store_url == "sqlite:///var/lib/vxlanpy/state.db"


def test_the_firewall_hooks_are_checked_every_10_seconds_unless_set() -> None:
    from vxlanpy.lifecycle import HOOK_CHECK_SECONDS

    assert Settings.from_env({}).hook_check_seconds == HOOK_CHECK_SECONDS == 10
    assert Settings.from_env({"VXLANPY_HOOK_CHECK_SECONDS": "2"}).hook_check_seconds == 2


def test_state_dir_moves_the_default_store() -> None:
    assert Settings.from_env({"VXLANPY_STATE_DIR": "/tmp/x"}).store_url == "sqlite:///tmp/x/state.db"


@pytest.mark.parametrize(
    ("env", "phrase"),
    [
        ({"VXLANPY_LOG_LEVEL": "loud"}, "VXLANPY_LOG_LEVEL='loud' is not valid"),
        ({"VXLANPY_VNI_RANGE": "9-1"}, "VXLANPY_VNI_RANGE='9-1' is not valid"),
        ({"VXLANPY_THREADS": "0"}, "VXLANPY_THREADS='0' is not valid"),
        ({"VXLANPY_HOOK_CHECK_SECONDS": "0.5"}, "VXLANPY_HOOK_CHECK_SECONDS='0.5' is not valid"),
    ],
)
def test_bad_settings(env: dict[str, str], phrase: str) -> None:
    with pytest.raises(InvalidOption, match=phrase):
        Settings.from_env(env)


def test_wireguard_settings_and_their_defaults() -> None:
    defaults = Settings.from_env({})
    assert (defaults.wg_port, defaults.wg_subnet, defaults.wg_interface) == (51820, "10.255.0.0/16", "vxlanpy-wg")
    # the managed plugin sets every variable of its manifest, empty ones included: empty means the default
    empty = Settings.from_env({"VXLANPY_WG_PORT": "", "VXLANPY_WG_SUBNET": "", "VXLANPY_WG_INTERFACE": ""})
    assert (empty.wg_port, empty.wg_subnet, empty.wg_interface) == (51820, "10.255.0.0/16", "vxlanpy-wg")
    given = Settings.from_env(
        {"VXLANPY_WG_PORT": "51821", "VXLANPY_WG_SUBNET": "10.254.0.0/24", "VXLANPY_WG_INTERFACE": "wg-vx.0"}
    )
    assert (given.wg_port, given.wg_subnet, given.wg_interface) == (51821, "10.254.0.0/24", "wg-vx.0")


# setting -> (what the refusal says to do, the values refused)
BAD_WIREGUARD_SETTINGS = {
    "VXLANPY_WG_PORT": ("is not valid; use a UDP port within 1-65535", ["0", "65536", "５１８２０", "x"]),
    "VXLANPY_WG_SUBNET": (
        "is not valid; use an IPv4 network with its host bits zero",
        ["10.255.0.1/16", "wg", "fd00:255::/64"],
    ),
    "VXLANPY_WG_INTERFACE": (
        "is not a valid interface name; use up to 15 letters",
        ["a-much-too-long-name", "wg/0", ".."],
    ),
}


@pytest.mark.parametrize(
    ("name", "raw"), [(name, raw) for name, (_, values) in BAD_WIREGUARD_SETTINGS.items() for raw in values]
)
def test_bad_wireguard_settings_are_refused_at_start(name: str, raw: str) -> None:
    with pytest.raises(InvalidOption) as refused:
        Settings.from_env({name: raw})
    assert refused.value.message.startswith(f"{name}={raw!r} {BAD_WIREGUARD_SETTINGS[name][0]}")


def test_a_tunnel_subnet_too_small_for_two_hosts_is_refused() -> None:
    with pytest.raises(
        InvalidOption, match="VXLANPY_WG_SUBNET='10.255.0.0/31' is too small: it needs an address per host"
    ):
        Settings.from_env({"VXLANPY_WG_SUBNET": "10.255.0.0/31"})
