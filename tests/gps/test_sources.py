"""GPS sources against real parts: a pseudo-terminal, a TCP server, files on disk.

No mocks and no sleeps: every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.gps.fix import Fix, FixMode
from agent.gps.nmea import iter_file_fixes
from agent.gps.sources import (
    Backoff,
    FileSource,
    GpsdSource,
    SerialSource,
    TcpSource,
    open_source,
)
from tests.support.running import Running

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
KNOTS = 1852 / 3600


def fast_backoff() -> Backoff:
    """Reopen within 20-100 ms: tests must not wait out a field backoff."""
    return Backoff(min_s=0.02, max_s=0.1, rng=random.Random(7))


# -- NMEA the tests send ------------------------------------------------------------------


def sentence(body: str) -> bytes:
    cs = 0
    for b in body.encode():
        cs ^= b
    return f"${body}*{cs:02X}\r\n".encode()


def ddmm(value: float, width: int) -> str:
    deg = int(value)
    return f"{deg:0{width}d}{(value - deg) * 60:08.5f}"


def lat_of(i: int) -> float:
    return 52.0 + i * 1e-5


def lon_of(i: int) -> float:
    return 4.0 + i * 2e-5


def epoch(i: int, step: float = 0.1) -> bytes:
    """Epoch ``i`` as a 10 Hz receiver sends it: RMC then GGA, distinct values per epoch."""
    t = T0 + timedelta(seconds=i * step)
    hms = t.strftime("%H%M%S") + f".{t.microsecond // 10_000:02d}"
    lat, lon = ddmm(lat_of(i), 2), ddmm(lon_of(i), 3)
    knots = 10.0 + (i % 50) / 10
    course = (i * 7) % 360
    rmc = f"GPRMC,{hms},A,{lat},N,{lon},E,{knots:.1f},{course:.1f},{t:%d%m%y},,,A"
    gga = f"GPGGA,{hms},{lat},N,{lon},E,1,09,0.90,{12.0 + i % 10:.1f},M,45.6,M,,"
    return sentence(rmc) + sentence(gga)


def check_epoch(fix: Fix, i: int, step: float = 0.1) -> None:
    assert fix.time == T0 + timedelta(seconds=i * step)
    assert fix.mode == FixMode.FIX_3D
    assert fix.lat == pytest.approx(lat_of(i), abs=1e-6)
    assert fix.lon == pytest.approx(lon_of(i), abs=1e-6)
    assert fix.speed == pytest.approx((10.0 + (i % 50) / 10) * KNOTS, abs=1e-3)
    assert fix.course == pytest.approx((i * 7) % 360, abs=1e-6)
    assert fix.alt_msl == pytest.approx(12.0 + i % 10)
    assert (fix.quality, fix.sats_used, fix.hdop) == (1, 9, 0.9)


# -- running a source in the background ----------------------------------------------------


def test_backoff_grows_to_cap_and_resets() -> None:
    b = Backoff(min_s=0.5, max_s=30, factor=2, jitter=0, rng=random.Random(1))
    assert [b.next() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    b.reset()
    assert b.next() == 0.5


def test_backoff_jitter_only_shortens_and_is_reproducible() -> None:
    def run(seed: int) -> list[float]:
        b = Backoff(min_s=1, max_s=8, factor=2, jitter=0.5, rng=random.Random(seed))
        return [b.next() for _ in range(200)]

    delays = run(3)
    bases = [1, 2, 4] + [8] * 197
    assert all(base * 0.5 <= d <= base for d, base in zip(delays, bases, strict=True))
    assert len(set(delays)) > 150  # actually jittered
    assert run(3) == delays


def test_backoff_rejects_nonsense() -> None:
    for kw in ({"min_s": 0}, {"min_s": 5, "max_s": 1}, {"factor": 0.5}, {"jitter": 2}):
        with pytest.raises(ValueError):
            Backoff(**kw)


# -- factory ------------------------------------------------------------------------------


def test_factory_builds_each_kind(tmp_path: Path) -> None:
    s = open_source("serial", device="/dev/ttyUSB3", baud=115200)
    assert isinstance(s, SerialSource) and (s.port, s.baudrate) == ("/dev/ttyUSB3", 115200)
    t = open_source("tcp", host="10.0.0.5", port=10110)
    assert isinstance(t, TcpSource) and t.target == "10.0.0.5:10110"
    g = open_source("gpsd", port=2948)
    assert isinstance(g, GpsdSource) and g.target == "127.0.0.1:2948"
    f = open_source("file", path=tmp_path / "x.nmea", pace=2.0)
    assert isinstance(f, FileSource) and f.pace == 2.0
    st = s.status()
    assert st["kind"] == "serial" and st["connected"] is False and st["reconnects"] == 0
    assert set(st) == {
        "name", "kind", "target", "connected", "reconnects", "last_error",
        "bytes_read", "fixes", "parser",
    }  # fmt: skip


def test_factory_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown GPS source kind 'usb'"):
        open_source("usb")
    with pytest.raises(ValueError, match="needs path"):
        open_source("file")
    with pytest.raises(ValueError, match="baudrate 9601"):
        open_source("serial", baud=9601)


# -- serial over a real pseudo-terminal -----------------------------------------------------


class Pty:
    """A pty in raw mode, like a USB CDC receiver's tty: the test writes the master."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)  # no echo or line editing before pyserial configures it
        self.path = os.ttyname(slave)
        os.close(slave)  # the node lives while the master is open
        self._open = True

    def hang_up(self) -> None:
        """Close the master once: the port reading the slave gets EIO, as on a USB unplug."""
        if self._open:
            self._open = False
            os.close(self.master)


