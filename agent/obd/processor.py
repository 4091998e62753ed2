"""From OBD exchanges to records: values, snapshots, engine state, DTC and VIN events.

Pure and deterministic: it reads only the exchanges' own UTC times (also
as the detectors' interval clock), so the live run and ``replay --obd`` of
its recorded log give the same records.  A reply that does not decode
(wrong service, wrong PID, short, another ECU's UDS answer) is counted by
reason in ``rejected`` and never becomes a reading.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agent.messages import EventData, ObdData, Stream
from agent.obd.dtc import DtcTracker, merge_replies, mil_status
from agent.obd.engine import EngineStateDetector, EngineUpdate
from agent.obd.exchange import Exchange
from agent.obd.pids import (
    BATTERY_VOLTAGE,
    CONTROL_MODULE_VOLTAGE,
    DISCOVERY_PIDS,
    ENGINE_SPEED,
    FUEL_RATE,
    MAF,
    DecodeError,
    decode,
    supported_in,
)
from agent.obd.state import EngineSample

log = logging.getLogger(__name__)

Output = tuple[Stream, EventData | ObdData]
_MAX_VOLTS = 40.0  # a 24 V truck charges at ~28 V; more is a broken reading
_VIN = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")
# Petrol: stoichiometric air/fuel 14.7 by mass, 745 g/l.  Only used when the
# ECU has no fuel-rate PID (5E); diesel runs lean, so this over-reads there.
_MAF_TO_LPH = 3600 / (14.7 * 745)


@dataclass
class ProcessorOutput:
    records: list[Output] = field(default_factory=list)
    engine: list[EngineSample] = field(default_factory=list)


def _placed(record: Output, position: tuple[float, float]) -> Output:
    """Events the detectors could not place happened where the vehicle last was."""
    stream, rec = record
    if isinstance(rec, EventData) and rec.lat is None:
        return stream, rec.model_copy(update={"lat": position[0], "lon": position[1]})
    return record


class ObdProcessor:
    """Feed exchanges in time order; get records to publish and engine samples for detectors."""

    def __init__(
        self,
        snapshot_interval_s: float = 10.0,
        *,
        engine: EngineStateDetector | None = None,
        dtcs: DtcTracker | None = None,
    ) -> None:
        self.snapshot_interval_s = snapshot_interval_s
        self.engine = engine or EngineStateDetector()
        self.dtcs = dtcs or DtcTracker()
        self.supported: set[int] = set()
        self.vin: str | None = None
        self.mil: tuple[bool, int] | None = None
        self.latest: dict[str, float] = {}
        self.rejected: Counter[str] = Counter()
        self.exchanges = 0
        self._pending_snapshot: dict[str, float] = {}
        self._snapshot_due: datetime | None = None
        self._newest: datetime | None = None
        self._stored: dict[str, int] | None = None  # last mode 03 read, waiting for 07
        self._stored_ok = False
        self._link_up = False
        self.last_exchange: datetime | None = None

    def tick(self, ts: datetime, position: tuple[float, float] | None = None) -> ProcessorOutput:
        """Time passes without exchanges (adapter unplugged): let engine state go stale.

        The pipeline calls this with GNSS fix times, so an engine last seen
        running does not idle forever once the adapter is gone.
        """
        out = ProcessorOutput()
        self._engine(out, self.engine.tick(ts, ts.timestamp()))
        if position is not None:
            out.records = [_placed(r, position) for r in out.records]
        return out

    def feed(self, ex: Exchange, position: tuple[float, float] | None = None) -> ProcessorOutput:
        """One exchange; ``position`` (lat, lon) dates events at the vehicle's place."""
        self.exchanges += 1
        out = ProcessorOutput()
        ts, mono = ex.ts, ex.ts.timestamp()
        if self.last_exchange is None or ts > self.last_exchange:
            self.last_exchange = ts
        if ex.link is not None:
            self._link(ex, position, out)
        elif ex.req == "ATRV":
            if ex.volts is not None and not 0.0 <= ex.volts <= _MAX_VOLTS:
                self.rejected["out_of_range"] += 1
            elif ex.volts is not None:
                self._value(ts, BATTERY_VOLTAGE, ex.volts)
                self._engine(out, self.engine.feed_voltage(ts, mono, ex.volts))
        elif ex.service == 0x01 and ex.pid is not None:
            self._service01(ex, ex.pid, out)
        elif ex.service in (0x03, 0x07):
            self._dtc(ex, position, out)
        elif ex.req == "0902" and ex.replies is not None:
            self._vin(ex, position, out)
        self._engine(out, self.engine.tick(ts, mono))
        self._snapshot(ts, out)
        if position is not None:
            out.records = [_placed(r, position) for r in out.records]
        return out

    # -- parts -------------------------------------------------------------------

    def _link(
        self, ex: Exchange, position: tuple[float, float] | None, out: ProcessorOutput
    ) -> None:
        lat, lon = position if position else (None, None)
        if ex.link == "up":
            self._link_up = True
            out.records.append(
                (
                    "events",
                    EventData(ts=ex.ts, type="obd_connected", lat=lat, lon=lon, data=dict(ex.info)),
                )
            )
        elif ex.link == "lost" and self._link_up:
            self._link_up = False
            out.records.append(
                (
                    "events",
                    EventData(
                        ts=ex.ts,
                        type="obd_disconnected",
                        lat=lat,
                        lon=lon,
                        data={"reason": ex.error or "disconnected"},
                    ),
                )
            )
        elif ex.link == "vehicle_off":
            # The adapter answers, the vehicle does not: ignition off.
            self._engine(out, self.engine.feed_silence(ex.ts, ex.ts.timestamp()))

    def _service01(self, ex: Exchange, pid: int, out: ProcessorOutput) -> None:
        ts, mono = ex.ts, ex.ts.timestamp()
        if ex.replies is None:
            if pid == 0x0C and ex.error in ("no_data", "unable_to_connect"):
                self._engine(out, self.engine.feed_silence(ts, mono))
            return
        if pid in DISCOVERY_PIDS:
            for data in ex.replies.values():
                try:
                    self.supported |= supported_in(data)
                except DecodeError:
                    self.rejected["not_a_bitmap"] += 1
            return
        if pid == 0x01:
            for data in ex.replies.values():
                try:
                    self.mil = mil_status(data)
                except DecodeError:
                    self.rejected["wrong_reply"] += 1
            return
        for _ecu, data in sorted(ex.replies.items()):
            try:
                signal, value = decode(pid, data)
            except DecodeError as exc:
                self.rejected["unknown_pid" if "not a signal" in str(exc) else "wrong_reply"] += 1
                continue
            if not signal.minimum <= value <= signal.maximum:
                self.rejected["out_of_range"] += 1
                continue
            self._value(ts, signal.name, value)
            if signal.name == ENGINE_SPEED:
                self._engine(out, self.engine.feed_rpm(ts, mono, value))
            elif signal.name == FUEL_RATE:
                self._engine(out, self.engine.feed_fuel_rate(ts, mono, value))
            elif signal.name == CONTROL_MODULE_VOLTAGE and BATTERY_VOLTAGE not in self.latest:
                # No ATRV on the CAN path: the ECU's supply voltage tells charging.
                self._engine(out, self.engine.feed_voltage(ts, mono, value))
            elif signal.name == MAF and FUEL_RATE not in self.latest:
                self._engine(out, self.engine.feed_fuel_rate(ts, mono, value * _MAF_TO_LPH))
            break  # the first ECU that answers sensibly (lowest id: the engine ECU)

    def _dtc(
        self, ex: Exchange, position: tuple[float, float] | None, out: ProcessorOutput
    ) -> None:
        codes: dict[str, int] | None = None
        if ex.replies is not None:
            try:
                codes = merge_replies(ex.replies, ex.service)
            except DecodeError:
                self.rejected["wrong_reply"] += 1
        elif ex.error == "no_data":
            codes = {}  # CAN ECUs answer "43 00"; some K-line ECUs say NO DATA for none
        if ex.service == 0x03:
            self._stored, self._stored_ok = codes, codes is not None
            return
        lat, lon = position if position else (None, None)
        events = self.dtcs.update(ex.ts, self._stored, codes, lat, lon)
        self._stored, self._stored_ok = None, False
        out.records.extend(("events", e) for e in events)

    def _vin(
        self, ex: Exchange, position: tuple[float, float] | None, out: ProcessorOutput
    ) -> None:
        assert ex.replies is not None
        for _ecu, data in sorted(ex.replies.items()):
            if data[:2] != b"\x49\x02":
                self.rejected["wrong_reply"] += 1
                continue
            text = bytes(b for b in data[3:] if 0x20 < b < 0x7F).decode("ascii")[-17:]
            if not _VIN.match(text):
                self.rejected["bad_vin"] += 1
                continue
            if text != self.vin:
                lat, lon = position if position else (None, None)
                data_out: dict[str, Any] = {"vin": text}
                if self.vin is not None:
                    data_out["previous_vin"] = self.vin
                self.vin = text
                out.records.append(
                    (
                        "events",
                        EventData(
                            ts=ex.ts, type="vehicle_identified", lat=lat, lon=lon, data=data_out
                        ),
                    )
                )
            return

    def _value(self, ts: datetime, name: str, value: float) -> None:
        value = round(value, 3)
        self.latest[name] = value
        self._pending_snapshot[name] = value
        if self._newest is None or ts > self._newest:
            self._newest = ts

    def _engine(self, out: ProcessorOutput, update: EngineUpdate) -> None:
        out.records.extend(("events", e) for e in update.events)
        out.engine.extend(update.samples)

    def _snapshot(self, ts: datetime, out: ProcessorOutput) -> None:
        if self._snapshot_due is None:
            self._snapshot_due = ts + timedelta(seconds=self.snapshot_interval_s)
            return
        if ts < self._snapshot_due:
            return
        if self._pending_snapshot and self._newest is not None:
            out.records.append(
                (
                    "telemetry",
                    ObdData(ts=self._newest, signals=dict(sorted(self._pending_snapshot.items()))),
                )
            )
            self._pending_snapshot = {}
        step = timedelta(seconds=self.snapshot_interval_s)
        while self._snapshot_due <= ts:
            self._snapshot_due += step

    def health(self) -> dict[str, Any]:
        """What the processor knows, for status."""
        out: dict[str, Any] = {
            "engine": str(self.engine.state),
            "dtcs": self.dtcs.active,
            "rejected": dict(self.rejected),
        }
        if self.vin:
            out["vin"] = self.vin
        if self.mil is not None:
            out["mil"] = self.mil[0]
        return out
