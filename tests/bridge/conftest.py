"""The bridge's database on both engines (``pg_url`` comes from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The bridge's database on each engine it supports."""
    if request.param == "sqlite":
        return str(tmp_path / "bridge.sqlite")
    return str(request.getfixturevalue("pg_url"))
