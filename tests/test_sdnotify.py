"""agent.sdnotify against real AF_UNIX datagram sockets, as systemd's notify socket.

No sleeps: every receive has a socket timeout as its deadline.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from agent.sdnotify import Notifier, WatchdogPinger, watchdog_due

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 5.0


def _listen(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(DEADLINE_S)
    return sock


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A notify socket in a file, like systemd's /run/systemd/notify."""
    path = str(tmp_path / "notify")
    sock = _listen(path)
    try:
        yield sock, path
    finally:
        sock.close()


def _nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(DEADLINE_S)
    return False


def test_each_message_arrives_byte_exact(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier.from_env()
    assert n.enabled
    assert n.ready()
    assert sock.recv(4096) == b"READY=1"
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert n.status("connected, 3 records waiting")
    assert sock.recv(4096) == b"STATUS=connected, 3 records waiting"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert n.ready("running")
    assert sock.recv(4096) == b"READY=1\nSTATUS=running"
    assert n.status("ünïcode ✓")
    assert sock.recv(4096) == "STATUS=ünïcode ✓".encode()
    n.close()
    assert _nothing_waiting(sock)


def test_a_newline_in_a_status_cannot_add_a_field(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(path)
    assert n.status("gps lost\nREADY=1")
    assert sock.recv(4096) == b"STATUS=gps lost READY=1"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"telematics-test-{uuid.uuid4().hex}"
    sock = _listen(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        n = Notifier.from_env()
        assert n.ready() and n.watchdog()
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")  # meaningless without a socket
    n = Notifier.from_env()
    assert not n.enabled
    assert n.watchdog_interval_s is None
    assert not any([n.ready("x"), n.watchdog(), n.status("x"), n.stopping()])
    assert n._sock is None  # not even a socket was made
    pinger = WatchdogPinger(n, mono=lambda: 0.0)
    assert not pinger.enabled and not pinger.tick()
    assert pinger.period_s(5.0) == 5.0


def test_an_empty_notify_socket_is_unset() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": ""}).enabled


def test_an_unsupported_address_disables_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        n = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled and not n.ready()
    assert "not an AF_UNIX socket" in caplog.text


ME = os.getpid()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(ME)}, 15.0),
        ({"WATCHDOG_USEC": "1"}, 0.0000005),
        # Set for another process (we inherited it): not ours.
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(ME + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "init"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": str(2**64 - 1)}, None),  # USEC_INFINITY
        ({"WATCHDOG_PID": str(ME)}, None),
        ({}, None),
    ],
)
def test_watchdog_environment_as_sd_watchdog_enabled(
    env: dict[str, str], interval: float | None
) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **env}, pid=ME)
    assert n.watchdog_interval_s == interval


def test_watchdog_pid_defaults_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.from_env().watchdog_interval_s == 10.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    assert Notifier.from_env().watchdog_interval_s is None


