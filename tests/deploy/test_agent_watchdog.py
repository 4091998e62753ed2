"""The real agent under a systemd-like notify socket: READY, watchdog pings, STOPPING.

systemd gives a Type=notify service NOTIFY_SOCKET and, with WatchdogSec=,
WATCHDOG_USEC; the test opens the datagram socket itself and runs
``telematics-agent run`` with both, as systemd would.  No GPS or broker is
reachable: the agent must still be ready and alive (it retries them).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from simulators.broker import free_port
from simulators.stack import command

WATCHDOG_USEC = 600_000  # pings due every 0.3 s


def _next(sock: socket.socket, want: bytes, deadline: float) -> list[bytes]:
    """Datagrams received until one holding ``want``, within the deadline."""
    seen: list[bytes] = []
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no {want!r} in time; got {seen}") from None
        seen.append(data)
        if want in data.split(b"\n"):
            return seen


def test_agent_notifies_ready_pings_the_watchdog_and_says_stopping(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        '[device]\nid = "van-wd"\n'
        f'[gps]\nsource = "tcp"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[buffer]\npath = "{tmp_path / "outbox.sqlite"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n'
    )
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [command("telematics-agent"), "run", "--config", str(conf)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ready = _next(sock, b"READY=1", time.monotonic() + 30)
        assert b"STATUS=device van-wd" in ready[-1].split(b"\n")
        began = time.monotonic()
        for _ in range(5):  # the watchdog keeps being fed while sources are down
            _next(sock, b"WATCHDOG=1", time.monotonic() + 5)
        # Five pings paced at half of WatchdogSec, not a burst.
        assert time.monotonic() - began >= 4 * WATCHDOG_USEC / 2e6 * 0.9
        # A stall (SIGSTOP: what a hung agent is to systemd) and the agent feeds
        # the watchdog again once it runs.
        agent.send_signal(signal.SIGSTOP)
        agent.send_signal(signal.SIGCONT)
        _next(sock, b"WATCHDOG=1", time.monotonic() + 5)
        agent.send_signal(signal.SIGTERM)
        _next(sock, b"STOPPING=1", time.monotonic() + 20)
        assert agent.wait(20) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        sock.close()
        log.close()
