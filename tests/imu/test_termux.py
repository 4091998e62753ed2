"""termux-sensor: the parser on recorded-format streams, the source against a fake executable.

The fixtures in tests/data/imu (see its README) are written in the exact
format termux-api prints.  The source tests put a real executable named
``termux-sensor`` first on PATH: a small Python program that prints those
fixtures the way the real one does (pretty-printed objects, flushed in
pieces, the script's messages on SIGTERM) and logs every invocation, so the
``-c`` releases can be counted.  No mocks, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import stat
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest

from agent.backoff import Backoff
from agent.imu.sample import ImuSample
from agent.imu.termux import (
    TermuxParser,
    TermuxSensorSource,
    is_accelerometer,
    is_gyroscope,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "imu"
LSM = DATA / "termux_lsm6dso.txt"
BMI = DATA / "termux_bmi160_accel_only.txt"
VARIANTS = DATA / "termux_all_variants.txt"
NO_MATCH = DATA / "termux_no_match.txt"
ACCEL = "lsm6dso LSM6DSO Accelerometer Non-wakeup"
GYRO = "lsm6dso LSM6DSO Gyroscope Non-wakeup"


def objects_of(path: Path) -> list[dict[str, dict[str, list[float]]]]:
    """The JSON objects in a fixture, found independently of the parser (raw_decode)."""
    text = path.read_text()
    dec = json.JSONDecoder()
    out = []
    i = text.find("{")
    while i >= 0:
        obj, end = dec.raw_decode(text, i)
        out.append(obj)
        i = text.find("{", end)
    return out


def expected_readings(path: Path) -> list[tuple[float, ...]]:
    """(ax, ay, az, gx, gy, gz) of each object with readings, consecutive repeats removed."""
    out: list[tuple[float, ...]] = []
    for obj in objects_of(path):
        if ACCEL not in obj:
            continue
        reading = tuple(obj[ACCEL]["values"][:3]) + tuple(obj[GYRO]["values"][:3])
        if not out or out[-1] != reading:
            out.append(reading)
    return out


def as_tuple(s: ImuSample) -> tuple[float | None, ...]:
    return (s.ax, s.ay, s.az, s.gx, s.gy, s.gz)


# -- matching vendor names ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "accel", "gyro"),
    [
        ("lsm6dso LSM6DSO Accelerometer Non-wakeup", True, False),
        ("bmi160_accelerometer accelerometer non-wakeup", True, False),
        ("BMI160 Accelerometer", True, False),
        ("icm4x6xx Accelerometer Non-wakeup", True, False),
        ("Goldfish 3-axis Accelerometer", True, False),
        ("lsm6dso LSM6DSO Accelerometer-Uncalibrated Non-wakeup", False, False),
        ("Accelerometer Uncalibrated", False, False),
        ("linear_acceleration", False, False),
        ("Linear Acceleration Sensor", False, False),
        ("Accelerometer Limited Axes", False, False),
        ("lsm6dso LSM6DSO Gyroscope Non-wakeup", False, True),
        ("BMI160 gyroscope Wakeup", False, True),
        ("Gyroscope Uncalibrated Sensor", False, False),
        ("lsm6dso LSM6DSO Gyroscope-Uncalibrated Non-wakeup", False, False),
        ("Gravity Sensor", False, False),
        ("Game Rotation Vector", False, False),
    ],
)
def test_vendor_names(name: str, accel: bool, gyro: bool) -> None:
    assert is_accelerometer(name) is accel
    assert is_gyroscope(name) is gyro


# -- the parser -----------------------------------------------------------------------


def test_whole_stream_at_once() -> None:
    p = TermuxParser(period=0.01)
    samples = p.feed(LSM.read_text(), 100.0)
    assert [as_tuple(s) for s in samples] == expected_readings(LSM)
    assert len(samples) == 10
    st = p.stats
    assert (st.objects, st.empty, st.repeated, st.samples) == (13, 1, 2, 10)
    assert (st.garbage_lines, st.bad_objects, st.no_accel) == (0, 0, 0)
    assert (st.accel_name, st.gyro_name) == (ACCEL, GYRO)
    # ten readings arrived together: spread back by the print interval, ending on arrival
    ts = [s.t for s in samples]
    assert ts[-1] == 100.0
    assert ts == pytest.approx([100.0 - 0.01 * (9 - i) for i in range(10)])
    # org.json prints an integral double without ".0": still a float here
    assert any(s.gx == 0.0 for s in samples)


@pytest.mark.parametrize("size", [1, 2, 7, 64, 4096])
def test_any_split_gives_the_same_samples(size: int) -> None:
    text = LSM.read_text()
    p = TermuxParser(period=0.01)
    got: list[ImuSample] = []
    for i in range(0, len(text), size):
        got += p.feed(text[i : i + size], 50.0 + i * 1e-4)
    assert [as_tuple(s) for s in got] == expected_readings(LSM)
    assert all(b.t > a.t for a, b in itertools.pairwise(got))


def test_random_splits_and_arrival_stamps() -> None:
    text = LSM.read_text()
    rng = random.Random(11)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), 25))
        p = TermuxParser(period=0.01)
        got: list[ImuSample] = []
        last = 0
        for k, cut in enumerate([*cuts, len(text)]):
            got += p.feed(text[last:cut], 10.0 + k)
            last = cut
        assert [as_tuple(s) for s in got] == expected_readings(LSM)
        ts = [s.t for s in got]
        assert ts == sorted(ts) and len(set(ts)) == len(ts)


def test_one_object_per_read_is_stamped_on_arrival() -> None:
    p = TermuxParser(period=0.01)
    chunks = LSM.read_text().split("\n}\n")
    got: list[ImuSample] = []
    for k, chunk in enumerate(chunks):
        got += p.feed(chunk + ("\n}\n" if k < len(chunks) - 1 else ""), 7.0 + 0.05 * k)
    # chunk k holds reading k+1 ("{}" rides with the first); 4 and 9 are repeats
    arrivals = [7.0 + 0.05 * k for k in (0, 1, 2, 3, 5, 6, 7, 8, 10, 11)]
    assert [s.t for s in got] == pytest.approx(arrivals)


def test_accel_only_phone_and_the_scripts_messages() -> None:
    p = TermuxParser(period=0.01)
    samples = p.feed(BMI.read_text(), 1.0)
    assert len(samples) == 6
    assert not any(s.has_gyro for s in samples)
    assert samples[0].az == pytest.approx(9.7968, abs=1e-5)
    assert p.stats.accel_name == "bmi160_accelerometer accelerometer non-wakeup"
    assert p.stats.gyro_name is None
    assert p.stats.garbage_lines == 3
    assert p.stats.last_garbage == "Sensor cleanup successful!"


def test_calibrated_sensors_chosen_among_variants() -> None:
    p = TermuxParser()
    samples = p.feed(VARIANTS.read_text(), 3.0)
    assert len(samples) == 4
    for i, s in enumerate(samples):
        assert (s.ax, s.ay, s.az) == pytest.approx((0.298 + 0.01 * i, 9.614, 1.004), abs=1e-6)
        assert (s.gx, s.gy, s.gz) == pytest.approx((0.0019, -0.0015, 0.0003 + 0.001 * i), abs=1e-7)
    assert p.stats.accel_name == ACCEL and p.stats.gyro_name == GYRO
    assert len(p.stats.keys_seen) == 5


def test_cut_object_and_garbage_between_objects() -> None:
    objs = LSM.read_text().split("\n}\n")
    first, second, third = objs[1] + "\n}\n", objs[2] + "\n}\n", objs[3] + "\n}\n"
    cut = second[: len(second) // 2]  # the process died mid-object and was restarted
    stream = first + cut + "\nCaught interrupt.. Finishing...\nPerforming sensor cleanup\n" + third
    p = TermuxParser()
    samples = p.feed(stream, 1.0)
    assert len(samples) == 2
    assert p.stats.bad_objects == 1
    assert p.stats.garbage_lines == 2
    assert p.stats.last_garbage == "Performing sensor cleanup"
    whole = TermuxParser().feed(first + third, 1.0)
    assert [as_tuple(s) for s in samples] == [as_tuple(s) for s in whole]


def test_bad_values_are_not_samples() -> None:
    p = TermuxParser()
    stream = (
        '{\n  "X Accelerometer": {\n    "values": [\n      1,\n      "a",\n      3\n    ]\n  }\n}\n'
        '{\n  "X Accelerometer": {\n    "values": [\n      1,\n      2\n    ]\n  }\n}\n'
        '{"X Accelerometer": {"values": [true, 2, 3]}}\n'
        '{\n  "X Accelerometer": {\n    "values": [\n      NaN,\n      2,\n      3\n    ]\n  }\n}\n'
        '{"X Accelerometer": {"values": [0.5, 2, 3]}}\n'
    )
    samples = p.feed(stream, 1.0)
    assert [as_tuple(s)[:3] for s in samples] == [(0.5, 2.0, 3.0)]
    assert p.stats.no_accel == 4


def test_repeats_kept_when_asked() -> None:
    p = TermuxParser(drop_repeats=False)
    assert len(p.feed(LSM.read_text(), 1.0)) == 12
    assert p.stats.repeated == 0


def test_flush_completes_last_line_and_drops_cut_object() -> None:
    p = TermuxParser()
    assert p.feed('{"A Accelerometer": {"values": [1, 2, 3]}}', 1.0) == []  # no newline yet
    assert len(p.flush(2.0)) == 1
    p.feed('{\n  "A Accelerometer": {\n', 3.0)
    assert p.flush(4.0) == []
    assert p.stats.bad_objects == 1


# -- the source against a fake termux-sensor -------------------------------------------

FAKE = """\
#!{python}
'''A stand-in for termux-sensor: prints a recorded stream like the real one.'''
import os, signal, sys, time

