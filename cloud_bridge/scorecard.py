"""A driver/vehicle scorecard for one device over a period: pure, no I/O.

Fleet managers compare vans week by week, so every figure has one fixed
definition, given here (the API docs link to this module).

Period: ``[start, end)``, both timezone-aware.  A record belongs to the period
when its time is in it: an event by its ``ts``, a trip by its ``end`` (the
time of its ``trip_end`` event).  A trip, idle or overspeed that began before
``start`` but ended inside the period counts whole in this period, never
split, so consecutive periods add up with nothing counted twice.

Figures (``Scorecard`` attribute; ``as_dict()`` key in brackets):

* ``trips`` [trips]: finished trips in the period.
* ``distance_km`` [distance_km]: sum of the trips' GNSS ``distance_m`` / 1000.
* ``odometer_km`` [odometer_km]: sum of the trips' OBD odometer deltas, over the
  ``odometer_trips`` [odometer_trips] trips that have one; ``None`` when none
  has.  Reported beside the GNSS distance, never mixed into it.
* ``driving_h`` [driving_h]: sum of the trips' ``driving_s`` / 3600; a trip
  without ``driving_s`` contributes ``duration_s - idle_s`` (idle 0 if unknown).
* ``harsh_acceleration``, ``harsh_braking``, ``harsh_cornering``, ``impacts``
  [harsh.harsh_acceleration, .harsh_braking, .harsh_cornering, .impact]: events
  of that type in the period.  Counted from events, not from the trips'
  ``harsh`` counts, because events arrive even when a trip_end does not.
* ``harsh_total`` [harsh.total]: the three harsh kinds, impacts excluded.
* ``harsh_per_100km`` [harsh.per_100km]: ``harsh_total / distance_km * 100``;
  ``None`` below ``MIN_RATE_KM`` (1 km), where a rate would be absurd.
* ``idle_minutes`` [idle.minutes]: sum of ``data.duration_s`` / 60 of the
  ``idle_end`` events in the period.  An idle still running at ``end`` has no
  ``idle_end`` yet and is not counted (it counts in the period it ends in).
* ``idles`` [idle.count]: ``idle_end`` events in the period.
* ``excessive_idles`` [idle.excessive]: ``excessive_idle`` events in the period.
* ``active_days`` [active_days]: UTC calendar days inside the period on which
  the vehicle was in use: every day a counted trip touches (from its start,
  clipped to ``start``, to its end), plus the day of every ``idle_start``,
  ``excessive_idle`` or ``idle_end`` in the period.  Days with no use are
  left out so that a week with two working days is not diluted by five idle ones.
* ``idle_minutes_per_day`` [idle.minutes_per_day]: ``idle_minutes /
  active_days``; ``None`` when there is no active day.
* ``overspeeds`` [overspeed.count]: ``overspeed`` events in the period.
* ``overspeed_s`` [overspeed.seconds]: sum of their ``data.duration_s``.
* ``max_over_kmh`` [overspeed.max_over_kmh]: largest ``data.max_over_kmh``;
  ``None`` without overspeed.

An event whose numeric field is missing or not a finite number still counts
in the counts and adds nothing to the sums.  Rows are assumed unique (the
store de-duplicates on ``(device, epoch, seq)``).  ``as_dict()`` rounds:
km and hours to 3 decimals, minutes and rates to 2, seconds and km/h to 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cloud_bridge.export import iso_z
from cloud_bridge.rows import EventRow, TripRow

MIN_RATE_KM = 1.0
HARSH_TYPES = ("harsh_acceleration", "harsh_braking", "harsh_cornering")
IDLE_TYPES = ("idle_start", "excessive_idle", "idle_end")


@dataclass(frozen=True, slots=True)
class Scorecard:
    device: str
    start: datetime
    end: datetime
    trips: int
    distance_km: float
    odometer_km: float | None
    odometer_trips: int
    driving_h: float
    harsh_acceleration: int
    harsh_braking: int
    harsh_cornering: int
    impacts: int
    harsh_per_100km: float | None
    idle_minutes: float
    idles: int
    excessive_idles: int
    active_days: int
    idle_minutes_per_day: float | None
    overspeeds: int
    overspeed_s: float
    max_over_kmh: float | None

    @property
    def harsh_total(self) -> int:
        return self.harsh_acceleration + self.harsh_braking + self.harsh_cornering

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, grouped as the API returns it (keys in the module docstring)."""
        return {
            "device": self.device,
            "start": iso_z(self.start),
            "end": iso_z(self.end),
            "trips": self.trips,
            "distance_km": round(self.distance_km, 3),
            "odometer_km": _round(self.odometer_km, 3),
            "odometer_trips": self.odometer_trips,
            "driving_h": round(self.driving_h, 3),
            "active_days": self.active_days,
            "harsh": {
                "harsh_acceleration": self.harsh_acceleration,
                "harsh_braking": self.harsh_braking,
                "harsh_cornering": self.harsh_cornering,
                "impact": self.impacts,
                "total": self.harsh_total,
                "per_100km": _round(self.harsh_per_100km, 2),
            },
            "idle": {
                "minutes": round(self.idle_minutes, 2),
                "count": self.idles,
                "excessive": self.excessive_idles,
                "minutes_per_day": _round(self.idle_minutes_per_day, 2),
            },
            "overspeed": {
                "count": self.overspeeds,
                "seconds": round(self.overspeed_s, 1),
                "max_over_kmh": _round(self.max_over_kmh, 1),
            },
        }


