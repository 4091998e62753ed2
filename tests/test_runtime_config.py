"""The agent's configuration paths: zones file, pushed config, persisted config."""

from __future__ import annotations

import json
from pathlib import Path

from agent.clock import Clock
from agent.config import parse_config
from agent.runtime import Agent, gps_source

DEPOT = {
    "id": "depot",
    "name": "Depot",
    "shape": {"type": "circle", "lat": 52.09, "lon": 5.12, "radius_m": 80},
}
YARD = {
    "id": "yard",
    "name": "Yard",
    "shape": {"type": "circle", "lat": 52.10, "lon": 5.13, "radius_m": 50},
}


def make_agent(tmp_path: Path, **geofence: object) -> Agent:
    cfg = parse_config(
        {
            "device": {"id": "van-1"},
            "gps": {"source": "file", "path": str(tmp_path / "none.nmea")},
            "buffer": {"path": str(tmp_path / "o.sqlite"), "commit_interval_s": 0},
            "geofence": geofence,
        },
        {},
    )
    return Agent(cfg, gps_source(cfg.gps), clock=Clock("system", synced=lambda: True))


def events(agent: Agent) -> list[dict]:  # type: ignore[type-arg]
    agent.outbox.commit()
    return [json.loads(body) for _, body in agent.outbox.next_batch("events", 0, 100, 10**6)]


def test_zones_file_is_version_0_and_a_push_replaces_it(tmp_path: Path) -> None:
    zones = tmp_path / "zones.geojson"
    zones.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"id": "depot", "name": "Depot", "radius_m": 80},
                        "geometry": {"type": "Point", "coordinates": [5.12, 52.09]},
                    }
                ],
            }
        )
    )
    agent = make_agent(tmp_path, zones_file=str(zones))
    assert (agent.health()["config_version"], agent.health()["zones"]) == (0, 1)
    agent.handle_downlink(
        "config", json.dumps({"v": 1, "version": 1, "geofences": [DEPOT, YARD]}).encode()
    )
    assert (agent.zones.version, len(agent.zones.zones)) == (1, 2)
    # A config without geofences keeps the zones and moves the version.
    agent.handle_downlink("config", b'{"v": 1, "version": 2}')
    assert (agent.zones.version, len(agent.zones.zones)) == (2, 2)
    agent.outbox.close()
    again = make_agent(tmp_path, zones_file=str(zones))  # the pushed set wins over the file
    assert (again.zones.version, len(again.zones.zones)) == (2, 2)
    again.outbox.close()


def test_malformed_payloads_are_refused_and_recorded(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    for payload in (
        b"{not json",
        b'{"v": 1}',
        b'{"v": 1, "version": 1, "geofences": [{"id": "x"}]}',
    ):
        agent.handle_downlink("config", payload)
    assert agent.zones.version == 0
    refused = [e for e in events(agent) if e["type"] == "config_rejected"]
    assert len(refused) == 3
    assert all(e["data"]["running_version"] == 0 and e["data"]["reason"] for e in refused)
    agent.handle_downlink("config", b"")  # a cleared retained config changes nothing
    agent.handle_downlink("cmd", b'{"anything": 1}')  # commands: a later issue, ignored
    assert agent.zones.version == 0
    agent.outbox.close()


def test_a_config_that_cannot_be_stored_is_not_applied(tmp_path: Path) -> None:
    """Disk full (SQLite's own SQLITE_FULL): refused with the reason, old set kept."""
    agent = make_agent(tmp_path)
    agent.handle_downlink(
        "config", json.dumps({"v": 1, "version": 1, "geofences": [DEPOT]}).encode()
    )
    pages = agent.outbox._db.execute("PRAGMA page_count").fetchone()[0]
    agent.outbox._db.execute(f"PRAGMA max_page_count = {pages}")
    big = [{**YARD, "id": f"z{i}", "name": "x" * 200} for i in range(300)]
    agent.handle_downlink("config", json.dumps({"v": 1, "version": 2, "geofences": big}).encode())
    assert (agent.zones.version, len(agent.zones.zones)) == (1, 1)
    agent.outbox._db.execute("PRAGMA max_page_count = 1073741823")
    refused = [e for e in events(agent) if e["type"] == "config_rejected"]
    assert refused and "cannot store it" in refused[-1]["data"]["reason"]
    agent.outbox.close()


def test_refusals_name_the_version_and_are_recorded_once(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    bad = json.dumps({"v": 1, "version": 6, "geofences": [], "extra": 1}).encode()
    agent.handle_downlink("config", bad)
    agent.handle_downlink("config", bad)  # the retained config again, after a reconnect
    huge = int("1" + "0" * 400)
    overflow = {
        "id": "p",
        "name": "P",
        "shape": {"type": "polygon", "outer": [[huge, 1], [2, 2], [3, 1]]},
    }
    agent.handle_downlink(
        "config", json.dumps({"v": 1, "version": 7, "geofences": [overflow]}).encode()
    )
    refused = [e["data"] for e in events(agent) if e["type"] == "config_rejected"]
    assert [r["version"] for r in refused] == [6, 7]
    assert "extra" in refused[0]["reason"] and "out of range" in refused[1]["reason"]
    assert agent.zones.version == 0
    agent.outbox.close()


def test_a_redelivered_command_is_answered_again_not_run_again(tmp_path: Path) -> None:
    """A persistent session may hand a command over twice; restart must not loop."""
    from agent.messages import Command, CommandResult

    agent = make_agent(tmp_path)
    sent: list[CommandResult] = []
    agent.uplink.publish_result = lambda p: sent.append(CommandResult.model_validate_json(p))  # type: ignore[method-assign,assignment,return-value]
    flush = Command(id="c-7", name="flush").model_dump_json().encode()
    agent.handle_downlink("cmd", flush)
    agent.outbox.add("telemetry", '{"kind":"position"}')  # something changes in between
    agent.handle_downlink("cmd", flush)
    assert [r.id for r in sent] == ["c-7", "c-7"]
    assert sent[0] == sent[1]  # the same answer, not a second run
    agent.outbox.close()
    # Across a restart too (what a `restart` command needs).
    again = make_agent(tmp_path)
    resent: list[CommandResult] = []
    again.uplink.publish_result = lambda p: resent.append(CommandResult.model_validate_json(p))  # type: ignore[method-assign,assignment,return-value]
    again.handle_downlink("cmd", flush)
    assert resent == sent[:1]
    again.outbox.close()
