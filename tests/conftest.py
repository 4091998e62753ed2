"""Shared test fixtures: where the real captures live, and how to skip without them."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.postgres import PostgresServer

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TELEMATICS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (real device captures), or skip with the reason.

    The captures are never copied into this repository.  On a user's machine
    they are absent and these tests skip; .ci/run sets TELEMATICS_REQUIRE_SHARED=1
    so that their absence fails CI instead.
    """
    if not SHARED_DATA.is_dir():
        if os.environ.get("TELEMATICS_REQUIRE_SHARED") == "1":
            pytest.fail(f"real captures required but {SHARED_DATA} is missing")
        pytest.skip(f"real captures not found at {SHARED_DATA} (set TELEMATICS_SHARED_DATA)")
    return SHARED_DATA


_pg_names = itertools.count(1)


# PostgreSQL is started by the tests themselves (initdb into a temporary
# directory, a free port), once per session; each test gets a fresh database
# in it.  scripts/ensure-deps.sh installs the server binaries.
@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("pg")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database(f"t{next(_pg_names)}")


_FIGURES: list[str] = []


@pytest.fixture
def figures() -> list[str]:
    """Lines a test measured; printed in a 'figures' section at the end of every run.

    pytest hides the output of passing tests, and the figures an issue asks
    for (gpsd agreement, records delivered) must be visible in CI's log.
    """
    return _FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
