"""GeoJSON and GPX exports: exact shapes, round-trips, and GPX 1.1 schema validity."""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_bridge.export import DESC_MAX, GPX_NS, iso_z, positions_geojson, positions_gpx
from cloud_bridge.rows import EventRow, PositionRow

XSD = Path(__file__).resolve().parent.parent / "data" / "gpx" / "gpx11.xsd"
NS = {"g": GPX_NS}
T0 = datetime(2026, 3, 2, 8, 14, 2, tzinfo=UTC)


_SCHEMA = xmlschema.XMLSchema(str(XSD))  # the official GPX 1.1 schema, see tests/data/gpx/


@pytest.fixture
def schema() -> xmlschema.XMLSchema:
    return _SCHEMA


def _errors(schema: xmlschema.XMLSchema, doc: str) -> list[str]:
    return [str(e.reason) for e in schema.iter_errors(io.BytesIO(doc.encode("utf-8")))]


def pos(seq: int, ts: datetime, lat: float, lon: float, **kw: Any) -> PositionRow:
    return PositionRow(device="van-042", epoch="e1", seq=seq, ts=ts, lat=lat, lon=lon, **kw)


def event(
    id_: int, ts: datetime, type_: str, lat: float | None, lon: float | None, **data: Any
) -> EventRow:
    return EventRow(
        id=id_, device="van-042", epoch="e1", seq=100 + id_, ts=ts, type=type_, lat=lat, lon=lon,
        data=data,
    )  # fmt: skip


# Given out of order on purpose: both exports sort by time.
POSITIONS = [
    pos(119, T0 + timedelta(seconds=1, microseconds=500000), 52.37025, 4.8953, speed=10.0,
        course=90.0, mode=2, sats=6, hdop=2.5, reason="heading"),
    pos(118, T0, 52.370215678, 4.895167949, alt=2.1, speed=12.47, course=87.3, mode=3, sats=11,
        hdop=0.8, reason="periodic"),
]  # fmt: skip
EVENTS = [
    event(7, T0 + timedelta(seconds=1), "harsh_braking", 52.3702, 4.8952, peak_g=0.45),
    event(8, T0, "gps_fix_lost", None, None, mode=1),
]


def test_geojson_exact_shape() -> None:
    assert positions_geojson("van-042", POSITIONS, EVENTS) == {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "track",
                "geometry": {
                    "type": "LineString",
                    "coordinates": [[4.8951679, 52.3702157], [4.8953, 52.37025]],
                },
                "properties": {
                    "kind": "track",
                    "device": "van-042",
                    "start": "2026-03-02T08:14:02Z",
                    "end": "2026-03-02T08:14:03.500000Z",
                    "points": 2,
                    "times": ["2026-03-02T08:14:02Z", "2026-03-02T08:14:03.500000Z"],
                },
            },
            {
                "type": "Feature",
                "id": "e1:118",
                "geometry": {"type": "Point", "coordinates": [4.8951679, 52.3702157]},
                "properties": {
                    "kind": "position",
                    "seq": 118,
                    "ts": "2026-03-02T08:14:02Z",
                    "alt": 2.1,
                    "speed_kmh": 44.89,  # 12.47 m/s * 3.6 = 44.892
                    "course": 87.3,
                    "sats": 11,
                    "hdop": 0.8,
                    "reason": "periodic",
                },
            },
            {
                "type": "Feature",
                "id": "e1:119",
                "geometry": {"type": "Point", "coordinates": [4.8953, 52.37025]},
                "properties": {
                    "kind": "position",
                    "seq": 119,
                    "ts": "2026-03-02T08:14:03.500000Z",
                    "alt": None,
                    "speed_kmh": 36.0,
                    "course": 90.0,
                    "sats": 6,
                    "hdop": 2.5,
                    "reason": "heading",
                },
            },
            {
                "type": "Feature",
                "id": 7,
                "geometry": {"type": "Point", "coordinates": [4.8952, 52.3702]},
                "properties": {
                    "kind": "event",
                    "type": "harsh_braking",
                    "ts": "2026-03-02T08:14:03Z",
                    "id": 7,
                    "data": {"peak_g": 0.45},
                },
            },
        ],
    }


def test_geojson_empty_and_single_point() -> None:
    assert positions_geojson("van-042", []) == {"type": "FeatureCollection", "features": []}
    # One position: no LineString (RFC 7946 needs two positions), just the point.
    one = positions_geojson("van-042", POSITIONS[:1])
    assert [f["geometry"]["type"] for f in one["features"]] == ["Point"]
    # Events alone still appear.
    only_events = positions_geojson("van-042", [], EVENTS)
    assert [f["properties"]["type"] for f in only_events["features"]] == ["harsh_braking"]


