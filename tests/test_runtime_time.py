"""No record leaves the agent stamped with an unsynchronised clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.clock import Clock
from agent.config import parse_config
from agent.gps.fix import Fix, FixMode
from agent.runtime import Agent, gps_source

GNSS = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


class Mono:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_records_wait_for_gnss_time_and_are_back_dated(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "device": {"id": "van-1"},
            "gps": {"source": "file", "path": str(tmp_path / "none.nmea")},
            "buffer": {"path": str(tmp_path / "o.sqlite"), "commit_interval_s": 0},
            "clock": {"source": "gnss"},
        },
        {},
    )
    mono = Mono()
    # The kernel clock would claim 1970 and even say it is synchronised: ignored.
    clock = Clock("gnss", mono=mono, wall=lambda: 0.0, synced=lambda: True)
    agent = Agent(cfg, gps_source(cfg.gps), clock=clock, mono=mono)
    assert agent.health()["clock"] == "none"
    assert agent.health()["waiting_for_time"] == 1

    # A receiver without a fix: its time is not trusted, nothing is emitted.
    mono.t = 1010.0
    agent.handle_fix(Fix(time=GNSS, mono=mono.t, mode=FixMode.NO_FIX))
    agent.outbox.commit()
    assert agent.outbox.last_seq == 0
    assert agent.health()["clock"] == "none"

    mono.t = 1012.0
    agent.handle_fix(
        Fix(
            time=GNSS + timedelta(seconds=2),
            mono=mono.t,
            mode=FixMode.FIX_3D,
            lat=52.0,
            lon=4.0,
            speed=0.0,
        )
    )
    agent.outbox.commit()
    rows = agent.outbox.next_batch("events", 0, 10, 100_000)
    assert len(rows) == 1 and '"type":"agent_started"' in rows[0][1]
    # Started 12 s of monotonic time before the fix: back-dated, not stamped 1970.
    assert '"ts":"2026-03-02T07:59:50Z"' in rows[0][1]
    assert agent.health()["clock"] == "gnss"
    assert agent.outbox.next_batch("telemetry", 0, 10, 100_000)[0][0] == 2
    agent.outbox.close()


def test_a_fix_no_schema_allows_is_counted_not_fatal(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "device": {"id": "van-1"},
            "gps": {"source": "file", "path": str(tmp_path / "none.nmea")},
            "buffer": {"path": str(tmp_path / "o.sqlite")},
        },
        {},
    )
    agent = Agent(cfg, gps_source(cfg.gps), clock=Clock("gnss"))
    agent.handle_fix(Fix(time=GNSS, mono=1.0, mode=FixMode.FIX_3D, lat=95.0, lon=4.0, speed=3.0))
    assert agent.pipeline.rejected == 1
    agent.handle_fix(
        Fix(
            time=GNSS + timedelta(seconds=1),
            mono=2.0,
            mode=FixMode.FIX_3D,
            lat=52.0,
            lon=4.0,
            speed=3.0,
        )
    )
    assert agent.health()["rejected_fixes"] == 1
    assert agent.outbox.last_seq == 2  # agent_started + the good position
    agent.outbox.close()
