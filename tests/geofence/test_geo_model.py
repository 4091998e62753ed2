"""Zone files: GeoJSON and the ZoneSet shape (TOML/JSON), and errors that name the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.geofence.model import (
    Circle,
    Polygon,
    ZoneError,
    ZoneSet,
    load_zone_file,
    zoneset_from_geojson,
    zoneset_from_obj,
)

SQUARE = [[13.40, 52.52], [13.41, 52.52], [13.41, 52.53], [13.40, 52.53], [13.40, 52.52]]
HOLE = [[13.403, 52.523], [13.406, 52.523], [13.406, 52.526], [13.403, 52.523]]


def fc(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def feature(geometry: dict[str, Any], **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": props}


def test_geojson_polygon_with_hole_and_point_circle() -> None:
    obj = fc(
        feature(
            {"type": "Polygon", "coordinates": [SQUARE, HOLE]},
            id="yard", name="Yard", tags=["depot"], dwell_s=60, speed_limit_kmh=15, fill="#f00",
        ),
        {"type": "Feature", "id": "cust-42", "geometry": {"type": "Point", "coordinates": [13.45, 52.50, 34.0]},
         "properties": {"radius_m": 80}},
    )  # fmt: skip
    zs = zoneset_from_geojson(obj, version=7)
    assert zs.version == 7
    yard, cust = zs.zones
    assert isinstance(yard.shape, Polygon)
    assert yard.shape.outer[0] == yard.shape.outer[-1] == (13.40, 52.52)
    assert len(yard.shape.outer) == 5 and len(yard.shape.holes) == 1
    assert yard.tags == ("depot",) and yard.dwell_s == 60 and yard.speed_limit_kmh == 15
    assert cust.id == "cust-42" and cust.name == "cust-42"
    assert cust.shape == Circle(lat=52.50, lon=13.45, radius_m=80)


def test_ring_is_closed_automatically() -> None:
    p = Polygon.model_validate({"outer": SQUARE[:4]})
    assert p.outer == Polygon.model_validate({"outer": SQUARE}).outer


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"type": "Feature"}, "expected a FeatureCollection"),
        (fc(feature({"type": "MultiPolygon", "coordinates": [[SQUARE]]}, id="m")),
         "features[0] (id 'm').geometry: type 'MultiPolygon' is not supported"),
        (fc(feature({"type": "LineString", "coordinates": SQUARE}, id="l")), "'LineString' is not supported"),
        (fc(feature({"type": "Point", "coordinates": [13.4, 52.5]}, id="p")),
         "features[0] (id 'p'): a Point zone needs properties.radius_m"),
        (fc(feature({"type": "Point", "coordinates": [13.4, 52.5]}, id="p", radius_m=-5)),
         "features[0] (id 'p'): shape.circle.radius_m: Input should be greater than 0"),
        (fc(feature({"type": "Polygon", "coordinates": [SQUARE[:2]]}, id="t")),
         "features[0] (id 't'): shape.polygon.outer: outer ring needs at least 3 distinct points"),
        (fc(feature({"type": "Polygon", "coordinates": [[[52.52, 13.40], [52.52, 113.0], [52.6, 13.4]]]}, id="s")),
         "out of range (GeoJSON order is [lon, lat])"),
        (fc(feature({"type": "Polygon", "coordinates": [SQUARE]})), "features[0]: no id"),
        (fc(feature({"type": "Polygon", "coordinates": [SQUARE]}, id="a b")),
         "features[0] (id 'a b'): id: String should match pattern"),
        (fc(feature({"type": "Polygon", "coordinates": [SQUARE]}, id="a"),
            feature({"type": "Polygon", "coordinates": [SQUARE]}, id="a")), "duplicate zone id 'a'"),
        (fc(feature({"type": "Polygon", "coordinates": [[[0, 0], [0.001, 0.001], [0.002, 0.002]]]}, id="z")), "zero area"),
        (fc(feature({"type": "Polygon", "coordinates": [[[0, 0], [3, 0], [3, 3]]]}, id="big")), "zones are limited to 100 km"),
        (fc(feature({"type": "Polygon", "coordinates": [SQUARE, [[0, 0]]]}, id="h")), "hole 0 needs at least 3"),
    ],
)  # fmt: skip
def test_geojson_errors_name_the_problem(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(ZoneError) as exc:
        zoneset_from_geojson(obj, version=1)
    assert reason in str(exc.value)


def test_zoneset_shape_errors() -> None:
    ok = {
        "id": "d",
        "name": "D",
        "shape": {"type": "circle", "lat": 1.0, "lon": 2.0, "radius_m": 50},
    }
    assert zoneset_from_obj({"version": 0, "zones": [ok]}).zones[0].id == "d"
    with pytest.raises(ZoneError, match=r"^zones\.0\.colour: Extra inputs are not permitted"):
        zoneset_from_obj({"version": 0, "zones": [{**ok, "colour": "red"}]})
    with pytest.raises(ZoneError, match=r"^version: Input should be greater than or equal to 0"):
        zoneset_from_obj({"version": -1, "zones": []})
    with pytest.raises(ZoneError, match=r"zones\.0\.shape: Input tag 'square' found using 'type'"):
        zoneset_from_obj({"version": 0, "zones": [{**ok, "shape": {"type": "square"}}]})
    with pytest.raises(ZoneError, match=r"^zones: .* at most 10000 items"):
        zoneset_from_obj({"version": 0, "zones": [{**ok, "id": f"z{i}"} for i in range(10_001)]})


def test_load_zone_files(tmp_path: Path) -> None:
    toml = tmp_path / "zones.toml"
    toml.write_text(
        'version = 3\n\n[[zones]]\nid = "depot"\nname = "Depot"\ndwell_s = 60\n'
        '[zones.shape]\ntype = "circle"\nlat = 52.52\nlon = 13.40\nradius_m = 120\n\n'
        '[[zones]]\nid = "yard"\nname = "Yard"\ntags = ["depot"]\n'
        '[zones.shape]\ntype = "polygon"\nouter = [[13.40, 52.52], [13.41, 52.52], [13.41, 52.53]]\n',
        encoding="utf-8",
    )
    zs = load_zone_file(toml)
    assert zs.version == 3 and [z.id for z in zs.zones] == ["depot", "yard"]

    gj = tmp_path / "zones.geojson"
    gj.write_text(
        json.dumps(
            {**fc(feature({"type": "Polygon", "coordinates": [SQUARE]}, id="y")), "version": 4}
        )
    )
    assert load_zone_file(gj).version == 4

    js = tmp_path / "zones.json"
    js.write_text(zs.model_dump_json())
    assert load_zone_file(js) == zs
    assert ZoneSet.model_validate_json(zs.model_dump_json()) == zs

    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[[zones]]\nid = 'x'\n", encoding="utf-8")
    with pytest.raises(ZoneError, match=r"bad\.toml: zones\.0\.name: Field required"):
        load_zone_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(ZoneError, match=r"broken\.json: not valid JSON"):
        load_zone_file(broken)
    with pytest.raises(ZoneError, match="cannot read"):
        load_zone_file(tmp_path / "missing.toml")
    with pytest.raises(ZoneError, match="unknown zone file type"):
        load_zone_file(tmp_path / "zones.kml")
