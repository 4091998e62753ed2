"""Scenario files: one TOML file drives every simulator of a test drive.

The same file drives the GPS, ELM327, CAN and IMU simulators, so that all of
them describe one consistent drive: ``engine``, ``obd`` and ``dtcs`` feed the
ECU model (``ecu.py``) behind the ELM327 and CAN simulators; ``imu`` and
``events`` feed the IMU simulator (``imu_out.py``).  Unknown keys are errors:
a misspelt key silently ignored is a test that does not test what its author
thinks.  Every error names the key
(``route.waypoints[3].lat: ...``).  docs/SIMULATORS.md documents every key.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.imu.sample import GRAVITY
from simulators.route import haversine_m, point_in_ring

__all__ = [
    "DEFAULT_ZONE_DWELL_S",
    "DISCOVERY_PIDS",
    "ENCODED_PIDS",
    "HARSH_KINDS",
    "Can",
    "CircleShape",
    "Dtc",
    "Engine",
    "Event",
    "EventKind",
    "FaultKind",
    "Gnss",
    "Imu",
    "Obd",
    "ObdFault",
    "Outage",
    "PolygonShape",
    "Route",
    "Scenario",
    "ScenarioError",
    "Vehicle",
    "Waypoint",
    "Zone",
    "ZoneShape",
    "bundled_scenarios",
    "load_scenario",
    "parse_scenario",
    "scenario_from_dict",
    "with_gnss",
]

_MIN_SEGMENT_M = 1.0
DEFAULT_ZONE_DWELL_S = 30.0  # a zone without dwell_s: inside this long counts as a dwell

Seconds = Annotated[float, Field(ge=0, le=7 * 86400)]


class ScenarioError(ValueError):
    """A scenario that cannot be used; each problem names its key."""

    def __init__(self, origin: str, problems: list[str]) -> None:
        self.origin = origin
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{origin}: invalid scenario:\n{lines}")


class _KeyProblem(ValueError):
    """Raised inside a validator to point at a key below the model's own."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- GPS now


class Vehicle(_Section):
    """Limits of the vehicle's motion: what keeps the drive physically plausible."""

    max_accel_mps2: float = Field(1.5, gt=0, le=6.0)
    max_decel_mps2: float = Field(2.0, gt=0, le=10.0)
    max_lateral_accel_mps2: float = Field(2.0, gt=0, le=8.0)
    vin: str | None = Field(None, pattern=r"^[A-HJ-NPR-Z0-9]{17}$")


