"""Engine state as the OBD reader will report it.

Defined before the reader exists so that trip and idle detection can be
written and tested against it now.  Phones never produce these: without
samples the engine is ``UNKNOWN`` and detectors fall back to GNSS alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class EngineState(StrEnum):
    """Ignition as far as the vehicle bus tells; UNKNOWN when it cannot."""

    OFF = "off"
    RUNNING = "running"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class EngineSample:
    """One OBD reading.

    ``time`` is UTC (tz-aware), on the same time base as GNSS fixes, so
    detectors can merge both streams; ``mono`` is the local monotonic clock
    (seconds).  ``rpm`` and ``fuel_rate_lph`` (litres per hour, PID 0x5E)
    are ``None`` when the vehicle does not report them.
    """

    time: datetime
    mono: float
    state: EngineState
    rpm: float | None = None
    fuel_rate_lph: float | None = None
