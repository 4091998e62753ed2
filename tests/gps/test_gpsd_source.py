"""The gpsd source against gpsd itself: its recorded output, and a real gpsd fed by gpsfake.

gpsd and gpsfake come from the Debian packages gpsd and gpsd-clients
(scripts/ensure-deps.sh installs them).  Without them these tests fail with
that advice; TELEMATICS_SKIP_GPSD=1 turns the failure into a visible skip.

gpsfake starts feeding the log as soon as gpsd has the pty, and gpsd spends
its first second probing the device (the reason gpsfake's own pipe mode
sleeps 1.4 s before feeding), so the start of a single pass is lost whatever
the client does.  The tests therefore let gpsfake cycle the log and compare
one complete pass, between two wraps of the receiver time, with gpsd's own
recorded output for that log.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from agent.backoff import Backoff
from agent.gps.fix import Fix, FixMode
from agent.gps.gpsd_source import GpsdEpochs, GpsdSource, parse_gpsd_time, tpv_to_fix
from simulators.stack import stop_group
from tests.support.running import Running

LOG = "ublox-zed-f9p-nmea.log"  # 2019: after the 2016 cut-off where Debian's gpsd shifts dates
CYCLE_S = "0.002"  # pause between sentences: one pass of the 1,015-sentence log takes ~2.3 s
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Logs whose gpsd output a live stream cannot reproduce epoch for epoch, and why.
DIVERGENT = {
    "ac12.log": "gpsd sends a mode-0 TPV stamped with the next second (from ZDA) before "
    "each epoch; streamed, that second is emitted twice, out of order",
    "humminbird-M37.log": "the recording jumps back 13 s; a stream emits the repeated seconds "
    "again, while the expected file keeps one entry per distinct time",
}


def fast_backoff() -> Backoff:
    return Backoff(min_s=0.05, max_s=0.2, rng=random.Random(3))


def load_expected(shared: Path, log: str) -> list[dict[str, Any]]:
    path = shared / "gpsd" / "expected" / f"{log}.epochs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mismatches(expected: list[dict[str, Any]], got: list[Fix]) -> list[str]:
    """Differences on time, mode, lat/lon (1e-6 deg), speed and track (0.01) where present."""
    exp = [e for e in expected if e.get("time") is not None]
    if [parse_gpsd_time(e["time"]) for e in exp] != [f.time for f in got]:
        return [f"times differ: expected {len(exp)} epochs, got {len(got)}"]
    out = []
    for e, f in zip(exp, got, strict=True):
        for key, attr, tol in (
            ("mode", "mode", 0.0),
            ("lat", "lat", 1e-6),
            ("lon", "lon", 1e-6),
            ("speed", "speed", 0.01),
            ("track", "course", 0.01),
        ):
            value = getattr(f, attr)
            if key in e and (value is None or abs(e[key] - value) > tol):
                out.append(f"{e['time']} {key}: expected {e[key]}, got {value}")
    return out


# -- pure: gpsd's recorded JSON through GpsdEpochs ---------------------------------------


def test_tpv_and_sky_to_fix() -> None:
    tpv = {
        "class": "TPV",
        "mode": 3,
        "status": 3,
        "time": "2019-04-12T00:39:56.000Z",
        "lat": -45.8775,
        "lon": 170.5001,
        "altMSL": 14.2,
        "alt": 99.0,
        "geoidSep": 1.8,
        "speed": 0.0,
        "track": 12.5,
    }
    sky = {"hdop": 0.64, "pdop": 1.05, "vdop": 0.83, "uSat": 12, "nSat": 30}
    f = tpv_to_fix(tpv, sky, mono=7.0)
    assert f.time is not None and f.time.isoformat() == "2019-04-12T00:39:56+00:00"
    assert (f.mode, f.lat, f.lon, f.alt_msl, f.geoid_sep) == (3, -45.8775, 170.5001, 14.2, 1.8)
    assert (f.speed, f.course, f.quality, f.mono) == (0.0, 12.5, 4, 7.0)  # 0 stays 0; RTK fixed
    assert (f.sats_used, f.sats_in_view, f.hdop, f.pdop, f.vdop) == (12, 30, 0.64, 1.05, 0.83)

    # Old gpsd: no uSat/nSat, "alt" is MSL.  No fix: no position, missing stays None.
    old_sky = {"satellites": [{"PRN": 1, "used": True}, {"PRN": 2, "used": False}]}
    f = tpv_to_fix({"class": "TPV", "mode": 3, "lat": 1.0, "lon": 2.0, "alt": 5.0}, old_sky, 0)
    assert (f.alt_msl, f.quality, f.sats_used, f.sats_in_view, f.time) == (5.0, 1, 1, 2, None)
    f = tpv_to_fix({"class": "TPV", "mode": 1, "lat": 1.0, "lon": 2.0}, {}, 0)
    assert (f.mode, f.lat, f.lon, f.speed, f.quality) == (FixMode.NO_FIX, None, None, None, None)


def test_epochs_keep_newest_tpv_per_time_and_drop_late_ones() -> None:
    ep = GpsdEpochs(flush_after=1.5)

    def tpv(t: str | None, mode: int, **kw: float) -> dict[str, Any]:
        return {"class": "TPV", "time": t, "mode": mode, "lat": 1.0, "lon": 2.0, **kw}

    a, b = "2026-01-01T00:00:01.000Z", "2026-01-01T00:00:02.000Z"
    assert ep.add(tpv(a, 2), 10.0) == [] and ep.due() == 11.5
    assert ep.add({"class": "SKY", "hdop": 0.9}, 10.1) == []
    assert ep.add(tpv(a, 3, speed=4.0), 10.2) == []  # same epoch, more complete
    assert ep.add({"class": "SKY", "pdop": 1.7}, 10.3) == []  # partial SKY: merged, not replaced
    (f,) = ep.add(tpv(b, 3), 11.0)
    assert (f.mode, f.speed, f.mono, f.hdop, f.pdop) == (3, 4.0, 10.2, 0.9, 1.7)
    (f,) = ep.flush()  # due() passed, or disconnect
    assert f.time == parse_gpsd_time(b) and ep.due() is None
    assert ep.add(tpv(b, 3), 11.5) == []  # late report for an epoch already out
    assert ep.stats == {"tpv": 4, "sky": 2, "late_tpv": 1}


def test_epochs_match_gpsds_recorded_output_for_every_log(shared_data: Path) -> None:
    """The .chk files are gpsd's own JSON for each of 86 real logs; fed line by line, the
    epochs must be the expected ones (timed epochs; untimed ones are rate-limited here)."""
    logs = sorted((shared_data / "gpsd" / "logs").glob("*.log.chk"))
    assert len(logs) > 80
    failed: dict[str, list[str]] = {}
    for chk in logs:
        name = chk.name.removesuffix(".chk")
        ep = GpsdEpochs()
        fixes: list[Fix] = []
        for i, line in enumerate(chk.read_text(errors="replace").splitlines()):
            if line.startswith("{"):
                with suppress(ValueError):
                    fixes += ep.add(json.loads(line), float(i))
        fixes += ep.flush()
        bad = mismatches(load_expected(shared_data, name), [f for f in fixes if f.time])
        if bad:
            failed[name] = bad[:3]
    assert set(failed) == set(DIVERGENT), failed


# -- a real gpsd fed by gpsfake -------------------------------------------------------------


def gpsd_tools() -> tuple[str, str]:
    gpsd = shutil.which("gpsd", path=PATH)
    gpsfake = shutil.which("gpsfake", path=PATH)
    if gpsd and gpsfake:
        return gpsd, gpsfake
    msg = (
        "gpsd/gpsfake not installed: run scripts/ensure-deps.sh (apt-get install gpsd gpsd-clients)"
    )
    if os.environ.get("TELEMATICS_SKIP_GPSD") == "1":
        pytest.skip(f"TELEMATICS_SKIP_GPSD=1: {msg}")
    pytest.fail(f"{msg}, or set TELEMATICS_SKIP_GPSD=1 to skip these tests")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


GpsFake = Callable[[Path, int], subprocess.Popen[bytes]]


@pytest.fixture
def gpsfake(tmp_path: Path) -> Iterator[GpsFake]:
    """Start gpsfake (and its gpsd) cycling a log on a port; every one is killed at teardown.

    Each runs in its own session so the whole group (gpsfake + gpsd) dies
    together.  TMPDIR is a short private directory: gpsd's control socket
    lives there and a Unix socket path must fit in 108 bytes.  gpsd leaves a
    24 kB SysV shared-memory segment keyed by its port (gpsfake sets
    GPSD_SHM_KEY=0x4770<port>); teardown removes it so runs do not pile them up.
    """
    _, exe = gpsd_tools()
    sockdir = tempfile.mkdtemp(prefix="gpsfake-")
    procs: list[subprocess.Popen[bytes]] = []
    ports: set[int] = set()

    def start(log: Path, port: int) -> subprocess.Popen[bytes]:
        out = (tmp_path / f"gpsfake-{len(procs)}.out").open("wb")
        proc = subprocess.Popen(
            [exe, "-q", "-P", str(port), "-c", CYCLE_S, str(log)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": PATH, "TMPDIR": sockdir, "LANG": "C.UTF-8"},
        )
        out.close()
        procs.append(proc)
        ports.add(port)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            stop_group(proc, timeout=5)
        shutil.rmtree(sockdir, ignore_errors=True)
        ipcrm = shutil.which("ipcrm", path=PATH)
        for port in ports:
            if ipcrm:
                subprocess.run([ipcrm, "-M", f"0x4770{port:04X}"], capture_output=True, check=False)


def wraps(fixes: list[Fix]) -> list[int]:
    """Indexes (into the timed fixes) where receiver time jumps back: gpsfake restarted the log."""
    timed = [f.time for f in fixes if f.time is not None]
    return [i for i in range(1, len(timed)) if timed[i] < timed[i - 1]]


def gsa_dops(log: Path) -> set[tuple[float, float, float]]:
    """(pdop, hdop, vdop) of every GSA in the log: what gpsd's SKY may carry."""
    out = set()
    for line in log.read_text(errors="replace").splitlines():
        if line[3:6] == "GSA":
            f = line.split("*")[0].split(",")
            out.add((float(f[15]), float(f[16]), float(f[17])))
    return out


