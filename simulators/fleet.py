"""A simulated fleet: N vans publishing through the agent's own code path.

For the bridge's scale-out test, its ingest benchmark and the live-view demo.
Each van drives a variant of one scenario (moved a few hundred metres and
started at its own point of the round, so vans spread out on a map but drive
real streets at real speeds), and its fixes go through what the agent runs:
``Pipeline`` to records, a per-van SQLite ``Outbox`` (seq numbers, epoch),
a per-van ``Uplink`` (paho, QoS 1, rows deleted on PUBACK), retained
birth and will.  One asyncio loop carries every van; only the GPS receiver
and the NMEA parsing are skipped (fixes are built from the route's truth),
which keeps 50 vans light enough for a 2-core machine.

``FleetResult`` counts what entered each outbox, so a test can expect
exactly those ``(device, epoch, seq)`` at the other end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.buffer.outbox import Outbox, OutboxError
from agent.clock import Clock
from agent.config import AgentConfig, MqttConfig
from agent.geofence.model import ZoneSet
from agent.gps.fix import Fix, FixMode
from agent.messages import EventData, Stream, record_body
from agent.obd.state import EngineSample, EngineState
from agent.pipeline import ImuClock, Output, Pipeline, geofence_detector
from agent.runtime import started_event, status_json
from agent.uplink import Uplink
from simulators.args import positive
from simulators.ecu import engine_schedule
from simulators.nmea_out import gnss_epoch
from simulators.route import Drive, build_drive, offset_m, state_at
from simulators.scenario import Gnss, Scenario, load_scenario

__all__ = ["DeviceResult", "FleetResult", "Variant", "main", "run_fleet", "run_fleet_async"]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # low-discrepancy spread of offsets and phases
_COMMIT_TICK_S = 0.1


@dataclass(frozen=True, slots=True)
class Variant:
    """How van ``number`` differs from the scenario: where it is, and where in the round.

    A pure function of the number (not of the fleet's size), so van 7 drives
    the same track in a fleet of 5 and one of 50.
    """

    number: int
    north_m: float
    east_m: float
    phase_s: float  # the scenario second the van's drive starts at

    @classmethod
    def of(cls, number: int, lap_s: float) -> Variant:
        angle = math.radians(number * 137.508)  # golden angle: no two vans line up
        radius = 100.0 + 400.0 * ((number * _GOLDEN) % 1.0)
        phase = ((number * (1.0 - _GOLDEN)) % 1.0) * lap_s
        return cls(number, radius * math.cos(angle), radius * math.sin(angle), phase)

    def place(self, lat: float, lon: float) -> tuple[float, float]:
        """A scenario position moved to this van's part of the map."""
        return offset_m(lat, lon, self.north_m, self.east_m)

    def scenario_s(self, ts: datetime, start_utc: datetime) -> float:
        """The scenario second a fix of this van stamped ``ts`` shows."""
        return self.phase_s + (ts - start_utc).total_seconds()


def variant_fixes(
    scenario: Scenario, drive: Drive, v: Variant, start_utc: datetime, count: int
) -> Iterator[Fix]:
    """The van's receiver output: the route's truth, moved, with the scenario's jitter and outages.

    ``mono`` is seconds since the van's start (the agent's monotonic clock).
    """
    rate = scenario.gnss.rate_hz
    gnss: Gnss = scenario.gnss.model_copy(update={"seed": scenario.gnss.seed + v.number})
    for n in range(count):
        elapsed = n / rate
        utc = start_utc + timedelta(microseconds=round(n * 1_000_000 / rate))
        epoch = gnss_epoch(state_at(drive, v.phase_s + elapsed), gnss, utc, ())
        if not epoch.valid:
            yield Fix(time=utc, mono=elapsed, mode=FixMode.NO_FIX, quality=0, sats_used=0)
            continue
        lat, lon = v.place(epoch.lat, epoch.lon)
        yield Fix(
            time=utc,
            mono=elapsed,
            mode=FixMode.FIX_3D,
            lat=lat,
            lon=lon,
            alt_msl=epoch.alt_msl_m,
            geoid_sep=epoch.geoid_sep_m,
            speed=epoch.speed_mps,
            course=epoch.course_deg,
            quality=1,
            sats_used=gnss.satellites_used,
            sats_in_view=gnss.satellites_in_view,
            hdop=epoch.hdop,
            pdop=epoch.pdop,
            vdop=epoch.vdop,
        )


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class DeviceResult:
    """What one van put into its outbox in this run, and whether it all left."""

    device: str
    epoch: str
    first_seq: int
    last_seq: int  # highest seq; first_seq..last_seq are exactly this run's records
    records: dict[str, int]  # per stream
    fixes: int
    outbox_empty: bool = False
    dropped: int = 0
    # The buffer's caps at work: what they removed, the most the outbox held,
    # and what waited per stream when generation ended (speedup None).
    trimmed: dict[str, int] = field(default_factory=dict)
    peak_used_mb: float = 0.0
    backlog: dict[str, int] = field(default_factory=dict)
    north_m: float = 0.0
    east_m: float = 0.0
    phase_s: float = 0.0

    def keys(self) -> set[tuple[str, str, int]]:
        """Every ``(device, epoch, seq)`` the van sent in this run."""
        return {(self.device, self.epoch, s) for s in range(self.first_seq, self.last_seq + 1)}


@dataclass(slots=True)
class FleetResult:
    devices: list[DeviceResult]
    start_utc: datetime
    generate_seconds: float = 0.0
    deliver_seconds: float = 0.0  # uplinks started (or release began) until every outbox empty
    all_delivered: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_records(self) -> int:
        return sum(sum(d.records.values()) for d in self.devices)

    def to_json(self) -> dict[str, Any]:
        total, secs = self.total_records, self.deliver_seconds
        return {
            "devices": len(self.devices),
            "total_records": total,
            "records": {
                s: sum(d.records.get(s, 0) for d in self.devices) for s in ("telemetry", "events")
            },
            "start_utc": self.start_utc.isoformat(),
            "generate_seconds": round(self.generate_seconds, 3),
            "deliver_seconds": round(secs, 3),
            "records_per_second": round(total / secs, 1) if secs > 0 else None,
            "all_delivered": self.all_delivered,
            **self.extra,
            "per_device": [asdict(d) for d in self.devices],
        }


# --------------------------------------------------------------------------- one van


class _Van:
    """The agent's data path for one device, wired as agent.runtime wires it."""

    def __init__(
        self,
        cfg: AgentConfig,
        v: Variant,
        start_utc: datetime,
        engine: tuple[list[tuple[float, float]], float] | None = None,
    ) -> None:
        self.cfg = cfg
        self.variant = v
        # (running intervals in scenario seconds, lap length): the OBD adapter's
        # engine state, so idles and engine-off trip ends happen as on a real van.
        self.engine = engine
        self.outbox = Outbox(
            cfg.buffer.path,
            cfg.device.id,
            commit_interval_s=cfg.buffer.commit_interval_s,
            caps=cfg.buffer.caps(),
        )
        self.first_seq = self.outbox.last_seq + 1
        self.counts: dict[str, int] = {"telemetry": 0, "events": 0}
        self.fixes = 0
        self.peak_used = 0
        self.backlog: dict[str, int] = {}
        self.clock = Clock("system")
        self.pipeline = Pipeline(
            cfg.sampler,
            geofence=geofence_detector(cfg.geofence, ZoneSet(version=0, zones=())),
            trips=cfg.trips,
            # A van without an IMU: the same GNSS harsh fallback as the agent's,
            # minus the mounting calibrator, which never calibrates without IMU
            # samples and costs more per fix the longer the drive.
            imu=cfg.imu.processor(earth_frame=True),
            imu_clock=ImuClock(
                of_fix=lambda f: f.mono,
                utc=lambda t: start_utc + timedelta(seconds=t),
                of_utc=lambda ts: (ts - start_utc).total_seconds(),
            ),
        )
        self.uplink = Uplink(
            cfg.mqtt,
            cfg.device.id,
            self.outbox,
            self.clock,
            birth=lambda: self.status("online"),
            will=lambda: self.status("offline"),
            rng=random.Random(v.number),
        )
        # The agent's first event, as agent.runtime makes it.
        started = started_event(cfg, start_utc, "fleet")
        self.emit("events", started, urgent=False)

    def status(self, state: str) -> str:
        """Birth and will as agent.runtime builds them (health: what a fleet van has)."""
        health: dict[str, Any] = {}
        if state == "online":  # built on the loop; the will on paho's thread reads no SQL
            health = {
                "clock": self.clock.basis,
                "rejected_fixes": self.pipeline.rejected,
                "outbox": {**self.outbox.depth(), "dropped": self.outbox.dropped},
                "outbox_error": self.outbox.last_error,
                "uplink": self.uplink.status(),
            }
        return status_json(self.cfg, self.outbox, self.clock, state, health)

    def emit(self, stream: Stream, record: Any, urgent: bool) -> None:
        """agent.runtime's ``_emit``, counting what enters the outbox."""
        priority = isinstance(record, EventData) and record.type == "impact"
        self.outbox.add(stream, record_body(record), priority=priority, ts=record.ts.timestamp())
        self.counts[stream] += 1
        if urgent and self.outbox.commit():
            self.uplink.wake()

    def feed(self, fix: Fix, live: bool) -> None:
        self.fixes += 1
        outputs: list[Output] = []
        if self.engine is not None and fix.time is not None:
            intervals, lap_s = self.engine
            s = (self.variant.phase_s + fix.mono) % lap_s
            running = any(a <= s < b for a, b in intervals)
            state = EngineState.RUNNING if running else EngineState.OFF
            sample = EngineSample(fix.time, fix.mono, state, rpm=780.0 if running else 0.0)
            outputs.extend(self.pipeline.feed_engine(sample))
        outputs.extend(self.pipeline.feed_fix(fix))
        for stream, record in outputs:
            self.emit(stream, record, urgent=live and stream == "events")
        if not live and self.fixes % 600 == 0:
            self.commit()  # ten minutes of drive: the caps act as they would live

    def commit(self) -> None:
        self.outbox.commit()
        self.peak_used = max(self.peak_used, self.outbox.used_bytes())

    def result(self) -> DeviceResult:
        depth = self.outbox.depth()
        v = self.variant
        return DeviceResult(
            device=self.cfg.device.id,
            epoch=self.outbox.epoch,
            first_seq=self.first_seq,
            last_seq=self.outbox.last_seq,
            records=dict(self.counts),
            fixes=self.fixes,
            outbox_empty=not any(depth.values()),
            dropped=self.outbox.dropped,
            trimmed=dict(self.outbox.trimmed),
            peak_used_mb=round(self.peak_used / 1048576, 3),
            backlog=self.backlog,
            north_m=round(v.north_m, 1),
            east_m=round(v.east_m, 1),
            phase_s=round(v.phase_s, 1),
        )


def _config(
    device: str,
    workdir: Path,
    host: str,
    port: int,
    prefix: str,
    mqtt: Mapping[str, Any],
    buffer: Mapping[str, Any],
) -> AgentConfig:
    """The agent's defaults, with this van's id, outbox and broker."""
    return AgentConfig.model_validate(
        {
            "device": {"id": device},
            "buffer": {"path": workdir / device / "outbox.db", **buffer},
            "mqtt": {"host": host, "port": port, "topic_prefix": prefix, **mqtt},
        }
    )


# --------------------------------------------------------------------------- the fleet


async def _until(cond: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll)
    return True


async def _committer(vans: list[_Van]) -> None:
    """agent.runtime's committer for every van: group commits, deletes of acked rows."""
    while True:
        await asyncio.sleep(_COMMIT_TICK_S)
        for van in vans:
            if van.outbox.commit_due() and van.outbox.commit():
                van.uplink.wake()


async def _release(vans: list[_Van], fixes: list[Iterator[Fix]], steps: int, pace: float) -> None:
    """Feed every van's fix n at ``n * pace`` seconds after the start (the live demo)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for n in range(steps):
        await asyncio.sleep(max(0.0, t0 + n * pace - loop.time()))
        for van, it in zip(vans, fixes, strict=True):
            van.feed(next(it), live=True)


@contextlib.contextmanager
def _quiet_uplinks() -> Iterator[None]:
    """While the fleet stops, each van's own clean disconnect is not worth a warning."""
    logger = logging.getLogger("agent.uplink")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _empty(van: _Van) -> bool:
    return not any(van.outbox.depth().values())


async def run_fleet_async(
    host: str,
    port: int,
    devices: int,
    workdir: Path,
    *,
    scenario: str = "urban_delivery",
    prefix: str = "fleet",
    speedup: float | None = None,
    until_delivered_timeout: float = 120.0,
    id_format: str = "van-{:03d}",
    first_number: int = 1,
    minutes: float | None = None,
    max_fixes: int | None = None,
    start_utc: datetime | None = None,
    connect_timeout: float = 30.0,
    mqtt: Mapping[str, Any] | None = None,
    buffer: Mapping[str, Any] | None = None,
    engine: bool = True,
) -> FleetResult:
    """Drive ``devices`` vans and publish until every outbox is empty (or the timeout).

    ``speedup=None`` generates every record first, then publishes the backlog
    as fast as the broker takes it; a number releases fixes in simulated time
    that many times faster than real time.  The drive is one round of the
    scenario unless ``minutes`` or ``max_fixes`` cut it.  ``mqtt`` overrides
    ``[mqtt]`` keys of the agent's config (inflight, batch_max ...), ``buffer``
    its ``[buffer]`` caps (max_mb ...).  Each
    van's uplink joins its paho thread in the loop's default executor when it
    stops: on a loop of your own, give that executor a thread per van (as
    :func:`run_fleet` does) or stopping a large fleet takes seconds.
    ``engine`` gives each van the scenario's engine state as its OBD adapter
    would (idles at drops, engine off at the depot); off: GPS-only vans.
    """
    scen = load_scenario(scenario)
    drive = build_drive(scen, loop=True)
    lap_s = drive.first.duration
    start = start_utc or scen.start_utc
    rate = scen.gnss.rate_hz
    duration_s = lap_s if minutes is None else minutes * 60.0
    steps = math.floor(duration_s * rate + 1e-9) + 1
    if max_fixes is not None:
        steps = min(steps, max_fixes)
    schedule = (engine_schedule(scen, drive), lap_s) if engine else None
    # The telemetry hold is wall time: scaled with the drive's speed-up, none
    # for a backlog (its tail would otherwise wait a full hold).
    hold = 0.0 if speedup is None else MqttConfig().telemetry_hold_s / speedup
    vans: list[_Van] = []
    tasks: list[asyncio.Task[None]] = []
    result = FleetResult([], start)
    try:
        for number in range(first_number, first_number + devices):
            device = id_format.format(number)
            mqtt_keys = {"telemetry_hold_s": hold, **(mqtt or {})}
            cfg = _config(device, workdir, host, port, prefix, mqtt_keys, buffer or {})
            vans.append(_Van(cfg, Variant.of(number, lap_s), start, schedule))
        fixes = [variant_fixes(scen, drive, van.variant, start, steps) for van in vans]
        began = time.monotonic()
        if speedup is None:
            for van, it in zip(vans, fixes, strict=True):
                for fix in it:
                    van.feed(fix, live=False)
                van.commit()
                van.backlog = {k: v for k, v in van.outbox.depth().items() if v}
        result.generate_seconds = time.monotonic() - began
        began = time.monotonic()
        tasks = [asyncio.create_task(v.uplink.run(), name=v.cfg.device.id) for v in vans]
        tasks.append(asyncio.create_task(_committer(vans), name="committer"))
        if not await _until(lambda: all(v.uplink.stats.connected for v in vans), connect_timeout):
            up = sum(v.uplink.stats.connected for v in vans)
            raise ConnectionError(
                f"{up} of {devices} vans connected to {host}:{port} in {connect_timeout}s"
            )
        if speedup is not None:
            began = time.monotonic()
            await _release(vans, fixes, steps, 1.0 / rate / speedup)
        waiting = list(vans)

        def delivered() -> bool:
            waiting[:] = [v for v in waiting if not _empty(v)]
            return not waiting

        result.all_delivered = await _until(delivered, until_delivered_timeout)
        result.deliver_seconds = time.monotonic() - began
    finally:
        with _quiet_uplinks():
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for van in vans:
            van.outbox.commit()  # rows acknowledged while stopping
            result.devices.append(van.result())
            van.outbox.close()
    result.extra = {"scenario": scen.name, "fixes_per_device": steps, "speedup": speedup}
    return result


def run_fleet(host: str, port: int, devices: int, workdir: Path, **kw: Any) -> FleetResult:
    """:func:`run_fleet_async` on a loop of its own (same arguments)."""

    async def fleet() -> FleetResult:
        executor = ThreadPoolExecutor(max_workers=devices + 4, thread_name_prefix="fleet")
        asyncio.get_running_loop().set_default_executor(executor)
        return await run_fleet_async(host, port, devices, workdir, **kw)

    return asyncio.run(fleet())


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="telematics-sim fleet",
        description="N simulated vans -> MQTT broker, through the agent's pipeline, outbox "
        "and uplink; a JSON summary at the end",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--scenario", default="urban_delivery")
    ap.add_argument("--prefix", default="fleet", help="MQTT topic prefix")
    ap.add_argument("--speedup", type=positive, default=None, help="default: as fast as possible")
    ap.add_argument("--minutes", type=positive, default=None, help="default: one round")
    ap.add_argument("--now", action="store_true", help="stamp the drive from now, not its date")
    ap.add_argument("--timeout", type=positive, default=120.0, help="seconds to deliver")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--gps-only", action="store_true", help="no engine state (no OBD adapter)")
    args = ap.parse_args(argv)
    if args.devices < 1:
        ap.error("--devices must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="telematics-fleet-"))
    start = datetime.now(UTC).replace(microsecond=0) if args.now else None
    try:
        result = run_fleet(
            args.host,
            args.port,
            args.devices,
            workdir,
            scenario=args.scenario,
            prefix=args.prefix,
            speedup=args.speedup,
            minutes=args.minutes,
            start_utc=start,
            until_delivered_timeout=args.timeout,
            engine=not args.gps_only,
        )
    except (ConnectionError, OSError, ValueError, OutboxError) as exc:
        print(f"telematics-sim fleet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps({"workdir": str(workdir), **result.to_json()}, indent=2, default=str))
    return 0 if result.all_delivered else 1


if __name__ == "__main__":
    sys.exit(main())
