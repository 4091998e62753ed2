"""Engine off / running / unknown from RPM and battery voltage, with hysteresis.

Trips and idling hinge on the engine state, so one glitchy reading must
not start or end either, yet their times must be right (idle durations
within 2 s).  So a new state needs sustained evidence, and the transition
is *back-dated* to the first sample that showed it:

* RPM (authoritative when present): above ``rpm_on`` for ``on_s`` ->
  running; at most ``rpm_off`` (0) for ``off_s`` -> off.  An ECU that does
  not answer at all (:meth:`EngineStateDetector.feed_silence`) counts as
  0 rpm: with the ELM327 still reading ~12.4 V on ATRV the ignition is off.
  Silence while the voltage says the alternator charges is a bus glitch,
  not evidence.
* Voltage (ATRV), only while no RPM evidence is fresh: at least
  ``volts_on`` (13.2 V, the alternator is charging) for ``volts_on_s`` ->
  running; at most ``volts_off`` for ``volts_off_s`` -> off.  Readings in
  between neither start nor break a run, so a battery bouncing around
  13.0 V never flaps the state.
* Sustained means at least ``min_samples`` consecutive samples of the same
  evidence (no gap over ``fresh_s``) spanning the duration; RPM between
  the thresholds (cranking, stalling) is neutral like the voltage band.
* No evidence of any kind for ``stale_s`` -> UNKNOWN, with an
  ``engine_unknown`` event dated at the last evidence, so the backend can
  close an engine-on period it will never see end.  Phones never build this
  detector: no samples at all means UNKNOWN to every detector.

Each feed returns the events and the :class:`EngineSample` values the
runtime forwards to the idle and trip detectors: one dated at each
transition, plus a current one every ``sample_every_s``.  Durations use the
monotonic times, dates the UTC ones; neither is read from a clock.
Limitation: a hybrid running on its battery reads 0 rpm and looks off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from agent.messages import EventData
from agent.obd.state import EngineSample, EngineState
from agent.trips.stops import event

Source = Literal["rpm", "voltage", "stale"]


class EngineUpdate(NamedTuple):
    """What one feed produced: events to publish, samples to forward to detectors."""

    events: list[EventData]
    samples: list[EngineSample]


@dataclass(slots=True)
class _Run:
    """Consecutive samples showing one state: when the first one was, how many, the last."""

    ts: datetime
    mono: float
    n: int = 1
    last: float = 0.0

    def span(self) -> float:
        return self.last - self.mono


def _extend(run: _Run | None, ts: datetime, mono: float, max_gap: float) -> _Run:
    """The run with one more sample; a new run after a gap (evidence must be consecutive)."""
    if run is None or mono - run.last > max_gap:
        return _Run(ts, mono, 1, mono)
    run.n += 1
    run.last = mono
    return run


class EngineStateDetector:
    """``engine_on`` / ``engine_off`` / ``engine_unknown`` events and engine samples."""

    def __init__(
        self,
        *,
        rpm_on: float = 300.0,
        rpm_off: float = 0.0,
        on_s: float = 2.0,
        off_s: float = 3.0,
        volts_on: float = 13.2,
        volts_off: float = 12.9,
        volts_on_s: float = 5.0,
        volts_off_s: float = 10.0,
        min_samples: int = 2,
        fresh_s: float = 10.0,
        stale_s: float = 30.0,
        sample_every_s: float = 1.0,
        fuel_max_age_s: float = 10.0,
    ) -> None:
        if not (rpm_off < rpm_on and volts_off < volts_on):
            raise ValueError("off thresholds must be below on thresholds (hysteresis)")
        self.rpm_on, self.rpm_off, self.on_s, self.off_s = rpm_on, rpm_off, on_s, off_s
        self.volts_on, self.volts_off = volts_on, volts_off
        self.volts_on_s, self.volts_off_s = volts_on_s, volts_off_s
        self.min_samples = max(1, min_samples)
        self.fresh_s, self.stale_s = fresh_s, stale_s
        self.sample_every_s, self.fuel_max_age_s = sample_every_s, fuel_max_age_s
        self.state = EngineState.UNKNOWN
        self.since: datetime | None = None  # when the current state began (back-dated)
        self._since_mono: float | None = None
        self._now: float | None = None  # latest monotonic time fed
        self._data: tuple[datetime, float] | None = None  # last evidence of any kind
        self._rpm_evidence: float | None = None  # mono of the last RPM or counted silence
        self._rpm: tuple[float, float] | None = None  # (mono, rpm) of the last RPM reading
        self._volts: tuple[float, float] | None = None  # (mono, volts)
        self._fuel: tuple[float, float] | None = None  # (mono, l/h)
        self._rpm_up: _Run | None = None
        self._rpm_down: _Run | None = None
        self._v_up: _Run | None = None
        self._v_down: _Run | None = None
        self._last_sample: float | None = None

    # ------------------------------------------------------------------ feeds

    def feed_rpm(self, ts: datetime, mono: float, rpm: float | None) -> EngineUpdate:
        """One RPM read; ``None`` when the read failed (not evidence, only time passing)."""
        return self._feed(ts, mono, "rpm", rpm)

    def feed_voltage(self, ts: datetime, mono: float, volts: float | None) -> EngineUpdate:
        """One ATRV read; ``None`` when the adapter cannot tell."""
        return self._feed(ts, mono, "volts", volts)

    def feed_silence(self, ts: datetime, mono: float) -> EngineUpdate:
        """The ECU did not answer at all (NO DATA / silence / UNABLE TO CONNECT).

        Only for the ECU going quiet; a lost adapter feeds nothing (or
        :meth:`tick`), which leads to UNKNOWN after ``stale_s``.
        """
        return self._feed(ts, mono, "silence", None)

    def feed_fuel_rate(self, ts: datetime, mono: float, lph: float | None) -> EngineUpdate:
        """Fuel rate (PID 5E), carried in the samples for the idle fuel figure."""
        return self._feed(ts, mono, "fuel", lph)

    def tick(self, ts: datetime, mono: float) -> EngineUpdate:
        """Let time pass without a reading: staleness and periodic samples."""
        return self._feed(ts, mono, "tick", None)

    # ------------------------------------------------------------------ core

    def _feed(self, ts: datetime, mono: float, kind: str, value: float | None) -> EngineUpdate:
        out = EngineUpdate([], [])
        if self._now is not None and mono < self._now:
            return out  # out of order: the reader is one thread, so this is a caller bug
        self._expire(mono, out)
        self._now = mono
        if value is not None and kind == "rpm":
            self._on_rpm(ts, mono, value)
        elif value is not None and kind == "volts":
            self._on_volts(ts, mono, value)
        elif value is not None and kind == "fuel":
            self._fuel = (mono, value)
        elif kind == "silence" and not self._charging(mono):
            self._rpm = None
            self._on_rpm_evidence(ts, mono, up=False)
        self._decide(out)
        if self._last_sample is None or mono - self._last_sample >= self.sample_every_s:
            out.samples.append(self._sample(ts, mono))
        return out

    def _charging(self, mono: float) -> bool:
        v = self._volts
        return v is not None and mono - v[0] <= self.fresh_s and v[1] >= self.volts_on

    def _on_rpm(self, ts: datetime, mono: float, rpm: float) -> None:
        self._rpm = (mono, rpm)
        if rpm > self.rpm_on:
            self._on_rpm_evidence(ts, mono, up=True)
        elif rpm <= self.rpm_off:
            self._on_rpm_evidence(ts, mono, up=False)
        else:  # cranking or stalling: RPM is present but says neither
            self._rpm_evidence = mono
            self._data = (ts, mono)
            self._v_up = self._v_down = None

    def _on_rpm_evidence(self, ts: datetime, mono: float, *, up: bool) -> None:
        self._rpm_evidence = mono
        self._data = (ts, mono)
        self._v_up = self._v_down = None  # voltage counts only since RPM went away
        if up:
            self._rpm_up, self._rpm_down = _extend(self._rpm_up, ts, mono, self.fresh_s), None
        else:
            self._rpm_up, self._rpm_down = None, _extend(self._rpm_down, ts, mono, self.fresh_s)

    def _on_volts(self, ts: datetime, mono: float, volts: float) -> None:
        self._volts = (mono, volts)
        self._data = (ts, mono)
        if volts >= self.volts_on:
            self._v_up, self._v_down = _extend(self._v_up, ts, mono, self.fresh_s), None
        elif volts <= self.volts_off:
            self._v_up, self._v_down = None, _extend(self._v_down, ts, mono, self.fresh_s)

    def _rpm_fresh(self, mono: float) -> bool:
        return self._rpm_evidence is not None and mono - self._rpm_evidence <= self.fresh_s

    def _confirmed(self, run: _Run | None, duration: float) -> _Run | None:
        """The run if it proves a state now: long and recent enough (runs reset on transitions)."""
        if run is None or run.n < self.min_samples or run.span() < duration:
            return None
        assert self._now is not None
        return None if self._now - run.last > self.fresh_s else run

    def _decide(self, out: EngineUpdate) -> None:
        now = self._now
        assert now is not None
        if self._rpm_fresh(now):
            up = self._confirmed(self._rpm_up, self.on_s)
            down = self._confirmed(self._rpm_down, self.off_s)
            source: Source = "rpm"
        else:
            up = self._confirmed(self._v_up, self.volts_on_s)
            down = self._confirmed(self._v_down, self.volts_off_s)
            source = "voltage"
        if up is not None and self.state is not EngineState.RUNNING:
            self._transition(EngineState.RUNNING, up.ts, up.mono, source, out)
        elif down is not None and self.state is not EngineState.OFF:
            self._transition(EngineState.OFF, down.ts, down.mono, source, out)

    def _expire(self, mono: float, out: EngineUpdate) -> None:
        """Forget evidence older than ``stale_s``; UNKNOWN when nothing is left."""
        if self._data is None or mono - self._data[1] < self.stale_s:
            return
        ts, at = self._data
        self._data = self._rpm_evidence = self._rpm = self._volts = self._fuel = None
        self._rpm_up = self._rpm_down = self._v_up = self._v_down = None
        if self.state is not EngineState.UNKNOWN:
            self._transition(EngineState.UNKNOWN, ts, at, "stale", out)

    def _transition(
        self, new: EngineState, ts: datetime, mono: float, source: Source, out: EngineUpdate
    ) -> None:
        old, on_mono = self.state, self._since_mono
        self.state, self.since, self._since_mono = new, ts, mono
        # Evidence gathered before the new state cannot prove the next one.
        self._rpm_up = self._rpm_down = self._v_up = self._v_down = None
        data: dict[str, Any] = {"previous": str(old)}
        if new is EngineState.UNKNOWN:
            data["stale_s"] = self.stale_s
            kind = "engine_unknown"
        else:
            now = self._now if self._now is not None else mono
            volts = self._volts
            data["rpm"] = self._fresh_rpm(now)
            data["voltage"] = (
                round(volts[1], 2) if volts and now - volts[0] <= self.fresh_s else None
            )
            data["source"] = source
            kind = "engine_on" if new is EngineState.RUNNING else "engine_off"
        if old is EngineState.RUNNING and on_mono is not None:
            data["running_s"] = round(mono - on_mono, 1)
        out.events.append(event(kind, ts, None, data))
        out.samples.append(self._sample(ts, mono))

    def _fresh_rpm(self, now: float) -> float | None:
        r = self._rpm
        return r[1] if r is not None and now - r[0] <= self.fresh_s else None

    def _sample(self, ts: datetime, mono: float) -> EngineSample:
        now = self._now if self._now is not None else mono
        self._last_sample = now
        fuel = self._fuel
        rate = fuel[1] if fuel is not None and now - fuel[0] <= self.fuel_max_age_s else None
        return EngineSample(ts, mono, self.state, self._fresh_rpm(now), rate)
