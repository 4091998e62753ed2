"""termux-location: the pure parser on recorded-format answers, the source against stand-ins.

Android's location API cannot run here, so ``termux-location`` and
``termux-battery-status`` are small executables put first on PATH.  They print
what the real ones print and fail the way the real ones fail; everything behind
them (subprocess, deadlines, process-group kills, parsing, pacing by battery and
motion) is the agent's real code.

Where the answers come from:

- ``RECORDED``: a real termux-location answer, as published in the documentation of
  surplus on wheels ("emulating termux-location"): stationary, provider gps, no
  "mocked" field (an app version before it existed).
- The others are written in the exact format of termux-api's
  ``LocationAPI.locationToJson`` as the current app prints it: ``android.util.JsonWriter``
  with a two-space indent (``ResultReturner.ResultJsonWriter``), fields in its order,
  Java's ``Double.toString`` of float getters widened to double (3.7899999618530273),
  ``vertical_accuracy`` only on Android 8+, ``mocked`` in recent versions.
- The permission error is the object ``TermuxApiPermissionActivity`` writes; the
  ``API_ERROR`` the one ``locationToJson`` writes for a null location; the usage
  error the ``termux-location`` script's own echo.

No mocks and no sleeps on the test side: every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.backoff import Backoff
from agent.config import parse_config
from agent.gps.fix import FixMode
from agent.gps.sources import TermuxLocationSource, TermuxOptions, open_source
from agent.gps.termux_source import (
    REJECT_KINDS,
    LocationError,
    TermuxLocations,
    location_to_fix,
    parse_location,
)
from agent.power import Plan, PowerPolicy
from tests.support.running import Running
from tests.support.termux_api import answer

RECORDED = """{
  "latitude": 1.3277513,
  "longitude": 103.678317,
  "altitude": 51.6298828125,
  "accuracy": 48.46337890625,
  "vertical_accuracy": 38.4659423828125,
  "bearing": 0.0,
  "speed": 0.0,
  "elapsedMs": 28,
  "provider": "gps"
}
"""


PERMISSION = """{
  "error": "Please grant the following permission to use this command: android.permission.ACCESS_FINE_LOCATION"
}
"""
API_ERROR = '{\n  "API_ERROR": "Failed to get location"\n}\n'
USAGE_ERROR = "termux-location: Unsupported provider: 'satellite'\n"

WALL = datetime(2026, 3, 2, 8, 0, tzinfo=UTC).timestamp()


# -- the parser (pure) --------------------------------------------------------------------


def test_recorded_answer() -> None:
    loc = parse_location(RECORDED)
    assert (loc.lat, loc.lon, loc.elapsed_ms, loc.provider) == (1.3277513, 103.678317, 28, "gps")
    assert loc.mocked is None
    fix = location_to_fix(loc, mono=1000.0, wall=WALL)
    assert fix.mono == pytest.approx(1000.0 - 0.028)
    assert fix.time == datetime.fromtimestamp(WALL - 0.028, UTC)
    assert fix.mode == FixMode.FIX_3D and fix.quality == 1 and fix.has_position
    assert fix.hdop == pytest.approx(48.46337890625 / 5) and fix.vdop == pytest.approx(7.693, 1e-3)
    assert fix.speed == 0.0 and fix.course is None  # Android's bearing 0.0 at rest: unknown
    assert fix.alt_msl is None and fix.geoid_sep is None  # ellipsoidal: not MSL
    assert fix.sats_used is None


def test_moving_answer_and_geoid_separation() -> None:
    fix = location_to_fix(parse_location(answer()), mono=50.0, wall=WALL, geoid_sep_m=43.0)
    assert fix.course == pytest.approx(271.3) and fix.speed == pytest.approx(13.41)
    assert fix.alt_msl == pytest.approx(0.5) and fix.geoid_sep == 43.0
    assert fix.alt_hae == pytest.approx(43.5)
    assert fix.hdop == pytest.approx(0.758, 1e-3)


def test_pre_oreo_answer_has_no_vertical_accuracy() -> None:
    fix = location_to_fix(parse_location(answer(vertical=None, mocked=None)), mono=1.0, wall=WALL)
    assert fix.vdop is None and fix.hdop is not None


def test_network_provider_is_2d_without_gnss_quality() -> None:
    fix = location_to_fix(
        parse_location(answer(provider="network", accuracy=30.0, altitude=0.0)), mono=1.0, wall=WALL
    )
    assert fix.mode == FixMode.FIX_2D and fix.quality is None
    assert fix.hdop == 6.0  # above the geofences' max_hdop (5): they ignore it


def test_unknown_values_reported_as_zero_are_none() -> None:
    fix = location_to_fix(
        parse_location(answer(accuracy=0.0, vertical=0.0, altitude=0.0, speed=0.0, bearing=0.0)),
        mono=1.0,
        wall=WALL,
    )
    assert fix.hdop is None and fix.vdop is None and fix.course is None
    assert fix.mode == FixMode.FIX_2D  # no altitude: a 2D fix


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (PERMISSION, "permission"),
        (API_ERROR, "api_error"),
        (USAGE_ERROR, "not_json"),
        ("", "empty"),
        ("  \n\n", "empty"),
        ("[52.1, 4.3]", "not_json"),
        ("{}", "no_position"),
        ('{"longitude": 4.3, "elapsedMs": 1}', "no_position"),
        ('{"latitude": "52.1", "longitude": 4.3}', "no_position"),
        ('{"latitude": NaN, "longitude": 4.3}', "no_position"),
        ('{"latitude": true, "longitude": 4.3}', "no_position"),
        ('{"latitude": 91.0, "longitude": 4.3}', "bad_value"),
        ('{"latitude": 52.0, "longitude": -180.5}', "bad_value"),
        ('{"latitude": 0.0, "longitude": 0.0}', "bad_value"),
        ('{"latitude": 52.0, "longitude": 4.3, "elapsedMs": -5000}', "bad_value"),
        ('{\n  "latitude": 52.37', "not_json"),  # cut off
    ],
)
def test_answers_that_give_no_fix(text: str, kind: str) -> None:
    with pytest.raises(LocationError) as err:
        parse_location(text)
    assert err.value.kind == kind


def test_permission_message_is_kept() -> None:
    with pytest.raises(LocationError, match="ACCESS_FINE_LOCATION"):
        parse_location(PERMISSION)


def test_first_object_of_a_longer_output() -> None:
    # -r updates printing two objects, or a script message after the JSON
    loc = parse_location(answer(lat=48.1) + answer(lat=48.2) + "Caught interrupt\n")
    assert loc.lat == 48.1


def test_small_negative_age_is_clock_jitter() -> None:
    loc = parse_location('{"latitude": 52.0, "longitude": 4.3, "elapsedMs": -3}')
    assert loc.elapsed_ms == 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_fix_or_a_location_error(text: str) -> None:
    p = TermuxLocations()
    try:
        fix = p.feed(text, 10.0, WALL)
    except LocationError as exc:
        assert exc.kind in REJECT_KINDS
    else:
        assert fix.has_position


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(RECORDED)), st.binary(max_size=8))
def test_cut_or_corrupted_answers_never_crash(cut: int, noise: bytes) -> None:
    """A fix (when what is left is still a JSON object with coordinates) or a LocationError."""
    text = RECORDED[:cut] + noise.decode("latin-1")
    try:
        fix = TermuxLocations().feed(text, 10.0, WALL)
    except LocationError as exc:
        assert exc.kind in REJECT_KINDS
    else:
        assert fix.has_position


# -- the filter: stale, mocked, repeated, clock ----------------------------------------------


def test_stale_mocked_and_repeats_are_counted() -> None:
    p = TermuxLocations(max_age_s=10)
    with pytest.raises(LocationError, match=r"fix is 60\.0 s old"):
        p.feed(answer(elapsed_ms=60_000), 10.0, WALL)
    with pytest.raises(LocationError) as err:
        p.feed(answer(mocked=True), 11.0, WALL + 1)
    assert err.value.kind == "mocked"
    first = p.feed(answer(elapsed_ms=200), 12.0, WALL + 2)
    assert first.mono == pytest.approx(11.8)
    # the same fix again (elapsedMs grew with the time): same instant, same place
    with pytest.raises(LocationError) as err:
        p.feed(answer(elapsed_ms=1200), 13.0, WALL + 3)
    assert err.value.kind == "repeated"
    # an older fix than the last one: times must increase
    with pytest.raises(LocationError, match="older than the previous"):
        p.feed(answer(lat=52.4, elapsed_ms=5000), 14.0, WALL + 4)
    # same place, later instant: a car at a traffic light, a real new fix
    second = p.feed(answer(elapsed_ms=10), 15.0, WALL + 5)
    assert second.mono > first.mono
    assert p.stats["stale"] == p.stats["mocked"] == 1 and p.stats["repeated"] == 2
    assert p.stats["fixes"] == 2 and p.stats["answers"] == 6
    assert p.last_reject.startswith("repeated:")


def test_mocked_accepted_when_configured() -> None:
    fix = TermuxLocations(accept_mock=True).feed(answer(mocked=True), 1.0, WALL)
    assert fix.has_position


def test_unset_phone_clock_gives_no_time() -> None:
    p = TermuxLocations(time_floor=date(2024, 1, 1))
    fix = p.feed(RECORDED, 5.0, 86400.0)  # the phone thinks it is 1970-01-02
    assert fix.time is None and fix.has_position and p.stats["clock_unset"] == 1


def test_missing_elapsed_counts_and_uses_the_arrival() -> None:
    p = TermuxLocations()
    fix = p.feed('{"latitude": 52.0, "longitude": 4.3, "provider": "gps"}', 5.0, WALL)
    assert fix.mono == 5.0 and p.stats["no_elapsed"] == 1


# -- the source against stand-in executables ---------------------------------------------


class FakeTermux:
    """Stand-in ``termux-location`` / ``termux-battery-status`` in a bin directory.

    Each executable reads its list of steps; invocation n plays step n (the last one
    repeats): ``print`` (text), ``exit`` (status), ``hang`` (start a child like the
    real script's termux-api client, and wait for ever), ``gate`` (a path: start such
    a child and answer only once that file exists, like a fix that comes late).
    Every invocation is logged with its argv, start time (monotonic, comparable
    across processes) and pids; ``ends`` has the time each one that finished exited.
    """

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.root = root

    def program(self, name: str, steps: list[dict[str, Any]]) -> None:
        steps_file = self.root / f"{name}.steps.json"
        steps_file.write_text(json.dumps(steps))
        log = self.root / f"{name}.log"
        exe = self.bin / name
        exe.write_text(
            f"#!{sys.executable}\n"
            "import fcntl, json, os, subprocess, sys, time\n"
            f"STEPS = {str(steps_file)!r}\nLOG = {str(log)!r}\n"
            "t = time.monotonic()\n"
            "with open(STEPS + '.lock', 'a+') as lock:\n"
            "    fcntl.flock(lock, fcntl.LOCK_EX)\n"
            "    try:\n"
            "        n = int(open(STEPS + '.n').read())\n"
            "    except FileNotFoundError:\n"
            "        n = 0\n"
            "    open(STEPS + '.n', 'w').write(str(n + 1))\n"
            "steps = json.load(open(STEPS))\n"
            "step = steps[min(n, len(steps) - 1)]\n"
            "entry = {'n': n, 'argv': sys.argv[1:], 't': t, 'pid': os.getpid()}\n"
            "if step.get('hang') or step.get('gate'):\n"
            "    child = subprocess.Popen(['sleep', '3600'])\n"
            "    entry['child'] = child.pid\n"
            "with open(LOG, 'a') as f:\n"
            "    f.write(json.dumps(entry) + '\\n')\n"
            "if step.get('hang'):\n"
            "    child.wait()\n"
            "if step.get('gate'):\n"
            "    while not os.path.exists(step['gate']):\n"
            "        time.sleep(0.01)\n"
            "    child.kill()\n"
            "    child.wait()\n"
            "sys.stdout.write(step.get('print', ''))\n"
            "sys.stdout.flush()\n"
            "with open(LOG + '.ends', 'a') as f:\n"
            "    f.write(json.dumps({'n': n, 't': time.monotonic()}) + '\\n')\n"
            "sys.exit(step.get('exit', 0))\n"
        )
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def calls(self, name: str) -> list[dict[str, Any]]:
        return self._entries(self.root / f"{name}.log")

    def ends(self, name: str) -> dict[int, float]:
        """Invocation number -> when it exited, for those that ran to their end."""
        return {e["n"]: e["t"] for e in self._entries(self.root / f"{name}.log.ends")}

    @staticmethod
    def _entries(log: Path) -> list[dict[str, Any]]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTermux]:
    f = FakeTermux(tmp_path)
    monkeypatch.setenv("PATH", f"{f.bin}:/usr/bin:/bin")
    yield f


def fast_backoff() -> Backoff:
    return Backoff(min_s=0.02, max_s=0.1, rng=random.Random(3))


def options(**kw: Any) -> TermuxOptions:
    base = TermuxOptions(
        battery=False, policy=PowerPolicy(moving_s=0.2, stopped_s=0.5, parked_s=1.0)
    )
    return replace(base, **kw)


def moving(n: int, **kw: Any) -> list[dict[str, Any]]:
    return [{"print": answer(lat=52.37 + i * 1e-4, **kw)} for i in range(n)]


def dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def until(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def gaps(calls: list[dict[str, Any]]) -> list[float]:
    return [b["t"] - a["t"] for a, b in itertools.pairwise(calls)]


# The stand-in notes its start once its interpreter runs, 20-150 ms after the spawn on a
# busy machine: one late start makes one gap look that much shorter (and the next longer).
JITTER_S = 0.15


def paced(calls: list[dict[str, Any]], interval: float) -> bool:
    """Starts at least ``interval`` apart on the whole: first to last, less one start's jitter.

    Only the first and last start's jitter count over the span, so this holds
    on a loaded machine, while back-to-back polls (no pacing) fail it.
    """
    if len(calls) < 2:
        return False
    span = calls[-1]["t"] - calls[0]["t"]
    return span >= (len(calls) - 1) * interval - JITTER_S


def test_polls_once_at_the_moving_rate(fake: FakeTermux) -> None:
    fake.program("termux-location", moving(10))

    async def main() -> None:
        src = TermuxLocationSource(options(), backoff=fast_backoff())
        async with Running(src) as r:
            await r.until(lambda: len(r.fixes) >= 4, "four fixes")
            st = r.status()
        assert st["connected"] and st["kind"] == "termux" and st["last_error"] is None
        assert st["target"] == "termux-location -p gps -r once"
        assert st["parser"]["fixes"] >= 4 and st["parser"]["polls"] >= 4
        assert st["plan"]["gps_interval_s"] == 0.2 and st["plan"]["motion"] == "moving"
        monos = [f.mono for f in r.fixes]
        assert monos == sorted(monos) and len(set(monos)) == len(monos)
        now = datetime.now(UTC)
        for f in r.fixes:
            assert f.time is not None and abs((now - f.time).total_seconds()) < 30
            assert f.mode == FixMode.FIX_3D and f.speed == pytest.approx(13.41)

    asyncio.run(main())
    calls = fake.calls("termux-location")
    assert all(c["argv"] == ["-p", "gps", "-r", "once"] for c in calls)
    assert paced(calls[:5], 0.2), gaps(calls)  # start to start


def test_fix_instant_is_the_arrival_minus_its_age(fake: FakeTermux) -> None:
    fake.program("termux-location", [{"print": answer(elapsed_ms=1500)}])

    async def main() -> None:
        src = TermuxLocationSource(options(max_age_s=10), backoff=fast_backoff())
        before_mono, before_wall = time.monotonic(), time.time()
        async with Running(src) as r:
            await r.until(lambda: len(r.fixes) >= 1, "a fix")
        after_mono, after_wall = time.monotonic(), time.time()
        fix = r.fixes[0]
        assert before_mono - 1.5 <= fix.mono <= after_mono - 1.5
        assert fix.time is not None
        assert before_wall - 1.5 <= fix.time.timestamp() <= after_wall - 1.5

    asyncio.run(main())


def test_low_battery_slows_the_polling(fake: FakeTermux) -> None:
    fake.program("termux-location", moving(10))
    fake.program(
        "termux-battery-status",
        [
            {
                "print": '{\n  "health": "GOOD",\n  "percentage": 15,\n  "plugged": "UNPLUGGED",\n'
                '  "status": "DISCHARGING",\n  "temperature": 30.5,\n  "current": -350000\n}\n'
            }
        ],
    )

    async def main() -> None:
        opts = options(battery=True, policy=PowerPolicy(moving_s=0.1, stopped_s=1, parked_s=2))
        src = TermuxLocationSource(opts, backoff=fast_backoff())
        async with Running(src) as r:
            await r.until(lambda: len(r.fixes) >= 3, "three fixes")
            st = r.status()
        assert st["battery"]["percent"] == 15.0 and st["battery"]["reads"] == 1
        assert st["plan"]["battery"] == "low" and st["plan"]["gps_interval_s"] == pytest.approx(0.3)
        assert st["plan"]["imu_on"] and st["plan"]["imu_delay_ms"] == 30

    asyncio.run(main())
    assert fake.calls("termux-battery-status")[0]["argv"] == []
    # from the second poll on (the first one's start came after the battery read)
    calls = fake.calls("termux-location")[1:4]
    assert paced(calls, 0.3), gaps(calls)


def test_stopped_vehicle_is_polled_less_often(fake: FakeTermux) -> None:
    fake.program(
        "termux-location", [{"print": answer(lat=52.0 + i * 1e-7, speed=0.0)} for i in range(40)]
    )

    async def main() -> None:
        opts = options(
            policy=PowerPolicy(moving_s=0.05, stopped_s=0.6, parked_s=5),
            stopped_after_s=0.3,
            parked_after_s=60,
        )
        src = TermuxLocationSource(opts, backoff=fast_backoff())
        async with Running(src) as r:
            await r.until(lambda: r.status()["plan"]["motion"] == "stopped", "stopped")
            n = len(fake.calls("termux-location"))
            await r.until(lambda: len(fake.calls("termux-location")) >= n + 2, "two more polls")
            st = r.status()
        assert st["plan"]["gps_interval_s"] == 0.6 and not st["plan"]["imu_on"]
        assert st["motion"]["stopped_for_s"] >= 0.3
        later = fake.calls("termux-location")[n:]
        assert paced(later, 0.6), gaps(later)

    asyncio.run(main())


def test_missing_termux_api_is_a_clear_status(fake: FakeTermux) -> None:
    async def main() -> None:
        src = TermuxLocationSource(options(battery=True), backoff=fast_backoff())
        async with Running(src) as r:
            await r.until(lambda: r.status()["battery"]["failures"] >= 1, "a battery failure")
            await r.until(lambda: r.status()["last_error"] is not None, "an error")
            st = r.status()
        assert r.fixes == [] and not st["connected"]
        assert st["last_error"].startswith("termux-location not found")
        assert "pkg install termux-api" in st["last_error"] and "Termux:API app" in st["last_error"]
        assert "not found" in st["battery"]["last_error"]
        assert st["parser"]["polls"] == 0

    asyncio.run(main())


def test_permission_refused_then_granted(fake: FakeTermux) -> None:
    fake.program("termux-location", [{"print": PERMISSION}, *moving(5)])

    async def main() -> None:
        src = TermuxLocationSource(options(), backoff=fast_backoff())
        async with Running(src) as r:
            await r.until(lambda: len(r.fixes) >= 1, "a fix after the permission")
            st = r.status()
        assert st["parser"]["permission"] == 1 and st["connected"]
        assert "Allow all the time" in st["last_error"]
        assert "ACCESS_FINE_LOCATION" in st["last_error"]

    asyncio.run(main())


def one_at_a_time(fake: FakeTermux) -> None:
    """No termux-location started before the previous one had exited."""
    calls, ends = fake.calls("termux-location"), fake.ends("termux-location")
    for a, b in itertools.pairwise(calls):
        assert a["n"] in ends, f"invocation {b['n']} started while {a['n']} was still running"
        assert b["t"] > ends[a["n"]], (a, b, ends)


def test_a_late_fix_is_waited_for_on_the_same_request(fake: FakeTermux, tmp_path: Path) -> None:
    """Indoors: past fix_timeout_s the client is not killed and no second request is made.

    Termux:API keeps a ``-r once`` request open until a fix comes whatever happens to
    the client (LocationAPI.java): a retry would only add one.  The stand-in answers
    when the test opens its gate, long after fix_timeout_s.
    """
    gate = tmp_path / "fix-arrives"
    late = answer(lat=48.8566, lon=2.3522)
    fake.program("termux-location", [{"gate": str(gate), "print": late}, *moving(5)])

    async def main() -> None:
        src = TermuxLocationSource(options(fix_timeout_s=0.2), backoff=fast_backoff())
        async with Running(src) as r:
            # five times fix_timeout_s: every one of them would have been a new request
            await r.until(lambda: (r.status()["request"]["waiting_s"] or 0) >= 1.0, "1 s wait")
            st = r.status()
            calls = fake.calls("termux-location")
            assert len(calls) == 1, calls
            assert not dead(calls[0]["pid"]) and not dead(calls[0]["child"])
            assert st["request"]["state"] == "waiting for a fix"
            assert st["parser"]["timeouts"] == 1 and st["parser"]["polls"] == 0
            assert not st["connected"] and r.fixes == []
            assert st["last_error"].startswith("no location for 0.2 s: indoors or under a roof")
            assert st["last_error"].endswith("still waiting for this request's fix")

            gate.touch()  # the fix comes
            await r.until(lambda: len(r.fixes) >= 3, "the late fix and the next polls")
            st = r.status()
        assert (r.fixes[0].lat, r.fixes[0].lon) == (48.8566, 2.3522)
        assert st["connected"] and st["parser"]["timeouts"] == 1
        assert st["request"]["state"] in ("idle", "polling")

    asyncio.run(main())
    calls = fake.calls("termux-location")
    one_at_a_time(fake)
    # after the late answer the pace is the plan's again (0.2 s start to start)
    assert paced(calls[1:4], 0.2), gaps(calls)


def test_while_waiting_for_a_fix_the_plan_follows_the_parked_van(
    fake: FakeTermux, tmp_path: Path
) -> None:
    """A van driven into a garage: no fix comes, yet it is parked and its IMU goes off."""
    fake.program(
        "termux-location",
        [
            {"print": answer(lat=52.0, speed=0.0)},
            {"gate": str(tmp_path / "never")},
        ],
    )
    fake.program(
        "termux-battery-status",
        [{"print": '{"percentage": 64, "plugged": "UNPLUGGED", "status": "DISCHARGING"}'}],
    )

    async def main() -> None:
        opts = options(
            battery=True,
            battery_interval_s=0.1,
            fix_timeout_s=0.2,
            stopped_after_s=0.3,
            parked_after_s=0.6,
        )
        src = TermuxLocationSource(opts, backoff=fast_backoff())
        plans: list[tuple[str, bool]] = []
        src.on_plan = lambda plan: plans.append((plan.motion, plan.imu_on))
        async with Running(src) as r:
            await r.until(lambda: r.status()["plan"]["motion"] == "parked", "parked")
            await r.until(lambda: r.status()["battery"]["reads"] >= 3, "battery reads")
            st = r.status()
        assert st["request"]["state"] == "waiting for a fix"
        assert ("parked", False) in plans and not st["plan"]["imu_on"]
        assert st["plan"]["gps_interval_s"] == 1.0  # the parked interval of options()
        assert len(fake.calls("termux-location")) == 2  # the answered one, the waiting one

    asyncio.run(main())
    one_at_a_time(fake)


def test_cancelling_while_waiting_for_a_fix_kills_the_client(fake: FakeTermux) -> None:
    """The agent stopping is the one time the outstanding request's client is killed."""
    fake.program("termux-location", [{"hang": True}])

    async def main() -> None:
        src = TermuxLocationSource(options(fix_timeout_s=0.1), backoff=fast_backoff())
        async with Running(src) as r:
            await r.until(lambda: r.status()["request"]["state"] == "waiting for a fix", "the wait")
            assert not dead(fake.calls("termux-location")[0]["pid"])

    asyncio.run(main())
    assert len(fake.calls("termux-location")) == 1
    hung = fake.calls("termux-location")[0]
    deadline = time.monotonic() + 10
    while not (dead(hung["pid"]) and dead(hung["child"])):
        assert time.monotonic() < deadline, "the client outlived the cancelled source"
        time.sleep(0.01)