log = open(os.environ["FAKE_TERMUX_LOG"], "a", buffering=1)
args = sys.argv[1:]

def wait_for(gate):
    # a slow Termux:API: the step ends only once the test creates this file
    while gate and not os.path.exists(gate):
        time.sleep(0.005)

if args == ["-c"]:
    log.write("cleanup-begin\\n")
    wait_for(os.environ.get("FAKE_TERMUX_CLEANUP_GATE"))
    log.write("cleanup\\n")
    print("Sensor cleanup successful!")
    sys.exit(0)
log.write("start " + " ".join(args) + "\\n")

def term(signum, frame):
    # the real script's trap: echo, then release the sensors itself
    log.write("term\\n")
    try:
        print("Caught interrupt.. Finishing...", flush=True)
    except OSError:  # its output is closed already
        os._exit(0)
    sys.exit(0)

signal.signal(signal.SIGTERM, term)
mode = os.environ.get("FAKE_TERMUX_MODE", "once")
text = open(os.environ["FAKE_TERMUX_STREAM"]).read()
pace = float(os.environ.get("FAKE_TERMUX_PACE", "0.002"))
out = sys.stdout
pieces = text.split("\\n}\\n")
for i, piece in enumerate(pieces):
    chunk = piece + ("\\n}\\n" if i < len(pieces) - 1 else "")
    half = len(chunk) // 2  # objects reach the reader in two pieces
    out.write(chunk[:half]); out.flush(); time.sleep(pace / 2)
    out.write(chunk[half:]); out.flush(); time.sleep(pace / 2)