class Waypoint(_Section):
    """A point of the route; ``speed_kmh`` is the speed to drive to the next one."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    speed_kmh: float | None = Field(None, gt=0, le=250)
    dwell_s: Seconds | None = None
    name: str = ""
    alt_m: float | None = Field(None, ge=-500, le=9000)
    accel_mps2: float | None = Field(None, gt=0, le=6.0)
    decel_mps2: float | None = Field(None, gt=0, le=10.0)
    zone_radius_m: float | None = Field(None, gt=0, le=5000)
    engine: Literal["idle", "off"] | None = None


class Route(_Section):
    """The path as waypoints, driven in order."""

    waypoints: tuple[Waypoint, ...]
    altitude_m: float = Field(0.0, ge=-500, le=9000)
    corner_cut_m: float = Field(5.0, gt=0, le=100)

    @model_validator(mode="after")
    def _drivable(self) -> Route:
        wps = self.waypoints
        if len(wps) < 2:
            raise _KeyProblem("waypoints", f"needs at least 2 waypoints, got {len(wps)}")
        for i, wp in enumerate(wps):
            if wp.zone_radius_m is not None and wp.dwell_s is None:
                raise _KeyProblem(
                    f"waypoints[{i}].zone_radius_m",
                    "only on a stop (a waypoint with dwell_s): the zone is centred on the stop",
                )
            if wp.engine is not None and wp.dwell_s is None:
                raise _KeyProblem(
                    f"waypoints[{i}].engine",
                    "only on a stop (a waypoint with dwell_s): the vehicle never moves "
                    "with the engine off",
                )
        for i, wp in enumerate(wps[:-1]):
            if wp.speed_kmh is None:
                raise _KeyProblem(
                    f"waypoints[{i}].speed_kmh",
                    "required on every waypoint but the last (speed to drive to the next one)",
                )
            nxt = wps[i + 1]
            if haversine_m(wp.lat, wp.lon, nxt.lat, nxt.lon) < _MIN_SEGMENT_M:
                raise _KeyProblem(
                    f"waypoints[{i + 1}]",
                    f"less than {_MIN_SEGMENT_M:g} m from waypoints[{i}]; remove the duplicate "
                    "(use dwell_s for a stop)",
                )
        return self


class Outage(_Section):
    """A period without a fix (tunnel, underground car park)."""

    start_s: Seconds
    duration_s: float = Field(gt=0, le=86400)


class Gnss(_Section):
    """What the receiver reports besides the vehicle's true motion."""

    rate_hz: int = Field(1, ge=1, le=10)
    talker: Literal["GP", "GN"] = "GP"
    satellites_used: int = Field(9, ge=4, le=24)
    satellites_in_view: int = Field(12, ge=4, le=32)
    hdop: float = Field(0.9, gt=0, le=50)
    vdop: float | None = Field(None, gt=0, le=50)
    pdop: float | None = Field(None, gt=0, le=99)
    geoid_separation_m: float = Field(0.0, ge=-120, le=100)
    parked_jitter_m: float = Field(0.0, ge=0, le=50)
    driving_jitter_m: float = Field(0.0, ge=0, le=50)
    seed: int = Field(0, ge=0)
    outages: tuple[Outage, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Gnss:
        if self.satellites_used > self.satellites_in_view:
            raise _KeyProblem(
                "satellites_used",
                f"{self.satellites_used} is more than satellites_in_view "
                f"({self.satellites_in_view})",
            )
        if self.talker == "GP" and self.satellites_used > 12:
            raise _KeyProblem(
                "satellites_used", "at most 12 with talker 'GP' (one GSA sentence holds 12)"
            )
        return self

    @property
    def vdop_value(self) -> float:
        """VDOP as given, else a typical 1.5 x HDOP."""
        return self.vdop if self.vdop is not None else round(1.5 * self.hdop, 2)

    @property
    def pdop_value(self) -> float:
        """PDOP as given, else the root sum of squares of HDOP and VDOP."""
        if self.pdop is not None:
            return self.pdop
        return round(math.hypot(self.hdop, self.vdop_value), 2)


# --------------------------------------------------------------------------- zones


def _point(value: Any) -> tuple[float, float]:
    """One ``[lon, lat]`` pair, checked; raises ValueError with the reason."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"a point is [lon, lat], two numbers (got {value!r})")
    lon, lat = value
    for v in (lon, lat):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"a point is [lon, lat], two numbers (got {value!r})")
    if not -180 <= lon <= 180:
        raise ValueError(f"longitude {lon} is outside -180..180 (points are [lon, lat])")
    if not -90 <= lat <= 90:
        raise ValueError(f"latitude {lat} is outside -90..90 (points are [lon, lat])")
    return float(lon), float(lat)


def _ring(value: Any, key: str) -> tuple[tuple[float, float], ...]:
    """A linear ring of ``[lon, lat]`` points: at least 3 distinct, closing optional."""
    if not isinstance(value, list | tuple):
        raise _KeyProblem(key, "must be an array of [lon, lat] points")
    points = []
    for j, item in enumerate(value):
        try:
            points.append(_point(item))
        except ValueError as exc:
            raise _KeyProblem(f"{key}[{j}]", str(exc)) from None
    distinct = points[:-1] if len(points) > 1 and points[0] == points[-1] else points
    if len(set(distinct)) < 3:
        raise _KeyProblem(key, f"needs at least 3 distinct points, got {len(set(distinct))}")
    return tuple(points)


class CircleShape(_Section):
    """A circle: centre and radius in metres (great-circle distance)."""

    type: Literal["circle"]
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_m: float = Field(gt=0, le=100_000)


class PolygonShape(_Section):
    """A polygon of ``[lon, lat]`` points (GeoJSON order), with optional holes."""

    type: Literal["polygon"]
    outer: tuple[tuple[float, float], ...]
    holes: tuple[tuple[tuple[float, float], ...], ...] = ()

    @field_validator("outer", mode="before")
    @classmethod
    def _outer_ring(cls, value: Any) -> tuple[tuple[float, float], ...]:
        return _ring(value, "")

    @field_validator("holes", mode="before")
    @classmethod
    def _hole_rings(cls, value: Any) -> tuple[tuple[tuple[float, float], ...], ...]:
        if not isinstance(value, list | tuple):
            raise _KeyProblem("", "must be an array of rings")
        return tuple(_ring(ring, f"[{i}]") for i, ring in enumerate(value))

    @model_validator(mode="after")
    def _holes_inside(self) -> PolygonShape:
        for i, hole in enumerate(self.holes):
            for j, (lon, lat) in enumerate(hole):
                if not point_in_ring(lon, lat, self.outer):
                    raise _KeyProblem(f"holes[{i}][{j}]", "hole point is not inside the outer ring")
        return self


ZoneShape = Annotated[CircleShape | PolygonShape, Field(discriminator="type")]


class Zone(_Section):
    """A geofence zone, in the shape of the agent's zone set (``agent/geofence``)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    name: str = ""
    tags: tuple[str, ...] = ()
    shape: ZoneShape
    dwell_s: float | None = Field(None, gt=0, le=86400)
    speed_limit_kmh: float | None = Field(None, gt=0, le=250)

    @property
    def dwell_threshold_s(self) -> float:
        """Seconds inside that count as a dwell: ``dwell_s``, else 30 s."""
        return self.dwell_s if self.dwell_s is not None else DEFAULT_ZONE_DWELL_S


def _stop_zones(route: Route) -> list[tuple[int, Zone]]:
    """The circle zones that stops ask for with ``zone_radius_m``: (waypoint, zone)."""
    out = []
    for i, wp in enumerate(route.waypoints):
        if wp.zone_radius_m is None:
            continue
        shape = CircleShape(type="circle", lat=wp.lat, lon=wp.lon, radius_m=wp.zone_radius_m)
        zone_id = re.sub(r"[^A-Za-z0-9_.:-]+", "-", wp.name).strip("-")[:64] or f"stop-{i}"
        out.append((i, Zone(id=zone_id, name=wp.name or f"stop {i}", tags=("stop",), shape=shape)))
    return out


# ------------------------------------------------- engine, OBD and later simulators

# Mode 01 PIDs that simulators/ecu.py can encode (the data PIDs; the discovery
# PIDs 00, 20, 40 ... are added as the supported set needs them).  Kept here so
# a scenario naming a PID the ECU cannot answer is rejected when it is loaded.
ENCODED_PIDS = frozenset(
    {0x01, 0x04, 0x05, 0x0C, 0x0D, 0x0F, 0x10, 0x11, 0x1C, 0x1F, 0x21, 0x2F, 0x31, 0x42}
    | {0x46, 0x5E, 0xA6}
)
DISCOVERY_PIDS = frozenset(range(0x00, 0x100, 0x20))


class Engine(_Section):
    """Engine model for the ELM327 and CAN simulators (not used by GPS)."""

    idle_rpm: int = Field(750, ge=300, le=2000)
    redline_rpm: int = Field(6000, ge=1500, le=12000)
    rpm_per_kmh: float = Field(28.0, gt=0, le=200)
    off_at_stops_longer_than_s: Seconds | None = 120.0
    off_after_arrival_s: float = Field(5.0, ge=0, le=600)
    start_before_departure_s: float = Field(8.0, ge=0, le=600)
    coolant_start_c: float = Field(20.0, ge=-40, le=120)
    coolant_operating_c: float = Field(90.0, ge=40, le=130)
    fuel_level_start_pct: float = Field(75.0, ge=0, le=100)
    fuel_l_per_100km: float = Field(9.0, gt=0, le=100)
    idle_fuel_l_per_h: float = Field(0.8, ge=0, le=20)
    tank_l: float = Field(60.0, gt=0, le=1500)
    odometer_start_km: float = Field(48213.0, ge=0, le=2_000_000)

    @model_validator(mode="after")
    def _rpm_order(self) -> Engine:
        if self.idle_rpm >= self.redline_rpm:
            raise _KeyProblem("idle_rpm", "must be below redline_rpm")
        return self


FaultKind = Literal[
    "silence",
    "no_data",
    "disconnect",
    "slow",
    "garbage",
    "can_error",
    "bus_init_error",
    "stopped",
    "unable_to_connect",
    "buffer_full",
]


class ObdFault(_Section):
    """A misbehaving adapter or bus from ``at_s`` for ``duration_s`` (scenario seconds)."""

    at_s: Seconds
    duration_s: float = Field(gt=0, le=86400)
    kind: FaultKind
    delay_ms: float | None = Field(None, gt=0, le=60_000)

    @model_validator(mode="after")
    def _delay_for_slow(self) -> ObdFault:
        if self.delay_ms is not None and self.kind != "slow":
            raise _KeyProblem("delay_ms", f"only with kind = 'slow' (this fault is {self.kind!r})")
        return self

    @property
    def end_s(self) -> float:
        """Scenario second when the fault is over."""
        return self.at_s + self.duration_s

    def active(self, t: float) -> bool:
        """Whether the fault is on at scenario second ``t``."""
        return self.at_s <= t < self.end_s


class Obd(_Section):
    """ELM327 adapter behaviour and what the engine ECU answers."""

    elm_version: str = "ELM327 v1.5"
    protocol: str = Field("6", pattern=r"^[1-9A-C]$")
    response_delay_ms: float = Field(40.0, ge=0, le=5000)
    supported_pids: tuple[str, ...] | None = None
    faults: tuple[ObdFault, ...] = ()

    @field_validator("supported_pids")
    @classmethod
    def _hex_pids(cls, pids: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for i, pid in enumerate(pids or ()):
            if len(pid) != 2 or any(c not in "0123456789ABCDEF" for c in pid):
                raise _KeyProblem(f"[{i}]", f"{pid!r} is not a two-digit upper-case hex PID")
            if int(pid, 16) not in ENCODED_PIDS | DISCOVERY_PIDS:
                known = " ".join(f"{p:02X}" for p in sorted(ENCODED_PIDS))
                raise _KeyProblem(
                    f"[{i}]", f"the simulated ECU cannot encode PID {pid} (it knows {known})"
                )
        return pids


class Can(_Section):
    """CAN bus simulator settings (not used by GPS)."""

    interface: str = "vcan0"
    bitrate: Literal[125000, 250000, 500000, 1000000] = 500000
    extended_ids: bool = False
    background_load_pct: float = Field(0.0, ge=0, le=90)


class Imu(_Section):
    """IMU simulator settings (``imu_out.py``; not used by GPS).

    The mounting is the sensor's orientation in the vehicle: the sensor's axes
    are the vehicle's (x forward, y left, z up) turned by ``mount_yaw_deg``
    about z, then ``mount_pitch_deg`` about the new y, then ``mount_roll_deg``
    about the new x; ``mount_random`` draws a uniformly random orientation
    from ``seed`` instead (every fitting a calibration must handle).
    """

    rate_hz: int = Field(50, ge=10, le=1000)
    accel_noise_mg: float = Field(3.0, ge=0, le=500)
    gyro_noise_dps: float = Field(0.05, ge=0, le=50)
    gyro: bool = True
    mount_roll_deg: float = Field(0.0, ge=-180, le=180)
    mount_pitch_deg: float = Field(0.0, ge=-90, le=90)
    mount_yaw_deg: float = Field(0.0, ge=-180, le=180)
    mount_random: bool = False
    seed: int = Field(0, ge=0)
    vibration_mg: float = Field(20.0, ge=0, le=1000)
    vibration_hz: float = Field(30.0, gt=0, le=500)
    bump_rate_per_km: float = Field(2.0, ge=0, le=1000)
    bump_peak_g: float = Field(0.15, ge=0, le=5)

    @model_validator(mode="after")
    def _one_mounting(self) -> Imu:
        if self.mount_random:
            for key in ("mount_roll_deg", "mount_pitch_deg", "mount_yaw_deg"):
                if getattr(self, key) != 0.0:
                    raise _KeyProblem(
                        key, "not with mount_random = true (the seed draws the mount)"
                    )
        return self


HARSH_KINDS = frozenset({"harsh_braking", "harsh_acceleration", "harsh_left", "harsh_right"})
_DIRECTED_KINDS = frozenset({"impact", "curb_strike"})
EventKind = Literal[
    "pothole",
    "speed_bump",
    "curb_strike",
    "impact",
    "harsh_braking",
    "harsh_acceleration",
    "harsh_left",
    "harsh_right",
]


class Event(_Section):
    """Something the route's kinematics do not contain, for the IMU simulator.

    Shocks (``pothole``, ``speed_bump``, ``curb_strike``, ``impact``) are
    half-sine pulses of ``peak_g``; harsh manoeuvres (``harsh_*``) are
    trapezoids of ``peak_mps2`` added to the longitudinal or lateral
    acceleration.  Both are IMU-only overlays: the GPS speed does not change
    (a harsh brake that GPS must see too is a waypoint's ``decel_mps2``).
    """

    at_s: Seconds
    kind: EventKind
    peak_g: float | None = Field(None, gt=0, le=100)
    peak_mps2: float | None = Field(None, gt=0, le=20)
    duration_s: float = Field(0.2, gt=0, le=10)
    direction_deg: float | None = Field(None, ge=0, lt=360)

    @model_validator(mode="before")
    @classmethod
    def _harsh_lasts_longer(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") in HARSH_KINDS and "duration_s" not in data:
            return {**data, "duration_s": 1.0}
        return data

    @model_validator(mode="after")
    def _peak_for_kind(self) -> Event:
        harsh = self.kind in HARSH_KINDS
        wanted, other = ("peak_mps2", "peak_g") if harsh else ("peak_g", "peak_mps2")
        if getattr(self, wanted) is None:
            raise _KeyProblem(wanted, f"required for kind {self.kind!r}")
        if getattr(self, other) is not None:
            raise _KeyProblem(other, f"not for kind {self.kind!r} (it takes {wanted})")
        if self.direction_deg is not None and self.kind not in _DIRECTED_KINDS:
            raise _KeyProblem("direction_deg", "only for kinds 'impact' and 'curb_strike'")
        return self

    @property
    def harsh(self) -> bool:
        """Whether this is a harsh manoeuvre (``harsh_*``) rather than a shock."""
        return self.kind in HARSH_KINDS

    @property
    def peak_accel_mps2(self) -> float:
        """The pulse's peak in m/s², whichever unit the file gave it in."""
        if self.peak_mps2 is not None:
            return self.peak_mps2
        return (self.peak_g or 0.0) * GRAVITY

    @property
    def end_s(self) -> float:
        """Scenario second when the pulse is over."""
        return self.at_s + self.duration_s


class Dtc(_Section):
    """A diagnostic trouble code that appears (and maybe clears) during the drive."""

    code: str = Field(pattern=r"^[PCBU][0-3][0-9A-F]{3}$")
    at_s: Seconds
    cleared_at_s: Seconds | None = None
    pending: bool = False

    @model_validator(mode="after")
    def _clears_after(self) -> Dtc:
        if self.cleared_at_s is not None and self.cleared_at_s <= self.at_s:
            raise _KeyProblem("cleared_at_s", "must be later than at_s")
        return self

    def active(self, t: float) -> bool:
        """Whether the ECU holds the code at scenario second ``t`` (before any mode 04)."""
        return self.at_s <= t and (self.cleared_at_s is None or t < self.cleared_at_s)


# --------------------------------------------------------------------------- the file


class Scenario(_Section):
    """One test drive: when, where, how fast, and what the devices report."""

    name: str = Field("", max_length=64)
    description: str = ""
    start_utc: AwareDatetime
    vehicle: Vehicle = Vehicle()
    route: Route
    gnss: Gnss = Gnss()
    engine: Engine | None = None
    obd: Obd | None = None
    can: Can | None = None
    imu: Imu | None = None
    events: tuple[Event, ...] = ()
    dtcs: tuple[Dtc, ...] = ()
    zones: tuple[Zone, ...] = ()

    @field_validator("start_utc")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _unique_zone_ids(self) -> Scenario:
        seen: dict[str, str] = {}
        keyed = [(f"zones[{i}].id", z) for i, z in enumerate(self.zones)]
        keyed += [(f"route.waypoints[{i}].zone_radius_m", z) for i, z in _stop_zones(self.route)]
        for key, zone in keyed:
            if zone.id in seen:
                raise _KeyProblem(
                    key,
                    f"zone id {zone.id!r} is already used by {seen[zone.id]} "
                    "(a stop's zone takes the stop's name, else stop-N)",
                )
            seen[zone.id] = key
        return self

    @property
    def all_zones(self) -> tuple[Zone, ...]:
        """The ``[[zones]]`` of the file, then one circle per stop with ``zone_radius_m``."""
        return self.zones + tuple(z for _i, z in _stop_zones(self.route))


# --------------------------------------------------------------------------- loading


def bundled_scenarios() -> list[str]:
    """Names of the scenarios shipped in the package (``simulators/scenarios``)."""
    folder = resources.files("simulators") / "scenarios"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(source: str | os.PathLike[str]) -> Scenario:
    """Load a scenario from a file path or the name of a bundled scenario."""
    path = Path(source)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(str(path), [f"cannot read: {exc}"]) from None
        return parse_scenario(text, origin=str(path), default_name=path.stem)
    name = str(source)
    if name in bundled_scenarios():
        text = (resources.files("simulators") / "scenarios" / f"{name}.toml").read_text("utf-8")
        return parse_scenario(text, origin=f"bundled:{name}", default_name=name)
    known = ", ".join(bundled_scenarios())
    raise ScenarioError(name, [f"no such file, and not a bundled scenario ({known})"])


def parse_scenario(text: str, origin: str = "<scenario>", default_name: str = "") -> Scenario:
    """Parse TOML text into a validated scenario."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(origin, [f"not valid TOML: {exc}"]) from None
    return scenario_from_dict(data, origin, default_name)


def scenario_from_dict(
    data: dict[str, Any], origin: str = "<scenario>", default_name: str = ""
) -> Scenario:
    """Validate an already-parsed mapping; errors name the offending key."""
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(origin, [_describe(err) for err in exc.errors()]) from None
    if not scenario.name and default_name:
        scenario = scenario.model_copy(update={"name": default_name})
    return scenario


def with_gnss(scenario: Scenario, **changes: Any) -> Scenario:
    """The scenario with some ``[gnss]`` keys replaced (CLI overrides), re-validated.

    Changes whose value is ``None`` are ignored.  Errors name the key as in a
    file (``gnss.rate_hz``), so an override is checked exactly like the file.
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return scenario
    data = scenario.gnss.model_dump()
    data.update(changes)
    try:
        gnss = Gnss.model_validate(data)
    except ValidationError as exc:
        problems = [_describe({**e, "loc": ("gnss", *e["loc"])}) for e in exc.errors()]
        raise ScenarioError(scenario.name or "<scenario>", problems) from None
    return scenario.model_copy(update={"gnss": gnss})


def _describe(err: Any) -> str:
    """One line for one pydantic error: dotted key, message, the value given."""
    key = _dotted(err["loc"])
    ctx = err.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, _KeyProblem):
        sub = cause.key if not cause.key or cause.key.startswith("[") else f".{cause.key}"
        return f"{key}{sub}: {cause.message}" if key else f"{cause.key}: {cause.message}"
    kind = err["type"]
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    given = err.get("input")
    shown = repr(given)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{key}: {err['msg']} (got {shown})"


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    previous: str | int | None = None
    for part in loc:
        if previous == "shape" and part in ("circle", "polygon"):
            previous = part
            continue  # pydantic's union tag, not a key of the file
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        previous = part
    return out
