"""The OBD reader: supervise a link, discover what the ECU supports, poll it on schedule.

Runs in its own thread because both links block (python-OBD and python-can
are synchronous).  It never decodes values: it hands every exchange, with
the monotonic time it completed, to ``emit``; the runtime stamps UTC and
the pure processor decodes.  So live runs and replays of a recorded log go
through the same code past this point.

Supervision, because python-OBD's Async thread dies on the first disconnect:

* ``LinkLost`` (unplugged, port gone, socket closed): close, reopen with a
  short backoff (``reconnect_max_s``, default 2 s) so a re-plugged adapter
  is back within seconds;
* the vehicle does not answer (ignition off, ``UNABLE TO CONNECT``): keep
  the adapter, read its voltage (the engine state comes from it), retry the
  vehicle every ``vehicle_retry_s``;
* repeated silence: the adapter has hung; close and reopen it;
* a run of ``NO DATA`` from PIDs that answered before: the ECU went quiet
  (engine stopped on some vehicles); poll only RPM and voltage until it answers.

The protocol found on the first connection is reused on reconnects, which
skips the ELM's protocol search (seconds on a real car).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from agent.backoff import Backoff
from agent.obd.exchange import Exchange, LinkEvent
from agent.obd.link import LinkInfo, LinkLost, ObdError, ObdLink
from agent.obd.pids import DISCOVERY_PIDS, supported_in
from agent.obd.schedule import PollSchedule

log = logging.getLogger(__name__)

# Errors that mean the vehicle side stopped answering (ignition off, bus asleep).
_VEHICLE_SILENT = frozenset(
    {"no_data", "silence", "can_error", "bus_init", "unable_to_connect", "stopped"}
)
# Battery voltage at or above this means the alternator charges: the engine runs.
_CHARGING_V = 13.2

#: Placeholder time of exchanges before the runtime stamps them (see ``Stamped``).
UNSTAMPED = datetime.fromtimestamp(0, UTC)


@dataclass(frozen=True, slots=True)
class Stamped:
    """An exchange and the monotonic instant it completed (UTC is stamped later)."""

    mono: float
    exchange: Exchange

    def at(self, ts: datetime) -> Exchange:
        return replace(self.exchange, ts=ts)


@dataclass
class ReaderStatus:
    """Health for status and the installer's check; written by the reader thread only."""

    state: str = "starting"  # connected | vehicle_off | quiet | no_adapter | starting | stopped
    adapter: str = ""
    protocol: str = ""
    port: str = ""
    connects: int = 0
    reconnects: int = 0
    requests: int = 0
    answers: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_error: str = ""
    supported: int = 0
    vin: str = ""
    down_since: float | None = None
    gaps: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=10))

    def snapshot(self, mono: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "adapter": self.adapter,
            "protocol": self.protocol,
            "port": self.port,
            "reconnects": self.reconnects,
            "requests": self.requests,
            "answers": self.answers,
            "errors": dict(self.errors),
            "last_error": self.last_error,
            "supported_pids": self.supported,
        }
        if self.down_since is not None:
            out["down_s"] = round(mono - self.down_since, 1)
        if self.gaps:
            out["gaps_s"] = [round(end - start, 1) for start, end in self.gaps]
        return out


