"""shellcheck over the project's own bash scripts (the Termux ones: test_termux_scripts)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.tools import need_tool

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), ROOT / ".ci/run"])


def test_the_scripts_are_found() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"install.sh", "ensure-deps.sh", "test.sh", "demo.sh", "run"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(script: Path) -> None:
    shellcheck = need_tool("shellcheck", "shellcheck")
    done = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
