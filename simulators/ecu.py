"""The vehicle as its engine ECU sees it: OBD-II answers from the scenario's drive.

Both the ELM327 simulator (``elm327.py``) and the CAN ECU simulator answer from
this one model, so whatever transport a test uses, the numbers agree with each
other and with the GPS (all derive from ``route.state_at``).  Pure: no I/O, no
wall clock; the same scenario and t give the same bytes.  The only state is a
mode 04 (clear DTCs), which is remembered with its scenario time.

Model, kept simple and exact:

* **Engine schedule.**  Running from t = 0 and through every stop whose engine
  is ``idle``; at a stop whose engine is ``off`` (``Waypoint.engine``, or by
  default a dwell longer than ``engine.off_at_stops_longer_than_s``) it stops
  ``off_after_arrival_s`` after arriving and starts ``start_before_departure_s``
  before leaving (both scaled down so that a short stop is still off for at
  least half its dwell).  A first stop that is ``off`` starts the drive with
  the engine off; at the end of the route the engine goes off (at the end of
  the last dwell, or earlier when that stop is ``off``).  So the vehicle never
  moves with the engine off.
* **Signals.**  RPM ``idle_rpm`` while stopped, ``idle_rpm + rpm_per_kmh x
  speed`` while driving (capped below the redline), 0 when off.  Coolant warms
  first-order toward ``coolant_operating_c`` (8 min time constant) while running
  and cools toward the ambient (``coolant_start_c``, 30 min) when off.  Fuel
  rate is ``idle_fuel_l_per_h`` plus ``fuel_l_per_100km`` at the current speed,
  the fuel level falls by exactly its integral, and MAF is the air for that
  fuel at 14.7:1 (petrol, 0.745 kg/L).  Battery 14.1 V running (charging), 12.4 V
  off (ignition on, engine off: the ECU still answers).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Literal

from simulators.route import Drive, build_drive, state_at
from simulators.scenario import DISCOVERY_PIDS, ENCODED_PIDS, Engine, Scenario, Waypoint

__all__ = [
    "DEFAULT_PIDS",
    "DEFAULT_VIN",
    "EcuModel",
    "EcuState",
    "decode_dtc",
    "encode_dtc",
    "engine_schedule",
    "stop_engine",
    "supported_set",
]

DEFAULT_VIN = "1FTBW3XM0HKA48213"  # check digit valid; used when [vehicle] has no vin
DEFAULT_PIDS = frozenset(ENCODED_PIDS)  # a van's engine ECU answers all of them

_TAU_WARM_S = 480.0  # coolant time constant while running
_TAU_COOL_S = 1800.0  # ... and while off
_BATTERY_RUNNING_V = 14.1
_BATTERY_OFF_V = 12.4
_FUEL_KG_PER_L = 0.745
_AIR_FUEL_RATIO = 14.7
_REDLINE_MARGIN_RPM = 250.0
_THROTTLE_CLOSED_PCT = 14.9  # what a closed throttle body reads (never 0)
_DISTANCE_SINCE_CLEAR_KM = 1520.0  # when the drive starts, codes were cleared this long ago
_DTC_LETTERS = "PCBU"
_VIN_PIDS = frozenset({0x02})  # mode 09 PIDs answered besides the 09 00 bitmap


@dataclass(frozen=True, slots=True)
class EcuState:
    """What the engine ECU knows at scenario second ``t`` (SI-ish units as in J1979)."""

    t: float
    running: bool
    rpm: float
    speed_kmh: float
    coolant_c: float
    load_pct: float
    throttle_pct: float
    fuel_level_pct: float
    maf_gps: float
    fuel_rate_lph: float
    intake_c: float
    battery_v: float
    run_time_s: float
    distance_since_clear_km: float
    odometer_km: float
    dtcs: tuple[str, ...]
    pending_dtcs: tuple[str, ...]


# --------------------------------------------------------------------------- schedule


def stop_engine(waypoint: Waypoint, engine: Engine) -> Literal["idle", "off"]:
    """What the engine does during a stop: the waypoint's choice, else by the dwell."""
    if waypoint.engine is not None:
        return waypoint.engine
    limit = engine.off_at_stops_longer_than_s
    dwell = waypoint.dwell_s or 0.0
    return "off" if limit is not None and dwell > limit else "idle"


