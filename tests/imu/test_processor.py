"""The IMU processor's choice of source: IMU, else OBD speed, else GNSS; never twice."""

from __future__ import annotations

from agent.imu.harsh import HarshDetection
from agent.imu.processor import ImuProcessor


def speed_at(t: float) -> float:
    """50 km/h, a hard brake to 10 km/h between 20 and 22 s (5.6 m/s²), then 10 km/h."""
    if t < 20:
        return 50 / 3.6
    if t < 22:
        return (50 - 20 * (t - 20)) / 3.6
    return 10 / 3.6


def harsh(found: list[object]) -> list[HarshDetection]:
    return [d for d in found if isinstance(d, HarshDetection)]


def test_without_imu_obd_speed_reports_the_brake_once() -> None:
    proc = ImuProcessor()
    found: list[object] = []
    for k in range(80):  # OBD at 2 Hz, GNSS at 1 Hz, same 40 s
        t = k / 2
        found += proc.feed_motion(t, speed_at(t), None, "obd")
        if k % 2 == 0:
            found += proc.feed_motion(t + 0.01, speed_at(t + 0.01), 90.0, "gnss")
    found += proc.flush()
    brakes = harsh(found)
    assert [(d.kind, d.source, d.confidence) for d in brakes] == [("harsh_braking", "obd", "low")]
    assert 19.0 <= brakes[0].t_start <= 21.0


def test_gnss_alone_reports_it_when_there_is_no_obd() -> None:
    proc = ImuProcessor()
    found: list[object] = []
    for t in range(40):
        found += proc.feed_motion(float(t), speed_at(t), 90.0, "gnss")
    found += proc.flush()
    assert [(d.kind, d.source) for d in harsh(found)] == [("harsh_braking", "gnss")]