if mode == "hang":
    while True:
        time.sleep(1)
if mode == "close":  # the output ends (stdout and stderr: one pipe); the exit comes later
    os.close(1)
    os.close(2)
    log.write("closed\\n")
    wait_for(os.environ.get("FAKE_TERMUX_EXIT_GATE"))
sys.exit(int(os.environ.get("FAKE_TERMUX_EXIT", "0")))
"""


class Fake:
    """The fake executable on PATH and its invocation log."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, stream: Path, mode: str) -> None:
        bindir = tmp / "bin"
        bindir.mkdir()
        exe = bindir / "termux-sensor"
        exe.write_text(FAKE.replace("{python}", sys.executable))
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.log = tmp / "calls.log"
        self.log.touch()
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("FAKE_TERMUX_LOG", str(self.log))
        monkeypatch.setenv("FAKE_TERMUX_STREAM", str(stream))
        monkeypatch.setenv("FAKE_TERMUX_MODE", mode)

    def calls(self) -> list[str]:
        """The log without the "-c began" notes (only the slow-release tests look at them)."""
        return [x for x in self.all_calls() if x != "cleanup-begin"]

    def all_calls(self) -> list[str]:
        return self.log.read_text().splitlines()


def fast_backoff() -> Backoff:
    return Backoff(min_s=0.02, max_s=0.1, rng=random.Random(3))


