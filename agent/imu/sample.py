"""One IMU sample, as every source produces it and every detector reads it.

Units are SI in the sensor's own frame: acceleration in m/s² *including*
gravity (a sensor lying still reads about +9.81 on its up axis), angular
rate in rad/s (right-handed, counter-clockwise positive).  ``t`` is seconds
on the sample's own clock (the monotonic clock live, the file's time in
replay), so detectors never read a clock and a replay gives the live events.
"""

from __future__ import annotations

from dataclasses import dataclass

GRAVITY = 9.80665  # m/s², standard gravity (1 g)


@dataclass(frozen=True, slots=True)
class ImuSample:
    t: float
    ax: float
    ay: float
    az: float
    gx: float | None = None
    gy: float | None = None
    gz: float | None = None

    @property
    def has_gyro(self) -> bool:
        return self.gx is not None and self.gy is not None and self.gz is not None


@dataclass(frozen=True, slots=True)
class VehicleAccel:
    """Acceleration in the vehicle frame: x forward, y left, z up (ISO 8855), gravity removed.

    ``yaw_rate`` is rad/s about z (positive turning left), None without a gyro.
    """

    t: float
    lon: float  # + accelerating, - braking
    lat: float  # + towards the left (a left turn's centripetal acceleration)
    vert: float
    yaw_rate: float | None = None
