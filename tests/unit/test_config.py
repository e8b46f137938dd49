from __future__ import annotations

import pytest

from vxlanpy.config import Settings
from vxlanpy.errors import InvalidOption


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.socket == "/run/docker/plugins/vxlanpy.sock"
    assert settings.store_url == "sqlite:///var/lib/vxlanpy/state.db"


def test_state_dir_moves_the_default_store() -> None:
    assert Settings.from_env({"VXLANPY_STATE_DIR": "/tmp/x"}).store_url == "sqlite:///tmp/x/state.db"


@pytest.mark.parametrize(
    ("env", "phrase"),
    [
        ({"VXLANPY_LOG_LEVEL": "loud"}, "VXLANPY_LOG_LEVEL='loud' is not valid"),
        ({"VXLANPY_VNI_RANGE": "9-1"}, "VXLANPY_VNI_RANGE='9-1' is not valid"),
        ({"VXLANPY_THREADS": "0"}, "VXLANPY_THREADS='0' is not valid"),
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
        {"VXLANPY_WG_PORT": "51821", "VXLANPY_WG_SUBNET": "fd00:255::/64", "VXLANPY_WG_INTERFACE": "wg-vx.0"}
    )
    assert (given.wg_port, given.wg_subnet, given.wg_interface) == (51821, "fd00:255::/64", "wg-vx.0")


@pytest.mark.parametrize(
    ("env", "phrase"),
    [
        ({"VXLANPY_WG_PORT": "0"}, "VXLANPY_WG_PORT='0' is not valid; use a UDP port within 1-65535"),
        ({"VXLANPY_WG_PORT": "65536"}, "VXLANPY_WG_PORT='65536' is not valid"),
        ({"VXLANPY_WG_PORT": "５１８２０"}, "VXLANPY_WG_PORT="),
        ({"VXLANPY_WG_SUBNET": "10.255.0.1/16"}, "VXLANPY_WG_SUBNET='10.255.0.1/16' is not valid.*host bits zero"),
        ({"VXLANPY_WG_SUBNET": "wg"}, "VXLANPY_WG_SUBNET='wg' is not valid; use an IPv4 or IPv6 network"),
        ({"VXLANPY_WG_SUBNET": "10.255.0.0/31"}, "VXLANPY_WG_SUBNET='10.255.0.0/31' is too small"),
        (
            {"VXLANPY_WG_INTERFACE": "a-much-too-long-name"},
            "VXLANPY_WG_INTERFACE='a-much-too-long-name' is not a valid",
        ),
        ({"VXLANPY_WG_INTERFACE": "wg/0"}, "up to 15 letters, digits"),
        ({"VXLANPY_WG_INTERFACE": ".."}, "is not a valid interface name"),
    ],
)
def test_bad_wireguard_settings_are_refused_at_start(env: dict[str, str], phrase: str) -> None:
    with pytest.raises(InvalidOption, match=phrase):
        Settings.from_env(env)
