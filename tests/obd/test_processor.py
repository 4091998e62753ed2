"""The pure OBD processor: exchanges in, records and engine samples out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.messages import EventData, ObdData
from agent.obd.exchange import Exchange, ExchangeError, parse_exchange
from agent.obd.processor import ObdProcessor
from agent.obd.state import EngineState

T0 = datetime(2024, 5, 14, 7, 30, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def rpm(s: float, value: float) -> Exchange:
    raw = int(value * 4)
    return Exchange(
        ts=at(s), req="010C", replies={0x7E8: bytes([0x41, 0x0C, raw >> 8, raw & 0xFF])}
    )


def events(out: list[tuple[str, object]], kind: str | None = None) -> list[EventData]:
    return [r for _s, r in out if isinstance(r, EventData) and (kind is None or r.type == kind)]


def run(
    proc: ObdProcessor, exchanges: list[Exchange]
) -> tuple[list[tuple[str, object]], list[object]]:
    records: list[tuple[str, object]] = []
    samples: list[object] = []
    for ex in exchanges:
        out = proc.feed(ex, (52.1, 5.07))
        records.extend(out.records)
        samples.extend(out.engine)
    return records, samples


def test_engine_start_and_stop_from_rpm_are_back_dated() -> None:
    proc = ObdProcessor()
    seq = [rpm(t * 0.5, 0) for t in range(10)]  # 0-4.5 s: off
    seq += [rpm(5 + t * 0.5, 780) for t in range(20)]  # 5-14.5 s: idling
    seq += [rpm(15 + t * 0.5, 0) for t in range(20)]  # 15-24.5 s: off again
    records, samples = run(proc, seq)
    on = events(records, "engine_on")
    off = events(records, "engine_off")
    assert [e.ts for e in on] == [at(5)]
    assert [e.ts for e in off] == [at(0), at(15)]  # unknown -> off at start, then the stop
    states = [s.state for s in samples]  # type: ignore[attr-defined]
    assert EngineState.RUNNING in states and states[-1] is EngineState.OFF


def test_snapshot_carries_vss_names_and_latest_values() -> None:
    proc = ObdProcessor(snapshot_interval_s=10)
    seq = []
    for t in range(25):
        seq.append(rpm(t, 1500 + t))
        seq.append(
            Exchange(ts=at(t + 0.2), req="010D", replies={0x7E8: bytes([0x41, 0x0D, 40 + t])})
        )
    seq.append(Exchange(ts=at(25.5), req="ATRV", volts=14.1))
    records, _ = run(proc, seq)
    snaps = [r for s, r in records if isinstance(r, ObdData)]
    assert all(s == "telemetry" for s, r in records if isinstance(r, ObdData))
    assert len(snaps) == 2  # at 10 s and 20 s
    assert snaps[0].signals == {
        "Vehicle.Powertrain.CombustionEngine.Speed": 1510.0,
        "Vehicle.Speed": 49.0,
    }
    assert snaps[0].ts == at(10)  # the reading that crossed the 10 s boundary is in it


def test_foreign_and_broken_replies_are_counted_never_read() -> None:
    proc = ObdProcessor()
    seq = [
        # another ECU's UDS answer to our 01 A6 (as ELM327-emulator sends)
        Exchange(ts=at(0), req="01A6", replies={0x7EA: bytes.fromhex("61A60000EA5C")}),
        Exchange(ts=at(1), req="010D", replies={0x7E8: bytes.fromhex("410C")}),  # wrong pid
        Exchange(ts=at(2), req="010C", replies={0x7E8: bytes.fromhex("410C1A")}),  # short
    ]
    records, _ = run(proc, seq)
    assert proc.latest == {}
    assert sum(proc.rejected.values()) == 3
    assert events(records) == []


def test_dtc_appears_once_and_clears_once() -> None:
    proc = ObdProcessor()
    seq: list[Exchange] = []
    for t, stored in ((0, ""), (60, "0301"), (120, "0301"), (180, "")):
        count = len(stored) // 4
        seq.append(
            Exchange(ts=at(t), req="03", replies={0x7E8: bytes.fromhex(f"43{count:02X}{stored}")})
        )
        seq.append(Exchange(ts=at(t + 0.1), req="07", replies={0x7E8: bytes.fromhex("4700")}))
    records, _ = run(proc, seq)
    dtc = events(records, "dtc")
    assert [(e.data["code"], e.data["status"]) for e in dtc] == [
        ("P0301", "active"),
        ("P0301", "cleared"),
    ]
    assert dtc[0].data["description"] == "Cylinder 1 Misfire Detected"
    assert dtc[0].lat == 52.1


def test_vin_event_once() -> None:
    proc = ObdProcessor()
    vin = b"WDB9066331S123456"
    ex = Exchange(ts=at(0), req="0902", replies={0x7E8: b"\x49\x02\x01" + vin})
    records, _ = run(proc, [ex, ex])
    assert [e.data for e in events(records, "vehicle_identified")] == [{"vin": vin.decode()}]


def test_exchange_json_round_trip_and_errors() -> None:
    ex = Exchange(ts=at(1.25), req="010C", replies={0x7E8: bytes.fromhex("410C1AF8")})
    assert parse_exchange(ex.to_json()) == ex
    err = Exchange(ts=at(2), req="010D", error="no_data")
    assert parse_exchange(err.to_json()) == err
    for bad, why in (
        ('{"ts":"2024-05-14T07:30:00Z","req":"010C"}', "exactly one of"),
        ('{"ts":"2024-05-14T07:30:00+02:00","req":"ATRV","volts":12}', "UTC"),
        ('{"ts":"2024-05-14T07:30:00Z","req":"XYZ","error":"no_data"}', "req"),
        ('{"ts":"2024-05-14T07:30:00Z","req":"010C","error":"bad"}', "error kind"),
        ('{"ts":"2024-05-14T07:30:00Z","req":"010C","replies":{"7E8":"zz"}}', "not hex"),
        ("[1]", "not a JSON object"),
    ):
        with pytest.raises(ExchangeError, match=why):
            parse_exchange(bad)


def test_adapter_gone_while_idling_does_not_idle_forever() -> None:
    # Parked with the engine idling; after 120 s the adapter is unplugged
    # and nothing more comes from OBD while the GPS keeps reporting.
    from agent.gps.fix import Fix, FixMode
    from agent.pipeline import Pipeline

    pipe = Pipeline(obd=ObdProcessor())
    out: list[tuple[str, object]] = []
    for t in range(900):
        if t < 120:
            out += pipe.feed_obd(rpm(t - 0.5, 780))
        fix = Fix(
            time=at(t), mono=float(t), mode=FixMode.FIX_3D, lat=52.1, lon=5.07, speed=0.0, hdop=0.9
        )
        out += pipe.feed_fix(fix)
    unknown = events(out, "engine_unknown")
    assert len(unknown) == 1
    assert unknown[0].ts == at(118.5)  # dated at the last evidence (t = 119 - 0.5)
    assert [e.type for e in events(out) if e.type.startswith("idle")] == ["idle_start", "idle_end"]
    end = events(out, "idle_end")[0]
    assert end.ts == at(118.5)
    assert events(out, "excessive_idle") == []


def test_non_finite_and_impossible_values_never_become_readings() -> None:
    with pytest.raises(ExchangeError, match="NaN is not a number"):
        parse_exchange('{"ts":"2024-05-14T07:30:00Z","req":"ATRV","volts":NaN}')
    with pytest.raises(ExchangeError, match="Infinity"):
        parse_exchange('{"ts":"2024-05-14T07:30:00Z","req":"ATRV","volts":Infinity}')
    proc = ObdProcessor()
    run(
        proc,
        [Exchange(ts=at(0), req="ATRV", volts=1e308), Exchange(ts=at(1), req="ATRV", volts=12.4)],
    )
    assert proc.latest == {"Vehicle.LowVoltageBattery.CurrentVoltage": 12.4}
    assert proc.rejected["out_of_range"] == 1
