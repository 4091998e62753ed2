"""The GPS device: NMEA epochs paced like a receiver, on a pseudo-terminal or TCP.

A real GPS does not care who listens.  This device keeps sending whether the
reader (the agent under test) is there, has been SIGKILLed, or reopens the
port; it never blocks on a slow reader and never dies of EIO or EAGAIN: what
cannot be delivered is dropped and counted.

* ``PtyOutlet``: a pseudo-terminal in raw mode (no echo, no CR/LF mapping),
  so the reader gets exactly the NMEA bytes.  The device keeps the slave end
  open itself, so the terminal survives readers coming and going.  Writes are
  non-blocking.  A backlog nobody reads for ``stale_after_s`` is discarded, as
  a receiver's bytes fall on the floor when nobody listens, so a reader that
  arrives late gets current epochs, not minutes-old ones.
* ``TcpOutlet``: every connected client gets the same stream from the next
  epoch on; a client that falls behind by more than ``max_pending`` bytes
  misses whole epochs (never half sentences).
* ``GpsDevice``: the pacing loop.  Epoch n is due at ``start + t_n / speed``
  on the monotonic clock (no drift from sleeping after each write); between
  deadlines it services the outlets.  ``request_stop`` is safe from signal
  handlers and other threads.

Only this module does I/O; the epochs come from ``nmea_out.iter_epochs``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import selectors
import socket
import struct
import termios
import time
import tty
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from simulators.nmea_out import EncodedEpoch

__all__ = [
    "GpsDevice",
    "Outlet",
    "OutletStats",
    "PtyOutlet",
    "RunSummary",
    "TcpOutlet",
    "write_drive",
]

Clock = Callable[[], float]
_Callback = Callable[[int], None]
_GONE = (errno.EIO, errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN)


@dataclass
class OutletStats:
    """What an outlet delivered and what it had to drop."""

    sent_bytes: int = 0
    dropped_bytes: int = 0
    dropped_epochs: int = 0
    flushed_backlogs: int = 0
    received_bytes: int = 0
    connections: int = 0


class Outlet(Protocol):
    """Where the device's bytes go; never blocks, never raises for a lost reader."""

    @property
    def label(self) -> str: ...

    @property
    def stats(self) -> OutletStats: ...

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Register the file descriptors to service while waiting."""

    def detach(self) -> None:
        """Forget the selector (it is about to be closed)."""

    def send(self, data: bytes, now: float) -> None:
        """Offer one whole epoch; ``now`` is the device's monotonic time."""

    def close(self) -> None: ...


# --------------------------------------------------------------------------- pty


