"""24 hours offline at speed: the buffer stays under its cap, every event is kept,
routine positions are thinned as documented, and the backlog drains to a real
mosquitto and the bridge."""

from __future__ import annotations

from pathlib import Path

from simulators.offline_day import offline_day


def test_a_day_offline_stays_under_the_cap_keeps_every_event_and_drains(tmp_path: Path) -> None:
    buffer = {"max_mb": 4.0, "hard_max_mb": 6.0, "thin_keep_every": 4, "reserve_mb": 0}
    r = offline_day(tmp_path, 24.0, buffer)
    made, trimmed, backlog = r["made"], r["trimmed"], r["backlog"]
    # A day at 1 Hz is more than 4 MB: the caps had work to do.
    assert made["telemetry"] > 30_000 and trimmed["thinned"] > 10_000
    assert r["peak_used_mb"] <= 4.0
    assert r["outbox_file_mb"] <= 4.5  # the file stops growing at the cap
    # Only routine telemetry went; every event waited and arrived, once.
    assert trimmed["dropped"] == 0 and trimmed["expired"] == 0
    assert backlog["events"] == made["events"] > 100
    assert backlog["telemetry"] + trimmed["thinned"] == made["telemetry"]
    assert r["all_delivered"]
    assert r["bridge"]["events"] == made["events"]
    assert r["bridge"]["positions"] == backlog["telemetry"]
    assert r["duplicates"] == 0
