"""A device's track as GeoJSON (RFC 7946) or GPX 1.1: pure functions, no I/O.

The HTTP API serves these to map front-ends and to desktop tools (QGIS,
GPXSee, Garmin BaseCamp), so both follow their standard to the letter.

Both sort positions by ``(ts, seq)`` and events by ``(ts, id)``: storage
order is not guaranteed to be time order (docs/PROTOCOL.md, order of arrival).
Times are ISO 8601 UTC with ``Z``; coordinates are rounded to 7 decimals (1 cm),
as the device sends them.  A naive datetime is refused (``ValueError``).

GeoJSON, ``positions_geojson`` -> a ``FeatureCollection`` whose ``features`` are,
in this order (every feature has ``properties.kind`` so a client can filter):

* ``kind: "track"``: one ``LineString`` of ``[lon, lat]`` (2D) over all positions,
  with ``device``, ``start``, ``end`` (first and last ``ts``), ``points`` (count)
  and ``times`` (one ``ts`` per coordinate, the common "coordTimes" idiom).
  Left out when there are fewer than 2 positions: RFC 7946 requires a
  LineString to have at least two.
* ``kind: "position"``: one ``Point`` per position, ``id`` ``"{epoch}:{seq}"``,
  properties ``seq``, ``ts``, ``alt`` (m), ``speed_kmh`` (2 decimals),
  ``course``, ``sats``, ``hdop``, ``reason``; ``null`` where unknown.
* ``kind: "event"``: one ``Point`` per event that has ``lat``/``lon``, ``id`` the
  bridge's event id, properties ``type``, ``ts``, ``id``, ``data`` (as received).

No positions and no located events give ``{"type": "FeatureCollection",
"features": []}``.

GPX, ``positions_gpx`` -> a GPX 1.1 document (checked against the official
schema in tests/bridge/test_export.py): one ``<wpt>`` per located event
(``time``, ``name`` = event type, ``desc`` = compact JSON of ``data``, cut to
``DESC_MAX`` characters), then one ``<trk>`` named after the device with one
``<trkseg>`` of ``<trkpt>`` (``ele`` when known, ``time``, ``fix`` 2d/3d,
``sat``, ``hdop``).  Speed and course have no GPX 1.1 element and are left out.
A longitude that rounds to 180 is written as -180 (the schema excludes 180).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeGuard

from agent.messages import utc_iso
from cloud_bridge.rows import EventRow, PositionRow

GPX_NS = "http://www.topografix.com/GPX/1/1"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
GPX_SCHEMA_LOCATION = f"{GPX_NS} {GPX_NS}/gpx.xsd"
DESC_MAX = 1000  # an imu_trace carries thousands of samples: keep the waypoint readable
_FIX = {2: "2d", 3: "3d"}


def iso_z(ts: datetime) -> str:
    """ISO 8601 UTC with ``Z``, the protocol's form (microseconds only when non-zero)."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"naive datetime {ts!r}: bridge times must be timezone-aware")
    return utc_iso(ts)


def _sorted_positions(positions: Sequence[PositionRow]) -> list[PositionRow]:
    return sorted(positions, key=lambda p: (p.ts, p.seq))


def _located(events: Sequence[EventRow]) -> list[EventRow]:
    ok = [e for e in events if e.lat is not None and e.lon is not None]
    return sorted(ok, key=lambda e: (e.ts, e.id))


def _lonlat(lat: float, lon: float) -> list[float]:
    return [round(lon, 7), round(lat, 7)]