def test_a_socket_that_goes_away_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "notify")
    sock = _listen(path)
    n = Notifier(path)
    assert n.ready()
    assert sock.recv(4096) == b"READY=1"
    sock.close()  # the file stays, nobody listens: ECONNREFUSED
    with caplog.at_level(logging.DEBUG, logger="agent.sdnotify"):
        assert not n.watchdog()
        os.unlink(path)  # and now the file is gone too: ENOENT
        assert not n.watchdog()
        assert not n.status("still here")
        assert not n.stopping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text  # logged once, not at every ping
    assert "WATCHDOG=1" in warnings[0].getMessage()

    # The manager comes back (same path): sends work again, and a later
    # failure is worth a warning again.
    sock = _listen(path)
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="agent.sdnotify"):
            assert n.watchdog()
            assert sock.recv(4096) == b"WATCHDOG=1"
        assert "works again" in caplog.text
    finally:
        sock.close()
    os.unlink(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        assert not n.watchdog()
    assert len(caplog.records) == 1


def _fail_after(seconds: float) -> None:
    def _raise(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"blocked for more than {seconds} s")

    signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def test_a_full_queue_drops_pings_instead_of_blocking(listener: tuple[socket.socket, str]) -> None:
    """A service manager that stops reading must not stall the event loop."""
    sock, path = listener
    n = Notifier(path)
    _fail_after(DEADLINE_S)  # a blocking send would hang here; this turns it into a failure
    try:
        sent = [n.watchdog() for _ in range(2000)]  # far beyond net.unix.max_dgram_qlen
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    assert sent[0] and not sent[-1]
    assert sock.recv(4096) == b"WATCHDOG=1"  # what was queued is intact


def test_watchdog_due() -> None:
    assert not watchdog_due(100.0, None, None)  # watchdog off
    assert watchdog_due(100.0, None, 15.0)  # never pinged
    assert not watchdog_due(114.9, 100.0, 15.0)
    assert watchdog_due(115.0, 100.0, 15.0)


def test_pinger_paces_pings_and_withholds_them_when_not_alive(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    now = [1000.0]
    n = Notifier(path, watchdog_usec=30_000_000)  # WatchdogSec=30s: ping every 15 s
    pinger = WatchdogPinger(n, mono=lambda: now[0])
    assert pinger.enabled
    assert pinger.period_s(5.0) == 5.0
    assert pinger.period_s(60.0) == 7.5  # a slow loop is capped: pings stay < 3/4 WatchdogSec

    pinged = []
    for t in range(1000, 1046, 5):  # a health loop ticking every 5 s for 45 s
        now[0] = float(t)
        pinged.append((t, pinger.tick()))
    assert [t for t, p in pinged if p] == [1000, 1015, 1030, 1045]
    assert [sock.recv(4096) for _ in range(4)] == [b"WATCHDOG=1"] * 4
    assert _nothing_waiting(sock)

    now[0] = 1060.0
    assert not pinger.tick(alive=False)  # something a restart cures has died
    assert _nothing_waiting(sock)
    assert pinger.last_ping == 1045.0
    now[0] = 1061.0
    assert pinger.tick()
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_pinger_retries_a_ping_that_did_not_leave(tmp_path: Path) -> None:
    now = [0.0]
    path = str(tmp_path / "notify")
    pinger = WatchdogPinger(Notifier(path, watchdog_usec=2_000_000), mono=lambda: now[0])
    assert not pinger.tick()  # nobody listening yet
    assert pinger.last_ping is None
    sock = _listen(path)
    try:
        now[0] = 0.1  # the very next tick, not a full interval later
        assert pinger.tick()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


CHILD = textwrap.dedent(
    """
    import sys
    from agent.sdnotify import Notifier, WatchdogPinger

    n = Notifier.from_env()
    pinger = WatchdogPinger(n)
    print(n.watchdog_interval_s, flush=True)
    ok = [n.ready("child up"), pinger.tick(), n.status("pinging"), n.stopping()]
    print(ok, flush=True)
    """
)


def _recv_with_pid(sock: socket.socket) -> tuple[bytes, int]:
    """A datagram and the sender's pid from SCM_CREDENTIALS, as systemd checks NotifyAccess=."""
    data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("3i", payload[: struct.calcsize("3i")])
            return data, pid
    raise AssertionError("no SCM_CREDENTIALS on the datagram")


def _run_child(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_another_process_notifies_through_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_PID"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        env=env | {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["1.0", "[True, True, True, True]"], err
    got = [_recv_with_pid(sock) for _ in range(4)]
    assert [d for d, _ in got] == [
        b"READY=1\nSTATUS=child up",
        b"WATCHDOG=1",
        b"STATUS=pinging",
        b"STOPPING=1",
    ]
    assert {pid for _, pid in got} == {proc.pid}  # really sent by the child process
    assert _nothing_waiting(sock)


def test_a_child_that_inherited_its_parents_watchdog_does_not_ping(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    done = _run_child(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert done.stdout.splitlines() == ["None", "[True, False, True, True]"], done.stderr
    got = [sock.recv(4096) for _ in range(3)]
    assert got == [b"READY=1\nSTATUS=child up", b"STATUS=pinging", b"STOPPING=1"]