class PtyOutlet:
    """A pseudo-terminal that behaves like a USB GPS; the reader opens ``path``."""

    def __init__(self, *, stale_after_s: float = 2.0) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # the line discipline lives on the slave side
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._stats = OutletStats()
        self._stale_after = stale_after_s
        self._pending = b""  # unwritten tail of the last epoch, kept to stay whole
        self._queued_before = 0
        self._progress_at: float | None = None
        self._selector: selectors.BaseSelector | None = None

    @property
    def label(self) -> str:
        return f"pty {self.path}"

    @property
    def stats(self) -> OutletStats:
        return self._stats

    def attach(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        cb: _Callback = self._drain
        selector.register(self._master, selectors.EVENT_READ, cb)

    def detach(self) -> None:
        self._selector = None

    def queued(self) -> int:
        """Bytes waiting unread on the slave side (the kernel counts up to ~4 KiB)."""
        buf = fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", buf)[0])

    def send(self, data: bytes, now: float) -> None:
        queued = self.queued()
        if self._progress_at is None or queued == 0 or queued < self._queued_before:
            self._progress_at = now  # the reader took something (or nothing waits)
        elif now - self._progress_at >= self._stale_after:
            with contextlib.suppress(termios.error, OSError):
                termios.tcflush(self._slave, termios.TCIFLUSH)
            self._stats.flushed_backlogs += 1
            self._stats.dropped_bytes += queued + len(self._pending)
            self._pending = b""
            self._progress_at = now
            queued = 0
        self._queued_before = queued
        if self._pending:
            self._pending = self._write(self._pending)
        if self._pending:
            self._stats.dropped_bytes += len(data)
            self._stats.dropped_epochs += 1
        else:
            self._pending = self._write(data)

    def _write(self, data: bytes) -> bytes:
        """Write what fits now; return the rest (dropped and counted on EIO)."""
        try:
            n = os.write(self._master, data)
        except BlockingIOError:
            return data
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            self._stats.dropped_bytes += len(data)
            self._stats.dropped_epochs += 1
            return b""
        self._stats.sent_bytes += n
        return data[n:]

    def _drain(self, _mask: int) -> None:
        """Discard what the reader writes to the GPS (configuration commands)."""
        while True:
            try:
                chunk = os.read(self._master, 4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
                chunk = b""
            if not chunk:  # the line is gone: stop listening, keep sending
                if self._selector is not None:
                    self._selector.unregister(self._master)
                    self._selector = None
                return
            self._stats.received_bytes += len(chunk)

    def close(self) -> None:
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


# --------------------------------------------------------------------------- tcp


@dataclass
class _Client:
    sock: socket.socket
    pending: bytearray = field(default_factory=bytearray)


class TcpOutlet:
    """A TCP server that streams the same NMEA to every connected client."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_pending: int = 65536,
        send_buffer: int = 65536,
    ) -> None:
        """``max_pending``: bytes held per client beyond the kernel's ``send_buffer``."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = socket.create_server((host, port), family=family, backlog=16)
        self._server.setblocking(False)
        self.host: str = host
        self.port: int = int(self._server.getsockname()[1])
        self._max_pending = max_pending
        self._send_buffer = send_buffer  # bounds how stale a slow client's data gets
        self._clients: dict[int, _Client] = {}
        self._selector: selectors.BaseSelector | None = None
        self._stats = OutletStats()

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp {host}:{self.port}"

    @property
    def stats(self) -> OutletStats:
        return self._stats

    @property
    def clients(self) -> int:
        """Clients connected now."""
        return len(self._clients)

    def attach(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        cb: _Callback = self._accept
        selector.register(self._server, selectors.EVENT_READ, cb)

    def detach(self) -> None:
        self._selector = None

    def _accept(self, _mask: int) -> None:
        while True:
            try:
                sock, _addr = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE, ECONNABORTED: try again on the next event
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
            client = _Client(sock)
            self._clients[sock.fileno()] = client
            self._stats.connections += 1
            if self._selector is not None:
                cb: _Callback = functools.partial(self._on_client, client)
                self._selector.register(sock, selectors.EVENT_READ, cb)

    def _on_client(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_READ and not self._read_from(client):
            self._drop(client)
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(client)

    def _read_from(self, client: _Client) -> bool:
        """Discard what a client sends; False once it has hung up."""
        try:
            chunk = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        self._stats.received_bytes += len(chunk)
        return bool(chunk)

    def send(self, data: bytes, now: float) -> None:
        for client in list(self._clients.values()):
            if client.pending:
                self._flush(client)
            if client.sock.fileno() < 0:
                continue
            if len(client.pending) + len(data) > self._max_pending:
                self._stats.dropped_bytes += len(data)
                self._stats.dropped_epochs += 1
                continue
            client.pending += data
            self._flush(client)

    def _flush(self, client: _Client) -> None:
        try:
            n = client.sock.send(client.pending, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._drop(client)
            return
        self._stats.sent_bytes += n
        del client.pending[:n]
        if self._selector is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.pending else 0)
            key = self._selector.get_key(client.sock)
            if key.events != events:
                self._selector.modify(client.sock, events, key.data)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd < 0:
            return
        self._stats.dropped_bytes += len(client.pending)
        if self._selector is not None:
            self._selector.unregister(client.sock)
        self._clients.pop(fd, None)
        client.sock.close()

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        if self._selector is not None and self._server.fileno() >= 0:
            self._selector.unregister(self._server)
        self._server.close()


# --------------------------------------------------------------------------- pacing


@dataclass
class RunSummary:
    """How a run went: for the one-line report and for tests."""

    epochs: int = 0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    odometer_m: float = 0.0
    finished: bool = False
    stopped_by: str | None = None
    resyncs: int = 0
    outlets: list[tuple[str, OutletStats]] = field(default_factory=list)


class GpsDevice:
    """Sends each epoch at its due time (x ``speed``) to every outlet."""

    def __init__(
        self,
        epochs: Iterable[EncodedEpoch],
        outlets: Sequence[Outlet],
        *,
        speed: float = 1.0,
        max_lag_s: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._epochs = epochs
        self._outlets = outlets
        self._speed = speed
        self._max_lag = max_lag_s
        self._clock = clock
        self._stop: str | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def request_stop(self, reason: str = "stopped") -> None:
        """Make ``run`` return soon; callable from a signal handler or thread."""
        if self._stop is None:
            self._stop = reason
        with contextlib.suppress(OSError):  # already woken (buffer full) or closed
            self._wake_w.send(b"\0")

    def run(self) -> RunSummary:
        """Pace the epochs until they end or a stop is requested."""
        summary = RunSummary()
        with selectors.DefaultSelector() as selector:
            wake: _Callback = self._drain_wake
            selector.register(self._wake_r, selectors.EVENT_READ, wake)
            for outlet in self._outlets:
                outlet.attach(selector)
            began = start = self._clock()
            for epoch in self._epochs:
                deadline = start + epoch.t / self._speed
                self._wait(selector, deadline)
                if self._stop is not None:
                    break
                now = self._clock()
                if now - deadline > self._max_lag:
                    start += now - deadline  # suspended or overloaded: do not burst
                    summary.resyncs += 1
                for outlet in self._outlets:
                    outlet.send(epoch.data, now)
                summary.epochs += 1
                summary.sim_seconds = epoch.t
                summary.odometer_m = epoch.state.odometer_m
            else:
                summary.finished = True
            summary.wall_seconds = self._clock() - began
            for outlet in self._outlets:
                outlet.detach()
        summary.stopped_by = self._stop
        summary.outlets = [(o.label, o.stats) for o in self._outlets]
        return summary

    def _wait(self, selector: selectors.BaseSelector, deadline: float) -> None:
        """Service the outlets until the deadline (at least one poll)."""
        while True:
            remaining = deadline - self._clock()
            for key, mask in selector.select(max(0.0, remaining)):
                key.data(mask)
            if self._stop is not None or remaining <= 0:
                return

    def _drain_wake(self, _mask: int) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()


def write_drive(
    epochs: Iterable[EncodedEpoch], out: BinaryIO, *, should_stop: Callable[[], bool]
) -> RunSummary:
    """Write every epoch as fast as possible (files for replay and benchmarks).

    A reader that closes the pipe early (``| head``) ends the run, not the program.
    """
    summary = RunSummary()
    began = time.monotonic()
    stats = OutletStats()
    summary.outlets = [("out", stats)]
    try:
        for epoch in epochs:
            if should_stop():
                break
            out.write(epoch.data)
            stats.sent_bytes += len(epoch.data)
            summary.epochs += 1
            summary.sim_seconds = epoch.t
            summary.odometer_m = epoch.state.odometer_m
        else:
            summary.finished = True
        out.flush()
    except BrokenPipeError:
        summary.finished = False
        summary.stopped_by = "reader closed the output"
    summary.wall_seconds = time.monotonic() - began
    return summary
