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
