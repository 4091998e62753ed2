"""systemd's sd_notify protocol (Type=notify, WatchdogSec=) without python-systemd.

Why our own: python-systemd has no wheel on PyPI (it compiles against
libsystemd's headers, which a Termux phone or a bare venv lacks), and the
protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket
named in ``$NOTIFY_SOCKET``.  Everything here is a no-op when that variable is
unset (a shell, runit, Termux, the tests), and a send error is logged once,
never raised: a service manager that went away must not stop the agent.

How the runtime uses it (the watchdog is the point)::

    notifier = Notifier.from_env()           # once, at start
    pinger = WatchdogPinger(notifier)
    ...
    notifier.ready("running")                # once the outbox is open and the tasks run

    async def _health(self) -> None:         # a task on the agent's asyncio loop
        while True:
            pinger.tick(alive=...)           # WATCHDOG=1 when due
            notifier.status("...")           # optional: shown by `systemctl status`
            await asyncio.sleep(pinger.period_s(5.0))

    notifier.stopping()                      # first thing on SIGTERM / cancel

Ping **only** from a coroutine on the event loop, never from a thread of its
own: a blocked loop (a hung SQLite call, a deadlock, a runaway detector) then
stops the pings and systemd kills and restarts the agent after WatchdogSec.
``alive`` is for failures a restart cures that the loop itself cannot see,
e.g. the MQTT network thread has died or the committer stopped ticking; a
missing GPS or broker is *not* one (the agent already reopens those).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

__all__ = ["Notifier", "WatchdogPinger", "watchdog_due"]


def _socket_address(value: str | None) -> bytes | None:
    """NOTIFY_SOCKET as an AF_UNIX address: a path, or ``@name`` for an abstract socket."""
    if not value:
        return None
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    # e.g. "vsock:2:1234" (systemd >= 254, for VMs): not a case for a vehicle.
    log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX socket: not notifying systemd", value)
    return None


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """WATCHDOG_USEC if the watchdog is on *for this process*, as sd_watchdog_enabled(3).

    WATCHDOG_PID names the process the watchdog is meant for: a child that
    inherited the environment must not believe it is watched.
    """
    raw = environ.get("WATCHDOG_USEC")
    if raw is None:
        return None
    try:
        usec = int(raw)
    except ValueError:
        usec = 0
    if usec <= 0 or usec >= 2**64 - 1:  # 0 and USEC_INFINITY are invalid, as in libsystemd
        log.warning("WATCHDOG_USEC=%r is not a valid timeout: watchdog off", raw)
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None:
        try:
            if int(owner) != pid:
                return None  # inherited from a parent: not ours to ping
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not a pid: watchdog off", owner)
            return None
    return usec


class Notifier:
    """Sends state changes to systemd; every method returns whether a datagram left."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address)
        self._watchdog_usec = watchdog_usec if self._address is not None else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # the socket is made lazily; sends may come from threads
        self._failing = False  # a failure was logged at warning; quiet until a send works

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None
    ) -> Notifier:
        """The notifier systemd's environment asks for (NOTIFY_SOCKET, WATCHDOG_USEC/_PID)."""
        env = os.environ if environ is None else environ
        return cls(
            env.get("NOTIFY_SOCKET"),
            watchdog_usec=_watchdog_usec(env, os.getpid() if pid is None else pid),
        )

    @property
    def enabled(self) -> bool:
        """True when there is a service manager to tell (NOTIFY_SOCKET was usable)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half of WatchdogSec, as systemd advises; None if off."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2e6

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: ``systemctl start`` returns, the watchdog starts."""
        return self._send(["READY=1", *([] if status is None else [_status(status)])])

    def watchdog(self) -> bool:
        """Keep-alive; sent even if the watchdog is off (systemd ignores it then)."""
        return self._send(["WATCHDOG=1"])

    def status(self, text: str) -> bool:
        """A one-line status for ``systemctl status`` (newlines become spaces)."""
        return self._send([_status(text)])

    def stopping(self) -> bool:
        """Shutdown has begun: systemd shows "deactivating" instead of a dead agent."""
        return self._send(["STOPPING=1"])

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, fields: list[str]) -> bool:
        if self._address is None:
            return False
        data = "\n".join(fields).encode("utf-8")
        try:
            with self._lock:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    # Never block the event loop: a full queue drops this one
                    # message (the next ping follows), it does not stall the agent.
                    sock.setblocking(False)
                    self._sock = sock
                self._sock.sendto(data, self._address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning("cannot notify systemd (%s): %s; will keep trying", fields[0], exc)
            else:
                log.debug("cannot notify systemd (%s): %s", fields[0], exc)
            return False
        if self._failing:
            self._failing = False
            log.info("notifying systemd works again")
        return True


def _status(text: str) -> str:
    # A newline would start a new field (e.g. a stray READY=1): keep it one line.
    return "STATUS=" + " ".join(text.splitlines())


def watchdog_due(now: float, last_ping: float | None, interval_s: float | None) -> bool:
    """Whether a WATCHDOG=1 is due at monotonic ``now`` (never when the watchdog is off)."""
    if interval_s is None:
        return False
    return last_ping is None or now - last_ping >= interval_s


class WatchdogPinger:
    """Paces WATCHDOG=1 for a health loop: at most once per interval, only while alive."""

    def __init__(self, notifier: Notifier, *, mono: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self._mono = mono
        self.last_ping: float | None = None

    @property
    def enabled(self) -> bool:
        return self.notifier.watchdog_interval_s is not None

    def period_s(self, default: float) -> float:
        """How long the health loop may sleep between ticks: ``default``, capped at half
        the ping interval so pings are never more than 3/4 of WatchdogSec apart."""
        interval = self.notifier.watchdog_interval_s
        return default if interval is None else min(default, interval / 2)

    def tick(self, *, alive: bool = True) -> bool:
        """Call on every health-loop pass; True when it pinged.

        ``alive=False`` withholds the ping, so systemd restarts the agent
        once WatchdogSec passes without one.
        """
        now = self._mono()
        if not alive or not watchdog_due(now, self.last_ping, self.notifier.watchdog_interval_s):
            return False
        if self.notifier.watchdog():
            self.last_ping = now
            return True
        return False
