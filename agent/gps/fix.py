"""The one typed GNSS sample every GPS source produces.

A ``Fix`` is what one receiver epoch says, after the sentences of that epoch
(RMC, GGA, GSA, VTG, GSV ...) have been combined.  Sources (serial, TCP, file,
gpsd, Termux) produce it; the sampler, detectors and clock consume it.  It is
plain data: no I/O, no wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum


class FixMode(IntEnum):
    """Fix dimension, numbered as gpsd and NMEA GSA do."""

    UNKNOWN = 0
    NO_FIX = 1
    FIX_2D = 2
    FIX_3D = 3


@dataclass(frozen=True, slots=True)
class Fix:
    """One receiver epoch.

    ``time`` is the receiver's UTC (tz-aware) or ``None`` when the receiver
    gave no usable date and time.  ``mono`` is the local monotonic clock
    (seconds) when the epoch was completed: intervals are measured on it,
    never on ``time``.  Position fields are ``None`` when ``mode`` is below
    2D.  Speed is m/s over ground, course degrees true.
    """

    time: datetime | None
    mono: float
    mode: FixMode = FixMode.UNKNOWN
    lat: float | None = None
    lon: float | None = None
    alt_msl: float | None = None  # metres above mean sea level (GGA)
    geoid_sep: float | None = None  # metres, geoid above WGS84 ellipsoid (GGA)
    speed: float | None = None  # m/s
    course: float | None = None  # degrees true, 0..360
    quality: int | None = None  # GGA fix quality: 0 invalid, 1 GPS, 2 DGPS, 4/5 RTK, 6 DR
    sats_used: int | None = None
    sats_in_view: int | None = None
    hdop: float | None = None
    pdop: float | None = None
    vdop: float | None = None

    @property
    def has_position(self) -> bool:
        return self.mode >= FixMode.FIX_2D and self.lat is not None and self.lon is not None

    @property
    def alt_hae(self) -> float | None:
        """Height above the WGS84 ellipsoid, when both parts are known."""
        if self.alt_msl is None or self.geoid_sep is None:
            return None
        return self.alt_msl + self.geoid_sep