class ObdReader:
    """Blocking loop: ``run(stop)`` until ``stop`` is set; every exchange goes to ``emit``."""

    def __init__(
        self,
        link: ObdLink,
        emit: Callable[[Stamped], None],
        *,
        schedule: Callable[[], PollSchedule] = PollSchedule,
        reconnect_max_s: float = 2.0,
        vehicle_retry_s: float = 10.0,
        silence_limit: int = 3,
        quiet_after: int = 6,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.emit = emit
        self._new_schedule = schedule
        self._backoff = Backoff(min_s=0.25, max_s=reconnect_max_s, jitter=0.2)
        self.vehicle_retry_s = vehicle_retry_s
        self.silence_limit = silence_limit
        self.quiet_after = quiet_after
        self._mono = mono
        self.status = ReaderStatus()
        self._was_up = False
        self._last_volts: float | None = None

    # -- the loop ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    info = self.link.open()
                except LinkLost as exc:
                    self._down("no_adapter", exc)
                    stop.wait(self._backoff.next())
                    continue
                except ObdError as exc:
                    self._down("vehicle_off", exc)
                    self._vehicle_off(stop)
                    continue
                self._up(info)
                try:
                    self._session(stop)
                except LinkLost as exc:
                    self._down("no_adapter", exc)
                    stop.wait(self._backoff.next())
        finally:
            self.link.close()
            self.status.state = "stopped"

    def _session(self, stop: threading.Event) -> None:
        schedule = self._new_schedule()
        supported = self._discover()
        if supported:
            schedule.restrict(supported)
        self.status.supported = len(supported)
        self._request_vin()
        silent = failing = 0
        while not stop.is_set():
            now = self._mono()
            item, wait = schedule.next(now)
            if wait > 0:
                stop.wait(wait)
                continue
            ok, kind = self._run_item(item, schedule.pid(item))
            schedule.done(item, self._mono(), self._mono() - now, ok)
            silent = 0 if kind != "silence" else silent + 1
            failing = 0 if ok or kind not in _VEHICLE_SILENT else failing + 1
            if silent >= self.silence_limit:
                self.link.close()
                raise LinkLost(f"adapter silent for {silent} requests")
            if failing >= self.quiet_after:
                self._quiet(stop)
                failing = 0

    def _run_item(self, item: str, pid: int | None) -> tuple[bool, str]:
        """Perform one scheduled item; returns (answered, error kind or "")."""
        if pid is not None:
            return self._request(0x01, pid)
        if item == "voltage":
            ok, kind = self._voltage()
            return ok, "" if kind == "no_voltage" else kind
        if item == "dtc":
            ok1, k1 = self._request(0x03, None)
            ok2, _k2 = self._request(0x07, None)
            return ok1 or ok2, k1
        if item == "mil":
            return self._request(0x01, 0x01)
        raise ValueError(f"unknown poll item {item!r}")

    # -- requests ----------------------------------------------------------------

    def _request(self, service: int, pid: int | None) -> tuple[bool, str]:
        req = f"{service:02X}" + ("" if pid is None else f"{pid:02X}")
        self.status.requests += 1
        try:
            replies = self.link.request(service, pid)
        except LinkLost:
            raise
        except ObdError as exc:
            self._error(exc)
            self._emit(Exchange(ts=UNSTAMPED, req=req, error=exc.kind))
            return False, exc.kind
        self.status.answers += 1
        self._emit(Exchange(ts=UNSTAMPED, req=req, replies=replies))
        return True, ""

    def _voltage(self) -> tuple[bool, str]:
        self.status.requests += 1
        try:
            volts = self.link.voltage()
        except LinkLost:
            raise
        except ObdError as exc:
            self._error(exc)
            return False, exc.kind
        if volts is None:
            return False, "no_voltage"  # the link cannot tell (CAN): not an error
        self.status.answers += 1
        self._last_volts = volts
        self._emit(Exchange(ts=UNSTAMPED, req="ATRV", volts=round(volts, 2)))
        return True, ""

    def _discover(self) -> set[int]:
        """Walk the support bitmaps 01 00, 01 20, ... while each says the next exists."""
        supported: set[int] = set()
        for base in DISCOVERY_PIDS:
            try:
                replies = self.link.request(0x01, base)
            except LinkLost:
                raise
            except ObdError as exc:
                self._error(exc)
                break
            self._emit(Exchange(ts=UNSTAMPED, req=f"01{base:02X}", replies=replies))
            found: set[int] = set()
            for data in replies.values():
                try:
                    found |= supported_in(data)
                except ValueError as exc:
                    log.warning("PID support reply not understood: %s", exc)
            supported |= found
            if base + 0x20 not in found:
                break
        return supported

    def _request_vin(self) -> None:
        try:
            replies = self.link.request(0x09, 0x02)
        except LinkLost:
            raise
        except ObdError as exc:
            self._error(exc)  # many pre-2005 vehicles have no mode 09
            return
        self._emit(Exchange(ts=UNSTAMPED, req="0902", replies=replies))

    # -- states ------------------------------------------------------------------

    def _vehicle_off(self, stop: threading.Event) -> None:
        """Adapter up, vehicle silent: report its voltage until it is time to retry.

        Never probe the vehicle faster than ``vehicle_retry_s``: a parked van's
        modules must be left to sleep (and its battery to last).
        """
        deadline = self._mono() + self.vehicle_retry_s
        while not stop.is_set() and self._mono() < deadline:
            try:
                ok, kind = self._voltage()
            except LinkLost as exc:
                self._down("no_adapter", exc)
                stop.wait(self._backoff.next())
                return
            if not ok and kind != "no_voltage":
                break  # the adapter no longer answers either: reopen it now
            stop.wait(min(2.0, max(0.0, deadline - self._mono())))

    def _quiet(self, stop: threading.Event) -> None:
        """The ECU stopped answering PIDs it answered before (ignition off).

        Probe it with one RPM request every ``vehicle_retry_s`` only, so the
        parked van's modules can sleep; an ELM327 reads the battery meanwhile
        (ATRV measures the pin, it wakes nothing) and a charging voltage
        means the engine started: probe at once.
        """
        self.status.state = "quiet"
        self._emit(Exchange(ts=UNSTAMPED, link="vehicle_off", error="no_data"))
        next_probe = self._mono() + self.vehicle_retry_s
        while not stop.is_set():
            if self._mono() >= next_probe:
                ok, kind = self._request(0x01, 0x0C)
                if ok:
                    self.status.state = "connected"
                    self._emit(Exchange(ts=UNSTAMPED, link="up", info=self._info_dict()))
                    return
                if kind == "silence":
                    self.link.close()
                    raise LinkLost("adapter silent")
                next_probe = self._mono() + self.vehicle_retry_s
            volts = self._quiet_voltage()
            if volts is not None and volts >= _CHARGING_V:
                next_probe = self._mono()
                continue
            stop.wait(max(0.0, min(2.0, next_probe - self._mono())))

    def _quiet_voltage(self) -> float | None:
        """ATRV while quiet; None when the link has no voltage (CAN) or it failed."""
        ok, _ = self._voltage()
        return self._last_volts if ok else None

    def _up(self, info: LinkInfo) -> None:
        st = self.status
        now = self._mono()
        if st.down_since is not None and self._was_up:
            st.gaps.append((st.down_since, now))
            st.reconnects += 1
        st.down_since = None
        st.connects += 1
        st.state = "connected"
        st.adapter, st.protocol, st.port = info.adapter, info.protocol, info.port
        self._was_up = True
        self._backoff.reset()
        log.info("OBD connected: %s, %s on %s", info.adapter, info.protocol, info.port)
        self._emit(Exchange(ts=UNSTAMPED, link="up", info=self._info_dict()))

    def _down(self, state: str, exc: ObdError) -> None:
        st = self.status
        first = st.state != state
        if st.down_since is None:
            st.down_since = self._mono()
        st.state = state
        self._error(exc)
        if first:
            event: LinkEvent = "lost" if state == "no_adapter" else "vehicle_off"
            log.warning("OBD %s: %s", state.replace("_", " "), exc)
            self._emit(Exchange(ts=UNSTAMPED, link=event, error=exc.kind))

    def _error(self, exc: ObdError) -> None:
        self.status.errors[exc.kind] += 1
        self.status.last_error = str(exc)

    def _info_dict(self) -> dict[str, str]:
        st = self.status
        return {"adapter": st.adapter, "protocol": st.protocol, "port": st.port}

    def _emit(self, exchange: Exchange) -> None:
        self.emit(Stamped(self._mono(), exchange))