def test_real_gpsd_every_epoch_of_a_pass_matches(shared_data: Path, gpsfake: GpsFake) -> None:
    log = shared_data / "gpsd" / "logs" / LOG
    expected = load_expected(shared_data, LOG)
    port = free_port()
    gpsfake(log, port)

    async def main() -> tuple[list[Fix], dict[str, Any]]:
        src = GpsdSource("127.0.0.1", port, backoff=fast_backoff())
        async with Running(src) as run:
            await run.until(lambda: len(wraps(run.fixes)) >= 2, "one whole pass", timeout=30)
            return run.fixes, src.status()

    fixes, st = asyncio.run(main())
    timed = [f for f in fixes if f.time is not None]
    first, second = wraps(fixes)[:2]
    one_pass = timed[first:second]
    assert mismatches(expected, one_pass) == []
    assert len(one_pass) == len(expected) == 29  # one Fix per epoch: deduplicated by time
    dops = gsa_dops(log)
    for f in one_pass:
        assert (f.pdop, f.hdop, f.vdop) in dops
        assert f.sats_used and f.sats_in_view and f.sats_in_view >= f.sats_used
        assert f.alt_msl is not None and f.geoid_sep == pytest.approx(1.8)
    monos = [f.mono for f in fixes]
    assert monos == sorted(monos)
    # (last_error may hold a refused connect from before gpsd was listening.)
    assert st["connected"] is True and st["reconnects"] == 0
    assert st["devices"] and st["devices"][0].startswith("/dev/pts/")
    assert st["gpsd_version"] and st["bytes_read"] > 0
    assert st["parser"]["bad_json"] == 0 and st["parser"]["late_tpv"] == 0


