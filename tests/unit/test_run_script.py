"""scripts/run installs vxlanpy (editable) only when its packaging changed: run against a copy of the checkout whose
.venv holds a stand-in python (it records every pip call) and a stand-in `vxlanpy` (it records that it served)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/bin/sh
# Stands in for .venv/bin/python: `-m pip install` is recorded, and makes the console script (or fails on demand).
if [ "$1 $2" = "-m pip" ]; then
    echo "pip $*" >>"$CALLS"
    [ -e "$FAIL_PIP" ] && exit 1
    printf '#!/bin/sh\\necho "vxlanpy $*" >>"$CALLS"\\n' >"$(dirname "$0")/vxlanpy"
    chmod +x "$(dirname "$0")/vxlanpy"
fi
"""
FAKE_ID = "#!/bin/sh\necho 0\n"  # the script refuses to run but as root; the stand-ins need no root


def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "run", root / "scripts" / "run")
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    (root / "plugin" / "vxlanpy").mkdir(parents=True)
    (root / "plugin" / "vxlanpy" / "__init__.py").write_text('"""vxlanpy"""\n')
    executable(root / ".venv" / "bin" / "python", FAKE_PYTHON)
    executable(tmp_path / "bin" / "id", FAKE_ID)
    return root


def start(checkout: Path) -> list[str]:
    """Run scripts/run as a user does; the calls it made to pip and to `vxlanpy`, in order."""
    calls = checkout.parent / "calls"
    calls.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PATH": f"{checkout.parent / 'bin'}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "FAIL_PIP": str(checkout.parent / "fail-pip"),
        "VXLANPY_SOCKET": str(checkout.parent / "run" / "vxlanpy.sock"),
        "VXLANPY_STATE_DIR": str(checkout.parent / "state"),
    }
    result = subprocess.run(
        [str(checkout / "scripts" / "run"), "--flag"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    assert (result.returncode == 0) == (lines[-1:] == ["vxlanpy serve --flag"]), result.stderr
    return lines


def pips(calls: list[str]) -> int:
    return sum(1 for line in calls if line.startswith("pip "))


def test_the_first_start_installs_and_serves(checkout: Path) -> None:
    calls = start(checkout)
    assert calls == ["pip -m pip install -q --disable-pip-version-check -e .", "vxlanpy serve --flag"]
    assert oct((checkout.parent / "state").stat().st_mode & 0o777) == "0o700"


def test_a_second_start_does_not_run_pip_even_after_the_code_changed(checkout: Path) -> None:
    start(checkout)
    assert start(checkout) == ["vxlanpy serve --flag"]
    package = checkout / "plugin" / "vxlanpy"
    (package / "__init__.py").write_text('"""vxlanpy, changed"""\n')  # the editable install runs it as it is
    (package / "new.py").write_text("")
    assert start(checkout) == ["vxlanpy serve --flag"]


def test_a_new_dependency_in_setup_cfg_installs_again(checkout: Path) -> None:
    start(checkout)
    setup = checkout / "setup.cfg"
    setup.write_text(setup.read_text().replace("install_requires =\n", "install_requires =\n    attrs>=23\n"))
    assert pips(start(checkout)) == 1
    assert pips(start(checkout)) == 0


def test_a_changed_build_system_installs_again(checkout: Path) -> None:
    start(checkout)
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"wheel"', '"wheel", "setuptools-scm"'))
    assert pips(start(checkout)) == 1


def test_a_moved_checkout_installs_again(checkout: Path) -> None:
    """The editable install points at the checkout's path."""
    start(checkout)
    moved = checkout.rename(checkout.parent / "moved")
    assert pips(start(moved)) == 1


def test_a_failed_install_is_tried_again_at_the_next_start(checkout: Path) -> None:
    start(checkout)
    (checkout / "setup.cfg").write_text((checkout / "setup.cfg").read_text() + "\n")
    (checkout.parent / "fail-pip").touch()
    assert start(checkout) == ["pip -m pip install -q --disable-pip-version-check -e ."]  # and it did not serve
    (checkout.parent / "fail-pip").unlink()
    assert start(checkout) == ["pip -m pip install -q --disable-pip-version-check -e .", "vxlanpy serve --flag"]


def test_a_removed_console_script_installs_again(checkout: Path) -> None:
    start(checkout)
    (checkout / ".venv" / "bin" / "vxlanpy").unlink()
    assert pips(start(checkout)) == 1
