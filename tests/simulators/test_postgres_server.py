"""simulators.postgres: a private PostgreSQL on a free port, two databases, a clean stop."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from simulators.postgres import PostgresServer


def test_two_databases_hold_their_own_rows_and_stop_frees_the_port(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pg")
    assert server.port != 5432  # never the machine's own server
    with server:
        dsns = [server.create_database(name) for name in ("bridge_a", "bridge-b")]
        assert dsns[0].startswith(f"postgresql://{server.user}@127.0.0.1:{server.port}/")
        for dsn, value in zip(dsns, ("alpha", "beta"), strict=True):
            with psycopg.connect(dsn) as conn:
                conn.execute("CREATE TABLE t (v text NOT NULL)")
                conn.execute("INSERT INTO t (v) VALUES (%s)", (value,))
        for dsn, value in zip(dsns, ("alpha", "beta"), strict=True):
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT v FROM t").fetchall() == [(value,)]
                assert conn.execute("SHOW fsync").fetchone() == ("off",)
    assert not server.alive()
    assert (tmp_path / "pg" / "postgres.log").stat().st_size > 0
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.dsn(), connect_timeout=2)


def test_restart_after_a_kill_keeps_committed_rows(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pg").start()
    try:
        dsn = server.create_database("crash")
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE t (v int)")
            conn.execute("INSERT INTO t VALUES (1)")
        server.kill()
        server.start()
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]
    finally:
        server.stop()
