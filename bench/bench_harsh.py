"""Benchmark: harsh-event detection on real labelled phone drives, and its throughput.

    .venv/bin/python bench/bench_harsh.py [--data ../shared/data/driving/driverBehaviorDataset]

The drives are the driverBehaviorDataset (Júnior et al., PLoS ONE 2017): a
2011 Honda Civic, a Motorola XT1058 fixed on the windscreen, ~51 Hz, in the
earth frame (Android ``_terra`` files), no GPS.  Trips 17 and 20 have sensor
files.  Each trip is replayed through the earth-frame path
(``EarthFrameAligner`` -> ``HarshDetector``, default ``van`` thresholds,
speed unknown) exactly as the agent would run it.

Label times: ``start_s``/``end_s`` count from ``firstCollectionUptimeNanos``
(viagem.json), i.e. ``start_uptimeNanos = first + start_s·1e9``; the bench
checks this against labels_normalized.csv and checks that the peak
horizontal linear acceleration it measures in each labelled interval is the
one the label file states (so the intervals sit on the signal, not shifted).

Matching rule (stated in the output):
* a detection is a hit when its [t_start, t_end] overlaps a labelled
  interval of the same class (braking, acceleration, left turn, right
  turn; cornering direction must match the turn's side);
* a detection overlapping a lane-change interval is not scored (a lane
  change is a real lateral manoeuvre but not a turn; its count is printed);
* any other detection is a false alarm: overlapping a non_aggressive label,
  a label of another class, or no label at all;
* per class: labelled = intervals, hits = intervals with at least one
  matching detection, misses = the rest, false alarms = non-matching
  detections; precision = matching detections / all scored detections;
  recall = hits / labelled.

Figures are printed, not asserted; tests/imu/test_real_drives.py asserts
them and README records them.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.imu.csv_file import android_origin_ns, read_android_terra  # noqa: E402
from agent.imu.earth import EarthConfig, EarthFrameAligner  # noqa: E402
from agent.imu.harsh import HarshConfig, HarshDetection, HarshDetector  # noqa: E402
from agent.imu.sample import ImuSample, VehicleAccel  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "driving" / "driverBehaviorDataset"
CLASSES = ("acceleration", "braking", "left turn", "right turn")
LABEL_CLASS = {
    "aggressive_acceleration": "acceleration",
    "aggressive_braking": "braking",
    "aggressive_left_turn": "left turn",
    "aggressive_right_turn": "right turn",
}
RULE = (
    "hit = detection overlapping a labelled interval of the same class (turn side must match); "
    "detections on lane changes not scored; any other detection (non_aggressive, other class, "
    "no label) = false alarm"
)


@dataclass(frozen=True, slots=True)
class Label:
    trip: int
    event: str
    start_s: float
    end_s: float
    start_ns: int
    peak_horiz: float | None  # the label file's peak horizontal linear acceleration


def det_class(d: HarshDetection) -> str:
    if d.kind == "harsh_acceleration":
        return "acceleration"
    if d.kind == "harsh_braking":
        return "braking"
    return f"{d.direction} turn"


def load_labels(root: Path) -> dict[int, list[Label]]:
    out: dict[int, list[Label]] = {}
    with open(root / "labels_normalized.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            peak = r.get("peak_horiz_linacc_ms2") or ""
            lab = Label(
                int(r["trip"]),
                r["event"],
                float(r["start_s"]),
                float(r["end_s"]),
                int(r["start_uptimeNanos"]),
                float(peak) if peak else None,
            )
            out.setdefault(lab.trip, []).append(lab)
    return out


def sensor_trips(root: Path) -> list[int]:
    return sorted(
        int(p.name)
        for p in (root / "data").iterdir()
        if (p / "acelerometro_terra.csv").exists() and p.name.isdigit()
    )


def check_alignment(root: Path, trip: int, labels: list[Label]) -> tuple[int, float]:
    """Largest label-time mismatch (ns) and peak mismatch (m/s²) for one trip.

    The label's uptime bound must be first + start_s; the peak of
    sqrt(x² + y²) of the linear acceleration inside [start_s, end_s] must be
    the label file's ``peak_horiz_linacc_ms2``.
    """
    d = root / "data" / str(trip)
    first = android_origin_ns(d)
    assert first is not None, f"trip {trip}: no viagem.json"
    ns_err = max(abs(lab.start_ns - (first + round(lab.start_s * 1e9))) for lab in labels)
    rows: list[tuple[float, float]] = []
    with open(d / "aceleracaoLinear_terra.csv", newline="", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            f = line.split(",")
            rows.append(((int(f[1]) - first) / 1e9, math.hypot(float(f[2]), float(f[3]))))
    peak_err = 0.0
    for lab in labels:
        if lab.peak_horiz is None:
            continue
        inside = [h for t, h in rows if lab.start_s <= t <= lab.end_s]
        peak_err = max(peak_err, abs(max(inside) - lab.peak_horiz))
    return ns_err, peak_err


def replay(
    samples: list[ImuSample],
    harsh: HarshConfig | None = None,
    earth: EarthConfig | None = None,
) -> tuple[list[HarshDetection], list[VehicleAccel]]:
    """The earth-frame path as the agent runs it: aligner -> detector, no speed."""
    aligner = EarthFrameAligner(earth)
    det = HarshDetector(harsh)
    vehicle: list[VehicleAccel] = []
    out: list[HarshDetection] = []
    for s in samples:
        for v in aligner.feed(s):
            vehicle.append(v)
            out.extend(det.feed(v))
    for v in aligner.flush():
        vehicle.append(v)
        out.extend(det.feed(v))
    out.extend(det.flush())
    return out, vehicle


@dataclass
class ClassScore:
    labelled: int = 0
    hits: int = 0
    true_dets: int = 0
    false_alarms: int = 0

    @property
    def misses(self) -> int:
        return self.labelled - self.hits

    @property
    def precision(self) -> float:
        n = self.true_dets + self.false_alarms
        return self.true_dets / n if n else 0.0

    @property
    def recall(self) -> float:
        return self.hits / self.labelled if self.labelled else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Score:
    classes: dict[str, ClassScore] = field(
        default_factory=lambda: {c: ClassScore() for c in CLASSES}
    )
    non_aggressive: int = 0  # non_aggressive labels
    non_aggressive_alarms: int = 0  # detections overlapping one
    lane_changes: int = 0
    lane_change_detections: int = 0
    false_alarm_list: list[tuple[int, str, float, float, float, str]] = field(default_factory=list)
    missed_list: list[tuple[int, str, float, float]] = field(default_factory=list)

    def add(self, trip: int, dets: list[HarshDetection], labels: list[Label]) -> None:
        def overlaps(d: HarshDetection, lab: Label) -> bool:
            return d.t_start <= lab.end_s and d.t_end >= lab.start_s

        for lab in labels:
            cls = LABEL_CLASS.get(lab.event)
            if lab.event == "non_aggressive":
                self.non_aggressive += 1
            elif "lane_change" in lab.event:
                self.lane_changes += 1
            if cls is None:
                continue
            self.classes[cls].labelled += 1
            if any(det_class(d) == cls and overlaps(d, lab) for d in dets):
                self.classes[cls].hits += 1
            else:
                self.missed_list.append((trip, lab.event, lab.start_s, lab.end_s))
        for d in dets:
            cls = det_class(d)
            over = [lab for lab in labels if overlaps(d, lab)]
            if any("lane_change" in lab.event for lab in over):
                self.lane_change_detections += 1
                continue
            if any(LABEL_CLASS.get(lab.event) == cls for lab in over):
                self.classes[cls].true_dets += 1
                continue
            self.classes[cls].false_alarms += 1
            if any(lab.event == "non_aggressive" for lab in over):
                self.non_aggressive_alarms += 1
            what = ",".join(lab.event for lab in over) or "no label"
            self.false_alarm_list.append((trip, cls, d.t_start, d.t_end, d.peak, what))


def table(score: Score) -> list[str]:
    lines = [
        f"{'class':<13} {'labelled':>8} {'hits':>5} {'misses':>6} {'false al.':>9} "
        f"{'precision':>9} {'recall':>6} {'F1':>5}"
    ]
    for c in CLASSES:
        s = score.classes[c]
        lines.append(
            f"{c:<13} {s.labelled:>8} {s.hits:>5} {s.misses:>6} {s.false_alarms:>9} "
            f"{s.precision:>9.2f} {s.recall:>6.2f} {s.f1:>5.2f}"
        )
    lines.append(
        f"non_aggressive: {score.non_aggressive} labelled, {score.non_aggressive_alarms} alarms; "
        f"lane changes: {score.lane_changes} labelled, {score.lane_change_detections} "
        "detections on them (not scored)"
    )
    return lines


def throughput(samples: list[ImuSample], repeat: int = 1) -> tuple[float, float]:
    """Samples/s of the harsh detector alone and of aligner + detector."""
    _, vehicle = replay(samples)
    t0 = time.perf_counter()
    for _ in range(repeat):
        det = HarshDetector()
        for v in vehicle:
            det.feed(v)
    det_rate = repeat * len(vehicle) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(repeat):
        replay(samples)
    full_rate = repeat * len(samples) / (time.perf_counter() - t0)
    return det_rate, full_rate


@dataclass
class Run:
    score: Score
    per_trip: dict[int, Score]
    samples: dict[int, list[ImuSample]]
    alignment: dict[int, tuple[int, float]]


def evaluate(
    root: Path = DEFAULT_DATA, harsh: HarshConfig | None = None, earth: EarthConfig | None = None
) -> Run:
    labels = load_labels(root)
    total, per_trip = Score(), {}
    samples: dict[int, list[ImuSample]] = {}
    alignment = {}
    for trip in sensor_trips(root):
        samples[trip], _ = read_android_terra(root / "data" / str(trip))
        alignment[trip] = check_alignment(root, trip, labels[trip])
        dets, _ = replay(samples[trip], harsh, earth)
        total.add(trip, dets, labels[trip])
        per_trip[trip] = Score()
        per_trip[trip].add(trip, dets, labels[trip])
    return Run(total, per_trip, samples, alignment)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--list", action="store_true", help="list false alarms and misses")
    args = ap.parse_args()
    run = evaluate(args.data)
    for trip, (ns_err, peak_err) in run.alignment.items():
        n = len(run.samples[trip])
        span = run.samples[trip][-1].t - run.samples[trip][0].t
        print(
            f"trip {trip}: {n} samples, {span:.0f} s, {n / span:.1f} Hz; labels vs "
            f"firstCollectionUptimeNanos: {ns_err} ns off, peak |a_h| within {peak_err:.3f} m/s²"
        )
    print(f"matching rule: {RULE}")
    print("earth-frame path, van defaults, speed unknown (no GPS in the data)")
    for line in table(run.score):
        print(line)
    for trip, sc in run.per_trip.items():
        print(f"-- trip {trip}")
        for line in table(sc)[1:5]:
            print(line)
    if args.list:
        for fa in run.score.false_alarm_list:
            print(
                f"false alarm: trip {fa[0]} {fa[1]} {fa[2]:.1f}-{fa[3]:.1f} s peak {fa[4]:.2f} ({fa[5]})"
            )
        for m in run.score.missed_list:
            print(f"missed: trip {m[0]} {m[1]} {m[2]:.1f}-{m[3]:.1f} s")
    # Trips one after the other on one clock (each starts near t = 0): joined
    # as they are, the aligner would drop the second as out of order.
    allsamples: list[ImuSample] = []
    for trip in sorted(run.samples):
        shift = allsamples[-1].t + 1.0 if allsamples else 0.0
        allsamples += [replace(s, t=s.t + shift) for s in run.samples[trip]]
    det_rate, full_rate = throughput(allsamples)
    print(
        f"throughput: harsh detector {det_rate:,.0f} samples/s = {det_rate / 100:,.0f}x realtime "
        f"at 100 Hz; earth-frame aligner + detector {full_rate:,.0f} samples/s = "
        f"{full_rate / 100:,.0f}x realtime at 100 Hz"
    )
    live_rate, n = live_throughput()
    print(
        f"throughput, live path (mounting calibrator + impact + harsh, simulated urban drive, "
        f"{n:,} samples at 100 Hz): {live_rate:,.0f} samples/s = {live_rate / 100:,.0f}x realtime"
    )
    return 0


def live_throughput(seconds: float = 600.0) -> tuple[float, int]:
    """The agent's per-sample IMU path on a simulated drive in a tilted mounting."""
    from agent.imu.processor import ImuProcessor
    from simulators.imu_out import iter_imu
    from simulators.route import build_drive, state_at
    from simulators.scenario import load_scenario

    scenario = load_scenario("urban_delivery")
    samples = list(iter_imu(scenario, rate_hz=100, duration_s=seconds))
    drive = build_drive(scenario)
    proc = ImuProcessor()
    t0 = time.perf_counter()
    next_fix = 0.0
    for s in samples:
        if s.t >= next_fix:  # 1 Hz GNSS speed, as live
            st = state_at(drive, next_fix)
            proc.feed_motion(next_fix, st.speed_mps, st.course_deg)
            next_fix += 1.0
        proc.feed_imu(s)
    return len(samples) / (time.perf_counter() - t0), len(samples)


if __name__ == "__main__":
    sys.exit(main())