@contextmanager
def pty_pair() -> Iterator[Pty]:
    p = Pty()
    try:
        yield p
    finally:
        p.hang_up()


async def write_all(fd: int, data: bytes, timeout: float = 30) -> None:
    """Write to a pty master from a thread, waiting whenever the reader falls behind.

    Bounded by a deadline: if the source stops reading (it died), the test
    fails instead of blocking forever on a full pty buffer.
    """

    def run() -> None:
        deadline = time.monotonic() + timeout
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pty not drained: {len(view)} of {len(data)} bytes unwritten")
            select.select([], [fd], [], 0.1)
            with suppress(BlockingIOError):
                view = view[os.write(fd, view) :]

    await asyncio.to_thread(run)


def test_serial_pty_fixes_have_the_sent_values() -> None:
    async def main() -> None:
        with pty_pair() as pty:
            src = SerialSource(pty.path, 9600, backoff=fast_backoff())
            async with Running(src) as run:
                await run.until(lambda: run.status()["connected"], "port open")
                t_before = time.monotonic()
                # A fourth epoch: the parser may hold an epoch until the next one starts.
                await write_all(pty.master, b"".join(epoch(i) for i in range(4)))
                await run.until(lambda: len(run.fixes) >= 3, "3 fixes")
                for i, fix in enumerate(run.fixes):
                    check_epoch(fix, i)
                    assert t_before <= fix.mono <= time.monotonic()
                st = run.status()
                assert st["bytes_read"] == sum(len(epoch(i)) for i in range(4))
                assert st["parser"]["sentences"] == 8 and st["last_error"] is None

    asyncio.run(main())