def test_real_gpsd_absent_up_gone_and_back(shared_data: Path, gpsfake: GpsFake) -> None:
    log = shared_data / "gpsd" / "logs" / LOG
    port = free_port()

    async def main() -> dict[str, Any]:
        src = GpsdSource("127.0.0.1", port, backoff=fast_backoff())
        async with Running(src) as run:
            await run.until(
                lambda: "ConnectionRefusedError" in (src.status()["last_error"] or ""),
                "gpsd not there yet",
            )
            proc = gpsfake(log, port)
            await run.until(lambda: len(run.fixes) >= 3, "fixes from the first gpsd")
            assert src.status()["reconnects"] == 0

            await asyncio.to_thread(stop_group, proc, timeout=5)  # gpsd goes away
            await run.until(lambda: not src.status()["connected"], "loss noticed")
            assert src.status()["devices"] == []
            n = len(run.fixes)

            gpsfake(log, port)  # and comes back on the same port
            await run.until(lambda: len(run.fixes) >= n + 3, "fixes from the second gpsd")
            return src.status()

    st = asyncio.run(main())
    assert st["connected"] is True and st["reconnects"] == 1
    assert (
        st["last_error"]
        in (
            "gpsd closed the connection",
            "ConnectionResetError: [Errno 104] Connection reset by peer",
        )
        or "ConnectionRefusedError" in st["last_error"]
    )
