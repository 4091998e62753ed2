"""The GPS device end to end: a real pty, real TCP sockets, the real CLI process.

Readers come and go (close, reopen, SIGKILL, arrive late) and the device
keeps going; bytes are exactly NMEA with CR LF; pacing never runs early.
No sleeps: every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import IO

import pynmea2
import pytest
import serial

from simulators.broker import wait_for
from simulators.gps_device import GpsDevice, PtyOutlet, TcpOutlet
from simulators.nmea_out import EncodedEpoch, iter_epochs
from simulators.scenario import load_scenario, parse_scenario, with_gnss

REPO = Path(__file__).resolve().parents[2]

SHORT = """
name = "short"
start_utc = 2024-05-14T07:30:00Z
[route]
waypoints = [
  { lat = 52.0, lon = 5.0, speed_kmh = 36, dwell_s = 2 },
  { lat = 52.002, lon = 5.0, dwell_s = 2 },
]
[gnss]
rate_hz = 2
"""


def start_cli(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "gps", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: select() on the pipe then sees every line
    )


def read_line(stream: IO[bytes] | None, timeout: float = 15.0) -> str:
    """One line a child printed, or fail at the deadline (never hang)."""
    assert stream is not None
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"child printed no full line in time (got {line!r})")
        byte = stream.read(1)
        if not byte:
            pytest.fail(f"child closed its output (got {line!r})")
        line += byte
    return line.decode().strip()


def finish(proc: subprocess.Popen[bytes], sig: int | None = signal.SIGTERM) -> tuple[int, str]:
    if sig is not None:
        proc.send_signal(sig)
    try:
        _out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("simulator did not exit")
    return proc.returncode, err.decode()


def valid_sentences(lines: list[bytes]) -> list[pynmea2.NMEASentence]:
    """Parse complete lines; the first may be a fragment of an epoch cut by an open."""
    out = []
    for i, raw in enumerate(lines):
        if i == 0 and not raw.startswith(b"$"):
            continue
        assert raw.endswith(b"\r\n") and raw.count(b"\r") == 1, raw
        out.append(pynmea2.parse(raw[:-2].decode("ascii"), check=True))
    return out


def rmc_times(port: serial.Serial, count: int, timeout: float = 10.0) -> list[datetime]:
    """Read until ``count`` RMC sentences have arrived; every line must be valid."""
    deadline = time.monotonic() + timeout
    lines: list[bytes] = []
    times: list[datetime] = []
    while len(times) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"got {len(times)} RMC of {count}")
        raw = port.readline()
        if not raw.endswith(b"\n"):
            continue  # timed out mid-line; readline returns what it has
        lines.append(raw)
        for msg in valid_sentences(lines)[-1:]:
            if msg.sentence_type == "RMC":
                times.append(datetime.combine(msg.datestamp, msg.timestamp))
    assert times == sorted(times) and len(set(times)) == len(times)
    return times


# --------------------------------------------------------------------------- in process


def epochs(n: int) -> list[EncodedEpoch]:
    scenario = parse_scenario(SHORT)
    return list(islice(iter_epochs(scenario, loop=True), n))


def test_pty_is_raw_and_delivers_exact_bytes() -> None:
    outlet = PtyOutlet()
    try:
        fd = os.open(outlet.path, os.O_RDWR | os.O_NOCTTY)  # no termios set-up of our own
        try:
            iflag, oflag, _cflag, lflag, *_ = termios.tcgetattr(fd)
            assert not lflag & (termios.ECHO | termios.ICANON)
            assert not iflag & (termios.ICRNL | termios.INLCR | termios.IGNCR)
            assert not oflag & termios.OPOST
            sample = epochs(3)
            for e in sample:
                outlet.send(e.data, now=0.0)
            want = b"".join(e.data for e in sample)
            got = b""
            while len(got) < len(want):
                ready, _, _ = select.select([fd], [], [], 5.0)
                assert ready, "no data on the pty"
                got += os.read(fd, 65536)
            assert got == want
            os.write(fd, b"$PMTK220,100*2F\r\n")  # a reader configuring "the GPS"
            with selectors.DefaultSelector() as sel:
                outlet.attach(sel)

                def drained() -> bool:
                    for key, mask in sel.select(0.01):
                        key.data(mask)
                    return outlet.stats.received_bytes == 17

                wait_for(drained, 5.0, "the reader's bytes to be drained")
        finally:
            os.close(fd)
    finally:
        outlet.close()


def test_pty_without_reader_drops_and_counts_instead_of_blocking() -> None:
    outlet = PtyOutlet()
    try:
        many = epochs(600)  # ~250 KB, several times what a pty buffers
        for e in many:
            outlet.send(e.data, now=0.0)  # the same instant: no stale discard, only drops
        stats = outlet.stats
        assert stats.dropped_epochs > 0 and stats.dropped_bytes > 0
        assert stats.sent_bytes < sum(len(e.data) for e in many)
        port = serial.Serial(outlet.path, timeout=0.2)  # pyserial flushes stale input
        try:
            fresh = epochs(602)[-2:]
            for e in fresh:
                outlet.send(e.data, now=0.0)
            lines: list[bytes] = []
            want = fresh[-1].data.split(b"\r\n")[0] + b"\r\n"

            def got_fresh() -> bool:
                lines.append(port.readline())
                return want in lines

            wait_for(got_fresh, 5.0, "the fresh epoch")
            valid_sentences([x for x in lines if x])
        finally:
            port.close()
    finally:
        outlet.close()


def test_pty_discards_a_backlog_nobody_reads() -> None:
    outlet = PtyOutlet(stale_after_s=1.0)
    try:
        sample = epochs(4)
        size = [len(e.data) for e in sample]
        queue_after = [size[0], size[0] + size[1], size[2], size[2] + size[3]]
        for now, e, expected in zip((0.0, 0.5, 1.0, 1.5), sample, queue_after, strict=True):
            outlet.send(e.data, now=now)
            wait_for(lambda: outlet.queued() == expected, 5.0, "the kernel queue")  # noqa: B023
        assert outlet.stats.flushed_backlogs == 1
        assert outlet.stats.dropped_bytes == len(sample[0].data) + len(sample[1].data)
        fd = os.open(outlet.path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            got = os.read(fd, 65536)
        finally:
            os.close(fd)
        assert got == sample[2].data + sample[3].data  # only what came after the discard
    finally:
        outlet.close()


def test_tcp_client_that_does_not_read_misses_whole_epochs() -> None:
    scenario = with_gnss(load_scenario("urban_delivery"), rate_hz=10)
    tcp = TcpOutlet(max_pending=8192, send_buffer=4096)
    device = GpsDevice(iter_epochs(scenario, loop=True), [tcp], speed=1e6)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stuck.connect(("127.0.0.1", tcp.port))
    runner = threading.Thread(target=device.run)
    runner.start()
    try:
        wait_for(lambda: tcp.stats.dropped_epochs > 0, 20.0, "a dropped epoch")
        assert tcp.clients == 1 and runner.is_alive()
        stuck.setblocking(False)
        data = b""
        while True:
            try:
                chunk = stuck.recv(1 << 20)
            except BlockingIOError:
                break
            data += chunk
        lines = data.split(b"\r\n")[:-1]
        for line in lines:  # epochs were skipped, never cut: every line is whole
            pynmea2.parse(line.decode("ascii"), check=True)
    finally:
        device.request_stop("test")  # from another thread
        runner.join(10)
        tcp.close()
        device.close()
        stuck.close()
    assert not runner.is_alive()


# --------------------------------------------------------------------------- CLI end to end


@pytest.fixture
def short_scenario(tmp_path: Path) -> Path:
    path = tmp_path / "short.toml"
    path.write_text(SHORT)
    return path


def test_cli_pty_survives_readers_closing_reopening_and_being_killed() -> None:
    proc = start_cli("--scenario", "urban_delivery", "--pty", "--speed", "20")
    try:
        path = read_line(proc.stdout)
        assert path.startswith("/dev/")
        port = serial.Serial(path, timeout=0.2)
        first = rmc_times(port, 6)
        port.close()  # the agent closes the port mid-stream ...

        port = serial.Serial(path, timeout=0.2)  # ... and reopens it
        second = rmc_times(port, 6)
        port.close()
        assert second[0] > first[-1]

        reader = subprocess.Popen(  # a reader that gets SIGKILLed while reading
            [
                sys.executable,
                "-c",
                "import serial,sys\n"
                "s=serial.Serial(sys.argv[1],timeout=0.2)\n"
                "while True:\n"
                "    line=s.readline()\n"
                "    if line: print(line.decode().strip(), flush=True)\n",
                path,
            ],
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        try:
            while not read_line(reader.stdout).startswith("$GPRMC"):
                pass
        finally:
            reader.kill()
            reader.wait(10)
        assert reader.returncode == -signal.SIGKILL

        port = serial.Serial(path, timeout=0.2)
        third = rmc_times(port, 6)
        port.close()
        assert third[0] > second[-1]
        assert proc.poll() is None
    finally:
        code, err = finish(proc)
    assert code == 0, err
    assert "stopped by SIGTERM" in err and "pty /dev/" in err
    assert "Traceback" not in err


def test_cli_pty_reader_arriving_late_gets_current_epochs() -> None:
    proc = start_cli(
        "--scenario", "urban_delivery", "--pty", "--tcp", "0", "--speed", "400", "--loop"
    )
    try:
        path = read_line(proc.stdout)
        port_no = int(read_line(proc.stdout))
        watcher = socket.create_connection(("127.0.0.1", port_no), timeout=5)
        seen = [b""]
        latest = 0.0

        def progressed() -> bool:
            nonlocal latest
            seen[0] = seen[0][-4096:] + watcher.recv(1 << 20)
            *lines, seen[0] = seen[0].split(b"\r\n")
            for line in lines:
                if line.startswith(b"$GPRMC"):
                    stamp = pynmea2.parse(line.decode()).timestamp
                    latest = stamp.hour * 3600 + stamp.minute * 60 + stamp.second - 7.5 * 3600
            return latest >= 1000  # 2.5 s of wall time with nobody on the pty

        wait_for(progressed, 20.0, "the drive to run on")
        assert proc.poll() is None  # a full pty buffer did not kill or block it
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)  # no flush on open
        try:
            chunks = [b""]

            def got_rmc() -> bool:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if ready:
                    chunks[0] += os.read(fd, 65536)
                return chunks[0].count(b"$GPRMC") >= 2

            wait_for(got_rmc, 10.0, "data on the late reader's pty")
        finally:
            os.close(fd)
        lines = [x + b"\n" for x in chunks[0].split(b"\n")[:-1]]
        rmcs = [m for m in valid_sentences(lines) if m.sentence_type == "RMC"]
        first = rmcs[0].timestamp
        first_t = first.hour * 3600 + first.minute * 60 + first.second - 7.5 * 3600
        assert first_t > 150  # not the start of the drive that sat in the buffer
        watcher.close()
    finally:
        code, err = finish(proc)
    assert code == 0, err
    assert "B dropped" in err and "unread backlogs discarded" in err


def test_cli_tcp_serves_every_client_the_same_paced_stream(short_scenario: Path) -> None:
    speed = 20.0
    proc = start_cli("--scenario", str(short_scenario), "--tcp", "0", "--speed", str(speed))
    try:
        port_no = int(read_line(proc.stdout))
        clients = [socket.create_connection(("127.0.0.1", port_no), timeout=10) for _ in range(2)]
        leaver = socket.create_connection(("127.0.0.1", port_no), timeout=10)
        leaver.recv(10)  # reads a little and hangs up mid-stream
        leaver.close()
        received: list[list[tuple[float, bytes]]] = []
        for client in clients:
            lines: list[tuple[float, bytes]] = []
            for when, line in _timed_lines(client):
                lines.append((when, line))
            received.append(lines)
    finally:
        code, err = finish(proc, sig=None)  # the route ends by itself
    assert code == 0, err
    assert "end of route" in err and "3 connections" in err
    a, b = ([line for _, line in r] for r in received)
    common = a[-min(len(a), len(b)) :]
    assert b[-len(common) :] == common and len(common) > 100
    for line in a:
        pynmea2.parse(line.decode("ascii"), check=True)
    rmc = [(when, pynmea2.parse(line.decode())) for when, line in received[0] if b"RMC" in line]
    assert rmc[-1][1].spd_over_grnd == 0.0  # parked at the end
    # Paced on the simulated clock, never early: epoch i is due at start + t_i / speed.
    t0_wall, m0 = rmc[0]
    base = datetime.combine(m0.datestamp, m0.timestamp)
    for when, msg in rmc[1:]:
        sim = (datetime.combine(msg.datestamp, msg.timestamp) - base).total_seconds()
        assert when - t0_wall >= sim / speed - 0.05
    total_sim = datetime.combine(rmc[-1][1].datestamp, rmc[-1][1].timestamp) - base
    assert rmc[-1][0] - t0_wall <= total_sim.total_seconds() / speed + 1.0


def _timed_lines(sock: socket.socket) -> Iterator[tuple[float, bytes]]:
    buf = b""
    while True:
        chunk = sock.recv(65536)
        now = time.monotonic()
        if not chunk:
            return
        buf += chunk
        *lines, buf = buf.split(b"\r\n")
        for line in lines:
            yield now, line


def test_cli_sigint_stops_cleanly(short_scenario: Path) -> None:
    proc = start_cli("--scenario", str(short_scenario), "--pty", "--loop")
    try:
        path = read_line(proc.stdout)
        port = serial.Serial(path, timeout=0.2)
        rmc_times(port, 1)
        port.close()
    finally:
        code, err = finish(proc, signal.SIGINT)
    assert code == 0, err
    assert "stopped by SIGINT" in err and "Traceback" not in err