def engine_schedule(scenario: Scenario, drive: Drive | None = None) -> list[tuple[float, float]]:
    """The engine's running intervals ``[start, end)`` in scenario seconds, in order.

    The last interval ends when the engine goes off for good at the end of
    the route.  Only the first lap counts (the ECU model does not loop).
    """
    engine = scenario.engine or Engine()
    lap = (drive or build_drive(scenario)).first
    waypoints = scenario.route.waypoints
    a, b = engine.off_after_arrival_s, engine.start_before_departure_s
    end = lap.duration
    off: list[tuple[float, float]] = []
    for visit in lap.stops:
        if stop_engine(waypoints[visit.waypoint], engine) != "off":
            continue
        dwell = visit.depart_s - visit.arrive_s
        if visit.arrive_s == 0.0 and visit.waypoint == 0:  # parked at the start
            off.append((0.0, visit.depart_s - (b * min(1.0, 0.5 * dwell / b) if b else 0.0)))
        elif visit.depart_s >= end:  # parked at the end
            end = visit.arrive_s + (a * min(1.0, 0.5 * dwell / a) if a else 0.0)
        else:
            k = min(1.0, 0.5 * dwell / (a + b)) if a + b > 0 else 1.0
            off.append((visit.arrive_s + a * k, visit.depart_s - b * k))
    running = []
    cursor = 0.0
    for lo, hi in off:
        if hi <= lo:
            continue
        if lo > cursor:
            running.append((cursor, lo))
        cursor = hi
    if end > cursor:
        running.append((cursor, end))
    return running


# --------------------------------------------------------------------------- DTCs


def encode_dtc(code: str) -> bytes:
    """SAE J2012 two-byte form: letter in the top 2 bits (P=00 C=01 B=10 U=11)."""
    letter = _DTC_LETTERS.index(code[0])
    return bytes(((letter << 6) | (int(code[1]) << 4) | int(code[2], 16), int(code[3:5], 16)))


def decode_dtc(data: bytes) -> str:
    """The inverse of :func:`encode_dtc`."""
    return f"{_DTC_LETTERS[data[0] >> 6]}{(data[0] >> 4) & 3}{data[0] & 0xF:X}{data[1]:02X}"


def supported_set(pids: frozenset[int]) -> frozenset[int]:
    """Data PIDs plus the discovery PIDs (00, 20, ...) that lead to them."""
    out = set(pids) | {0x00}
    for pid in pids:
        out.update(base for base in DISCOVERY_PIDS if base < pid)
    return frozenset(out)


def _bitmap(supported: frozenset[int], base: int) -> bytes:
    """The 32-bit support bitmap of PIDs base+1 .. base+0x20 (bit 7 of byte 0 first)."""
    bits = 0
    for pid in supported:
        if base < pid <= base + 0x20:
            bits |= 1 << (31 - (pid - base - 1))
    return bits.to_bytes(4, "big")


def _u8(value: float) -> bytes:
    return bytes((min(255, max(0, round(value))),))


def _u16(value: float) -> bytes:
    return min(0xFFFF, max(0, round(value))).to_bytes(2, "big")


def _pct(value: float) -> bytes:
    return _u8(value * 255 / 100)


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class _Segment:
    """A stretch with the engine either running or off, and the totals at its start."""

    t0: float
    running: bool
    coolant0: float
    run_s0: float  # engine seconds before t0


