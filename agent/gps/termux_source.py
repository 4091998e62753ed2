"""Fixes from an Android phone's GNSS, through Termux:API's ``termux-location``.

What termux-location really does (termux-api ``LocationAPI.java``,
``ResultReturner.java``, ``TermuxApiReceiver.java`` and the
``termux-location`` script of termux-api-package), and what follows here:

- ``termux-location -p gps|network|passive -r once|last|updates``.  The app
  writes one ``android.util.JsonWriter`` object, indented by two spaces::

      {
        "latitude": 52.3731339,
        "longitude": 4.8924534,
        "altitude": 43.5,
        "accuracy": 3.790999889373779,
        "vertical_accuracy": 1.9,
        "bearing": 271.3,
        "speed": 13.4,
        "elapsedMs": 12,
        "provider": "gps",
        "mocked": false
      }

  ``vertical_accuracy`` only on Android 8+, ``mocked`` only in recent app
  versions.  There is no time field: the app does not print
  ``Location.getTime()``, only ``elapsedMs``, the fix's age when printed
  (``SystemClock.elapsedRealtimeNanos()`` minus the fix's own).
- ``-r updates`` is not used: it registers for updates at most every 5 s
  *and* 50 m (so a parked or slow van gets none), the app ends it after
  30 s, and ``JsonWriter`` refuses a second top-level value, so while
  moving it dies with "JSON must have only one top-level value" after the
  first update (termux-packages issue 28626).  Respawning it would lose a
  fix per restart and still be limited to one per 5 s and 50 m.  So this
  source *polls* ``-r once`` (``requestSingleUpdate``: the next fresh fix).
  The poll interval comes from ``agent.power.PowerPolicy`` (1 s moving,
  slower when stopped, parked or on a low battery), fed by the fixes' speed
  and ``termux-battery-status``; it is measured start to start.
- A ``-r once`` request is never abandoned, and never more than one is
  outstanding.  In ``LocationAPI.java`` (termux/termux-api, read for this)
  ``once`` is ``Looper.prepare(); manager.requestSingleUpdate(provider,
  listener, null); Looper.loop();`` and only the listener's
  ``onLocationChanged`` quits that looper: there is no timeout (unlike
  ``updates``, which a second thread quits after 30 s), and
  ``ResultReturner.returnData`` runs it on a ``new Thread`` of its own.
  Killing the client does not reach the app: the request and its thread stay
  until a fix comes, then find the socket closed.  So a poll kill-and-retried
  every minute in a garage would leave hundreds of GPS requests and threads
  open overnight, the GNSS searching all night.  Instead, at ``fix_timeout_s``
  the source reports that it is waiting for a fix (``last_error`` "no
  location for 60 s: ...", counted in ``timeouts``; status ``request``:
  ``waiting for a fix`` and for how long) and goes on waiting on the same
  client; it asks again only once that one answers.  The client is killed
  only when the source stops (cancellation: the agent stopping).  While it
  waits, the battery is still read and the plan still follows the ageing
  motion state (a van parked in a garage turns its IMU off).
- Failures it prints, told apart for status: no location permission gives
  ``{"error": "Please grant the following permission to use this command:
  android.permission.ACCESS_FINE_LOCATION"}`` (and the app asks the user);
  ``{"API_ERROR": "Failed to get location"}`` when there is none (``last``);
  the script prints "termux-location: Unsupported provider: ..." and exits 1;
  with the Termux:API app missing or stopped the command prints nothing and
  hangs (past ``fix_timeout_s``) or exits with nothing (``empty``); a missing
  ``termux-location`` is the termux-api package not installed.
- Android reports 0.0 for a speed, bearing, accuracy or altitude it does
  not have: bearing is only used when the speed is above zero, an accuracy
  of 0 is unknown, and an altitude of exactly 0 means a 2D fix.

How a ``Fix`` is made of it (``location_to_fix``, pure):

- ``mono``: the local monotonic clock when the answer was read, minus
  ``elapsedMs``: the instant of the fix, not of the poll.
- ``time``: the *system* UTC when read, minus ``elapsedMs``.  A phone's
  clock is set by the network (NITZ, NTP) and on recent Android also from
  GNSS, so it is right to well under a second; and the only time the API
  gives is relative.  A system date before ``time_floor`` (the config's
  ``gps.rollover_floor``) is a clock never set: ``time`` is then ``None``
  (counted as ``clock_unset``) and nothing is stamped from it.  The agent's
  ``Clock`` anchors on ``time`` as it would on receiver UTC, so on a phone
  ``clock.source`` = ``system`` and ``gnss`` agree; ``system`` is the one to
  use there, because ``auto`` asks the kernel through ``adjtimex``, a
  system call Android's seccomp filter forbids to apps.
- ``hdop``: Android's ``accuracy`` (68 % horizontal radius, metres) divided
  by 5 m, the UERE the geofence and stop detectors multiply HDOP by, so
  their error margin ``hdop * uere_m`` comes back to Android's own radius;
  ``vdop`` likewise from ``vertical_accuracy``.  Satellite counts: none.
- ``altitude`` is above the WGS84 ellipsoid (``Location.getAltitude``), not
  mean sea level, and the two differ by up to 100 m: ``alt_msl`` is only
  set when ``geoid_sep_m`` (the local geoid height, e.g. +47 m in the
  Netherlands) is configured, and then ``geoid_sep`` is that value.
- ``provider`` ``gps`` gives quality 1; ``network`` fixes (cell towers,
  Wi-Fi) have no GNSS quality, are always 2D, and their accuracy of tens of
  metres makes their HDOP-equivalent high enough for the geofences to ignore.

Rejected answers are counted by kind (``status()["parser"]``): ``stale``
(``elapsedMs`` above ``max_age_s``: an old cached fix), ``mocked`` (a
mock-location app, unless ``accept_mock``), ``repeated`` (the same fix
again, or an older one: times stay strictly increasing), ``bad_value`` and
``no_position`` (missing or impossible coordinates), ``not_json``,
``empty``, ``permission``, ``api_error``; ``timeouts`` counts the polls
that went past ``fix_timeout_s`` (each still waited on to its answer).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Literal

from agent.backoff import Backoff
from agent.gps.fix import Fix, FixMode
from agent.gps.source_base import GpsSource, describe
from agent.power import (
    UNKNOWN_BATTERY,
    BatteryState,
    BatteryStatusError,
    CommandResult,
    CommandTimeout,
    MotionTracker,
    Plan,
    PowerPolicy,
    read_battery,
    run_termux_command,
)

log = logging.getLogger(__name__)

Provider = Literal["gps", "network", "passive"]

UERE_M = 5.0  # metres per unit of HDOP, as agent.geofence and agent.trips assume
REPEAT_S = 0.05  # a fix within this of the previous one's instant, same place: the same fix
MAX_NEGATIVE_AGE_MS = 1000  # clock jitter between the fix and the print; beyond it: bad value

# Kinds of answers that prove Termux:API works (the link is up) although no fix came of them.
ANSWERED_KINDS = frozenset({"stale", "mocked", "repeated", "bad_value", "no_position"})
REJECT_KINDS = (
    "empty",
    "not_json",
    "permission",
    "api_error",
    "no_position",
    "bad_value",
    "stale",
    "mocked",
    "repeated",
)

MISSING_HINT = (
    "install the termux-api package (pkg install termux-api) and the Termux:API app "
    "(from F-Droid, like Termux)"
)


class LocationError(ValueError):
    """One termux-location answer that gives no fix; ``kind`` is one of ``REJECT_KINDS``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Location:
    """The fields of one termux-location answer, typed; ``None`` where absent or unusable."""

    lat: float
    lon: float
    altitude: float | None = None  # metres above the WGS84 ellipsoid
    accuracy: float | None = None  # metres, 68 % horizontal
    vertical_accuracy: float | None = None
    bearing: float | None = None  # degrees
    speed: float | None = None  # m/s
    elapsed_ms: int | None = None  # age of the fix when printed
    provider: str | None = None
    mocked: bool | None = None


