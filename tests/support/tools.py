"""System tools some tests need: skipped on a developer's machine, required in CI.

scripts/ensure-deps.sh installs every one of them; .ci/run sets
TELEMATICS_REQUIRE_SHARED=1, so a missing tool there fails instead of
skipping quietly.
"""

from __future__ import annotations

import os
import shutil

import pytest


def must_not_skip() -> bool:
    """True in CI: a test that cannot run is a failure, not a skip."""
    return bool(os.environ.get("CI")) or os.environ.get("TELEMATICS_REQUIRE_SHARED") == "1"


def need_tool(name: str, package: str) -> str:
    """The path of ``name``; else skip (fail in CI) naming the Debian package."""
    exe = shutil.which(name)
    if exe is None:
        why = f"{name} not installed (Debian package {package}; scripts/ensure-deps.sh installs it)"
        if must_not_skip():
            pytest.fail(why)
        pytest.skip(why)
    return exe
