"""NMEA 0183 output: one receiver epoch as the sentences a real GPS sends.

Pure: the vehicle's true state plus the scenario's GNSS settings go in, text
comes out; no I/O and no wall clock, so the same scenario always produces the
same bytes and the renderer is testable sentence by sentence.  Sentences
follow NMEA 0183 v2.3 as u-blox receivers emit them: RMC, VTG, GGA, GSA, then
GSV (once per second, as most receivers do at rates above 1 Hz), checksums
always, ``\\r\\n`` line ends, positions to 1e-5 minutes (2 cm).  With talker
``GN`` the receiver is GPS + GLONASS: GN for the combined solution, one GNGSA
per constellation, GPGSV and GLGSV for the satellites in view.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from simulators.route import VehicleState, build_drive, offset_m, state_at
from simulators.scenario import Gnss, Scenario

__all__ = [
    "KMH_PER_MPS",
    "KNOTS_PER_MPS",
    "EncodedEpoch",
    "GnssEpoch",
    "Satellite",
    "checksum",
    "encode",
    "gga",
    "gnss_epoch",
    "gsa",
    "gsv",
    "iter_epochs",
    "parked_offset_m",
    "render_epoch",
    "rmc",
    "sentence",
    "sky_view",
    "vtg",
]

KNOTS_PER_MPS = 3600.0 / 1852.0
KMH_PER_MPS = 3.6
_FADE_S = 5.0  # parked jitter fades in after stopping and out before leaving
_GPS_PRNS = range(1, 33)
_GLONASS_PRNS = range(65, 89)

System = Literal["GP", "GL"]


@dataclass(frozen=True, slots=True)
class Satellite:
    """One satellite in view, as GSV and GSA report it."""

    system: System
    prn: int
    elevation_deg: int
    azimuth_deg: int
    snr_db: int
    used: bool


@dataclass(frozen=True, slots=True)
class GnssEpoch:
    """What the receiver reports for one epoch (already rounded to nothing)."""

    utc: datetime
    valid: bool
    lat: float
    lon: float
    alt_msl_m: float
    geoid_sep_m: float
    speed_mps: float
    course_deg: float
    hdop: float
    vdop: float
    pdop: float
    satellites: tuple[Satellite, ...]


@dataclass(frozen=True, slots=True)
class EncodedEpoch:
    """One epoch ready to send: its index, scenario time, UTC, bytes and truth."""

    index: int
    t: float
    utc: datetime
    data: bytes
    state: VehicleState


# --------------------------------------------------------------------------- framing


def checksum(body: str) -> str:
    """XOR of the characters between ``$`` and ``*``, two upper-case hex digits."""
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return f"{value:02X}"


def sentence(talker: str, kind: str, fields: Sequence[str]) -> str:
    """``$TTKKK,f1,f2,...*CS`` (no line end)."""
    body = f"{talker}{kind}," + ",".join(fields)
    return f"${body}*{checksum(body)}"


def encode(sentences: Sequence[str]) -> bytes:
    """The bytes on the wire: every sentence ended by ``\\r\\n``."""
    return "".join(s + "\r\n" for s in sentences).encode("ascii")


# --------------------------------------------------------------------------- fields


def _centiseconds(utc: datetime) -> datetime:
    """Round to the 1/100 s that NMEA carries (carrying into the next day)."""
    shifted = utc + timedelta(microseconds=5000)
    return shifted.replace(microsecond=shifted.microsecond // 10000 * 10000)


def _time(utc: datetime) -> str:
    return f"{utc:%H%M%S}.{utc.microsecond // 10000:02d}"


def _date(utc: datetime) -> str:
    return f"{utc:%d%m%y}"


def _angle(value: float, width: int) -> str:
    units = round(abs(value) * 60 * 100_000)  # 1e-5 arc minutes
    degrees, rest = divmod(units, 60 * 100_000)
    minutes, frac = divmod(rest, 100_000)
    return f"{degrees:0{width}d}{minutes:02d}.{frac:05d}"


def _lat(lat: float) -> tuple[str, str]:
    return _angle(lat, 2), "N" if lat >= 0 else "S"


def _lon(lon: float) -> tuple[str, str]:
    return _angle(lon, 3), "E" if lon >= 0 else "W"


def _course(course: float) -> str:
    return f"{round(course, 2) % 360.0:.2f}"


# --------------------------------------------------------------------------- sentences


def rmc(epoch: GnssEpoch, talker: str = "GP") -> str:
    """Recommended minimum: time, status, position, speed (knots), course, date."""
    utc = _centiseconds(epoch.utc)
    if not epoch.valid:
        fields = [_time(utc), "V", "", "", "", "", "", "", _date(utc), "", "", "N"]
        return sentence(talker, "RMC", fields)
    lat, ns = _lat(epoch.lat)
    lon, ew = _lon(epoch.lon)
    knots = f"{epoch.speed_mps * KNOTS_PER_MPS:.3f}"
    course = _course(epoch.course_deg)
    fields = [_time(utc), "A", lat, ns, lon, ew, knots, course, _date(utc), "", "", "A"]
    return sentence(talker, "RMC", fields)


def vtg(epoch: GnssEpoch, talker: str = "GP") -> str:
    """Course and speed over ground, in knots and km/h."""
    if not epoch.valid:
        return sentence(talker, "VTG", ["", "T", "", "M", "", "N", "", "K", "N"])
    knots = f"{epoch.speed_mps * KNOTS_PER_MPS:.3f}"
    kmh = f"{epoch.speed_mps * KMH_PER_MPS:.3f}"
    return sentence(
        talker, "VTG", [_course(epoch.course_deg), "T", "", "M", knots, "N", kmh, "K", "A"]
    )


def gga(epoch: GnssEpoch, talker: str = "GP") -> str:
    """Fix data: position, quality, satellites used, HDOP, altitude, geoid separation."""
    utc = _centiseconds(epoch.utc)
    if not epoch.valid:
        return sentence(talker, "GGA", [_time(utc), "", "", "", "", "0", "00", "99.99", *[""] * 6])
    lat, ns = _lat(epoch.lat)
    lon, ew = _lon(epoch.lon)
    used = sum(1 for s in epoch.satellites if s.used)
    fields = [
        _time(utc),
        lat,
        ns,
        lon,
        ew,
        "1",
        f"{used:02d}",
        f"{epoch.hdop:.2f}",
        f"{epoch.alt_msl_m:.1f}",
        "M",
        f"{epoch.geoid_sep_m:.1f}",
        "M",
        "",
        "",
    ]
    return sentence(talker, "GGA", fields)


def gsa(epoch: GnssEpoch, talker: str = "GP") -> list[str]:
    """DOP and satellites used: one sentence per constellation (12 PRNs each)."""
    systems: tuple[System, ...] = ("GP", "GL") if talker == "GN" else ("GP",)
    out = []
    for system in systems:
        prns = [f"{s.prn:02d}" for s in epoch.satellites if s.system == system and s.used]
        if not epoch.valid:
            fields = ["A", "1", *[""] * 12, "99.99", "99.99", "99.99"]
        else:
            padded = (prns + [""] * 12)[:12]
            dops = [f"{epoch.pdop:.2f}", f"{epoch.hdop:.2f}", f"{epoch.vdop:.2f}"]
            fields = ["A", "3", *padded, *dops]
        out.append(sentence(talker, "GSA", fields))
    return out


def gsv(epoch: GnssEpoch, talker: str = "GP") -> list[str]:
    """Satellites in view, four per sentence, per constellation (GPGSV, GLGSV)."""
    systems: tuple[System, ...] = ("GP", "GL") if talker == "GN" else ("GP",)
    out = []
    for system in systems:
        sats = [s for s in epoch.satellites if s.system == system] if epoch.valid else []
        total = max(1, math.ceil(len(sats) / 4))
        for part in range(total):
            fields = [str(total), str(part + 1), f"{len(sats):02d}"]
            for sat in sats[part * 4 : part * 4 + 4]:
                fields += [
                    f"{sat.prn:02d}",
                    f"{sat.elevation_deg:02d}",
                    f"{sat.azimuth_deg:03d}",
                    f"{sat.snr_db:02d}",
                ]
            out.append(sentence(system, "GSV", fields))
    return out


def render_epoch(epoch: GnssEpoch, talker: str = "GP", *, with_gsv: bool = True) -> list[str]:
    """All sentences of one epoch, in the order a u-blox receiver sends them."""
    out = [rmc(epoch, talker), vtg(epoch, talker), gga(epoch, talker), *gsa(epoch, talker)]
    if with_gsv:
        out += gsv(epoch, talker)
    return out


# --------------------------------------------------------------------------- receiver model


@functools.lru_cache(maxsize=64)
def sky_view(seed: int, in_view: int, used: int, talker: str) -> tuple[Satellite, ...]:
    """A fixed, seeded sky: which satellites are in view and which are used.

    The highest satellites are the ones used.  With talker GN the satellites
    are split between GPS and GLONASS (GPS gets the odd one).
    """
    rng = random.Random(seed)
    if talker == "GN":
        plan: list[tuple[System, range, int, int]] = [
            ("GP", _GPS_PRNS, in_view - in_view // 2, used - used // 2),
            ("GL", _GLONASS_PRNS, in_view // 2, used // 2),
        ]
    else:
        plan = [("GP", _GPS_PRNS, in_view, used)]
    sats: list[Satellite] = []
    for system, prns, n_view, n_used in plan:
        chosen = sorted(rng.sample(prns, min(n_view, len(prns))))
        sky = [(prn, rng.randint(5, 85), rng.randint(0, 359), rng.randint(-3, 3)) for prn in chosen]
        by_height = sorted(sky, key=lambda s: -s[1])
        used_prns = {s[0] for s in by_height[:n_used]}
        for prn, elevation, azimuth, noise in sky:
            snr = min(50, max(12, round(18 + 28 * math.sin(math.radians(elevation))) + noise))
            sats.append(Satellite(system, prn, elevation, azimuth, snr, prn in used_prns))
    return tuple(sats)


@functools.lru_cache(maxsize=64)
def _wander(seed: int) -> tuple[tuple[float, float, float], ...]:
    """Six seeded (weight, period, phase) terms: three north, three east."""
    rng = random.Random(seed ^ 0x5EED)
    terms = []
    for _axis in range(2):
        weights = [rng.uniform(0.5, 1.0) for _ in range(3)]
        scale = (1 / math.sqrt(2)) / sum(weights)  # |north|, |east| <= A / sqrt(2)
        for w in weights:
            terms.append((w * scale, rng.uniform(40.0, 240.0), rng.uniform(0, 2 * math.pi)))
    return tuple(terms)


def parked_offset_m(seed: int, t: float, amplitude_m: float) -> tuple[float, float]:
    """Slow, bounded position wander of a parked receiver (north, east metres).

    A sum of seeded sinusoids with periods of minutes: a pure function of
    ``t``, so any epoch can be rendered alone, and never further than
    ``amplitude_m`` from the truth.
    """
    if amplitude_m <= 0:
        return 0.0, 0.0
    terms = _wander(seed)
    north = sum(w * math.sin(2 * math.pi * t / p + ph) for w, p, ph in terms[:3])
    east = sum(w * math.sin(2 * math.pi * t / p + ph) for w, p, ph in terms[3:])
    return amplitude_m * north, amplitude_m * east


def gnss_epoch(
    state: VehicleState, gnss: Gnss, utc: datetime, sky: tuple[Satellite, ...]
) -> GnssEpoch:
    """What the receiver reports for a true state: truth, parked jitter, outages."""
    valid = not any(o.start_s <= state.t < o.start_s + o.duration_s for o in gnss.outages)
    lat, lon = state.lat, state.lon
    if gnss.parked_jitter_m > 0 and state.stop_waypoint is not None:
        fade = min(1.0, state.stopped_for_s / _FADE_S, state.stop_remaining_s / _FADE_S)
        north, east = parked_offset_m(gnss.seed, state.t, gnss.parked_jitter_m * fade)
        lat, lon = offset_m(lat, lon, north, east)
    elif gnss.driving_jitter_m > 0:
        # The same slow wander while driving: real GNSS error is correlated
        # over tens of seconds, not white noise from fix to fix.
        north, east = parked_offset_m(gnss.seed + 1, state.t, gnss.driving_jitter_m)
        lat, lon = offset_m(lat, lon, north, east)
    return GnssEpoch(
        utc=utc,
        valid=valid,
        lat=lat,
        lon=lon,
        alt_msl_m=state.alt_m,
        geoid_sep_m=gnss.geoid_separation_m,
        speed_mps=state.speed_mps,
        course_deg=state.course_deg,
        hdop=gnss.hdop,
        vdop=gnss.vdop_value,
        pdop=gnss.pdop_value,
        satellites=sky,
    )


def iter_epochs(
    scenario: Scenario, *, duration_s: float | None = None, loop: bool = False
) -> Iterator[EncodedEpoch]:
    """Every epoch of the drive, in order, at ``gnss.rate_hz``.

    Ends with the route (after the last waypoint's dwell) or after
    ``duration_s`` simulated seconds, whichever is first; with ``loop`` and
    no duration it never ends.  Epoch n is at t = n / rate exactly.
    """
    gnss = scenario.gnss
    drive = build_drive(scenario, loop=loop)
    end = drive.duration if duration_s is None else min(duration_s, drive.duration)
    sky = sky_view(gnss.seed, gnss.satellites_in_view, gnss.satellites_used, gnss.talker)
    rate = gnss.rate_hz
    n = 0
    while True:
        t = n / rate
        if t > end + 1e-9:
            return
        state = state_at(drive, t)
        utc = scenario.start_utc + timedelta(microseconds=round(n * 1_000_000 / rate))
        epoch = gnss_epoch(state, gnss, utc, sky)
        data = encode(render_epoch(epoch, gnss.talker, with_gsv=n % rate == 0))
        yield EncodedEpoch(n, t, utc, data, state)
        n += 1