def _num(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _first_object(text: str) -> Any:
    """The JSON value of the answer: the whole text, else the first object in it."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    start = text.find("{")
    if start < 0:
        raise ValueError("no object")
    obj, _ = json.JSONDecoder().raw_decode(text, start)
    return obj


def parse_location(text: str) -> Location:
    """What termux-location printed, as a ``Location``; ``LocationError`` says why not.  Pure."""
    stripped = text.strip()
    if not stripped:
        raise LocationError("empty", "termux-location printed nothing")
    try:
        obj = _first_object(stripped)
    except ValueError:
        raise LocationError("not_json", stripped.splitlines()[0][:200]) from None
    if not isinstance(obj, dict):
        raise LocationError("not_json", stripped.splitlines()[0][:200])
    error = obj.get("error")
    if isinstance(error, str):
        kind = "permission" if "permission" in error.lower() else "api_error"
        raise LocationError(kind, error[:300])
    api_error = obj.get("API_ERROR")
    if isinstance(api_error, str):
        raise LocationError("api_error", api_error[:300])
    if not obj:
        raise LocationError("no_position", "an empty object")
    lat, lon = _num(obj, "latitude"), _num(obj, "longitude")
    if lat is None or lon is None:
        missing = [k for k in ("latitude", "longitude") if _num(obj, k) is None]
        raise LocationError("no_position", f"no usable {' or '.join(missing)}")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise LocationError("bad_value", f"latitude {lat} / longitude {lon} out of range")
    if lat == 0.0 and lon == 0.0:
        raise LocationError("bad_value", "latitude and longitude both exactly 0")
    elapsed = obj.get("elapsedMs")
    elapsed_ms = elapsed if isinstance(elapsed, int) and not isinstance(elapsed, bool) else None
    if elapsed_ms is None and isinstance(elapsed, float) and math.isfinite(elapsed):
        elapsed_ms = round(elapsed)
    if elapsed_ms is not None and elapsed_ms < -MAX_NEGATIVE_AGE_MS:
        raise LocationError("bad_value", f"elapsedMs {elapsed_ms} is negative")
    provider = obj.get("provider")
    mocked = obj.get("mocked")
    return Location(
        lat=lat,
        lon=lon,
        altitude=_num(obj, "altitude"),
        accuracy=_num(obj, "accuracy"),
        vertical_accuracy=_num(obj, "vertical_accuracy"),
        bearing=_num(obj, "bearing"),
        speed=_num(obj, "speed"),
        elapsed_ms=None if elapsed_ms is None else max(0, elapsed_ms),
        provider=provider if isinstance(provider, str) else None,
        mocked=mocked if isinstance(mocked, bool) else None,
    )


def location_to_fix(
    loc: Location,
    *,
    mono: float,
    wall: float,
    time_floor: date | None = None,
    geoid_sep_m: float | None = None,
) -> Fix:
    """A ``Fix`` for an answer read at monotonic ``mono`` and system time ``wall`` (Unix s).

    Pure.  The module docstring says how each field is derived.
    """
    age = (loc.elapsed_ms or 0) / 1000.0
    utc: datetime | None = None
    try:
        utc = datetime.fromtimestamp(wall - age, UTC)
    except (OverflowError, OSError, ValueError):
        utc = None
    if utc is not None and time_floor is not None and utc.date() < time_floor:
        utc = None
    gnss = loc.provider in (None, "gps")
    has_alt = loc.altitude is not None and loc.altitude != 0.0
    speed = loc.speed if loc.speed is not None and loc.speed >= 0 else None
    course = None
    if loc.bearing is not None and speed is not None and speed > 0:
        course = loc.bearing % 360.0
    hdop = loc.accuracy / UERE_M if loc.accuracy is not None and loc.accuracy > 0 else None
    vacc = loc.vertical_accuracy
    vdop = vacc / UERE_M if vacc is not None and vacc > 0 else None
    alt_msl = None
    if has_alt and geoid_sep_m is not None:
        assert loc.altitude is not None
        alt_msl = loc.altitude - geoid_sep_m
    return Fix(
        time=utc,
        mono=mono - age,
        mode=FixMode.FIX_3D if gnss and has_alt else FixMode.FIX_2D,
        lat=loc.lat,
        lon=loc.lon,
        alt_msl=alt_msl,
        geoid_sep=geoid_sep_m if alt_msl is not None else None,
        speed=speed,
        course=course,
        quality=1 if loc.provider == "gps" else None,
        hdop=hdop,
        vdop=vdop,
    )


@dataclass
class TermuxLocations:
    """termux-location answers in, fixes out, rejects counted.  Pure: times are passed in.

    ``feed(text, mono, wall)`` returns the ``Fix`` or raises ``LocationError``
    (after counting it).  Keeps the last fix to drop repeats and to keep
    fix times strictly increasing.
    """

    max_age_s: float = 10.0
    accept_mock: bool = False
    time_floor: date | None = None
    geoid_sep_m: float | None = None
    stats: dict[str, int] = field(default_factory=dict)
    last_reject: str = ""
    _last: Fix | None = None

    def __post_init__(self) -> None:
        self.stats = {"answers": 0, "fixes": 0, "no_elapsed": 0, "clock_unset": 0}
        self.stats.update({kind: 0 for kind in REJECT_KINDS})

    def feed(self, text: str, mono: float, wall: float) -> Fix:
        self.stats["answers"] += 1
        try:
            fix = self._fix(text, mono, wall)
        except LocationError as exc:
            self.stats[exc.kind] += 1
            self.last_reject = f"{exc.kind}: {exc}"
            raise
        self.stats["fixes"] += 1
        self._last = fix
        return fix

    def _fix(self, text: str, mono: float, wall: float) -> Fix:
        loc = parse_location(text)
        if loc.elapsed_ms is None:
            self.stats["no_elapsed"] += 1
        elif loc.elapsed_ms > self.max_age_s * 1000:
            raise LocationError(
                "stale", f"fix is {loc.elapsed_ms / 1000:.1f} s old (max {self.max_age_s:g} s)"
            )
        if loc.mocked and not self.accept_mock:
            raise LocationError("mocked", "a mock location (a location-faking app is active)")
        fix = location_to_fix(
            loc, mono=mono, wall=wall, time_floor=self.time_floor, geoid_sep_m=self.geoid_sep_m
        )
        if fix.time is None:
            self.stats["clock_unset"] += 1
        last = self._last
        if last is not None:
            if (fix.lat, fix.lon) == (last.lat, last.lon) and abs(fix.mono - last.mono) < REPEAT_S:
                raise LocationError("repeated", "the same fix as the previous answer")
            if fix.mono <= last.mono:
                raise LocationError(
                    "repeated", f"a fix {last.mono - fix.mono:.2f} s older than the previous one"
                )
        return fix


@dataclass(frozen=True, slots=True)
class TermuxOptions:
    """Settings of the Termux source (``[gps.termux]`` in the config builds them)."""

    provider: Provider = "gps"
    fix_timeout_s: float = 60.0
    max_age_s: float = 10.0
    battery: bool = True
    battery_interval_s: float = 60.0
    battery_timeout_s: float = 10.0
    battery_max_age_s: float = 600.0  # older readings count as unknown
    accept_mock: bool = False
    geoid_sep_m: float | None = None
    policy: PowerPolicy = field(default_factory=PowerPolicy)
    moving_speed_mps: float = 5.0 / 3.6
    stopped_after_s: float = 120.0
    parked_after_s: float = 900.0
    executable: str = "termux-location"
    battery_executable: str = "termux-battery-status"

    def __post_init__(self) -> None:
        if self.fix_timeout_s <= 0 or self.max_age_s <= 0 or self.battery_timeout_s <= 0:
            raise ValueError("fix_timeout_s, max_age_s and battery_timeout_s must be > 0")
        if not 0 < self.stopped_after_s < self.parked_after_s:
            raise ValueError("need 0 < stopped_after_s < parked_after_s")


class TermuxLocationSource(GpsSource):
    """Poll ``termux-location -p <provider> -r once`` at the pace ``PowerPolicy`` sets.

    ``connected`` means Termux:API answers with locations; a missing
    command, a refused permission or an error is a lost link with a reason
    in ``last_error``, and the next poll waits at least the backoff (growing
    to ``backoff.max_s``).  A poll without an answer after ``fix_timeout_s``
    is a lost link too, but it is not retried: the one request stays
    outstanding until it answers (the module docstring says why), and
    status ``request`` says how long it has been waiting.  ``mono`` and
    ``wall`` are injectable clocks for tests.
    """

    kind: ClassVar[str] = "termux"

    def __init__(
        self,
        options: TermuxOptions | None = None,
        *,
        time_floor: date | None = None,
        name: str | None = None,
        backoff: Backoff | None = None,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name=name, backoff=backoff if backoff is not None else Backoff(2.0, 120.0))
        self.options = opts = options if options is not None else TermuxOptions()
        self._mono = mono
        self._wall = wall
        self._locations = TermuxLocations(
            max_age_s=opts.max_age_s,
            accept_mock=opts.accept_mock,
            time_floor=time_floor,
            geoid_sep_m=opts.geoid_sep_m,
        )
        self._motion = MotionTracker(
            moving_speed_mps=opts.moving_speed_mps,
            stopped_after_s=opts.stopped_after_s,
            parked_after_s=opts.parked_after_s,
        )
        self._polls = 0
        self._timeouts = 0
        self._exit_codes: list[int] = []
        self._request_since: float | None = None  # mono start of the outstanding request
        self._overdue = False  # that request is past fix_timeout_s
        self._battery: BatteryState = UNKNOWN_BATTERY
        self._battery_at: float | None = None  # mono of the last good reading
        self._battery_tried: float | None = None
        self._battery_reads = 0
        self._battery_failures = 0
        self._battery_error: str | None = None
        self._plan = opts.policy.plan(UNKNOWN_BATTERY, "unknown")
        #: Called with each new plan (the runtime points the phone's IMU at it).
        self.on_plan: Callable[[Plan], None] | None = None

    @property
    def argv(self) -> list[str]:
        return [self.options.executable, "-p", self.options.provider, "-r", "once"]

    @property
    def target(self) -> str:
        return " ".join(self.argv)

    @property
    def plan(self) -> Plan:
        """The sampling plan in force: GPS poll interval and what the IMU should do."""
        return self._plan

    def use_imu_interval(self, delay_ms: int) -> None:
        """Make ``delay_ms`` (the IMU's configured print interval) the plan's full IMU rate.

        For a source whose policy was built without it
        (``TermuxGpsConfig.options(imu_delay_ms=...)`` is the other way in):
        the place that pairs the phone's IMU with this source (the runtime,
        where it sets ``on_plan``) calls it, so that a plan change scales the
        configured rate instead of replacing it by the policy's default.
        The plan in force is recomputed (and handed to ``on_plan`` if it
        changed).
        """
        policy = replace(self.options.policy, imu_delay_ms=max(1, int(delay_ms)))
        self.options = replace(self.options, policy=policy)
        self._replan()

    def _parser_stats(self) -> dict[str, int]:
        return {**self._locations.stats, "polls": self._polls, "timeouts": self._timeouts}

    def status(self) -> dict[str, Any]:
        """Base status plus the request, plan, battery, motion state and last reject."""
        now = self._mono()
        out = super().status()
        out["provider"] = self.options.provider
        out["exit_codes"] = self._exit_codes[-5:]
        out["last_reject"] = self._locations.last_reject
        since = self._request_since
        out["request"] = {
            "state": (
                "idle" if since is None else "waiting for a fix" if self._overdue else "polling"
            ),
            "waiting_s": None if since is None else round(now - since, 1),
        }
        out["plan"] = self._plan.as_dict()
        out["motion"] = {
            "state": self._motion.state(now),
            "stopped_for_s": round(self._motion.stopped_for(now), 1),
        }
        out["battery"] = {
            **self._battery.as_dict(),
            "age_s": None if self._battery_at is None else round(now - self._battery_at, 1),
            "reads": self._battery_reads,
            "failures": self._battery_failures,
            "last_error": self._battery_error,
        }
        return out

    # -- the loop ----------------------------------------------------------------------

    async def fixes(self) -> AsyncGenerator[Fix, None]:
        while True:
            started = self._mono()
            await self._refresh_battery(started)
            failed = False
            try:
                answer = await self._poll()
            except FileNotFoundError:
                failed = self._fail(f"{self.options.executable} not found: {MISSING_HINT}")
            except OSError as exc:
                failed = self._fail(f"cannot run {self.options.executable}: {describe(exc)}")
            else:
                fix, failed = self._answer(*answer)
                if fix is not None:
                    self._fixes += 1
                    self._motion.feed(fix.mono, fix.speed)
                    yield fix
            plan = self._replan()
            delay = started + plan.gps_interval_s - self._mono()
            if failed:
                delay = max(delay, self._backoff.next())
            await asyncio.sleep(max(0.0, delay))

    async def _poll(self) -> tuple[CommandResult, float, float]:
        """One ``-r once``, waited on until it answers, however long; killed only on cancel.

        Returns the answer with the monotonic and system times it was read
        at.  Every ``fix_timeout_s`` without an answer the battery is read
        and the plan follows the motion state; the first time, the wait is
        reported (``_waiting``).  The client runs in a task of its own, so
        that its answer is read and timed the moment it comes, even while
        this is busy with the battery.
        """
        opts = self.options

        async def run() -> tuple[CommandResult, float, float]:
            result = await run_termux_command(self.argv, None)
            return result, self._mono(), self._wall()

        client = asyncio.create_task(run())
        self._request_since = self._mono()
        try:
            while True:
                done, _ = await asyncio.wait({client}, timeout=opts.fix_timeout_s)
                if done:
                    return client.result()
                if not self._overdue:
                    self._waiting()
                self._replan()
                await self._refresh_battery(self._mono())
        finally:
            self._request_since = None
            self._overdue = False
            if not client.done():  # cancelled: the agent stops; kill the client and reap it
                client.cancel()
                await asyncio.wait({client})
            if client.done() and not client.cancelled():
                client.exception()  # retrieved: an answer that raced the cancel is moot

    def _waiting(self) -> None:
        self._overdue = True
        self._timeouts += 1
        self._lost(
            f"no location for {self.options.fix_timeout_s:.3g} s: indoors or under a roof, "
            "location switched off, or the Termux:API app does not answer; still waiting "
            "for this request's fix"
        )

    def _answer(self, result: CommandResult, mono: float, wall: float) -> tuple[Fix | None, bool]:
        """One finished poll: the fix, or ``None``; and whether it counts as a failure."""
        self._polls += 1
        self._bytes_read += len(result.output.encode())
        if result.code != 0:
            self._exit_codes.append(result.code)
            del self._exit_codes[:-20]
        try:
            fix = self._locations.feed(result.output, mono, wall)
        except LocationError as exc:
            if exc.kind in ANSWERED_KINDS:
                self._answered()
                log.debug("%s: %s: %s", self.name, exc.kind, exc)
                return None, False
            return None, self._fail(self._describe_failure(exc, result.code))
        self._answered()
        return fix, False

    def _describe_failure(self, exc: LocationError, code: int) -> str:
        exe = self.options.executable
        if exc.kind == "permission":
            return (
                f"Termux:API may not read the location ({exc}): in Android's settings allow "
                "Location for the Termux:API app ('Allow all the time' so it works with the "
                "screen off)"
            )
        if exc.kind == "empty":
            return (
                f"{exe} printed nothing (exit status {code}): is the Termux:API app installed, "
                "opened once, and exempt from battery optimisation?"
            )
        if exc.kind == "not_json":
            return f"{exe} printed no location (exit status {code}): {exc}"
        return f"Termux:API: {exc}"

    def _answered(self) -> None:
        if not self._connected:
            self._opened()
        self._backoff.reset()

    def _fail(self, reason: str) -> bool:
        self._lost(reason)
        return True

    def _plan_battery(self, now: float) -> BatteryState:
        """The last battery reading, or unknown when there is none recent enough."""
        if self._battery_at is None or now - self._battery_at > self.options.battery_max_age_s:
            return UNKNOWN_BATTERY
        return self._battery

    def _replan(self) -> Plan:
        now = self._mono()
        plan = self.options.policy.plan(self._plan_battery(now), self._motion.state(now))
        if plan != self._plan:
            log.info(
                "%s: polling every %g s, IMU %s (%s)",
                self.name,
                plan.gps_interval_s,
                f"every {plan.imu_delay_ms} ms" if plan.imu_on else "off",
                plan.reason,
            )
            self._plan = plan
            if self.on_plan is not None:
                self.on_plan(plan)
        return plan

    async def _refresh_battery(self, now: float) -> None:
        """Read termux-battery-status when ``battery_interval_s`` has passed; never raises."""
        opts = self.options
        if not opts.battery:
            return
        if self._battery_tried is not None and now - self._battery_tried < opts.battery_interval_s:
            return
        self._battery_tried = now
        try:
            state = await read_battery(opts.battery_executable, opts.battery_timeout_s)
        except FileNotFoundError:
            error = f"{opts.battery_executable} not found: {MISSING_HINT}"
        except (BatteryStatusError, CommandTimeout, OSError) as exc:
            error = f"{opts.battery_executable}: {exc}"
        else:
            self._battery = state
            self._battery_at = self._mono()
            self._battery_reads += 1
            self._battery_error = None
            return
        self._battery_failures += 1
        if error != self._battery_error:
            log.warning("%s: %s", self.name, error)
        self._battery_error = error
