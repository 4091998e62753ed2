"""A GPS receiver fixed at one baud rate, on a pseudo-terminal that honours the reader's baud.

A pty ignores the speed: bytes pass unchanged whatever baud the reader sets.
A real UART set to the wrong speed reads something else entirely.  So this
outlet reads the speed the reader set on the slave side (``tcgetattr`` on
the master returns the slave's termios on Linux) and writes what a UART at
that speed would have received from a receiver sending 8N1 at its own
speed: ``uart_receive`` samples the receiver's bit stream at the reader's
bit times, start bit, eight data bits in the middle of each, stop bit.  A
frame whose stop bit reads 0 is a framing error, which Linux delivers as a
NUL byte (no PARMRK).  At equal speeds the bytes pass unchanged.

The epochs are the NMEA simulator's own (``simulators.nmea_out``), paced by
its ``GpsDevice``: only the wire is modelled here.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import selectors
import struct
import termios
import threading
import tty
from collections.abc import Iterator

from simulators.gps_device import GpsDevice, OutletStats
from simulators.nmea_out import iter_epochs
from simulators.scenario import load_scenario

RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800)
_SPEED = {getattr(termios, f"B{b}"): b for b in RATES}


def uart_receive(data: bytes, tx_baud: int, rx_baud: int) -> bytes:
    """What a UART at ``rx_baud`` reads from ``data`` sent back to back, 8N1, at ``tx_baud``."""
    if tx_baud == rx_baud:
        return data
    n_bits = len(data) * 10
    t_tx, t_rx = 1.0 / tx_baud, 1.0 / rx_baud

    def level(i: int) -> int:
        if i < 0 or i >= n_bits:
            return 1  # idle line
        byte, bit = divmod(i, 10)
        if bit == 0:
            return 0  # start bit
        if bit == 9:
            return 1  # stop bit
        return (data[byte] >> (bit - 1)) & 1

    def at(t: float) -> int:
        return level(math.floor(t / t_tx + 1e-9))

    out = bytearray()
    cursor = 0.0
    while True:
        if at(cursor) == 0 and cursor > 0:
            t0 = cursor  # still low after the stop bit's sample: a new frame starts at once
        else:
            k = max(0, math.ceil(cursor / t_tx - 1e-9))
            while k < n_bits and not (level(k - 1) == 1 and level(k) == 0):
                k += 1
            if k >= n_bits:
                break
            t0 = k * t_tx
        value = 0
        for bit in range(8):
            if at(t0 + (1.5 + bit) * t_rx):
                value |= 1 << bit
        out.append(value if at(t0 + 9.5 * t_rx) else 0)
        cursor = t0 + 9.5 * t_rx
        if cursor >= n_bits * t_tx:
            break
    return bytes(out)


class BaudPty:
    """The ``Outlet`` of a receiver at ``baud``: a raw pty, bytes garbled as the reader's UART would."""

    def __init__(self, baud: int) -> None:
        self.baud = baud
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        # A pty starts at 38400 baud; a UART nobody has set up yet is at some other speed.
        attrs = termios.tcgetattr(self._slave)
        attrs[4] = attrs[5] = termios.B1200
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._stats = OutletStats()
        self._selector: selectors.BaseSelector | None = None
        self.reader_bauds: list[int] = []

    @property
    def label(self) -> str:
        return f"pty {self.path} at {self.baud} baud"

    @property
    def stats(self) -> OutletStats:
        return self._stats

    def reader_baud(self) -> int:
        """The speed the reader set on the slave side."""
        return _SPEED.get(termios.tcgetattr(self._master)[5], 0)

    def attach(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        selector.register(self._master, selectors.EVENT_READ, self._drain)

    def detach(self) -> None:
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._master)
        self._selector = None

    def _drain(self, _mask: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._master, 4096):
                pass

    def send(self, data: bytes, now: float) -> None:
        queued = struct.unpack("i", fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0"))[0]
        if queued > 2048:  # nobody reads: the bytes fall on the floor, as off a real UART
            termios.tcflush(self._slave, termios.TCIFLUSH)
        rx = self.reader_baud()
        self.reader_bauds.append(rx)
        wire = uart_receive(data, self.baud, rx)
        try:
            self._stats.sent_bytes += os.write(self._master, wire)
        except (BlockingIOError, OSError):
            self._stats.dropped_bytes += len(wire)

    def close(self) -> None:
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def receiver_at(baud: int, scenario: str = "urban_delivery") -> Iterator[BaudPty]:
    """The NMEA simulator's drive, live at 1x, from a receiver fixed at ``baud``."""
    outlet = BaudPty(baud)
    device = GpsDevice(iter_epochs(load_scenario(scenario), loop=True), [outlet], speed=1.0)
    thread = threading.Thread(target=device.run, name=f"gps-{baud}", daemon=True)
    thread.start()
    try:
        yield outlet
    finally:
        device.request_stop()
        thread.join(5)
        device.close()
        outlet.close()
