"""Zone definitions: what a geofence is, validated once at the edge.

Zones come from the agent's config (TOML, the :class:`ZoneSet` shape) or
from a GeoJSON FeatureCollection drawn in any GIS tool.  Both end up as the
same frozen models, so the detector never sees a half-valid zone.  Any
problem raises :class:`ZoneError` with one reason that names the field,
because a dispatcher fixing a zone file needs the place, not a traceback.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.messages import validation_reason

MAX_ZONES = 10_000
MAX_RING_POINTS = 5_000
MAX_HOLES = 100
MAX_SET_POINTS = 500_000
#: Beyond this size the local flat-earth projection stops being sub-metre.
MAX_ZONE_EXTENT_M = 100_000.0
_M_PER_DEG = 6_371_008.8 * math.pi / 180.0

ZoneId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Ring = tuple[tuple[float, float], ...]


class ZoneError(ValueError):
    """A zone file or zone definition is invalid; the message says where and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Circle(_Model):
    """Centre and radius: the cheap shape for depots and customer doors."""

    type: Literal["circle"] = "circle"
    lat: Annotated[float, Field(ge=-90.0, le=90.0)]
    lon: Annotated[float, Field(ge=-180.0, le=180.0)]
    radius_m: Annotated[float, Field(gt=0.0, le=MAX_ZONE_EXTENT_M / 2)]


def _ring(points: Any, what: str) -> Ring:
    """Validate one ring of [lon, lat] pairs and close it."""
    if not isinstance(points, list | tuple):
        raise ValueError(f"{what} must be a list of [lon, lat] points")
    out: list[tuple[float, float]] = []
    for i, p in enumerate(points):
        if not isinstance(p, list | tuple) or len(p) < 2:
            raise ValueError(f"{what} point {i} must be [lon, lat]")
        lon, lat = p[0], p[1]
        if isinstance(lon, bool) or isinstance(lat, bool):
            raise ValueError(f"{what} point {i} must be numbers")
        if not isinstance(lon, int | float) or not isinstance(lat, int | float):
            raise ValueError(f"{what} point {i} must be numbers")
        try:
            lon, lat = float(lon), float(lat)
        except OverflowError:  # a 400-digit integer is valid JSON
            raise ValueError(f"{what} point {i} is out of range") from None
        if not (math.isfinite(lon) and math.isfinite(lat)):
            raise ValueError(f"{what} point {i} is not finite")
        if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
            raise ValueError(
                f"{what} point {i} [{lon}, {lat}] is out of range (GeoJSON order is [lon, lat])"
            )
        out.append((lon, lat))
    if len(out) > MAX_RING_POINTS:
        raise ValueError(f"{what} has {len(out)} points, more than {MAX_RING_POINTS}")
    if out and out[0] == out[-1]:
        out.pop()
    if len(set(out)) < 3:
        raise ValueError(f"{what} needs at least 3 distinct points")
    out.append(out[0])
    return tuple(out)


def _unwrap(lon: float, ref: float) -> float:
    """``lon`` moved by 360 so it lies within 180 of ``ref``: antimeridian-safe."""
    d = lon - ref
    if d > 180.0:
        return lon - 360.0
    if d < -180.0:
        return lon + 360.0
    return lon


class Polygon(_Model):
    """Outer ring and holes, [lon, lat] as in GeoJSON; straight edges in lon/lat."""

    type: Literal["polygon"] = "polygon"
    outer: Ring
    holes: tuple[Ring, ...] = ()

    @field_validator("outer", mode="before")
    @classmethod
    def _outer(cls, v: Any) -> Ring:
        return _ring(v, "outer ring")

    @field_validator("holes")
    @classmethod
    def _few_holes(cls, v: tuple[Ring, ...]) -> tuple[Ring, ...]:
        if len(v) > MAX_HOLES:
            raise ValueError(f"{len(v)} holes, more than {MAX_HOLES}")
        return v

    @field_validator("holes", mode="before")
    @classmethod
    def _holes(cls, v: Any) -> tuple[Ring, ...]:
        if not isinstance(v, list | tuple):
            raise ValueError("holes must be a list of rings")
        return tuple(_ring(h, f"hole {i}") for i, h in enumerate(v))

    @model_validator(mode="after")
    def _size(self) -> Polygon:
        ref = self.outer[0][0]
        lons = [_unwrap(p[0], ref) for p in self.outer]
        lats = [p[1] for p in self.outer]
        coslat = max(math.cos(math.radians(max(abs(min(lats)), abs(max(lats))))), 1e-9)
        width = (max(lons) - min(lons)) * _M_PER_DEG * coslat
        height = (max(lats) - min(lats)) * _M_PER_DEG
        if max(width, height) > MAX_ZONE_EXTENT_M:
            raise ValueError(
                f"polygon spans {max(width, height) / 1000:.0f} km; zones are limited to "
                f"{MAX_ZONE_EXTENT_M / 1000:.0f} km across"
            )
        area2 = 0.0
        for (x1, y1), (x2, y2) in zip(self.outer, self.outer[1:], strict=False):
            area2 += _unwrap(x1, ref) * y2 - _unwrap(x2, ref) * y1
        if area2 == 0.0:
            raise ValueError("outer ring has zero area (all points on one line)")
        return self


Shape = Annotated[Circle | Polygon, Field(discriminator="type")]


class ZoneDef(_Model):
    """One geofence: a shape plus what the dispatcher calls it and how it behaves."""

    id: ZoneId
    name: Annotated[str, Field(min_length=1, max_length=200)]
    tags: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = ()
    shape: Shape
    dwell_s: Annotated[float, Field(ge=0.0, le=7 * 86400)] | None = None
    speed_limit_kmh: Annotated[float, Field(gt=0.0, le=400.0)] | None = None