def _round(value: float | None, places: int) -> float | None:
    return None if value is None else round(value, places)


def _num(data: dict[str, Any], key: str) -> float | None:
    """A finite number from an event's data, else None (bool is not a number here)."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _aware(name: str, ts: datetime) -> None:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{name} is naive ({ts!r}): scorecard times must be timezone-aware")


def _days(lo: datetime, hi: datetime) -> Iterable[date]:
    """Every UTC date from lo's to hi's, inclusive."""
    day = lo.astimezone(UTC).date()
    last = hi.astimezone(UTC).date()
    while day <= last:
        yield day
        day += timedelta(days=1)


def _driving_s(trip: TripRow) -> float:
    if trip.driving_s is not None:
        return trip.driving_s
    return max(0.0, trip.duration_s - (trip.idle_s or 0.0))


def scorecard(
    device: str,
    start: datetime,
    end: datetime,
    trips: Sequence[TripRow],
    events: Sequence[EventRow],
) -> Scorecard:
    """Figures for ``device`` over ``[start, end)``; rows of another device are an error."""
    _aware("start", start)
    _aware("end", end)
    if end < start:
        raise ValueError(f"period ends ({end}) before it starts ({start})")
    others = {t.device for t in trips} | {e.device for e in events}
    others.discard(device)
    if others:
        raise ValueError(f"rows of {sorted(others)} in the scorecard of {device!r}")

    in_trips = [t for t in trips if start <= t.end < end]
    in_events = [e for e in events if start <= e.ts < end]

    def of_type(kind: str) -> list[EventRow]:
        return [e for e in in_events if e.type == kind]

    distance_km = sum(t.distance_m for t in in_trips) / 1000.0
    odo = [t.odometer_km for t in in_trips if t.odometer_km is not None]
    harsh = {kind: len(of_type(kind)) for kind in HARSH_TYPES}
    harsh_total = sum(harsh.values())

    idle_ends = of_type("idle_end")
    idle_minutes = sum(_num(e.data, "duration_s") or 0.0 for e in idle_ends) / 60.0
    days: set[date] = set()
    for t in in_trips:
        days.update(_days(max(t.start, start), t.end))
    days.update(e.ts.astimezone(UTC).date() for e in in_events if e.type in IDLE_TYPES)

    overs = of_type("overspeed")
    over_by = [v for e in overs if (v := _num(e.data, "max_over_kmh")) is not None]

    return Scorecard(
        device=device,
        start=start,
        end=end,
        trips=len(in_trips),
        distance_km=distance_km,
        odometer_km=sum(odo) if odo else None,
        odometer_trips=len(odo),
        driving_h=sum(_driving_s(t) for t in in_trips) / 3600.0,
        harsh_acceleration=harsh["harsh_acceleration"],
        harsh_braking=harsh["harsh_braking"],
        harsh_cornering=harsh["harsh_cornering"],
        impacts=len(of_type("impact")),
        harsh_per_100km=harsh_total / distance_km * 100.0 if distance_km >= MIN_RATE_KM else None,
        idle_minutes=idle_minutes,
        idles=len(idle_ends),
        excessive_idles=len(of_type("excessive_idle")),
        active_days=len(days),
        idle_minutes_per_day=idle_minutes / len(days) if days else None,
        overspeeds=len(overs),
        overspeed_s=sum(_num(e.data, "duration_s") or 0.0 for e in overs),
        max_over_kmh=max(over_by) if over_by else None,
    )