class EcuModel:
    """The engine ECU of the scenario's vehicle: its state and its OBD-II answers."""

    REPLY_ID = 0x7E8  # 11-bit reply CAN id of the engine ECU (29-bit: 0x18DAF110)
    REPLY_ID_29 = 0x18DAF110

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.engine = scenario.engine or Engine()
        self.vin: str = scenario.vehicle.vin or DEFAULT_VIN
        listed = scenario.obd.supported_pids if scenario.obd else None
        data_pids = (
            frozenset(int(p, 16) for p in listed) - {0x00} if listed is not None else DEFAULT_PIDS
        )
        self.supported_pids: frozenset[int] = supported_set(data_pids)
        self.drive = build_drive(scenario)
        self.engine_periods: tuple[tuple[float, float], ...] = tuple(
            engine_schedule(scenario, self.drive)
        )
        self._segments = self._plan_segments()
        self._segment_t0 = [s.t0 for s in self._segments]
        self._clears: list[float] = []  # scenario seconds of each mode 04

    @property
    def ambient_c(self) -> float:
        """Ambient (and cold-engine) temperature: the coolant's start value."""
        return self.engine.coolant_start_c

    def _plan_segments(self) -> list[_Segment]:
        bounds: list[tuple[float, bool]] = []
        cursor = 0.0
        for lo, hi in self.engine_periods:
            if lo > cursor:
                bounds.append((cursor, False))
            bounds.append((lo, True))
            cursor = hi
        bounds.append((cursor, False))
        segments = []
        coolant, run_s = self.ambient_c, 0.0
        for i, (t0, running) in enumerate(bounds):
            segments.append(_Segment(t0, running, coolant, run_s))
            if i + 1 < len(bounds):
                dt = bounds[i + 1][0] - t0
                coolant = self._coolant_after(coolant, running, dt)
                run_s += dt if running else 0.0
        return segments

    def _coolant_after(self, start: float, running: bool, dt: float) -> float:
        target = self.engine.coolant_operating_c if running else self.ambient_c
        tau = _TAU_WARM_S if running else _TAU_COOL_S
        return target + (start - target) * math.exp(-dt / tau)

    # ------------------------------------------------------------------ state

    def running_at(self, t: float) -> bool:
        """Whether the engine runs at scenario second ``t``."""
        return self._segment(t).running

    def _segment(self, t: float) -> _Segment:
        return self._segments[max(0, bisect_right(self._segment_t0, max(0.0, t)) - 1)]

    def _odometer_m(self, t: float) -> float:
        return state_at(self.drive, t).odometer_m

    def _last_clear(self, t: float) -> float | None:
        before = [c for c in self._clears if c <= t]
        return max(before) if before else None

    def _codes(self, t: float, *, pending: bool) -> tuple[str, ...]:
        cleared = self._last_clear(t)
        return tuple(
            d.code
            for d in self.scenario.dtcs
            if d.pending == pending and d.active(t) and (cleared is None or d.at_s > cleared)
        )

    def state_at(self, t: float) -> EcuState:
        """The ECU's view at scenario second ``t`` (after any mode 04 sent before t)."""
        t = max(0.0, t)
        eng = self.engine
        vehicle = state_at(self.drive, t)
        seg = self._segment(t)
        running = seg.running
        speed = vehicle.speed_mps * 3.6
        coolant = self._coolant_after(seg.coolant0, running, t - seg.t0)
        run_s = seg.run_s0 + (t - seg.t0 if running else 0.0)
        odometer_km = vehicle.odometer_m / 1000
        used_l = eng.idle_fuel_l_per_h * run_s / 3600 + eng.fuel_l_per_100km * odometer_km / 100
        span = max(1.0, eng.coolant_operating_c - self.ambient_c)
        warm = min(1.0, max(0.0, (coolant - self.ambient_c) / span))
        if not running:
            rpm = load = fuel_rate = 0.0
            throttle = _THROTTLE_CLOSED_PCT
        elif speed == 0.0:
            rpm, load, throttle = float(eng.idle_rpm), 22.0, _THROTTLE_CLOSED_PCT
            fuel_rate = eng.idle_fuel_l_per_h
        else:
            rpm = min(eng.idle_rpm + eng.rpm_per_kmh * speed, eng.redline_rpm - _REDLINE_MARGIN_RPM)
            push = max(0.0, vehicle.accel_mps2)
            coasting = vehicle.accel_mps2 < -0.05
            load = 12.0 if coasting else min(100.0, 25.0 + 0.45 * speed + 25.0 * push)
            throttle = (
                _THROTTLE_CLOSED_PCT
                if coasting
                else min(100.0, _THROTTLE_CLOSED_PCT + 0.25 * speed + 20.0 * push)
            )
            fuel_rate = eng.idle_fuel_l_per_h + eng.fuel_l_per_100km * speed / 100
        cleared = self._last_clear(t)
        since_clear = (
            _DISTANCE_SINCE_CLEAR_KM + odometer_km
            if cleared is None
            else odometer_km - self._odometer_m(cleared) / 1000
        )
        return EcuState(
            t=t,
            running=running,
            rpm=rpm,
            speed_kmh=speed,
            coolant_c=coolant,
            load_pct=load,
            throttle_pct=throttle,
            fuel_level_pct=max(0.0, eng.fuel_level_start_pct - 100 * used_l / eng.tank_l),
            maf_gps=fuel_rate * _FUEL_KG_PER_L * 1000 / 3600 * _AIR_FUEL_RATIO,
            fuel_rate_lph=fuel_rate,
            intake_c=self.ambient_c + 3.0 + 9.0 * warm - 2.0 * min(1.0, speed / 50),
            battery_v=_BATTERY_RUNNING_V if running else _BATTERY_OFF_V,
            run_time_s=t - seg.t0 if running else 0.0,
            distance_since_clear_km=since_clear,
            odometer_km=eng.odometer_start_km + odometer_km,
            dtcs=self._codes(t, pending=False),
            pending_dtcs=self._codes(t, pending=True),
        )

    # ------------------------------------------------------------------ OBD services

    def respond(self, request: bytes, t: float) -> bytes | None:
        """The ECU's answer to one OBD request (service level, no PCI, no ELM text).

        ``None`` means the ECU stays silent (unsupported service or PID): the
        ELM prints NO DATA, a CAN ECU sends nothing.
        """
        if not request:
            return None
        service, args = request[0], request[1:]
        if service == 0x01 and 1 <= len(args) <= 6:
            state = self.state_at(t)
            out = bytearray(b"\x41")
            for pid in args:
                data = self._pid(pid, state) if pid in self.supported_pids else None
                if data is not None:
                    out += bytes((pid,)) + data
            return bytes(out) if len(out) > 1 else None
        if service in (0x03, 0x07) and not args:
            state = self.state_at(t)
            codes = state.dtcs if service == 0x03 else state.pending_dtcs
            return bytes((service + 0x40, len(codes))) + b"".join(encode_dtc(c) for c in codes)
        if service == 0x04 and not args:
            self._clears.append(max(0.0, t))
            return b"\x44"
        if service == 0x09 and len(args) == 1:
            if args[0] == 0x00:
                return b"\x49\x00" + _bitmap(_VIN_PIDS, 0x00)
            if args[0] == 0x02:
                return b"\x49\x02\x01" + self.vin.encode("ascii")
        return None

    def _pid(self, pid: int, s: EcuState) -> bytes | None:
        """SAE J1979 encoding of one mode 01 PID."""
        if pid in DISCOVERY_PIDS:
            return _bitmap(self.supported_pids, pid)
        match pid:
            case 0x01:  # monitor status: MIL and stored DTC count, spark-ignition monitors
                return bytes(((0x80 if s.dtcs else 0) | min(len(s.dtcs), 0x7F), 0x07, 0x65, 0x00))
            case 0x04:
                return _pct(s.load_pct)
            case 0x05:
                return _u8(s.coolant_c + 40)
            case 0x0C:
                return _u16(s.rpm * 4)
            case 0x0D:
                return _u8(s.speed_kmh)
            case 0x0F:
                return _u8(s.intake_c + 40)
            case 0x10:
                return _u16(s.maf_gps * 100)
            case 0x11:
                return _pct(s.throttle_pct)
            case 0x1C:
                return b"\x06"  # EOBD (Europe)
            case 0x1F:
                return _u16(s.run_time_s)
            case 0x21:
                return _u16(self._distance_with_mil_km(s))
            case 0x2F:
                return _pct(s.fuel_level_pct)
            case 0x31:
                return _u16(s.distance_since_clear_km)
            case 0x42:
                return _u16(s.battery_v * 1000)
            case 0x46:
                return _u8(self.ambient_c + 40)
            case 0x5E:
                return _u16(s.fuel_rate_lph * 20)
            case 0xA6:
                return min(0xFFFFFFFF, round(s.odometer_km * 10)).to_bytes(4, "big")
        return None

    def _distance_with_mil_km(self, s: EcuState) -> float:
        """Kilometres driven since the oldest stored code lit the MIL (0 when it is off)."""
        if not s.dtcs:
            return 0.0
        since = min(d.at_s for d in self.scenario.dtcs if d.code in s.dtcs and not d.pending)
        return (self._odometer_m(s.t) - self._odometer_m(since)) / 1000