def test_garbage_empty_answers_and_exit_codes(fake: FakeTermux) -> None:
    fake.program(
        "termux-location",
        [
            {"print": USAGE_ERROR, "exit": 1},
            {"print": "", "exit": 0},
            {"print": API_ERROR},
            {"print": answer(elapsed_ms=90_000)},  # stale: Termux:API answers, no fix
            {"print": answer(mocked=True)},
            *moving(3),
        ],
    )

    async def main() -> None:
        src = TermuxLocationSource(options(), backoff=fast_backoff())
        async with Running(src) as r:
            await r.until(lambda: len(r.fixes) >= 1, "a fix after the garbage")
            st = r.status()
        p = st["parser"]
        assert (p["not_json"], p["empty"], p["api_error"], p["stale"], p["mocked"]) == (
            1,
            1,
            1,
            1,
            1,
        )
        assert st["exit_codes"] == [1] and st["connected"] and st["reconnects"] == 0
        assert "Failed to get location" in st["last_error"]
        assert st["bytes_read"] > 0

    asyncio.run(main())


def test_open_source_and_config_build_the_termux_source() -> None:
    cfg = parse_config(
        {
            "device": {"id": "p1"},
            "gps": {
                "source": "termux",
                "rollover_floor": "2025-01-01",
                "termux": {"provider": "network", "moving_s": 2, "low_battery_pct": 30},
            },
        },
        {},
    )
    opts = cfg.gps.termux.options()
    assert opts.provider == "network" and opts.policy.moving_s == 2 and opts.policy.low_pct == 30
    src = open_source("termux", termux=opts, rollover_floor=cfg.gps.rollover_floor)
    assert isinstance(src, TermuxLocationSource)
    assert src.target == "termux-location -p network -r once"
    default = open_source("termux")
    assert isinstance(default, TermuxLocationSource) and default.options == TermuxOptions()


def test_the_imus_configured_interval_becomes_the_plans_full_rate() -> None:
    """The runtime pairs a phone's IMU (imu.rate_hz 50: -d 20) with the GPS source's plan."""
    src = TermuxLocationSource(options())
    handed: list[Plan] = []
    src.on_plan = handed.append
    assert src.plan.imu_delay_ms == 10  # the policy's default
    src.use_imu_interval(20)
    assert src.plan.imu_delay_ms == 20 and src.options.policy.imu_delay_ms == 20
    assert handed == [src.plan]  # the IMU is told
    src.use_imu_interval(20)
    assert len(handed) == 1  # nothing changed: nothing handed on
    assert src.options.policy.moving_s == 0.2  # the rest of the policy is kept
