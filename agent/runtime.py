"""Wires sources, pipeline, outbox and uplink together under one asyncio loop.

I/O lives here and in the sources; the decisions live in agent.pipeline.
The runtime's own jobs: keep time honest (records whose UTC is not known yet
wait for the clock), commit the outbox on its group-commit window (urgent
events at once), keep each source supervised so a dead GPS does not stop the
uplink, and report health.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from agent import __version__, logs
from agent.buffer.outbox import Outbox
from agent.clock import Clock
from agent.commands import Answer, accept
from agent.config import AgentConfig, GpsConfig
from agent.geofence.model import ZoneSet, load_zone_file
from agent.gps.fix import Fix
from agent.gps.sampler import position_from_fix
from agent.gps.source_base import GpsSource
from agent.gps.sources import open_source
from agent.gps.termux_source import TermuxLocationSource
from agent.imu.processor import ImuProcessor
from agent.imu.sample import ImuSample
from agent.imu.source_base import ImuSource
from agent.imu.sources import open_imu_source
from agent.imu.termux import TermuxSensorSource
from agent.messages import (
    Command,
    CommandResult,
    EventData,
    Status,
    Stream,
    record_body,
    utc_iso,
    validation_reason,
)
from agent.obd.dtc import DtcTracker
from agent.obd.link import ObdLink
from agent.obd.processor import ObdProcessor
from agent.obd.reader import Stamped
from agent.obd.service import ObdService
from agent.pipeline import ImuClock, Pipeline, geofence_detector
from agent.remote_config import ConfigGate, Decision
from agent.sdnotify import Notifier, WatchdogPinger
from agent.status import StatusFile, agent_doc, fix_summary, status_path
from agent.uplink import Uplink

log = logging.getLogger(__name__)

#: A `restart` waits this long at most for its answer to reach the broker.
RESTART_AFTER_RESULT_S = 5.0
#: Command ids remembered (with their answers) so a redelivered command is not run twice.
ANSWERS_KEPT = 50


#: At most one buffer_trimmed event this often (seconds); it sums what went meanwhile.
TRIM_EVENT_S = 300.0


def started_event(cfg: AgentConfig, ts: datetime, gps_source: str) -> EventData:
    """The agent's first event: which version, which config, which GPS."""
    return EventData(
        ts=ts,
        type="agent_started",
        data={"version": __version__, "config_hash": cfg.digest(), "gps_source": gps_source},
    )


def status_json(
    cfg: AgentConfig, outbox: Outbox, clock: Clock, state: str, health: dict[str, Any]
) -> str:
    """The retained birth (``online``, with health) or will (``offline``) payload."""
    return Status.model_validate(
        {
            "device": cfg.device.id,
            "state": state,
            "epoch": outbox.epoch,
            "ts": clock.now(),
            "version": __version__,
            "config_hash": cfg.digest(),
            "last_seq": outbox.last_seq,
            "health": health,
        }
    ).model_dump_json(exclude_none=True)


def gps_source(cfg: GpsConfig) -> GpsSource:
    """The GPS source the config asks for (nothing is opened until iterated)."""
    return open_source(
        cfg.source,
        device=cfg.device,
        baud=cfg.baud,
        host=cfg.host,
        port=cfg.port,
        path=cfg.path,
        rollover_floor=cfg.rollover_floor,
        termux=cfg.termux.options(),
    )