def test_times_are_utc_z_and_naive_is_refused() -> None:
    cet = timezone(timedelta(hours=1))
    assert iso_z(datetime(2026, 3, 2, 9, 0, tzinfo=cet)) == "2026-03-02T08:00:00Z"
    assert iso_z(datetime(2026, 3, 2, 8, 0, 0, 1, tzinfo=UTC)) == "2026-03-02T08:00:00.000001Z"
    with pytest.raises(ValueError, match="naive"):
        positions_geojson("van-042", [pos(1, datetime(2026, 3, 2, 8, 0), 52.0, 5.0)])


def test_gpx_is_valid_and_has_the_expected_elements(schema: xmlschema.XMLSchema) -> None:
    doc = positions_gpx("van-042", POSITIONS, EVENTS, creator="test-suite")
    assert doc.startswith("<?xml version='1.0' encoding='utf-8'?>")
    assert _errors(schema, doc) == []
    root = ET.fromstring(doc.encode("utf-8"))
    assert root.tag == f"{{{GPX_NS}}}gpx"
    assert (root.get("version"), root.get("creator")) == ("1.1", "test-suite")
    assert [child.tag.split("}")[1] for child in root] == ["wpt", "trk"]

    wpt = root.find("g:wpt", NS)
    assert wpt is not None
    assert (wpt.get("lat"), wpt.get("lon")) == ("52.3702", "4.8952")
    assert [(c.tag.split("}")[1], c.text) for c in wpt] == [
        ("time", "2026-03-02T08:14:03Z"),
        ("name", "harsh_braking"),
        ("desc", '{"peak_g":0.45}'),
    ]
    assert root.findtext("g:trk/g:name", namespaces=NS) == "van-042"
    points = root.findall("g:trk/g:trkseg/g:trkpt", NS)
    assert [(p.get("lat"), p.get("lon")) for p in points] == [
        ("52.3702157", "4.8951679"),
        ("52.37025", "4.8953"),
    ]
    assert [[(c.tag.split("}")[1], c.text) for c in p] for p in points] == [
        [
            ("ele", "2.1"),
            ("time", "2026-03-02T08:14:02Z"),
            ("fix", "3d"),
            ("sat", "11"),
            ("hdop", "0.8"),
        ],
        [("time", "2026-03-02T08:14:03.500000Z"), ("fix", "2d"), ("sat", "6"), ("hdop", "2.5")],
    ]


def test_validator_is_live(schema: xmlschema.XMLSchema) -> None:
    """Documents that break GPX 1.1 in the ways an exporter could are rejected."""
    good = positions_gpx("van-042", POSITIONS, EVENTS)
    assert _errors(schema, good) == []
    wpt_after_trk = (
        good.replace("<wpt", "<!--")
        .replace("</wpt>", "-->")
        .replace("</trk>", '</trk><wpt lat="1" lon="1" />')
    )
    ele_after_time = good.replace(
        "<ele>2.1</ele><time>2026-03-02T08:14:02Z</time>",
        "<time>2026-03-02T08:14:02Z</time><ele>2.1</ele>",
    )
    broken = {  # document -> what the validator must say
        # GPX 1.0 had course in trkpt; 1.1 does not
        good.replace("<fix>3d</fix>", "<fix>3d</fix><course>87.3</course>"): "course",
        wpt_after_trk: "wpt",
        ele_after_time: "ele",
        good.replace('lon="4.8953"', 'lon="180"'): "lesser than",
        good.replace("<fix>2d</fix>", "<fix>2D</fix>"): "must be one of",
        good.replace('version="1.1"', 'version="1.0"'): "fixed value",
    }
    for doc, expected in broken.items():
        assert doc != good, expected
        errors = _errors(schema, doc)
        assert errors, f"{expected}: broken document passed validation"
        assert expected in errors[0], errors


