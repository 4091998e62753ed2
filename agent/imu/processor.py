"""IMU samples and motion context in, harsh-driving and impact detections out.

Pure: every time is seconds on the IMU samples' clock (the monotonic clock
live, the file's clock in replay); the caller converts to UTC at the edge.

* Impacts come straight from the raw samples (no calibration needed).
* Harsh events come from the vehicle-frame acceleration once the mounting
  is calibrated (or at once for earth-frame data, whose vertical is known).
* Until then, and on a device without an IMU, the GNSS/OBD speed derivative
  and course change give longitudinal and cornering events, marked with
  ``source`` gnss/obd and ``confidence`` low.  Those run on the reports'
  own UTC (``utc_s``), so their times are Unix seconds, not sample-clock.  When the IMU takes over the
  fallback goes quiet, so one manoeuvre is never reported twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.imu.calibration import MountingCalibrator
from agent.imu.earth import EarthFrameAligner
from agent.imu.gnss_harsh import GnssHarshDetector
from agent.imu.harsh import HarshConfig, HarshDetection, HarshDetector
from agent.imu.impact import ImpactDetection, ImpactDetector, ImpactTrace
from agent.imu.sample import ImuSample, VehicleAccel

Detection = HarshDetection | ImpactDetection | ImpactTrace
OBD_FRESH_S = 3.0  # OBD speed this recent makes GNSS-speed longitudinal events redundant


@dataclass
class ImuCounts:
    samples: int = 0
    fixes: int = 0
    harsh: int = 0
    fallback: int = 0
    impacts: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class ImuProcessor:
    """Feed samples (``feed_imu``) and speeds (``feed_motion``); get detections."""

    def __init__(
        self,
        harsh: HarshConfig | None = None,
        *,
        impact_g: float = 2.5,
        earth_frame: bool = False,
        calibrator: MountingCalibrator | None = None,
    ) -> None:
        self.config = harsh or HarshConfig()
        self.harsh = HarshDetector(self.config)
        self.fallback = GnssHarshDetector(self.config)
        # OBD wheel speed (2 Hz, no course) beats GNSS for longitudinal events.
        self.fallback_obd = GnssHarshDetector(self.config, source="obd")
        self._obd_speed_t: float | None = None
        self.impact = ImpactDetector(impact_g)
        self.earth = EarthFrameAligner() if earth_frame else None
        self.calibrator = None if earth_frame else (calibrator or MountingCalibrator())
        self.counts = ImuCounts()
        self._imu_seen = False

    @property
    def imu_ready(self) -> bool:
        """True when IMU harsh detection runs (calibrated, or earth-frame data)."""
        if not self._imu_seen:
            return False
        return self.earth is not None or (
            self.calibrator is not None and self.calibrator.state == "calibrated"
        )

    def feed_motion(
        self,
        t: float,
        speed_mps: float | None,
        course_deg: float | None,
        source: str = "gnss",
        *,
        utc_s: float | None = None,
    ) -> list[Detection]:
        """A GNSS fix (or OBD speed) at sample-clock time ``t``.

        ``utc_s`` is the report's own time (receiver UTC, Unix seconds): the
        fallback detectors differentiate speed on it, not on when the fix
        happened to arrive, and their detections carry times on it.
        """
        if speed_mps is None:
            return []
        own = t if utc_s is None else utc_s
        self.counts.fixes += 1
        self.harsh.feed_speed(t, speed_mps, "obd" if source == "obd" else "gnss")
        if self.calibrator is not None:
            self.calibrator.feed_motion(t, speed_mps, source, course_deg=course_deg)
        if source == "obd":
            self._obd_speed_t = t
            found = self.fallback_obd.feed(own, speed_mps, None)
        else:
            found = self.fallback.feed(own, speed_mps, course_deg)
            if self._obd_speed_t is not None and t - self._obd_speed_t <= OBD_FRESH_S:
                # Longitudinal ones come from OBD speed meanwhile: not twice.
                found = [d for d in found if d.kind == "harsh_cornering"]
        if self.imu_ready:
            return []  # the IMU sees the same manoeuvres, better
        return self._count(found, fallback=True)

    def feed_engine(self, t: float, running: bool) -> None:
        if self.calibrator is not None:
            self.calibrator.feed_engine(t, running)

    def feed_imu(self, sample: ImuSample) -> list[Detection]:
        self._imu_seen = True
        self.counts.samples += 1
        out: list[Detection] = list(self.impact.feed(sample))
        vehicle: list[VehicleAccel] = []
        if self.earth is not None:
            vehicle = self.earth.feed(sample)
        elif self.calibrator is not None:
            self.calibrator.feed(sample)
            v = self.calibrator.to_vehicle(sample)
            if v is not None:
                vehicle = [v]
        for v in vehicle:
            out.extend(self.harsh.feed(v))
        return self._count(out, fallback=False)

    def flush(self) -> list[Detection]:
        """End of a recording: close what is still open."""
        out: list[Detection] = list(self.impact.flush())
        if self.earth is not None:
            for v in self.earth.flush():
                out.extend(self.harsh.feed(v))
        out.extend(self.harsh.flush())
        fallback = self.fallback.flush() + self.fallback_obd.flush()
        if not self.imu_ready:
            out.extend(fallback)
        return self._count(out, fallback=False)

    def _count(self, found: list[Any], *, fallback: bool) -> list[Detection]:
        c = self.counts
        for d in found:
            if isinstance(d, HarshDetection):
                c.fallback += fallback
                c.harsh += not fallback
                c.by_kind[d.kind] = c.by_kind.get(d.kind, 0) + 1
            elif isinstance(d, ImpactDetection):
                c.impacts += 1
        return list(found)

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "samples": self.counts.samples,
            "harsh": dict(self.counts.by_kind),
            "impacts": self.counts.impacts,
            "detection": "imu" if self.imu_ready else "gnss (lower confidence)",
        }
        if self.calibrator is not None:
            out["calibration"] = self.calibrator.status()
        return out
