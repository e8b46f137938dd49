"""vxlanpy never goes through a shell: checked in the source here, and at run time by tests/conftest.py."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "plugin" / "vxlanpy"


def shell_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                found.append(f"{name}() at line {node.lineno}")
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                ):
                    found.append(f"shell= at line {node.lineno}")
            if node.args and isinstance(node.args[0], ast.List) and node.args[0].elts:
                first = node.args[0].elts[0]
                if isinstance(first, ast.Constant) and first.value in ("ip", "bridge", "brctl", "sh", "bash"):
                    found.append(f"{first.value} command at line {node.lineno}")
    return found


@pytest.mark.parametrize("path", sorted(PLUGIN.rglob("*.py")), ids=lambda path: str(path.relative_to(PLUGIN)))
def test_no_shell_in_source(path: Path) -> None:
    assert shell_uses(ast.parse(path.read_text())) == []


def test_the_source_check_catches_a_shell() -> None:
    sample = 'import os, subprocess\nos.system("x")\nsubprocess.run("x", shell=True)\nsubprocess.run(["ip", "link"])\n'
    assert len(shell_uses(ast.parse(sample))) == 3


def test_the_runtime_check_catches_a_shell() -> None:
    from tests import conftest

    before = len(conftest._violations)
    namespace: dict[str, object] = {"subprocess": subprocess}
    code = compile("subprocess.run(['sh', '-c', 'true'], check=False)", str(PLUGIN / "fake_module.py"), "exec")
    exec(code, namespace)  # runs as if from a file under plugin/vxlanpy
    assert conftest._violations[before:] == ["vxlanpy ran ['sh', '-c', 'true']"]
    del conftest._violations[before:]