def test_gpx_escapes_and_edge_values(schema: xmlschema.XMLSchema) -> None:
    odd = 'van <&> "42"'
    rows = [
        pos(1, T0, -89.99999999, 179.99999999, alt=-0.001, hdop=float("nan"), sats=None),
        pos(2, T0 + timedelta(seconds=1), 0.0, -180.0, alt=1e-5, mode=1),
    ]
    data = {"name": "Bakker & Zn <Oudegracht>", "n": 1}
    big = {"samples": list(range(5000))}
    events = [
        event(1, T0, "geofence_enter", 10.0, 20.0, **data),
        event(2, T0, "imu_trace", 10.0, 20.0, **big),
    ]
    doc = positions_gpx(odd, rows, events)
    assert _errors(schema, doc) == []
    root = ET.fromstring(doc.encode("utf-8"))
    assert root.findtext("g:trk/g:name", namespaces=NS) == odd
    descs = [w.findtext("g:desc", namespaces=NS) for w in root.findall("g:wpt", NS)]
    assert descs[0] is not None and json.loads(descs[0]) == data
    assert descs[1] is not None and len(descs[1]) == DESC_MAX and descs[1].endswith("…")
    p1, p2 = root.findall("g:trk/g:trkseg/g:trkpt", NS)
    # 179.99999999 rounds to 180.0000000, outside [-180, 180): written as -180
    assert (p1.get("lat"), p1.get("lon")) == ("-90", "-180")
    assert p1.findtext("g:ele", namespaces=NS) == "0"  # -0.001 at 2 decimals, never "-0"
    assert p1.find("g:hdop", NS) is None and p1.find("g:sat", NS) is None  # NaN, unknown
    assert p2.findtext("g:ele", namespaces=NS) == "0"  # not "1e-05"
    assert p2.find("g:fix", NS) is None  # mode 1 is no 2d/3d fix


def test_empty_gpx_is_valid(schema: xmlschema.XMLSchema) -> None:
    doc = positions_gpx("van-042", [])
    assert _errors(schema, doc) == []
    root = ET.fromstring(doc.encode("utf-8"))
    assert root.findall("g:trk/g:trkseg/g:trkpt", NS) == []


# --- properties over generated tracks -------------------------------------------------


@st.composite
def tracks(draw: st.DrawFn) -> list[PositionRow]:
    n = draw(st.integers(min_value=0, max_value=12))
    seqs = draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True))
    rows = []
    for seq in seqs:
        rows.append(
            pos(
                seq,
                draw(
                    st.datetimes(
                        min_value=datetime(2000, 1, 1),
                        max_value=datetime(2100, 1, 1),
                        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]),
                    )
                ),
                draw(st.floats(-90, 90)),
                draw(st.floats(-180, 180)),
                alt=draw(st.none() | st.floats(-500, 9000)),
                speed=draw(st.none() | st.floats(0, 80)),
                course=draw(st.none() | st.floats(0, 359.9)),
                mode=draw(st.sampled_from([2, 3])),
                sats=draw(st.none() | st.integers(0, 40)),
                hdop=draw(st.none() | st.floats(0, 99)),
            )
        )
    return rows


def _close(written: float, original: float, period: float | None = None) -> bool:
    diff = written - original
    if period is not None:
        diff = (diff + period / 2) % period - period / 2
    return abs(diff) <= 5e-8 + 1e-9


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tracks())
def test_geojson_properties(rows: list[PositionRow]) -> None:
    fc = json.loads(json.dumps(positions_geojson("van-042", rows), allow_nan=False))
    points = [f for f in fc["features"] if f["properties"]["kind"] == "position"]
    assert len(points) == len(rows)
    ordered = sorted(rows, key=lambda r: (r.ts, r.seq))
    for f, r in zip(points, ordered, strict=True):
        lon, lat = f["geometry"]["coordinates"]
        assert -180 <= lon <= 180 and -90 <= lat <= 90
        assert _close(lon, r.lon) and _close(lat, r.lat)
        assert datetime.fromisoformat(f["properties"]["ts"]) == r.ts
    lines = [f for f in fc["features"] if f["geometry"]["type"] == "LineString"]
    if len(rows) >= 2:
        (line,) = lines
        assert line["geometry"]["coordinates"] == [f["geometry"]["coordinates"] for f in points]
        assert len(line["properties"]["times"]) == line["properties"]["points"] == len(rows)
        assert line["properties"]["times"] == sorted(
            line["properties"]["times"], key=datetime.fromisoformat
        )
    else:
        assert lines == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tracks())
def test_gpx_round_trip(rows: list[PositionRow]) -> None:
    doc = positions_gpx("van-042", rows)
    assert _errors(_SCHEMA, doc) == []
    pts = ET.fromstring(doc.encode("utf-8")).findall("g:trk/g:trkseg/g:trkpt", NS)
    ordered = sorted(rows, key=lambda r: (r.ts, r.seq))
    assert len(pts) == len(ordered)
    for p, r in zip(pts, ordered, strict=True):
        assert _close(float(p.get("lat", "nan")), r.lat)
        assert _close(float(p.get("lon", "nan")), r.lon, period=360.0)
        assert datetime.fromisoformat(p.findtext("g:time", "", NS)) == r.ts
        ele = p.findtext("g:ele", None, NS)
        assert (ele is None) == (r.alt is None)
        if ele is not None and r.alt is not None:
            assert math.isclose(float(ele), r.alt, abs_tol=0.005 + 1e-9)
