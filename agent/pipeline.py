"""The pure middle of the agent: samples in, records out.

The live runtime and ``telematics-agent replay`` both push samples through
this one object, so a recorded drive replayed yields exactly the records the
live run produced.  No I/O, no wall clock: every timestamp comes from the
samples themselves.  Later detectors (harsh driving, idle, trips,
geofences) plug in here beside the sampler.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from agent.config import GeofenceConfig, SamplerConfig, TripsConfig
from agent.geofence.detector import GeofenceDetector
from agent.geofence.model import ZoneSet
from agent.gps.fix import Fix
from agent.gps.sampler import PositionSampler
from agent.imu.harsh import HarshDetection, harsh_event
from agent.imu.impact import ImpactDetection, impact_event, trace_event
from agent.imu.processor import Detection, ImuProcessor
from agent.imu.sample import ImuSample
from agent.messages import EventData, ObdData, PositionData, Stream
from agent.obd.exchange import Exchange
from agent.obd.pids import ODOMETER, VEHICLE_SPEED
from agent.obd.processor import ObdProcessor
from agent.obd.state import EngineSample, EngineState
from agent.trips.idle import IdleDetector
from agent.trips.overspeed import OverspeedDetector
from agent.trips.stops import StopDetector
from agent.trips.trips import TripDetector

log = logging.getLogger(__name__)

Output = tuple[Stream, PositionData | EventData | ObdData]


class FixStateDetector:
    """``gps_fix_lost`` / ``gps_fix_acquired`` events, debounced.

    A receiver in an urban canyon drops to no-fix for a second now and then;
    a fleet manager cares about outages that last (``hold_s`` of receiver
    time).  The lost event is stamped when the fix was last good.
    """

    def __init__(self, hold_s: float = 5.0) -> None:
        self.hold_s = hold_s
        self._last_good: Fix | None = None
        self._lost = False

    def feed(self, fix: Fix) -> list[EventData]:
        if fix.has_position and fix.time is not None:
            events: list[EventData] = []
            if self._lost and self._last_good is not None:
                assert fix.time is not None and self._last_good.time is not None
                outage = (fix.time - self._last_good.time).total_seconds()
                events.append(
                    EventData(
                        ts=fix.time,
                        type="gps_fix_acquired",
                        lat=fix.lat,
                        lon=fix.lon,
                        data={"outage_s": round(outage, 1)},
                    )
                )
            self._last_good, self._lost = fix, False
            return events
        last = self._last_good
        if self._lost or last is None or last.time is None:
            return []
        if fix.mono - last.mono < self.hold_s:
            return []
        self._lost = True
        return [
            EventData(
                ts=last.time,
                type="gps_fix_lost",
                lat=last.lat,
                lon=last.lon,
                data={"mode": int(fix.mode)},
            )
        ]


# Event types counted per trip in trip_end's ``harsh`` (the IMU issue adds them).
HARSH_PREFIXES = ("harsh_", "impact")
# IMU detections held while no trusted UTC exists, at most (then dropped).
MAX_IMU_UNTIMED = 1000
# No OBD exchange for this long (receiver time): the adapter is gone or hung.
OBD_SILENT_S = 5.0


@dataclass(frozen=True)
class ImuClock:
    """Between the IMU samples' clock and the rest: a fix's time on it, and UTC of a time on it.

    Live, samples carry the monotonic clock: ``of_fix`` is the fix's receive
    time and ``utc`` the agent's trusted clock.  In replay both come from
    an anchor: the CSV's t = 0 is a UTC instant.
    """

    of_fix: Callable[[Fix], float | None]
    utc: Callable[[float], datetime | None]
    of_utc: Callable[[datetime], float | None]


class Pipeline:
    def __init__(
        self,
        sampler: SamplerConfig | None = None,
        *,
        every_fix: bool = False,
        geofence: GeofenceDetector | None = None,
        trips: TripsConfig | None = None,
        obd: ObdProcessor | None = None,
        imu: ImuProcessor | None = None,
        imu_clock: ImuClock | None = None,
    ) -> None:
        cfg = sampler or SamplerConfig()
        self.sampler = PositionSampler(
            period_s=cfg.period_s,
            heading_change_deg=cfg.heading_change_deg,
            distance_m=cfg.distance_m,
            heartbeat_s=cfg.heartbeat_s,
            moving_speed_kmh=cfg.moving_speed_kmh,
            speed_change_kmh=cfg.speed_change_kmh,
            every_fix=every_fix,
        )
        self.fix_state = FixStateDetector()
        self.geofence = geofence
        t = trips or TripsConfig()
        # One stop detector decides "stopped" for idle and trips alike.
        self.stops = StopDetector(
            stop_speed_kmh=t.stop_speed_kmh,
            move_speed_kmh=t.move_speed_kmh,
            radius_m=t.stop_radius_m,
            min_stop_s=t.min_stop_s,
        )
        self.idle = IdleDetector(t.idle_threshold_s, t.excessive_idle_s, stops=self.stops)
        self.trips = TripDetector(t.trip_start_distance_m, t.trip_end_stop_s, stops=self.stops)
        limits = None if geofence is None else geofence.limits_at
        self.overspeed = OverspeedDetector(
            t.overspeed_kmh,
            t.overspeed_min_s,
            t.overspeed_hysteresis_kmh,
            limit_at=limits,
        )
        self.obd = obd
        self.imu = imu
        self.imu_clock = imu_clock
        self.course: float | None = None  # last course over ground, for event headings
        self.speed_mps: float | None = None
        self._imu_untimed: list[Detection] = []  # bounded: see _imu_events
        # (IMU-clock time, lat, lon, course) of recent fixes: an event is placed
        # where it started, not where the vehicle is when it ends.
        self._track: deque[tuple[float, float | None, float, float, float | None]] = deque(
            maxlen=120
        )
        self._trip_odometer: float | None = None
        self._trip_harsh: Counter[str] = Counter()
        self.position: tuple[float, float] | None = None  # last fix, to place OBD events
        self.fixes = 0
        self.rejected = 0  # fixes carrying a value no record may hold

    def feed_fix(self, fix: Fix) -> list[Output]:
        self.fixes += 1
        if fix.has_position and not (
            -90.0 <= (fix.lat or 0.0) <= 90.0 and -180.0 <= (fix.lon or 0.0) <= 180.0
        ):
            # Off the globe: no detector may use it (a trip would start, a
            # geofence be left); counted like any fix no record may hold.
            self.rejected += 1
            log.warning(
                "fix at %s rejected: position %s, %s off the globe", fix.time, fix.lat, fix.lon
            )
            return []
        try:
            out: list[Output] = [("events", e) for e in self.fix_state.feed(fix)]
            out.extend(self._obd_silent(fix))
            out.extend(("telemetry", p) for p in self.sampler.feed(fix))
            if self.geofence is not None:
                out.extend(("events", e) for e in self.geofence.feed(fix))
            out.extend(("events", self._with_engine(e)) for e in self.stops.feed(fix))
            out.extend(("events", e) for e in self.idle.feed_fix(fix))
            out.extend(("events", e) for e in self._trip_extras(self.trips.feed_fix(fix)))
            out.extend(("events", e) for e in self.overspeed.feed(fix))
            out.extend(self._imu_motion(fix))
            self._count_harsh(out)
        except ValidationError as exc:
            # Garbled input without a checksum can carry anything; count it
            # and go on: one bad line must never stop the van's reporting.
            self.rejected += 1
            log.warning("fix at %s rejected: %s", fix.time, exc.errors()[0]["msg"])
            return []
        # Only a fix that made valid records places later OBD and IMU events.
        if fix.has_position and fix.lat is not None and fix.lon is not None:
            self.position = (fix.lat, fix.lon)
            self.speed_mps = fix.speed
            if fix.course is not None:
                self.course = fix.course
        return out

    # -- IMU -----------------------------------------------------------------

    def _imu_motion(self, fix: Fix) -> list[Output]:
        if self.imu is None or self.imu_clock is None or not fix.has_position:
            return []
        t = self.imu_clock.of_fix(fix)
        if t is None:
            return []
        utc_s = None if fix.time is None else fix.time.timestamp()
        if fix.lat is not None and fix.lon is not None:
            self._track.append((t, utc_s, fix.lat, fix.lon, fix.course))
        return self._imu_events(self.imu.feed_motion(t, fix.speed, fix.course, utc_s=utc_s))

    def _place(
        self, t: float, *, utc: bool = False
    ) -> tuple[float | None, float | None, float | None]:
        """Where the vehicle was at ``t`` (IMU clock, or Unix seconds with ``utc``).

        The last fix at or before it in the recent track.
        """
        key = 1 if utc else 0
        best = None
        for entry in reversed(self._track):
            best = entry
            when = entry[key]
            if when is not None and when <= t:
                break
        when = None if best is None else best[key]
        if best is None or when is None or abs(when - t) > 5.0:
            lat, lon = self.position if self.position else (None, None)
            return lat, lon, self.course
        return best[2], best[3], best[4] if best[4] is not None else self.course

    def feed_imu(self, sample: ImuSample) -> list[Output]:
        """One IMU sample: impacts at once, harsh events when they end."""
        if self.imu is None:
            raise RuntimeError("pipeline built without an IMU processor")
        try:
            out = self._imu_events(self.imu.feed_imu(sample))
        except ValidationError as exc:
            self.rejected += 1
            log.warning("IMU event rejected: %s", exc.errors()[0]["msg"])
            return []
        self._count_harsh(out)
        return out

    def flush_imu(self) -> list[Output]:
        """End of a recording: events still open in the IMU detectors."""
        if self.imu is None:
            return []
        out = self._imu_events(self.imu.flush())
        self._count_harsh(out)
        return out

    def _imu_events(self, found: list[Detection]) -> list[Output]:
        """Detections (sample-clock times) as events; held while no UTC is known."""
        if not found and not self._imu_untimed:
            return []
        assert self.imu_clock is not None
        pending, self._imu_untimed = [*self._imu_untimed, *found], []
        speed = None if self.speed_mps is None else self.speed_mps * 3.6
        out: list[Output] = []
        for d in pending:
            t = (
                d.t_start
                if isinstance(d, HarshDetection)
                else d.t
                if isinstance(d, ImpactDetection)
                else d.t0
            )
            # GNSS/OBD fallback detections are on the reports' own UTC.
            on_utc = isinstance(d, HarshDetection) and d.source != "imu"
            ts = datetime.fromtimestamp(t, UTC) if on_utc else self.imu_clock.utc(t)
            if ts is None:
                if len(self._imu_untimed) < MAX_IMU_UNTIMED:
                    self._imu_untimed.append(d)
                continue
            lat, lon, course = self._place(t, utc=on_utc)
            if isinstance(d, HarshDetection):
                out.append(("events", harsh_event(d, ts, lat, lon, course)))
            elif isinstance(d, ImpactDetection):
                assert self.imu is not None
                ev = impact_event(
                    d,
                    ts,
                    lat,
                    lon,
                    threshold_g=self.imu.impact.threshold_g,
                    speed_kmh=speed,
                    heading_deg=course,
                )
                out.append(("events", ev))
            else:
                out.append(("events", trace_event(d, ts)))
        return out

    def _obd_silent(self, fix: Fix) -> list[Output]:
        """With no OBD exchange for a while, fixes move the engine state's clock on."""
        obd = self.obd
        if obd is None or fix.time is None or obd.last_exchange is None:
            return []
        if (fix.time - obd.last_exchange).total_seconds() < OBD_SILENT_S:
            return []
        result = obd.tick(fix.time, self.position)
        out: list[Output] = list(result.records)
        for sample in result.engine:
            out.extend(self.feed_engine(sample))
        return out

    def feed_obd(self, exchange: Exchange) -> list[Output]:
        """One OBD exchange (stamped UTC): its records, then what engine state changed."""
        if self.obd is None:
            raise RuntimeError("pipeline built without an OBD processor")
        try:
            result = self.obd.feed(exchange, self.position)
        except ValidationError as exc:
            # A value no record may hold (a corrupt log line, a mad ECU):
            # count it and go on, as for fixes.
            self.rejected += 1
            log.warning("OBD exchange %s rejected: %s", exchange.req, exc.errors()[0]["msg"])
            return []
        out: list[Output] = list(result.records)
        for sample in result.engine:
            out.extend(self.feed_engine(sample))
        speed = self.obd.latest.get(VEHICLE_SPEED)
        if exchange.req == "010D" and exchange.replies and speed is not None:
            out.extend(self._imu_obd_speed(exchange.ts, speed / 3.6))
        self._count_harsh(out)
        return out

    def _imu_obd_speed(self, ts: datetime, speed_mps: float) -> list[Output]:
        """OBD vehicle speed (2 Hz) helps calibrate the mounting, and is the IMU's speed."""
        if self.imu is None or self.imu_clock is None:
            return []
        t = self.imu_clock.of_utc(ts)
        if t is None:
            return []
        return self._imu_events(
            self.imu.feed_motion(t, speed_mps, None, "obd", utc_s=ts.timestamp())
        )

    def feed_engine(self, sample: EngineSample) -> list[Output]:
        """Engine state from OBD (live or replayed) for the idle and trip detectors."""
        if self.imu is not None and self.imu_clock is not None:
            t = self.imu_clock.of_utc(sample.time)
            if t is not None and sample.state is not EngineState.UNKNOWN:
                self.imu.feed_engine(t, sample.state is EngineState.RUNNING)
        out: list[Output] = [("events", e) for e in self.idle.feed_engine(sample)]
        out.extend(("events", e) for e in self._trip_extras(self.trips.feed_engine(sample)))
        return out

    def _with_engine(self, event: EventData) -> EventData:
        """Stops say what the engine did (``unknown`` on a phone: no idle is claimed)."""
        return event.model_copy(update={"data": {**event.data, "engine": str(self.idle.engine)}})

    def _trip_extras(self, events: list[EventData]) -> list[EventData]:
        """Odometer distance (OBD PID A6) and harsh-event counts onto trip events."""
        out = []
        for e in events:
            odo = self.obd.latest.get(ODOMETER) if self.obd is not None else None
            if e.type == "trip_start":
                self._trip_odometer, self._trip_harsh = odo, Counter()
            elif e.type == "trip_end":
                extra: dict[str, Any] = {"harsh": dict(sorted(self._trip_harsh.items()))}
                if odo is not None and self._trip_odometer is not None:
                    extra["odometer_km"] = round(odo - self._trip_odometer, 1)
                e = e.model_copy(update={"data": {**e.data, **extra}})
                self._trip_odometer, self._trip_harsh = None, Counter()
            out.append(e)
        return out

    def _count_harsh(self, out: list[Output]) -> None:
        for _stream, record in out:
            if isinstance(record, EventData) and record.type.startswith(HARSH_PREFIXES):
                self._trip_harsh[record.type] += 1


def geofence_detector(cfg: GeofenceConfig, zones: ZoneSet) -> GeofenceDetector:
    """The detector with the configured hysteresis (live and replay alike)."""
    return GeofenceDetector(
        zones,
        default_dwell_s=cfg.default_dwell_s,
        uere_m=cfg.uere_m,
        min_margin_m=cfg.min_margin_m,
        min_side_s=cfg.min_side_s,
        max_hdop=cfg.max_hdop,
        approach_m=cfg.approach_m,
        approach_s=cfg.approach_s,
        approach=cfg.approach,
    )