class Consumer:
    """Iterates ``batches()`` in a task; waits on what it collected with deadlines."""

    def __init__(self, source: TermuxSensorSource) -> None:
        self.source = source
        self.samples: list[ImuSample] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for batch in self.source.batches():
            self.samples += batch

    async def until(self, cond: Callable[[], bool], what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if self.task.done() and self.task.exception() is not None:
                raise AssertionError(f"source died waiting for {what}") from self.task.exception()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; status {self.source.status()}")
            await asyncio.sleep(0.01)


def test_source_reads_then_close_releases_sensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Fake(tmp_path, monkeypatch, LSM, "hang")

    async def main() -> None:
        src = TermuxSensorSource(delay_ms=10, stall_s=30, backoff=fast_backoff())
        c = Consumer(src)
        before = time.monotonic()
        await c.until(lambda: len(c.samples) == 10, "10 samples")
        assert [as_tuple(s) for s in c.samples] == expected_readings(LSM)
        ts = [s.t for s in c.samples]
        assert ts == sorted(ts) and before <= ts[0] and ts[-1] <= time.monotonic()
        st = src.status()
        assert st["connected"] is True and st["samples"] == 10
        assert st["parser"]["repeated"] == 2 and st["parser"]["accel_name"] == ACCEL
        assert st["health"]["samples"] == 10

        await src.close()
        await asyncio.wait_for(c.task, 10)  # the stream ends by itself after close()
        assert src.status()["connected"] is False

    asyncio.run(main())
    calls = fake.calls()
    assert calls[0] == "cleanup"  # a stale writer from a previous run is released first
    assert calls[1] == "start -s accelerometer,gyroscope -d 10"
    assert "term" in calls[2:]  # the process group got SIGTERM
    assert calls[-1] == "cleanup"  # and the sensors were released after it
    assert calls.count("start -s accelerometer,gyroscope -d 10") == 1


def test_exit_restarts_with_cleanup_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Fake(tmp_path, monkeypatch, BMI, "once")

    async def main() -> None:
        src = TermuxSensorSource(sensors=["accelerometer"], delay_ms=20, backoff=fast_backoff())
        c = Consumer(src)
        await c.until(lambda: src.status()["reconnects"] >= 2, "two restarts")

        def started() -> int:
            return sum(x.startswith("start") for x in fake.calls())

        await c.until(lambda: started() >= 3, "the third run to start")
        st = src.status()
        assert st["last_error"] == "termux-sensor exited with 0: Sensor cleanup successful!"
        assert 0 in st["exit_codes"]
        assert st["parser"]["gyro_name"] is None
        assert st["samples"] >= 12  # 6 readings per run
        await src.close()
        await asyncio.wait_for(c.task, 10)

    asyncio.run(main())
    calls = fake.calls()
    starts = [i for i, c in enumerate(calls) if c.startswith("start")]
    assert len(starts) >= 3
    for a, b in itertools.pairwise(starts):
        assert "cleanup" in calls[a + 1 : b]  # released between every run
    assert calls[-1] == "cleanup"
    assert all(c == "start -s accelerometer -d 20" for c in calls if c.startswith("start"))


def test_cancelling_the_consumer_releases_sensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Fake(tmp_path, monkeypatch, LSM, "hang")

    async def main() -> None:
        src = TermuxSensorSource(stall_s=30, backoff=fast_backoff())
        c = Consumer(src)
        await c.until(lambda: len(c.samples) >= 1, "a sample")
        c.task.cancel()
        with suppress(asyncio.CancelledError):
            await c.task

    asyncio.run(main())
    calls = fake.calls()
    assert calls[1].startswith("start")
    assert "term" in calls and calls[-1] == "cleanup"


def test_breaking_out_of_samples_releases_sensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Fake(tmp_path, monkeypatch, BMI, "hang")

    async def main() -> list[ImuSample]:
        src = TermuxSensorSource(sensors=["accelerometer"], stall_s=30, backoff=fast_backoff())
        got: list[ImuSample] = []
        async with asyncio.timeout(15):
            async for sample in src.samples():  # one at a time
                got.append(sample)
                if len(got) == 6:
                    break
        return got

    got = asyncio.run(main())
    assert [s.az for s in got] == pytest.approx([9.7968 + 0.003 * i for i in range(6)], abs=1e-5)
    calls = fake.calls()
    assert "term" in calls and calls[-1] == "cleanup"


def test_stalled_process_is_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Fake(tmp_path, monkeypatch, LSM, "hang")

    async def main() -> None:
        src = TermuxSensorSource(stall_s=0.3, backoff=fast_backoff())
        c = Consumer(src)
        await c.until(lambda: src.status()["reconnects"] >= 1, "a restart")
        assert src.status()["last_error"] == "no new reading for 0.3 s"
        await src.close()
        await asyncio.wait_for(c.task, 10)

    asyncio.run(main())
    calls = fake.calls()
    assert calls.count("term") >= 1 and calls[-1] == "cleanup"


def test_no_matching_sensor_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Fake(tmp_path, monkeypatch, NO_MATCH, "once")

    async def main() -> None:
        src = TermuxSensorSource(sensors=["barometer"], backoff=fast_backoff())
        c = Consumer(src)
        await c.until(lambda: src.status()["reconnects"] >= 1, "a restart")
        st = src.status()
        assert st["last_error"] == "termux-sensor exited with 0: No valid sensors were registered!"
        assert st["samples"] == 0
        await src.close()
        await asyncio.wait_for(c.task, 10)

    asyncio.run(main())


def test_missing_executable(tmp_path: Path) -> None:
    async def main() -> None:
        src = TermuxSensorSource(executable=str(tmp_path / "nope"), backoff=fast_backoff())
        c = Consumer(src)
        await c.until(lambda: src.status()["last_error"] is not None, "an error")
        st = src.status()
        assert "not found" in st["last_error"]
        assert st["cleanup_failures"] >= 1
        await src.close()
        await asyncio.wait_for(c.task, 10)

    asyncio.run(main())


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        TermuxSensorSource(sensors=["accelerometer,gyroscope"])
    with pytest.raises(ValueError):
        TermuxSensorSource(delay_ms=0)


def test_power_plan_pauses_and_restarts_at_a_new_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parked phone on battery turns its sensors off; moving again, on at the plan's -d."""
    fake = Fake(tmp_path, monkeypatch, LSM, "hang")

    def starts() -> list[str]:
        return [x for x in fake.calls() if x.startswith("start")]

    async def main() -> None:
        src = TermuxSensorSource(delay_ms=10, stall_s=30, backoff=fast_backoff())
        c = Consumer(src)
        await c.until(lambda: len(c.samples) == 10, "10 samples")

        src.follow_plan(False, 10, "parked for 15 min on battery")
        await c.until(lambda: fake.calls()[-1] == "cleanup", "the sensors released")
        st = src.status()
        assert st["paused"] == "parked for 15 min on battery"
        assert st["connected"] is False and st["last_error"] is None  # a pause is no fault
        assert len(starts()) == 1

        src.follow_plan(True, 30)
        await c.until(lambda: len(starts()) == 2, "termux-sensor started again")
        await c.until(lambda: len(c.samples) == 20, "the readings of the second run")
        assert starts()[-1] == "start -s accelerometer,gyroscope -d 30"
        st = src.status()
        assert st["paused"] is None and st["connected"] is True and st["replans"] == 2
        assert st["print_rate_hz"] == 33.3 and st["problems"] == []

        src.follow_plan(True, 30)  # the same plan again changes nothing
        assert src.status()["replans"] == 2
        src.follow_plan(True, 100)  # a new interval while running: one restart, no backoff
        await c.until(lambda: len(starts()) == 3, "a restart at -d 100")
        assert starts()[-1] == "start -s accelerometer,gyroscope -d 100"
        assert src.status()["last_error"] is None

        src.follow_plan(False, 100, "low battery")
        await c.until(lambda: fake.calls()[-1] == "cleanup", "released again")
        await src.close()  # a paused source closes at once
        await asyncio.wait_for(c.task, 10)

    asyncio.run(main())
    calls = fake.calls()
    assert calls.count("term") == 3 and calls[-1] == "cleanup"


def test_a_pause_during_the_release_before_a_start_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan turns the IMU off while ``-c`` runs before the first start: it never starts.

    The release before a start takes up to ``cleanup_timeout_s``; there is no process
    for follow_plan to signal then.  The stand-in's ``-c`` waits for a file the test
    creates only after the pause, so the pause falls in that window every time.
    """
    fake = Fake(tmp_path, monkeypatch, LSM, "hang")
    gate = tmp_path / "release-done"
    monkeypatch.setenv("FAKE_TERMUX_CLEANUP_GATE", str(gate))

    def starts() -> list[str]:
        return [x for x in fake.calls() if x.startswith("start")]

    async def main() -> None:
        src = TermuxSensorSource(delay_ms=10, stall_s=30, backoff=fast_backoff())
        c = Consumer(src)
        await c.until(lambda: "cleanup-begin" in fake.all_calls(), "the release to begin")
        src.follow_plan(False, 10, "parked for 15 min on battery")
        gate.touch()
        await c.until(lambda: src.status().get("state") == "paused", "the source to pause")
        assert fake.calls() == ["cleanup"] and starts() == []
        st = src.status()
        assert st["paused"] == "parked for 15 min on battery" and st["starts"] == 0
        assert st["last_error"] is None and st["connected"] is False

        src.follow_plan(True, 30)
        await c.until(lambda: len(c.samples) == 10, "the readings once on again")
        assert starts() == ["start -s accelerometer,gyroscope -d 30"]  # never at -d 10
        await src.close()
        await asyncio.wait_for(c.task, 10)

    asyncio.run(main())
    assert fake.calls()[-1] == "cleanup"


def test_a_pause_while_the_process_starts_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan turns the IMU off while termux-sensor is being spawned: it is stopped at once.

    A task polls at every turn of the event loop for the release before the start
    to be counted; the next time it runs is while ``create_subprocess_exec`` awaits
    its pipes: the process exists, ``follow_plan`` cannot see it yet.
    """
    fake = Fake(tmp_path, monkeypatch, LSM, "hang")

    async def main() -> None:
        src = TermuxSensorSource(delay_ms=10, stall_s=30, backoff=fast_backoff())
        c = Consumer(src)
        deadline = time.monotonic() + 15
        while src.status()["cleanups"] < 1:
            assert time.monotonic() < deadline, "no release before the start"
            await asyncio.sleep(0)
        assert src.status()["starts"] == 0  # still inside create_subprocess_exec
        src.follow_plan(False, 10, "parked")
        await c.until(lambda: src.status().get("state") == "paused", "the source to pause")
        st = src.status()
        assert st["starts"] == 1 and st["last_error"] is None and st["reconnects"] == 0
        assert fake.calls()[-1] == "cleanup"  # stopped, then the sensors released
        await src.close()
        await asyncio.wait_for(c.task, 10)

    asyncio.run(main())
    assert released_after_each_start(fake)


def released_after_each_start(fake: Fake) -> bool:
    """At most the one start, and it was released after it."""
    calls = fake.calls()
    starts = [i for i, x in enumerate(calls) if x.startswith("start")]
    return len(starts) <= 1 and all("cleanup" in calls[i + 1 :] for i in starts)


def test_a_failure_as_the_plan_changes_is_still_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that ended on its own is a failure even if a new plan SIGTERMs it as it exits.

    The stand-in prints its stream, closes its output and lingers before exiting
    (until a file appears that the test never creates): its exit status is not in
    yet when the new plan comes and signals it.  Its end was not the replan's
    doing: it is reported (``last_error``) and retried after the backoff, at the
    new interval.
    """
    fake = Fake(tmp_path, monkeypatch, LSM, "close")
    monkeypatch.setenv("FAKE_TERMUX_EXIT_GATE", str(tmp_path / "never"))

    def starts() -> list[str]:
        return [x for x in fake.calls() if x.startswith("start")]

    async def main() -> None:
        src = TermuxSensorSource(delay_ms=10, stall_s=30, backoff=fast_backoff())
        c = Consumer(src)
        await c.until(lambda: src.status().get("state") == "exited", "the output to end")
        assert src.status()["last_error"] is None
        src.follow_plan(True, 30)
        await c.until(lambda: len(starts()) == 2, "the restart")
        st = src.status()
        assert st["last_error"] is not None
        assert st["last_error"].startswith("termux-sensor exited with "), st["last_error"]
        assert st["replans"] == 1 and "term" in fake.calls()
        assert starts()[-1] == "start -s accelerometer,gyroscope -d 30"
        await src.close()
        await asyncio.wait_for(c.task, 10)

    asyncio.run(main())


def test_a_replan_that_ends_a_running_process_is_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counterpart: a process the new plan SIGTERMs while it runs is restarted at once."""
    fake = Fake(tmp_path, monkeypatch, LSM, "hang")

    def starts() -> list[str]:
        return [x for x in fake.calls() if x.startswith("start")]

    async def main() -> None:
        src = TermuxSensorSource(
            delay_ms=10, stall_s=30, backoff=Backoff(min_s=30, max_s=30, rng=random.Random(3))
        )
        c = Consumer(src)
        await c.until(lambda: len(c.samples) == 10, "10 samples")
        src.follow_plan(True, 30)
        # with the 30 s backoff of a failure this would time out
        await c.until(
            lambda: src.status()["starts"] == 2 and len(starts()) == 2, "the restart", timeout=10
        )
        st = src.status()
        assert st["last_error"] is None and st["reconnects"] == 1
        assert starts()[-1] == "start -s accelerometer,gyroscope -d 30"
        await src.close()
        await asyncio.wait_for(c.task, 10)

    asyncio.run(main())