def test_serial_pty_burst_of_20000_lines_without_loss() -> None:
    """10,000 epochs (20,000 sentences, ~1.4 MB) as fast as the pty takes them."""
    n = 10_000
    data = b"".join(epoch(i) for i in range(n))  # the last epoch may stay pending: see below

    async def main() -> None:
        with pty_pair() as pty:
            src = SerialSource(pty.path, 115200, backoff=fast_backoff())
            async with Running(src) as run:
                await run.until(lambda: run.status()["connected"], "port open")
                t0 = time.monotonic()
                await write_all(pty.master, data)
                await run.until(lambda: len(run.fixes) >= n - 1, f"{n - 1} fixes", timeout=40)
                elapsed = time.monotonic() - t0
                st = run.status()
                pty.hang_up()  # losing the port flushes an epoch the parser was still holding
                await run.until(lambda: len(run.fixes) == n, "last epoch flushed on hang-up")
        assert st["bytes_read"] == len(data)
        assert st["parser"]["lines"] == 2 * n and st["parser"]["sentences"] == 2 * n
        assert src._parser.stats.rejected() == 0
        assert [f.time for f in run.fixes] == [T0 + timedelta(seconds=i / 10) for i in range(n)]
        for i in (0, 1, n // 2, n - 1):
            check_epoch(run.fixes[i], i)
        monos = [f.mono for f in run.fixes]
        assert monos == sorted(monos)
        print(f"serial pty: {2 * n} lines in {elapsed:.2f} s = {2 * n / elapsed:,.0f} lines/s")

    asyncio.run(main())


def test_serial_absent_then_unplugged_then_replugged(tmp_path: Path) -> None:
    """The receiver is configured by a stable name, as udev's /dev/serial/by-id/ symlinks are.

    A pty cannot be unplugged and come back under the same node, so the test
    does what udev does: the symlink appears when the "receiver" is plugged
    in and disappears when it is pulled.  Pulling it is closing the pty
    master, which gives the open port the same EIO as a vanished USB device.
    """
    link = tmp_path / "usb-u-blox_GNSS_receiver-if00"

    async def main() -> None:
        src = SerialSource(str(link), 38400, backoff=fast_backoff())
        async with Running(src) as run:
            # Not plugged in at start-up: a status, not a crash, and retries.
            await run.until(
                lambda: "No such file or directory" in (run.status()["last_error"] or ""), "ENOENT"
            )
            assert run.status()["connected"] is False

            with pty_pair() as pty:
                link.symlink_to(pty.path)
                await run.until(lambda: run.status()["connected"], "first open")
                await write_all(pty.master, epoch(0) + epoch(1) + epoch(2))
                await run.until(lambda: len(run.fixes) >= 2, "fixes before unplug")
                assert run.status()["reconnects"] == 0
                link.unlink()  # unplug: udev removes the link ...
            # ... and the tty hangs up (pty_pair closed the master).
            await run.until(lambda: not run.status()["connected"], "loss noticed")
            lost = run.status()["last_error"]
            assert "Input/output error" in lost or "returned no data" in lost, lost
            # Whatever epoch was still being assembled is flushed, not lost.
            await run.until(lambda: len(run.fixes) == 3, "pending epoch flushed")

            with pty_pair() as pty:  # replug, maybe as another /dev/pts/N
                link.symlink_to(pty.path)
                await run.until(lambda: run.status()["connected"], "reopen")
                await write_all(pty.master, epoch(3) + epoch(4) + epoch(5))
                await run.until(lambda: len(run.fixes) >= 5, "fixes after replug")
                st = run.status()
        for i, fix in enumerate(run.fixes):
            check_epoch(fix, i)
        assert st["reconnects"] == 1 and st["connected"] is True

    asyncio.run(main())


# -- TCP ------------------------------------------------------------------------------------


def test_tcp_reconnects_after_the_server_drops_the_connection() -> None:
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        k = len(connections)
        connections.append(k)
        # Connection k sends epochs 3k..3k+2, then the server drops it.
        writer.write(b"".join(epoch(i) for i in range(3 * k, 3 * k + 3)))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            src = TcpSource("127.0.0.1", port, backoff=fast_backoff())
            async with Running(src) as run:
                await run.until(lambda: len(run.fixes) >= 9, "9 fixes over 3 connections")
                st = run.status()
        assert [f.time for f in run.fixes[:9]] == [T0 + timedelta(seconds=i / 10) for i in range(9)]
        for i, fix in enumerate(run.fixes[:9]):
            check_epoch(fix, i)
        assert st["reconnects"] >= 2
        assert st["last_error"] == "ConnectionResetError: peer closed the connection"

    asyncio.run(main())


def test_tcp_silent_peer_is_dropped_and_refused_connect_is_retried() -> None:
    hits = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        hits += 1
        writer.write(epoch(hits))
        await writer.drain()
        await reader.read()  # then say nothing, like a phone that left Wi-Fi

    async def main() -> None:
        probe = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        src = TcpSource("127.0.0.1", port, idle_timeout=0.3, backoff=fast_backoff())
        async with Running(src) as run:
            await run.until(
                lambda: "ConnectionRefusedError" in (run.status()["last_error"] or ""),
                "refused",
            )
            server = await asyncio.start_server(serve, "127.0.0.1", port)
            async with server:
                await run.until(lambda: len(run.fixes) >= 2, "fixes from 2 connections")
                st = run.status()
        assert st["last_error"] == "TimeoutError: no data for 0.3 s"
        assert st["reconnects"] >= 1
        assert [f.lat for f in run.fixes[:2]] == pytest.approx([lat_of(1), lat_of(2)], abs=1e-6)

    asyncio.run(main())


# -- file ---------------------------------------------------------------------------------


def test_file_replay_matches_the_parser_on_a_real_capture(shared_data: Path) -> None:
    """Chunked reading must not change what the parser makes of a real log."""
    log = shared_data / "gpsd" / "logs" / "ublox-neo-m9n-nmea.log"
    expected = list(iter_file_fixes(log))

    async def main() -> list[Fix]:
        src = FileSource(log)
        got = [fix async for fix in src.fixes()]  # ends at EOF
        st = src.status()
        assert st["connected"] is False and st["last_error"] is None
        assert st["bytes_read"] == sum(
            len(line) for line in log.read_bytes().splitlines(keepends=True) if line[:1] != b"#"
        )
        return got

    got = asyncio.run(main())
    assert len(got) == len(expected) > 50
    strip = [(f.time, f.lat, f.lon, f.speed, f.course, f.hdop, f.sats_used) for f in got]
    assert strip == [
        (f.time, f.lat, f.lon, f.speed, f.course, f.hdop, f.sats_used) for f in expected
    ]


def test_file_paced_replay_keeps_the_rhythm_on_mono(tmp_path: Path) -> None:
    path = tmp_path / "drive.nmea"
    step, pace, n = 0.2, 2.0, 8  # 0.2 s epochs played twice as fast: 0.1 s apart
    path.write_bytes(b"# recorded on a bench\n" + b"".join(epoch(i, step) for i in range(n)))

    async def main() -> list[Fix]:
        return [fix async for fix in FileSource(path, pace=pace).fixes()]

    t0 = time.monotonic()
    got = asyncio.run(main())
    assert [f.time for f in got] == [T0 + timedelta(seconds=i * step) for i in range(n)]
    # Deadlines, not sleeps: fix i is never delivered before start + i x 0.1 s
    # (a late one is followed by a shorter gap, so the rhythm does not drift).
    # The source starts pacing after t0, so t0 + i x 0.1 s is a lower bound
    # that holds however loaded the machine is.
    assert all(f.mono - t0 >= i * step / pace - 0.002 for i, f in enumerate(got)), [
        f.mono - t0 for f in got
    ]
    assert got[-1].mono - got[0].mono < (n - 1) * step / pace + 1.0


def test_file_that_appears_later_is_retried_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "late.nmea"

    async def main() -> None:
        src = FileSource(path, backoff=fast_backoff())
        async with Running(src) as run:
            await run.until(lambda: run.status()["last_error"] is not None, "missing file")
            assert "FileNotFoundError" in run.status()["last_error"]
            path.write_bytes(epoch(0) + epoch(1) + b"\x00garbage\r\n")
            await run.until(lambda: run.done, "replay to EOF")
        assert [f.time for f in run.fixes] == [T0, T0 + timedelta(seconds=0.1)]
        assert src.status()["parser"]["garbage"] == 1

    asyncio.run(main())