class ZoneSet(_Model):
    """All zones of one published version; ``version`` lets the cloud see what a device runs."""

    version: Annotated[int, Field(ge=0)]
    zones: Annotated[tuple[ZoneDef, ...], Field(max_length=MAX_ZONES)] = ()

    @model_validator(mode="after")
    def _unique(self) -> ZoneSet:
        seen: set[str] = set()
        points = 0
        for i, z in enumerate(self.zones):
            if z.id in seen:
                raise ValueError(f"zones.{i}: duplicate zone id {z.id!r}")
            seen.add(z.id)
            if isinstance(z.shape, Polygon):
                points += len(z.shape.outer) + sum(len(h) for h in z.shape.holes)
        if points > MAX_SET_POINTS:
            # Every point costs time on the agent's single event loop.
            raise ValueError(f"{points} polygon points in the set, more than {MAX_SET_POINTS}")
        return self


def zoneset_from_obj(obj: Any) -> ZoneSet:
    """Validate a mapping in the :class:`ZoneSet` shape, raising :class:`ZoneError`."""
    try:
        return ZoneSet.model_validate(obj)
    except ValidationError as exc:
        raise ZoneError(validation_reason(exc)) from None


_GEOJSON_PROPS = ("name", "tags", "dwell_s", "speed_limit_kmh")


def _feature_zone(i: int, feat: Any) -> dict[str, Any]:
    where = f"features[{i}]"
    if not isinstance(feat, dict) or feat.get("type") != "Feature":
        raise ZoneError(f"{where}: not a GeoJSON Feature")
    props = feat.get("properties") or {}
    if not isinstance(props, dict):
        raise ZoneError(f"{where}.properties: must be an object")
    zid = props.get("id", feat.get("id"))
    if zid is None:
        raise ZoneError(f"{where}: no id (properties.id or the feature's id)")
    where = f"{where} (id {zid!r})"
    geom = feat.get("geometry")
    if not isinstance(geom, dict):
        raise ZoneError(f"{where}.geometry: missing")
    gtype, coords = geom.get("type"), geom.get("coordinates")
    shape: dict[str, Any]
    if gtype == "Point":
        if "radius_m" not in props:
            raise ZoneError(f"{where}: a Point zone needs properties.radius_m")
        if not isinstance(coords, list) or len(coords) < 2:
            raise ZoneError(f"{where}.geometry.coordinates: a Point is [lon, lat]")
        shape = {
            "type": "circle",
            "lon": coords[0],
            "lat": coords[1],
            "radius_m": props["radius_m"],
        }
    elif gtype == "Polygon":
        if not isinstance(coords, list) or not coords:
            raise ZoneError(f"{where}.geometry.coordinates: a Polygon is a list of rings")
        shape = {"type": "polygon", "outer": coords[0], "holes": coords[1:]}
    else:
        raise ZoneError(
            f"{where}.geometry: type {gtype!r} is not supported; use Polygon, or Point "
            "with properties.radius_m (split a MultiPolygon into one feature per polygon)"
        )
    zone: dict[str, Any] = {"id": str(zid), "name": str(props.get("name", zid)), "shape": shape}
    for key in _GEOJSON_PROPS[1:]:
        if props.get(key) is not None:
            zone[key] = props[key]
    return zone


def zoneset_from_geojson(obj: dict[str, Any], version: int) -> ZoneSet:
    """Zones from a GeoJSON FeatureCollection.

    Polygon features (with holes) become polygons, Point features with
    ``properties.radius_m`` become circles.  ``properties`` may carry
    ``id`` (else the feature's ``id``), ``name`` (default: the id), ``tags``,
    ``dwell_s`` and ``speed_limit_kmh``; other properties (styling that
    editors add) are ignored.
    """
    if not isinstance(obj, dict) or obj.get("type") != "FeatureCollection":
        raise ZoneError("GeoJSON: expected a FeatureCollection")
    feats = obj.get("features")
    if not isinstance(feats, list):
        raise ZoneError("GeoJSON: features must be a list")
    zones = [_feature_zone(i, f) for i, f in enumerate(feats)]
    try:
        return ZoneSet.model_validate({"version": version, "zones": zones})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        if len(loc) >= 2 and loc[0] == "zones" and isinstance(loc[1], int):
            idx = loc[1]
            rest = ".".join(str(p) for p in loc[2:])
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise ZoneError(
                f"features[{idx}] (id {zones[idx]['id']!r}): {rest + ': ' if rest else ''}{msg}"
            ) from None
        raise ZoneError(validation_reason(exc)) from None


def load_zone_file(path: str | Path) -> ZoneSet:
    """Load zones from ``.geojson``/``.json`` (GeoJSON or ZoneSet shape) or ``.toml``.

    A GeoJSON file takes its version from a top-level ``version`` member,
    0 when absent.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".json", ".geojson"):
        raise ZoneError(f"{p}: unknown zone file type {suffix!r} (.toml, .json, .geojson)")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ZoneError(f"{p}: cannot read ({exc.strerror})") from None
    obj: Any
    try:
        obj = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ZoneError(f"{p}: not valid {suffix[1:].upper()}: {exc}") from None
    try:
        if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
            version = obj.get("version", 0)
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise ZoneError("version: must be an integer >= 0")
            return zoneset_from_geojson(obj, version)
        if suffix == ".geojson":
            raise ZoneError("GeoJSON: expected a FeatureCollection")
        return zoneset_from_obj(obj)
    except ZoneError as exc:
        raise ZoneError(f"{p}: {exc}") from None
