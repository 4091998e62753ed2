"""Android phones as IMUs, through Termux:API's ``termux-sensor``.

What termux-sensor really does (termux-api ``SensorAPI.java`` and the
``termux-sensor`` script), and what follows from it here:

- ``termux-sensor -s accelerometer,gyroscope -d 10`` registers, for each
  comma-separated name, the *shortest* sensor name containing it
  (case-insensitive), and every ``-d`` ms prints one JSON object holding the
  *latest* reading of each sensor, pretty-printed with a 2-space indent::

      {
        "lsm6dso LSM6DSO Accelerometer Non-wakeup": {
          "values": [
            -0.17218323051929474,
            5.250857830047607,
            8.313222885131836
          ]
        },
        ...
      }

  So one reading spans many lines and objects arrive split across pipe
  reads: ``TermuxParser`` reassembles them incrementally.  Keys are vendor
  names; accelerometer and gyroscope are recognised by substring, skipping
  the uncalibrated, linear-acceleration and limited-axes variants.
- Before the first sensor event the object is ``{}``; when no name matches it
  prints "No valid sensors were registered!" and exits; on SIGTERM the
  script echoes "Caught interrupt.. Finishing..." and more.  Such lines are
  counted as garbage (the last one is kept for status), never fatal.
- The listeners are registered at ``SENSOR_DELAY_UI`` (about 16 Hz on most
  phones; the phone decides), and ``-d`` only sets how often the latest
  values are printed.  A faster ``-d`` therefore repeats the same reading:
  repeats are dropped (counted), so the stream carries each reading once,
  at the rate the phone really delivers, which ``status()`` reports.
- The listeners live in the Termux:API app, not in the process: if the
  process dies without ``termux-sensor -c`` the sensors stay on (battery),
  and the app keeps its old output writer, so the next ``termux-sensor -s``
  prints nothing.  Hence ``-c`` is run before every start and after every
  stop, whatever the reason, and by ``close()``.
- Samples are stamped with the monotonic clock on arrival (the JSON has no
  time); objects that arrive together are spread back by the print interval.
- Timeouts use ``asyncio.timeout``, not ``wait_for``: on Python 3.11
  ``wait_for`` can swallow a cancellation that coincides with a read, and
  the consumer's cancel would then leave the sensors running.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from agent.backoff import Backoff
from agent.imu.health import HealthConfig, HealthMonitor
from agent.imu.sample import ImuSample
from agent.imu.source_base import ImuSource, describe

if TYPE_CHECKING:
    from agent.config import ImuConfig

log = logging.getLogger(__name__)

DEFAULT_SENSORS = ("accelerometer", "gyroscope")
_ACCEL_SKIP = ("uncal", "linear", "limited")
_GYRO_SKIP = ("uncal", "limited")
_MAX_OBJECT_LINES = 400  # a reading set of a few sensors is ~10 lines per sensor
_MAX_KEYS_KEPT = 32


def is_accelerometer(name: str) -> bool:
    """A calibrated accelerometer by its vendor name ("BMI160 Accelerometer Non-wakeup")."""
    n = name.lower()
    return "accelerometer" in n and not any(s in n for s in _ACCEL_SKIP)


def is_gyroscope(name: str) -> bool:
    """A calibrated gyroscope by its vendor name ("lsm6dso LSM6DSO Gyroscope Non-wakeup")."""
    n = name.lower()
    return "gyroscope" in n and not any(s in n for s in _GYRO_SKIP)


Xyz = tuple[float, float, float]


@dataclass
class TermuxParserStats:
    """What the parser made of the stream; ``as_dict()`` goes into status."""

    objects: int = 0  # complete JSON objects
    empty: int = 0  # "{}": no sensor event yet
    samples: int = 0
    repeated: int = 0  # same readings as the previous object: dropped
    no_accel: int = 0  # objects without a usable accelerometer reading
    garbage_lines: int = 0  # non-JSON lines between objects
    bad_objects: int = 0  # looked like an object, did not parse (cut off, corrupt)
    last_garbage: str = ""
    accel_name: str | None = None
    gyro_name: str | None = None
    keys_seen: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "empty": self.empty,
            "samples": self.samples,
            "repeated": self.repeated,
            "no_accel": self.no_accel,
            "garbage_lines": self.garbage_lines,
            "bad_objects": self.bad_objects,
            "last_garbage": self.last_garbage,
            "accel_name": self.accel_name,
            "gyro_name": self.gyro_name,
            "keys_seen": list(self.keys_seen),
        }


class TermuxParser:
    """Text chunks of termux-sensor output in, ``ImuSample`` out.  Pure and incremental.

    ``feed(text, mono)`` takes whatever the pipe gave (any split, even mid
    line or mid number) and the arrival time; it returns the samples of the
    objects completed by that chunk.  ``period`` is the print interval
    (``-d``): objects completed in the same chunk are stamped ``period``
    apart, ending at ``mono``.  Times are strictly increasing.
    """

    def __init__(self, *, period: float | None = None, drop_repeats: bool = True) -> None:
        self.period = period
        self.drop_repeats = drop_repeats
        self.stats = TermuxParserStats()
        self._partial = ""  # text after the last newline
        self._lines: list[str] | None = None  # lines of the object being assembled
        self._previous: tuple[Xyz, Xyz | None] | None = None
        self._last_t: float | None = None

    def feed(self, text: str, mono: float) -> list[ImuSample]:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        readings: list[tuple[Xyz, Xyz | None]] = []
        for line in lines:
            obj = self._line(line.rstrip("\r"))
            if obj is not None:
                reading = self._reading(obj)
                if reading is not None:
                    readings.append(reading)
        return self._stamp(readings, mono)

    def flush(self, mono: float) -> list[ImuSample]:
        """End of stream: a last line without newline is complete; a cut object is not."""
        out = self.feed("\n", mono) if self._partial else []
        if self._lines is not None:
            self._bad("\n".join(self._lines))
        return out

    # -- assembling objects ------------------------------------------------------

    def _line(self, line: str) -> dict[str, Any] | None:
        """Consume one line; returns an object when this line completes one."""
        if self._lines is not None:
            # Inside an object every line is indented except the closing "}".  A new
            # "{" or any other text at column 0 means the open object was cut off.
            if line.startswith("{") or (line and not line[0].isspace() and line[0] != "}"):
                self._bad("\n".join(self._lines))
            else:
                self._lines.append(line)
                if line.startswith("}"):  # the top-level close is the only brace at column 0
                    text = "\n".join(self._lines)
                    self._lines = None
                    return self._parse(text)
                if len(self._lines) > _MAX_OBJECT_LINES:
                    self._bad("\n".join(self._lines))
                return None
        stripped = line.strip()
        if not stripped:
            return None
        if line.startswith("{"):
            if stripped == "{":
                self._lines = [line]
                return None
            with contextlib.suppress(ValueError):  # compact one-line object, e.g. "{}"
                obj = json.loads(stripped)
                if isinstance(obj, dict):
                    self.stats.objects += 1
                    return obj
            self._lines = [line]
            return None
        self._garbage(stripped)
        return None

    def _parse(self, text: str) -> dict[str, Any] | None:
        try:
            obj = json.loads(text)
        except ValueError:
            self._bad(text)
            return None
        if not isinstance(obj, dict):
            self._bad(text)
            return None
        self.stats.objects += 1
        return obj

    def _garbage(self, line: str) -> None:
        self.stats.garbage_lines += 1
        self.stats.last_garbage = line[:200]

    def _bad(self, text: str) -> None:
        self.stats.bad_objects += 1
        self.stats.last_garbage = text.strip().splitlines()[0][:200] if text.strip() else ""
        self._lines = None

    # -- objects to readings -----------------------------------------------------

    def _reading(self, obj: dict[str, Any]) -> tuple[Xyz, Xyz | None] | None:
        st = self.stats
        if not obj:
            st.empty += 1
            return None
        accel: Xyz | None = None
        gyro: Xyz | None = None
        for key, value in obj.items():
            if key not in st.keys_seen and len(st.keys_seen) < _MAX_KEYS_KEPT:
                st.keys_seen.append(key)
            if accel is None and is_accelerometer(key):
                accel = _xyz(value)
                if accel is not None:
                    st.accel_name = key
            elif gyro is None and is_gyroscope(key):
                gyro = _xyz(value)
                if gyro is not None:
                    st.gyro_name = key
        if accel is None:
            st.no_accel += 1
            return None
        reading = (accel, gyro)
        if self.drop_repeats and reading == self._previous:
            st.repeated += 1
            return None
        self._previous = reading
        return reading

    def _stamp(self, readings: list[tuple[Xyz, Xyz | None]], mono: float) -> list[ImuSample]:
        out: list[ImuSample] = []
        n = len(readings)
        step = self.period or 0.0
        for i, (a, g) in enumerate(readings):
            t = mono - (n - 1 - i) * step
            if self._last_t is not None and t <= self._last_t:
                t = self._last_t + 1e-6
            self._last_t = t
            if g is None:
                out.append(ImuSample(t, a[0], a[1], a[2]))
            else:
                out.append(ImuSample(t, a[0], a[1], a[2], g[0], g[1], g[2]))
        self.stats.samples += n
        return out


def _xyz(value: Any) -> Xyz | None:
    """``{"values": [x, y, z, ...]}`` -> (x, y, z), or None if it is anything else."""
    if not isinstance(value, dict):
        return None
    values = value.get("values")
    if not isinstance(values, list) or len(values) < 3:
        return None
    out: list[float] = []
    for v in values[:3]:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        out.append(float(v))
    return out[0], out[1], out[2]


class TermuxSensorSource(ImuSource):
    """Accelerometer (and gyroscope when the phone has one) through ``termux-sensor``.

    ``sensors`` are the names passed to ``-s`` (substrings; the full vendor
    names from ``termux-sensor -l`` also work); ``delay_ms`` is ``-d``.
    ``stall_s``: with no new reading for that long the process is restarted
    (Android may stop non-wakeup sensors when the phone sleeps).
    ``expected_rate_hz``: what the health check should hold the stream to;
    None because the phone decides its rate (see the module docstring).
    """

    kind: ClassVar[str] = "termux"

    def __init__(
        self,
        *,
        sensors: Sequence[str] = DEFAULT_SENSORS,
        delay_ms: int = 10,
        executable: str = "termux-sensor",
        stall_s: float = 5.0,
        stop_timeout_s: float = 3.0,
        cleanup_timeout_s: float = 15.0,
        drop_repeats: bool = True,
        expected_rate_hz: float | None = None,
        name: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if delay_ms < 1:
            raise ValueError(f"delay_ms must be >= 1, got {delay_ms}")
        if not sensors or any("," in s or not s.strip() for s in sensors):
            raise ValueError(f"sensor names must be non-empty and without commas: {sensors!r}")
        super().__init__(
            name=name, backoff=backoff, health=HealthConfig(expected_rate_hz=expected_rate_hz)
        )
        self.sensors = tuple(sensors)
        self.delay_ms = delay_ms
        self.executable = executable
        self.stall_s = stall_s
        self.stop_timeout_s = stop_timeout_s
        self.cleanup_timeout_s = cleanup_timeout_s
        self._parser = TermuxParser(period=delay_ms / 1000.0, drop_repeats=drop_repeats)
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._starts = 0
        self._exit_codes: list[int] = []
        self._cleanups = 0
        self._released = False  # the last release succeeded and nothing started since
        self._cleanup_failures = 0
        self._last_cleanup = ""
        # The phone's power plan (agent.power, applied by follow_plan): paused means
        # no termux-sensor at all; a new -d restarts it.  Neither is a fault.
        self._paused: str | None = None
        self._generation = 0  # follow_plan's changes; batches() re-reads the plan when it moves
        self._signalled: asyncio.subprocess.Process | None = None  # ended by follow_plan
        self._wake = asyncio.Event()
        self._replans = 0
        # idle | starting | running | exited (output ended) | retrying | paused | closed
        self._state = "idle"

    @classmethod
    def from_config(cls, cfg: ImuConfig, *, backoff: Backoff | None = None) -> TermuxSensorSource:
        """The source the ``[imu]`` section describes: ``-d`` from ``imu.rate_hz``."""
        return cls(delay_ms=max(1, round(1000 / cfg.rate_hz)), backoff=backoff)

    @property
    def argv(self) -> list[str]:
        return [self.executable, "-s", ",".join(self.sensors), "-d", str(self.delay_ms)]

    @property
    def target(self) -> str:
        return " ".join(self.argv)

    def follow_plan(self, on: bool, delay_ms: int, reason: str = "") -> None:
        """Apply a sampling plan: ``on`` False pauses the sensors, a new ``delay_ms`` is ``-d``.

        Called from the event loop whenever the GPS source's power plan
        changes (agent.power): a parked phone on battery turns its sensors
        off.  A running ``termux-sensor`` is ended and, unless paused,
        started again with the new interval; the release (``-c``) runs as
        for any stop.  Each change moves a generation counter that
        ``batches()`` checks after every step that yields to the loop (the
        release before a start, the start itself): a plan that changed
        while no process was there to signal is never missed, and a process
        started under the old plan is stopped at once.  Only a process
        ended by this SIGTERM is a replan; one that failed on its own at
        the same moment is a failure (backoff, ``last_error``).
        """
        delay_ms = max(1, int(delay_ms))
        paused = None if on else (reason or "paused by the power plan")
        if paused == self._paused and (not on or delay_ms == self.delay_ms):
            return
        if on and self._paused is not None:
            self._health = HealthMonitor(self._health.config)  # the pause is no gap
        self._paused = paused
        self.delay_ms = delay_ms
        self._parser.period = delay_ms / 1000.0
        self._replans += 1
        self._generation += 1
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._signalled = proc
            _signal_group(proc.pid, signal.SIGTERM)  # its trap releases; _stop reaps it
        self._wake.set()

    @property
    def paused(self) -> str | None:
        """Why the sensors are off by the power plan, or None when they run."""
        return self._paused

    def _source_status(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "paused": self._paused,
            "replans": self._replans,
            "print_rate_hz": round(1000.0 / self.delay_ms, 1),
            "starts": self._starts,
            "exit_codes": self._exit_codes[-5:],
            "cleanups": self._cleanups,
            "cleanup_failures": self._cleanup_failures,
            "last_cleanup": self._last_cleanup,
            "parser": self._parser.stats.as_dict(),
        }

    async def batches(self) -> AsyncGenerator[list[ImuSample], None]:
        while not self.closed:
            if self._paused is not None:
                await self._sleep_while_paused()
                continue
            generation = self._generation
            self._signalled = None
            proc: asyncio.subprocess.Process | None = None
            replanned = False  # it ended because follow_plan signalled it
            reason = "closed"
            self._state = "starting"
            try:
                if not self._released:  # a stale writer in the app would leave us silent
                    await self._cleanup()
                if self.closed:
                    break
                if generation != self._generation:
                    continue  # the plan changed during the release: read it again
                proc = await self._start()
                if self.closed:
                    break
                if generation != self._generation:
                    # It changed while the process started (follow_plan saw none to
                    # stop): stop this one, which the finally does, as a replan.
                    replanned = True
                    continue
                self._state = "running"
                async with contextlib.aclosing(self._read(proc)) as reader:
                    async for batch in reader:
                        yield batch
                # Decided the moment its output ends: a SIGTERM sent after that (a
                # plan arriving while it exits on its own) did not end it.
                replanned = proc is self._signalled
                self._state = "exited"
                if self.closed:  # close() ended the process
                    break
                reason = await self._exit_reason(proc)
            except FileNotFoundError:
                reason = (
                    f"{self.executable} not found: install the termux-api package "
                    "and the Termux:API app"
                )
            except OSError as exc:
                reason = describe(exc)
            except _Stalled as exc:
                replanned = proc is self._signalled
                reason = str(exc)
            finally:
                self._connected = False
                try:
                    await self._stop()
                finally:
                    if not self._released:  # released already when nothing ran since
                        await self._cleanup()
            if self.closed:
                break
            if replanned:  # ended on purpose by follow_plan: start again at once
                continue
            self._lost(reason)
            self._state = "retrying"
            await self._wait_before_retry()
        self._state = "closed"

    async def _sleep_while_paused(self) -> None:
        """Wait (sensors released) until the plan turns them on again or the source closes."""
        self._connected = False
        self._state = "paused"
        while self._paused is not None and not self.closed:
            self._wake.clear()
            await self._wake.wait()  # follow_plan and close() set it

    async def close(self) -> None:
        """Stop the process if it runs and release the sensors with ``-c``, always."""
        self._wake.set()
        await super().close()
        await self._stop()
        await self._cleanup()

    # -- the process -------------------------------------------------------------

    async def _start(self) -> asyncio.subprocess.Process:
        proc = self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: the script and its child
        )
        self._starts += 1
        self._released = False
        self._opened()
        return proc

    async def _read(
        self, proc: asyncio.subprocess.Process
    ) -> AsyncGenerator[list[ImuSample], None]:
        assert proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        last_sample = time.monotonic()
        healthy = False
        while True:
            timeout = max(0.0, last_sample + self.stall_s - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    data = await proc.stdout.read(65536)
            except TimeoutError:
                raise _Stalled(f"no new reading for {self.stall_s:g} s") from None
            mono = time.monotonic()
            if not data:
                batch = self._parser.flush(mono)
            else:
                batch = self._parser.feed(decoder.decode(data), mono)
            if batch:
                last_sample = mono
                if not healthy:
                    healthy = True
                    self._backoff.reset()
                self._deliver(batch)
                yield batch
            if not data:
                return
            if mono - last_sample > self.stall_s:
                raise _Stalled(f"no new reading for {self.stall_s:g} s")

    async def _exit_reason(self, proc: asyncio.subprocess.Process) -> str:
        code = await proc.wait()
        self._exit_codes.append(code)
        garbage = self._parser.stats.last_garbage
        return f"termux-sensor exited with {code}" + (f": {garbage}" if garbage else "")

    async def _stop(self) -> None:
        """SIGTERM the process group (the script's trap releases the sensors), then SIGKILL."""
        async with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or proc.returncode is not None:
                return
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(self.stop_timeout_s):
                    code = await proc.wait()
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                code = await proc.wait()
            except asyncio.CancelledError:
                _signal_group(proc.pid, signal.SIGKILL)  # cannot wait for it any more
                raise
            self._exit_codes.append(code)

    async def _cleanup(self) -> None:
        """``termux-sensor -c``: release the listeners in the Termux:API app.  Never fails.

        If this task is cancelled meanwhile (the agent shutting down, or a
        consumer that left the stream to the garbage collector), the release
        is finished synchronously: blocking the loop a moment is better than
        a phone whose sensors stay on.
        """
        try:
            async with self._lock:
                await self._cleanup_async()
        except asyncio.CancelledError:
            self._cleanup_blocking()
            raise

    async def _cleanup_async(self) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.executable,
                "-c",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._cleaned(None, describe(exc))
            return
        try:
            async with asyncio.timeout(self.cleanup_timeout_s):
                out, _ = await proc.communicate()
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            self._cleaned(None, f"termux-sensor -c timed out after {self.cleanup_timeout_s:g} s")
            return
        self._cleaned(proc.returncode, out.decode(errors="replace"))

    def _cleanup_blocking(self) -> None:
        try:
            done = subprocess.run(
                [self.executable, "-c"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=self.cleanup_timeout_s,
                start_new_session=True,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            self._cleaned(None, describe(exc))
            return
        self._cleaned(done.returncode, done.stdout.decode(errors="replace"))

    def _cleaned(self, code: int | None, output: str) -> None:
        """Count one release attempt: ``code`` None when it could not run or finish."""
        text = output.strip()
        self._last_cleanup = text.splitlines()[-1][:200] if text else f"exit {code}"
        if code is None or code != 0:
            self._cleanup_failures += 1
            log.warning("%s: termux-sensor -c: %s", self.name, self._last_cleanup)
        else:
            self._cleanups += 1
            self._released = self._proc is None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group this source started (``start_new_session``), if it still exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Stalled(Exception):
    """The process runs but no new reading came for ``stall_s``."""
