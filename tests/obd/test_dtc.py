"""DTC decoding (SAE J2012), descriptions from python-OBD, MIL status and the tracker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from obd.decoders import parse_dtc

from agent.messages import EventData
from agent.obd.dtc import (
    DtcDecodeError,
    DtcTracker,
    decode_dtcs,
    describe,
    encode_dtc,
    merge_replies,
    mil_status,
)
from agent.obd.pids import DecodeError

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


codes = st.builds(
    lambda letter, digit, rest: f"{letter}{digit}{rest:03X}",
    st.sampled_from("PCBU"),
    st.integers(0, 3),
    st.integers(0, 0xFFF),
).filter(lambda c: c != "P0000")  # 00 00 is padding, not a code


# --------------------------------------------------------------------------- decoding


def test_decodes_a_mode_03_reply() -> None:
    assert decode_dtcs(bytes.fromhex("43 02 03 01 40 35")) == ["P0301", "C0035"]


def test_top_two_bits_pick_the_letter() -> None:
    # J2012: 00 P, 01 C, 10 B, 11 U; so C0 35 is U0035 (python-OBD agrees).
    reply = bytes.fromhex("43 04 01 71 41 23 92 34 C0 35")
    assert decode_dtcs(reply) == ["P0171", "C0123", "B1234", "U0035"]


def test_padding_odd_byte_and_empty_reply() -> None:
    assert decode_dtcs(bytes.fromhex("43 01 01 33 00 00 00 00")) == ["P0133"]
    assert decode_dtcs(bytes.fromhex("47 01 04 20 C1")) == ["P0420"]
    assert decode_dtcs(bytes.fromhex("43 00")) == []
    assert decode_dtcs(bytes.fromhex("4A 00 00 00")) == []


def test_wrong_service_is_a_clear_value_error() -> None:
    with pytest.raises(DtcDecodeError, match=r"41 0C 1A F8 is not a DTC answer"):
        decode_dtcs(bytes.fromhex("41 0C 1A F8"))
    with pytest.raises(ValueError, match=r"\(47\)"):
        decode_dtcs(bytes.fromhex("43 01 03 01"), service=0x07)
    with pytest.raises(DecodeError, match="empty"):
        decode_dtcs(b"")
    assert decode_dtcs(bytes.fromhex("47 01 03 01"), service=0x07) == ["P0301"]


@given(st.lists(codes, max_size=20))
def test_round_trip_through_encode(cs: list[str]) -> None:
    body = b"".join(encode_dtc(c) for c in cs)
    assert decode_dtcs(bytes([0x43, len(cs)]) + body + b"\x00\x00") == cs


@given(st.integers(0, 255), st.integers(0, 255))
def test_agrees_with_python_obd_on_every_byte_pair(hi: int, lo: int) -> None:
    theirs = parse_dtc((hi, lo))
    ours = decode_dtcs(bytes([0x43, 1, hi, lo]))
    if theirs is None:
        assert ours == []
    else:
        assert ours == [theirs[0].upper()]  # python-OBD prints hex digits in lower case


def test_encode_rejects_non_codes() -> None:
    for bad in ("P4301", "X0301", "P03", "P03G1"):
        with pytest.raises(ValueError, match="not a DTC"):
            encode_dtc(bad)


def test_merge_keeps_sorted_unique_codes_with_the_lowest_ecu() -> None:
    replies = {
        0x7E9: bytes.fromhex("43 02 07 00 C1 00"),  # TCM: P0700, U0100
        0x7E8: bytes.fromhex("43 02 03 01 C1 00"),  # ECM: P0301, U0100
    }
    assert merge_replies(replies) == {"P0301": 0x7E8, "P0700": 0x7E9, "U0100": 0x7E8}
    assert list(merge_replies(replies)) == ["P0301", "P0700", "U0100"]
    with pytest.raises(DtcDecodeError):
        merge_replies({0x7E8: bytes.fromhex("43 00"), 0x7E9: bytes.fromhex("7F 03 11")})


def test_descriptions_come_from_python_obd() -> None:
    assert describe("P0301") == "Cylinder 1 Misfire Detected"
    assert describe("p0420 ") == "Catalyst System Efficiency Below Threshold"
    assert describe("U0100") == "Lost Communication With ECM/PCM A"
    assert describe("C0035") == ""  # python-OBD only knows generic P and U codes


def test_mil_status() -> None:
    assert mil_status(bytes.fromhex("41 01 83 07 E5 00")) == (True, 3)
    assert mil_status(bytes.fromhex("41 01 00 07 E5 00")) == (False, 0)
    assert mil_status(bytes.fromhex("41 01 7F")) == (False, 127)
    with pytest.raises(DecodeError, match="01 01"):
        mil_status(bytes.fromhex("41 0C 1A F8"))


# --------------------------------------------------------------------------- tracker


def summary(events: list[EventData]) -> list[tuple[str, str, str]]:
    return [(e.data["code"], e.data["state"], e.data["status"]) for e in events]


def test_appear_persist_clear() -> None:
    tr = DtcTracker()
    first = tr.update(at(0), {"P0301": 0x7E8}, [], lat=52.0, lon=5.0)
    assert summary(first) == [("P0301", "stored", "active")]
    ev = first[0]
    assert ev.type == "dtc" and ev.ts == at(0) and (ev.lat, ev.lon) == (52.0, 5.0)
    assert ev.data == {
        "code": "P0301",
        "description": "Cylinder 1 Misfire Detected",
        "state": "stored",
        "status": "active",
        "ecu": "7E8",
    }
    assert tr.update(at(60), ["P0301"], []) == []
    assert tr.update(at(120), ["P0301"], ["P0301"]) == []  # still failing: both lists
    cleared = tr.update(at(600), [], [])
    assert summary(cleared) == [("P0301", "stored", "cleared")]
    assert cleared[0].data["active_since"] == "2026-03-02T08:00:00Z"
    assert cleared[0].data["duration_s"] == 600.0
    assert cleared[0].lat is None
    assert tr.active == {}
    assert tr.update(at(660), [], []) == []


def test_pending_that_matures_is_one_change_of_state() -> None:
    tr = DtcTracker()
    assert summary(tr.update(at(0), [], ["P0171"])) == [("P0171", "pending", "active")]
    changed = tr.update(at(60), ["P0171"], [])
    assert summary(changed) == [("P0171", "stored", "active")]
    assert changed[0].data["previous_state"] == "pending"
    assert changed[0].data["active_since"] == "2026-03-02T08:00:00Z"
    assert tr.active == {"P0171": "stored"}


def test_failed_reads_never_clear() -> None:
    tr = DtcTracker()
    tr.update(at(0), ["P0301"], ["P0420"])
    assert tr.update(at(60), None, None) == []
    # Stored read failed: the pending code may have matured, so it is kept.
    assert tr.update(at(120), None, []) == []
    # Pending read failed: a stored code absent from a good stored read has cleared;
    # the pending one cannot be judged without the pending read.
    assert summary(tr.update(at(180), [], None)) == [("P0301", "stored", "cleared")]
    assert tr.active == {"P0420": "pending"}
    # A stored code listed only by mode 07 while mode 03 failed stays stored.
    tr.update(at(200), ["P0128"], ["P0420"])
    assert tr.update(at(240), None, ["P0128", "P0420"]) == []
    assert tr.active == {"P0128": "stored", "P0420": "pending"}
    assert summary(tr.update(at(300), [], [])) == [
        ("P0128", "stored", "cleared"),
        ("P0420", "pending", "cleared"),
    ]


def test_new_codes_are_reported_from_a_partial_read() -> None:
    tr = DtcTracker()
    assert summary(tr.update(at(0), None, ["P0442"])) == [("P0442", "pending", "active")]


def test_seed_after_restart_does_not_reannounce() -> None:
    before = DtcTracker()
    before.update(at(0), {"P0301": 0x7E8}, {"P0420": 0x7E8})
    snapshot = before.known()
    restored = json.loads(json.dumps(snapshot))  # as the runtime persists it
    after = DtcTracker()
    after.seed(restored)
    assert after.active == {"P0301": "stored", "P0420": "pending"}
    events = after.update(at(3600), ["P0301", "P0505"], [])
    assert summary(events) == [
        ("P0420", "pending", "cleared"),
        ("P0505", "stored", "active"),
    ]
    assert events[0].data["duration_s"] == 3600.0
    assert events[0].data["ecu"] == "7E8"


def test_without_seed_a_restart_reports_what_is_present() -> None:
    assert summary(DtcTracker().update(at(0), ["P0301"], [])) == [("P0301", "stored", "active")]


@pytest.mark.parametrize(
    "snapshot",
    [
        {},
        {"v": 2, "codes": {}},
        {"v": 1, "codes": {"P0301": {"state": "gone", "since": "2026-03-02T08:00:00Z"}}},
        {"v": 1, "codes": {"Q0301": {"state": "stored", "since": "2026-03-02T08:00:00Z"}}},
        {"v": 1, "codes": {"P0301": {"state": "stored", "since": "2026-03-02T08:00:00"}}},
        {"v": 1, "codes": {"P0301": {"state": "stored"}}},
        {"v": 1, "codes": ["P0301"]},
    ],
)
def test_seed_rejects_what_is_not_a_snapshot(snapshot: dict[str, object]) -> None:
    tr = DtcTracker()
    tr.update(at(0), ["P0171"], [])
    with pytest.raises(ValueError):
        tr.seed(snapshot)
    assert tr.active == {"P0171": "stored"}  # unchanged


events_of_reads = st.lists(
    st.tuples(
        st.none() | st.sets(st.sampled_from(["P0301", "P0420", "U0100"])),
        st.none() | st.sets(st.sampled_from(["P0301", "P0420", "U0100"])),
    ),
    max_size=15,
)


@given(events_of_reads)
def test_events_tell_a_consistent_story(
    reads: list[tuple[set[str] | None, set[str] | None]],
) -> None:
    """Replaying the events alone reconstructs the tracker's active codes."""
    tr = DtcTracker()
    backend: dict[str, str] = {}
    for i, (stored, pending) in enumerate(reads):
        for e in tr.update(at(i * 60), stored, pending):
            code = e.data["code"]
            if e.data["status"] == "cleared":
                assert code in backend  # never clears what was not announced
                del backend[code]
            else:
                assert backend.get(code) != e.data["state"]  # only changes are sent
                backend[code] = e.data["state"]
        if stored is not None:
            assert {c for c, s in backend.items() if s == "stored"} >= stored
        assert backend == tr.active