def positions_geojson(
    device: str, positions: Sequence[PositionRow], events: Sequence[EventRow] = ()
) -> dict[str, Any]:
    """RFC 7946 FeatureCollection of the track, its points and located events."""
    track = _sorted_positions(positions)
    features: list[dict[str, Any]] = []
    if len(track) >= 2:
        features.append(
            {
                "type": "Feature",
                "id": "track",
                "geometry": {
                    "type": "LineString",
                    "coordinates": [_lonlat(p.lat, p.lon) for p in track],
                },
                "properties": {
                    "kind": "track",
                    "device": device,
                    "start": iso_z(track[0].ts),
                    "end": iso_z(track[-1].ts),
                    "points": len(track),
                    "times": [iso_z(p.ts) for p in track],
                },
            }
        )
    for p in track:
        features.append(
            {
                "type": "Feature",
                "id": f"{p.epoch}:{p.seq}",
                "geometry": {"type": "Point", "coordinates": _lonlat(p.lat, p.lon)},
                "properties": {
                    "kind": "position",
                    "seq": p.seq,
                    "ts": iso_z(p.ts),
                    "alt": p.alt,
                    "speed_kmh": None if p.speed is None else round(p.speed * 3.6, 2),
                    "course": p.course,
                    "sats": p.sats,
                    "hdop": p.hdop,
                    "reason": p.reason,
                },
            }
        )
    for e in _located(events):
        assert e.lat is not None and e.lon is not None  # _located keeps only these
        features.append(
            {
                "type": "Feature",
                "id": e.id,
                "geometry": {"type": "Point", "coordinates": _lonlat(e.lat, e.lon)},
                "properties": {
                    "kind": "event",
                    "type": e.type,
                    "ts": iso_z(e.ts),
                    "id": e.id,
                    "data": dict(e.data),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _finite(value: float | None) -> TypeGuard[float]:
    """NaN or inf is not an xsd:decimal: such a reading is left out, like an unknown one."""
    return value is not None and math.isfinite(value)


def _dec(value: float, places: int) -> str:
    """xsd:decimal text: fixed point (never ``1e-05``), trailing zeros dropped."""
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _latlon_attrs(lat: float, lon: float) -> dict[str, str]:
    lon = round(lon, 7)
    if lon >= 180.0:  # GPX's longitudeType is [-180, 180)
        lon -= 360.0
    return {"lat": _dec(lat, 7), "lon": _dec(lon, 7)}


def _sub(parent: ET.Element, name: str, text: str) -> None:
    ET.SubElement(parent, name).text = text


def _desc(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= DESC_MAX else text[: DESC_MAX - 1] + "…"


def positions_gpx(
    device: str,
    positions: Sequence[PositionRow],
    events: Sequence[EventRow] = (),
    creator: str = "fleet-telematics-bridge",
) -> str:
    """GPX 1.1 document: located events as waypoints, then the track."""
    # Unqualified tags under a literal xmlns: ET's default_namespace option
    # refuses unqualified attributes (lat, lon, version), and register_namespace
    # would change process-wide state.
    root = ET.Element(
        "gpx",
        {
            "xmlns": GPX_NS,
            "xmlns:xsi": XSI_NS,
            "xsi:schemaLocation": GPX_SCHEMA_LOCATION,
            "version": "1.1",
            "creator": creator,
        },
    )
    for e in _located(events):  # the schema puts every wpt before any trk
        assert e.lat is not None and e.lon is not None
        wpt = ET.SubElement(root, "wpt", _latlon_attrs(e.lat, e.lon))
        _sub(wpt, "time", iso_z(e.ts))
        _sub(wpt, "name", e.type)
        if e.data:
            _sub(wpt, "desc", _desc(e.data))
    trk = ET.SubElement(root, "trk")
    _sub(trk, "name", device)
    seg = ET.SubElement(trk, "trkseg")
    for p in _sorted_positions(positions):
        pt = ET.SubElement(seg, "trkpt", _latlon_attrs(p.lat, p.lon))
        # wptType is a sequence: ele, time, ..., fix, sat, hdop, in this order
        if _finite(p.alt):
            _sub(pt, "ele", _dec(p.alt, 2))
        _sub(pt, "time", iso_z(p.ts))
        if p.mode in _FIX:
            _sub(pt, "fix", _FIX[p.mode])
        if p.sats is not None and p.sats >= 0:
            _sub(pt, "sat", str(p.sats))
        if _finite(p.hdop):
            _sub(pt, "hdop", _dec(p.hdop, 2))
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body.decode("utf-8")