class Agent:
    """The daemon: ``await Agent(cfg, source).run()`` until cancelled."""

    def __init__(
        self,
        cfg: AgentConfig,
        source: GpsSource,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        mono: Callable[[], float] = time.monotonic,
        obd_link: ObdLink | None = None,
        imu_source: ImuSource | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        # systemd (Type=notify): READY once running, WATCHDOG from the committer's
        # loop, so a hung event loop stops the pings and systemd restarts us.
        self.notifier = notifier or Notifier(None)
        self._pinger = WatchdogPinger(self.notifier)
        self.source = source
        self.clock = clock or Clock(cfg.clock.source)
        self.outbox = Outbox(
            cfg.buffer.path,
            cfg.device.id,
            commit_interval_s=cfg.buffer.commit_interval_s,
            caps=cfg.buffer.caps(),
        )
        self.zones = self._initial_zones()
        self.config_gate = ConfigGate()
        self._last_fix: Fix | None = None  # for request_position
        self._last_decision: Decision | None = None  # for apply_config's answer
        self._answered: dict[str, str] = self._load_answers()  # command id -> its result
        self._run_task: asyncio.Task[Any] | None = None
        self.restart_requested = False  # by a `restart` command: exit status 75
        self.obd: ObdService | None = None
        processor = None
        if cfg.obd.source != "none" or obd_link is not None:
            processor = ObdProcessor(cfg.obd.snapshot_interval_s, dtcs=self._dtc_tracker())
            self.obd = ObdService(cfg.obd, self.handle_obd, link=obd_link)
        # Harsh driving runs on every device: from the IMU once its mounting is
        # calibrated, from GNSS speed and course before that or without one.
        imu = cfg.imu.processor()
        self._restore_mounting(imu)
        self.pipeline = Pipeline(
            cfg.sampler,
            geofence=geofence_detector(cfg.geofence, self.zones),
            trips=cfg.trips,
            obd=processor,
            imu=imu,
            imu_clock=ImuClock(
                of_fix=lambda f: f.mono, utc=self.clock.utc_at, of_utc=self._mono_of
            ),
        )
        self.imu_source: ImuSource | None = imu_source
        if self.imu_source is None and cfg.imu.source != "none":
            self.imu_source = open_imu_source(cfg.imu)
        phone_imu = self.imu_source
        if isinstance(source, TermuxLocationSource) and isinstance(phone_imu, TermuxSensorSource):
            # A phone: the battery-aware plan that paces the GPS polls also
            # slows the sensors, or turns them off while parked on battery;
            # the configured IMU rate is the plan's full rate.
            source.use_imu_interval(phone_imu.delay_ms)
            source.on_plan = lambda plan: phone_imu.follow_plan(
                plan.imu_on, plan.imu_delay_ms, plan.reason
            )
        self._mounting_state = imu.calibrator.state if imu.calibrator else None
        self.imu_failures = 0
        # OBD exchanges that completed before any trusted UTC existed.
        self._obd_waiting: deque[Stamped] = deque(maxlen=4096)
        self._obd_log: TextIO | None = None
        self._obd_log_failed = False
        self.obd_dropped = 0
        self._stopping = False
        self.uplink = Uplink(
            cfg.mqtt,
            cfg.device.id,
            self.outbox,
            self.clock,
            birth=lambda: self._status("online"),
            will=lambda: self._status("offline"),
            rng=rng,
            on_downlink=self.handle_downlink,
        )
        # Events that happened before any trusted UTC existed: (mono, builder).
        self._untimed: list[tuple[float, Callable[[datetime], EventData]]] = []
        self._mono = mono
        self.started_mono = mono()
        self._untimed.append((self.started_mono, self._started_event))
        if self.outbox.quarantined is not None:
            note = self.outbox.quarantined
            self._untimed.append(
                (
                    self.started_mono,
                    lambda ts: EventData(ts=ts, type="buffer_quarantined", data={"file": note}),
                )
            )
        self._trim_told = -TRIM_EVENT_S
        # `telematics-agent status` reads this file (agent.status); written off the loop.
        self.status_file = StatusFile(
            status_path(cfg.buffer.path), cfg.buffer.path, redact=logs.redact
        )
        self._status_job: asyncio.Future[None] | None = None
        self._config_hash = cfg.digest()
        self._started_wall = time.time()

    # -- configuration pushed from the cloud -----------------------------------

    def _initial_zones(self) -> ZoneSet:
        """The last applied pushed config, else the zones file, else none."""
        stored = self.outbox.get_state("zones")
        if stored is not None:
            try:
                return ZoneSet.model_validate_json(stored)
            except ValidationError as exc:
                # Written by another version of the agent: run without it
                # rather than not at all; the retained config comes back on connect.
                log.error("stored zone set unusable, ignoring it: %s", validation_reason(exc))
        if self.cfg.geofence.zones_file is not None:
            return load_zone_file(self.cfg.geofence.zones_file).model_copy(update={"version": 0})
        return ZoneSet(version=0, zones=[])

    def _mono_of(self, ts: datetime) -> float | None:
        """The monotonic instant of a UTC time (the IMU's clock), while UTC is trusted."""
        now = self.clock.now()
        return None if now is None else self._mono() - (now - ts).total_seconds()

    def _restore_mounting(self, imu: ImuProcessor) -> None:
        """A mounting calibrated before a restart is used at once (and re-checked at a stop)."""
        stored = self.outbox.get_state("imu_mounting")
        if stored is None or imu.calibrator is None:
            return
        try:
            snapshot = json.loads(stored)
            if snapshot is not None:  # null: the mounting moved, nothing to trust
                imu.calibrator.restore(snapshot)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("stored IMU mounting unusable, calibrating afresh: %s", exc)

    def handle_imu(self, batch: list[ImuSample]) -> None:
        """Samples from the IMU source: impacts go out at once, ahead of any backlog."""
        for sample in batch:
            for stream, record in self.pipeline.feed_imu(sample):
                self._emit(stream, record, urgent=True)
        imu = self.pipeline.imu
        if imu is not None and imu.calibrator is not None:
            state = imu.calibrator.state
            if state != self._mounting_state:
                self._mounting_state = state
                log.info("IMU mounting: %s", imu.calibrator.status().get("detail", state))
                if state == "calibrated":
                    with contextlib.suppress(sqlite3.Error):
                        self.outbox.set_state("imu_mounting", json.dumps(imu.calibrator.snapshot()))

    async def _read_imu(self) -> None:
        assert self.imu_source is not None
        async for batch in self.imu_source.batches():
            self.handle_imu(batch)

    def _dtc_tracker(self) -> DtcTracker:
        """DTCs already reported before a restart are not announced again."""
        tracker = DtcTracker()
        stored = self.outbox.get_state("dtcs")
        if stored is not None:
            try:
                tracker.seed(json.loads(stored))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("stored DTC state unusable, starting afresh: %s", exc)
        return tracker

    def handle_obd(self, stamped: Stamped) -> None:
        """One exchange from the OBD reader thread (called on the loop)."""
        if self._stopping:
            return
        if len(self._obd_waiting) == self._obd_waiting.maxlen:
            self.obd_dropped += 1  # no trusted time for a long while: the oldest go
        self._obd_waiting.append(stamped)
        if self.clock.utc_at(self._obd_waiting[0].mono) is None:
            return  # no trusted time yet: keep (the newest 4096) until there is
        obd = self.pipeline.obd
        assert obd is not None
        before = obd.dtcs.active
        while self._obd_waiting:
            item = self._obd_waiting.popleft()
            ts = self.clock.utc_at(item.mono)
            assert ts is not None
            exchange = item.at(ts)
            self._record_obd(exchange.to_json())
            for stream, record in self.pipeline.feed_obd(exchange):
                self._emit(stream, record, urgent=stream == "events")
        if obd.dtcs.active != before:
            with contextlib.suppress(sqlite3.Error):  # worst case: re-announced after restart
                self.outbox.set_state("dtcs", json.dumps(obd.dtcs.known()))

    def _record_obd(self, line: str) -> None:
        path = self.cfg.obd.record
        if path is None or self._obd_log_failed:
            return
        try:
            if self._obd_log is None:
                self._obd_log = path.open("a", encoding="utf-8")
            self._obd_log.write(line + "\n")
            self._obd_log.flush()
        except (OSError, ValueError) as exc:  # ValueError: written after close
            self._obd_log_failed = True  # reported once; the agent itself goes on
            log.error("OBD log %s: %s; recording stopped", path, exc)

    def handle_downlink(self, name: str, payload: bytes) -> None:
        """A retained ``config`` or a ``cmd`` from the cloud: apply or refuse, answer."""
        if name == "cmd":
            self._command(payload)
            return
        if name != "config":
            return
        decision = self.config_gate.decide(payload, self.zones)
        self._last_decision = decision
        if decision is None:
            return
        zones = decision.zones
        if zones is not None:
            try:
                # What runs is what is stored: the zone set, not the payload.
                self.outbox.set_state("zones", zones.model_dump_json())
            except sqlite3.Error as exc:
                # Not applied unless it would survive a restart.
                decision = self.config_gate.refuse(
                    payload, decision.version, f"cannot store it: {exc}"
                )
            else:
                self.zones = zones
                assert self.pipeline.geofence is not None
                self.pipeline.geofence.set_zones(self.zones)
                log.info(
                    "config version %d applied: %d zones", self.zones.version, len(self.zones.zones)
                )
        self._config_result(decision)

    def _command(self, payload: bytes) -> None:
        """Run one command and answer it, whatever happens; a repeat is answered, not rerun.

        A persistent session can hand a command over twice (a crash before
        its PUBACK); a second ``restart`` must not restart again.
        """
        got = accept(payload, self.clock.now())
        if got.id is not None and got.id in self._answered:
            log.info("command %s seen before: answering again", got.id)
            self.uplink.publish_result(self._answered[got.id])
            return
        answer = got if isinstance(got, Answer) else self._run_command(got)
        if answer.status != "done":
            log.warning("command %s %s: %s", answer.name, answer.status, answer.reason)
        fields: dict[str, Any] = {
            "device": self.cfg.device.id,
            "ts": self.clock.now(),
            "kind": "command",
            "id": answer.id,
            "name": answer.name,
            "status": answer.status,
            "reason": answer.reason,
            "data": answer.data,
            "running_version": self.zones.version,
        }
        try:
            result = CommandResult.model_validate(fields)
        except ValidationError:  # an id we cannot echo: answer without it
            result = CommandResult.model_validate(fields | {"id": None})
        text = result.model_dump_json(exclude_none=True)
        if result.id is not None:
            self._remember_answer(result.id, text)
        info = self.uplink.publish_result(text)
        if answer.name == "restart" and answer.status == "done":
            asyncio.get_running_loop().create_task(self._restart_after(info))

    def _run_command(self, cmd: Command) -> Answer:
        if cmd.name == "request_position":
            fix = self._last_fix
            if fix is None or fix.time is None or fix.lat is None or fix.lon is None:
                return Answer("rejected", cmd.id, cmd.name, "no GNSS fix yet")
            record = position_from_fix(fix, "requested")
            seq = self.outbox.add("telemetry", record_body(record), priority=True)
            if self.outbox.commit():
                self.uplink.wake()
            age = self._mono() - fix.mono
            return Answer(
                "done",
                cmd.id,
                cmd.name,
                data={
                    "seq": seq,
                    "ts": utc_iso(record.ts),
                    "lat": record.lat,
                    "lon": record.lon,
                    "age_s": round(age, 1),
                },
            )
        if cmd.name == "flush":
            # Everything buffered goes to the outbox's committed rows and the
            # uplink sends it at once, held telemetry included.
            self.outbox.commit()
            self.uplink.flush()
            return Answer("done", cmd.id, cmd.name, data={"waiting": self.outbox.depth()})
        if cmd.name == "apply_config":
            payload = json.dumps(cmd.args).encode()
            self.handle_downlink("config", payload)
            decision = self._last_decision
            if decision is None:
                return Answer("rejected", cmd.id, cmd.name, "empty config")
            data = {"version": decision.version, "status": decision.status}
            if decision.status == "rejected":
                return Answer("rejected", cmd.id, cmd.name, decision.reason, data)
            return Answer("done", cmd.id, cmd.name, decision.reason, data)
        if cmd.name == "restart":
            self.restart_requested = True
            return Answer("done", cmd.id, cmd.name, data={"in_s": RESTART_AFTER_RESULT_S})
        raise AssertionError(f"accept() let through {cmd.name!r}")  # KNOWN and this agree

    def _remember_answer(self, command_id: str, result: str) -> None:
        self._answered[command_id] = result
        while len(self._answered) > ANSWERS_KEPT:
            del self._answered[next(iter(self._answered))]
        try:
            self.outbox.set_state("answered_commands", json.dumps(list(self._answered.items())))
        except sqlite3.Error as exc:  # kept in memory; only a restart forgets it
            log.warning("cannot store the answered commands: %s", exc)

    def _load_answers(self) -> dict[str, str]:
        try:
            stored = json.loads(self.outbox.get_state("answered_commands") or "[]")
            return {str(i): str(r) for i, r in stored}
        except (ValueError, TypeError):
            return {}

    async def _restart_after(self, result: mqtt.MQTTMessageInfo) -> None:
        """Stop once the answer has left (or a few seconds passed); the service manager restarts."""
        deadline = self._mono() + RESTART_AFTER_RESULT_S
        while not result.is_published() and self._mono() < deadline:
            await asyncio.sleep(0.05)
        log.warning("restart requested by the cloud: stopping")
        if self._run_task is not None:
            self._run_task.cancel()

    def _config_result(self, decision: Decision) -> None:
        """Answer on cmd/result; record applied and (first-time) refused configs."""
        if decision.status == "rejected" and decision.record:
            log.warning("config version %s rejected: %s", decision.version, decision.reason)
        result = CommandResult.model_validate(
            {
                "device": self.cfg.device.id,
                "ts": self.clock.now(),
                "kind": "config",
                "version": -1 if decision.version is None else decision.version,
                "status": decision.status,
                "reason": decision.reason,
                "running_version": self.zones.version,
            }
        )
        self.uplink.publish_result(result.model_dump_json(exclude_none=True))
        if decision.status == "unchanged" or not decision.record:
            return
        data = {
            "version": decision.version,
            "running_version": self.zones.version,
            "reason": decision.reason,
        }
        self._untimed.append(
            (
                self._mono(),
                lambda ts: EventData(
                    ts=ts,
                    type=f"config_{decision.status}",
                    data={k: v for k, v in data.items() if v is not None},
                ),
            )
        )
        self._release_untimed()

    def _started_event(self, ts: datetime) -> EventData:
        return started_event(self.cfg, ts, self.cfg.gps.source)

    def _status(self, state: str) -> str:
        health = self.health() if state == "online" else {}
        return status_json(self.cfg, self.outbox, self.clock, state, health)

    def health(self, *, counts: bool = True) -> dict[str, Any]:
        """What works and what does not, for status and commissioning.

        ``counts=False`` leaves out the outbox's per-stream counts (a scan of
        the outbox): the status file counts on its own thread.
        """
        depth = self.outbox.depth() if counts else {"uncommitted": self.outbox.uncommitted}
        return {
            "clock": self.clock.basis,
            "waiting_for_time": len(self._untimed),
            "rejected_fixes": self.pipeline.rejected,
            "config_version": self.zones.version,
            "zones": len(self.zones.zones),
            "gps": self.source.status(),
            **({"obd": self._obd_health()} if self.obd is not None else {}),
            "imu": self._imu_health(),
            "outbox": {
                **depth,
                "dropped": self.outbox.dropped,
                "used_mb": round(self.outbox.used_bytes() / 1048576, 2),
                **self.outbox.trimmed,
            },
            "outbox_error": self.outbox.last_error,
            **({"outbox_quarantined": self.outbox.quarantined} if self.outbox.quarantined else {}),
            "uplink": self.uplink.status(),
        }

    def _imu_health(self) -> dict[str, Any]:
        assert self.pipeline.imu is not None
        out = self.pipeline.imu.health()
        if self.imu_failures:
            out["failures"] = self.imu_failures
        if self.imu_source is not None:
            out["source"] = self.imu_source.status()
        return out

    def _obd_health(self) -> dict[str, Any]:
        assert self.obd is not None and self.pipeline.obd is not None
        out = {**self.obd.status(), **self.pipeline.obd.health()}
        if self.obd_dropped:
            out["dropped_untimed"] = self.obd_dropped
        return out

    # -- data path ------------------------------------------------------------

    def _emit(self, stream: Stream, record: Any, urgent: bool = False) -> None:
        priority = isinstance(record, EventData) and record.type == "impact"
        self.outbox.add(stream, record_body(record), priority=priority, ts=record.ts.timestamp())
        if urgent and self.outbox.commit():
            self.uplink.wake()

    def _release_untimed(self) -> None:
        """Stamp and emit records that were waiting for trusted UTC."""
        if not self._untimed or self.clock.utc_at(self._untimed[0][0]) is None:
            return
        waiting, self._untimed = self._untimed, []
        for mono, build in waiting:
            ts = self.clock.utc_at(mono)
            assert ts is not None
            self._emit("events", build(ts), urgent=True)

    def handle_fix(self, fix: Fix) -> None:
        if fix.has_position and fix.time is not None:
            self.clock.observe_gnss(fix.time, fix.mono)
            self._last_fix = fix
        self._release_untimed()
        for stream, record in self.pipeline.feed_fix(fix):
            self._emit(stream, record, urgent=stream == "events")

    async def _read_gps(self) -> None:
        async for fix in self.source.fixes():
            self.handle_fix(fix)

    async def _committer(self) -> None:
        tick = max(0.05, min(0.25, self.cfg.buffer.commit_interval_s / 4))
        while True:
            await asyncio.sleep(tick)
            self._pinger.tick()
            self._release_untimed()
            if self.outbox.commit_due() and self.outbox.commit():
                self.uplink.wake()
            self._tell_trimmed()
            self._write_status()
            logs.tick()

    # -- the status file (telematics-agent status) --------------------------------

    def status_doc(self, state: str) -> dict[str, Any]:
        """The status file's content: what is in memory only, no outbox scan."""
        now = self._mono()
        fix = self._last_fix
        last_fix = None
        if fix is not None:
            last_fix = fix_summary(
                fix.time,
                fix.lat,
                fix.lon,
                now - fix.mono,
                speed_ms=fix.speed,
                sats=fix.sats_used,
                hdop=fix.hdop,
            )
        return agent_doc(
            state=state,
            pid=os.getpid(),
            boot_id=self.status_file.boot_id,
            device=self.cfg.device.id,
            version=__version__,
            config_hash=self._config_hash,
            epoch=self.outbox.epoch,
            outbox=self.cfg.buffer.path,
            started_wall=self._started_wall,
            uptime_s=now - self.started_mono,
            wall=time.time(),
            mono=time.monotonic(),
            utc_now=self.clock.now(),
            health=self.health(counts=False),
            last_fix=last_fix,
        )

    async def _final_status(self, failure: BaseException | None) -> dict[str, Any] | None:
        """The last snapshot, once the last periodic write is done; never raises.

        ``stopped`` when asked to stop (a signal, a ``restart`` command, a
        replay's end); ``failed`` with the reason when a task raised, so
        ``status`` does not call a crash loop a clean stop.
        """
        try:
            if self._status_job is not None:
                await self._status_job
            if failure is None:
                return self.status_doc("stopped")
            doc = self.status_doc("failed")
            doc["failure"] = f"{type(failure).__name__}: {failure}"
            return doc
        except (Exception, asyncio.CancelledError):
            log.exception("status file: cannot write the final snapshot")
            return None

    def _write_status(self) -> None:
        """Every few seconds, a snapshot to the status file, written on a worker thread."""
        if self._status_job is not None and not self._status_job.done():
            return  # the last one is still being written: skip, never queue
        if not self.status_file.due():
            return
        doc = self.status_doc("running")
        loop = asyncio.get_running_loop()
        self._status_job = loop.run_in_executor(None, self.status_file.write, doc)

    def _tell_trimmed(self) -> None:
        """One ``buffer_trimmed`` event per TRIM_EVENT_S for what the caps removed."""
        now = self._mono()
        if now - self._trim_told < TRIM_EVENT_S:
            return
        done = self.outbox.take_trimmed()
        if done is None:
            return
        self._trim_told = now
        data = {
            "expired": done.expired,
            "thinned": done.thinned,
            "dropped": done.dropped,
            "dropped_events": done.dropped_events,
            "first_seq": done.seqs[0],
            "last_seq": done.seqs[-1],
            "keep_every": self.cfg.buffer.thin_keep_every,
        }
        self._untimed.append((now, lambda ts: EventData(ts=ts, type="buffer_trimmed", data=data)))
        self._release_untimed()

    async def run(self) -> None:
        self._run_task = asyncio.current_task()
        log.info(
            "agent %s starting: device %s, epoch %s, next seq %d",
            __version__,
            self.cfg.device.id,
            self.outbox.epoch,
            self.outbox.last_seq + 1,
        )
        tasks = [
            asyncio.create_task(self._read_gps(), name="gps"),
            asyncio.create_task(self._committer(), name="committer"),
            asyncio.create_task(self.uplink.run(), name="uplink"),
        ]
        if self.obd is not None:
            tasks.append(asyncio.create_task(self.obd.run(), name="obd"))
        if self.imu_source is not None:
            tasks.append(asyncio.create_task(self._read_imu(), name="imu"))
        # Ready without waiting for the broker: an offline van is still working.
        self.notifier.ready(f"device {self.cfg.device.id}")
        self._write_status()
        failure: BaseException | None = None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a source that ends (file replay) just finishes
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            raise  # asked to stop
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.notifier.stopping()
            self._stopping = True
            for task in tasks:
                task.cancel()
            for task in tasks:
                # The task that failed must not cut the shutdown short (its
                # exception is already on its way out of run()).
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            final = await self._final_status(failure)
            self.outbox.commit()
            if final is not None:
                # After the last commit and before the lock is released (a reader
                # never sees a free lock with a "running" file): the backlog left
                # behind, counted on the agent's own connection.
                final["outbox"]["uncommitted"] = self.outbox.uncommitted
                self.status_file.write(final, backlog=self.outbox.backlog(final.get("utc_now")))
            self.outbox.close()
            if self._obd_log is not None:
                self._obd_log.close()
            log.info("agent stopped; last seq %d", self.outbox.last_seq)
