"""An ELM327 v1.5 OBD-II adapter on a pseudo-terminal or TCP, answering from the ECU model.

Two layers, like the GPS simulator:

* ``Elm327``: the command interpreter, pure (bytes in, timed bytes out, given
  the scenario second t; no I/O, no clock).  It implements what python-OBD
  0.7.3 and real apps use from the datasheet: CR-terminated commands, case
  and spaces ignored, an empty line repeats the last request; ``AT`` Z, WS,
  D, I, @1, E, L, S, H, M, AL, NL, CAF, SP/TP (with ``A`` for auto), ST, AT,
  SH, CP, DP, DPN, RV, PC, LP; unknown commands get ``?``.  OBD requests are
  hex (``010C``, ``0902``, ``010C1`` with a response count); on the CAN
  protocols (6-9) replies are formatted as the ELM does, with or without
  headers and spaces, single and multi-frame (``7E8 10 14 49 02 01 ...`` or
  ``014`` / ``0: 49 02 01 ...``).  ``SEARCHING...`` precedes the first answer
  in automatic protocol mode.  Scripted ``[[obd.faults]]`` replace answers
  while they are on.
* ``Elm327Device``: the adapter plugged into a ``PtyPort`` (with a stable
  symlink, like udev's ``/dev/obd0``) or a ``TcpPort`` (a WiFi adapter; one
  client at a time, the newest wins).  Replies go out after realistic
  latencies (``obd.response_delay_ms`` per OBD request, ~5 ms per AT command;
  wall time, whatever ``--speed``).  A ``disconnect`` fault unplugs it: the
  pty (and the symlink) or the TCP listener disappear for the fault's
  duration, then come back with the adapter reset, as after a power cycle.

The ECU never answers on a protocol other than the scenario's: a fixed
``ATSP`` to another CAN speed gives ``CAN ERROR``, to the other id length
``NO DATA``, to a K-line protocol ``BUS INIT: ...ERROR``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import select
import socket
import time
import tty
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from simulators.ecu import EcuModel
from simulators.scenario import Obd, ScenarioError

__all__ = [
    "PROTOCOL_NAMES",
    "Elm327",
    "Elm327Device",
    "ElmStats",
    "ElmSummary",
    "Output",
    "PtyPort",
    "TcpPort",
]

Clock = Callable[[], float]

PROTOCOL_NAMES = {
    "0": "AUTO",
    "1": "SAE J1850 PWM",
    "2": "SAE J1850 VPW",
    "3": "ISO 9141-2",
    "4": "ISO 14230-4 (KWP 5BAUD)",
    "5": "ISO 14230-4 (KWP FAST)",
    "6": "ISO 15765-4 (CAN 11/500)",
    "7": "ISO 15765-4 (CAN 29/500)",
    "8": "ISO 15765-4 (CAN 11/250)",
    "9": "ISO 15765-4 (CAN 29/250)",
    "A": "SAE J1939 (CAN 29/250)",
    "B": "USER1 (CAN 11/125)",
    "C": "USER2 (CAN 11/50)",
}
_CAN_BITRATE = {"6": 500, "7": 500, "8": 250, "9": 250, "A": 250, "B": 125, "C": 50}
_EXTENDED = frozenset("79A")
_KLINE = frozenset("345")
_FAULT_TEXT = {
    "no_data": "NO DATA",
    "can_error": "CAN ERROR",
    "bus_init_error": "BUS INIT: ...ERROR",
    "stopped": "STOPPED",
    "unable_to_connect": "UNABLE TO CONNECT",
    "buffer_full": "BUFFER FULL",
}
_GARBAGE = b"GHIJKLMNOPQRSTUVWXYZ!#$%&*+-/<=?@[]^_{|}~\x81\x9f\xa5\xc3\xfe"
_AT_DELAY_S = 0.005
_RESET_DELAY_S = 0.3  # ATZ: the chip restarts
_WARM_START_DELAY_S = 0.05
_SEARCH_DELAY_S = 0.8  # automatic protocol search until the ECU answers
_MORE_REPLIES_S = 0.02  # without a response count the ELM waits briefly for more ECUs
_DEFAULT_ST = 0x32  # ATST default: 0x32 x 4 ms = 200 ms before NO DATA
_MAX_LINE = 128  # characters the ELM buffers for one command
_MAX_PENDING = 65536  # bytes held for a reader that does not read
_FUNCTIONAL_11, _PHYSICAL_11 = 0x7DF, 0x7E0
_FUNCTIONAL_29, _PHYSICAL_29 = 0x18DB33F1, 0x18DA10F1
_AT_FLAGS = {
    "E0": ("echo", False),
    "E1": ("echo", True),
    "L0": ("linefeeds", False),
    "L1": ("linefeeds", True),
    "S0": ("spaces", False),
    "S1": ("spaces", True),
    "H0": ("headers", False),
    "H1": ("headers", True),
    "CAF0": ("caf", False),
    "CAF1": ("caf", True),
}
_AT_OK = frozenset({"M0", "M1", "AL", "NL", "PC", "AT0", "AT1", "AT2", "R1", "V0", "V1"})


@dataclass(frozen=True, slots=True)
class Output:
    """Bytes the adapter sends ``delay_s`` wall seconds after its previous output."""

    delay_s: float
    data: bytes


@dataclass
class ElmStats:
    """What the interpreter has done: for the summary line and for tests."""

    commands: int = 0
    obd_requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)


@dataclass
class _Settings:
    """What ATZ / ATD reset (the ELM's volatile settings)."""

    echo: bool = True
    linefeeds: bool = False
    spaces: bool = True
    headers: bool = False
    caf: bool = True
    st: int = _DEFAULT_ST
    header: int | None = None  # ATSH; None: the functional default
    protocol: str = "0"
    auto: bool = True
    found: str | None = None  # the protocol that talked to the vehicle


class Elm327:
    """The ELM327 command interpreter: bytes in, ``Output`` list out; no I/O."""

    def __init__(self, model: EcuModel, *, seed: int = 0) -> None:
        self.model = model
        scenario = model.scenario
        self.obd: Obd = scenario.obd or Obd()
        if self.obd.protocol not in "6789":
            raise ScenarioError(
                scenario.name or "<scenario>",
                [
                    f"obd.protocol: the ELM327 simulator serves CAN vehicles (6-9), got "
                    f"{self.obd.protocol!r}"
                ],
            )
        self.car_protocol = self.obd.protocol
        self.version = self.obd.elm_version
        self.stats = ElmStats()
        self._seed = seed
        self._stored = ("0", True)  # the protocol ATSP saved (ELM default: automatic)
        self.power_on()

    def power_on(self) -> None:
        """Back to the state after plugging in: defaults, empty buffer, nothing to repeat."""
        self._settings = _Settings(protocol=self._stored[0], auto=self._stored[1])
        self._line = bytearray()
        self._last_obd: str | None = None
        self._low_power = False
        self._skip_line = False

    @property
    def settings(self) -> _Settings:
        """The current settings (read-only use, for tests)."""
        return self._settings

    def fault_at(self, t: float) -> str | None:
        """The kind of the first scripted fault active at scenario second ``t``."""
        for fault in self.obd.faults:
            if fault.active(t):
                return fault.kind
        return None

    def disconnected(self, t: float) -> bool:
        """Whether a ``disconnect`` fault unplugs the adapter at ``t``."""
        return any(f.kind == "disconnect" and f.active(t) for f in self.obd.faults)

    # ------------------------------------------------------------------ input

    def feed(self, data: bytes, t: float) -> list[Output]:
        """Take bytes from the host; return what the adapter sends back, in order."""
        out: list[Output] = []
        for byte in data:
            if self._low_power:
                self._low_power = False
                self._skip_line = byte != 0x0D  # the rest of the waking line is lost
                out.append(Output(_WARM_START_DELAY_S, self._lines(["", "", self.version])))
                continue
            if self._skip_line:
                self._skip_line = byte != 0x0D
                continue
            if byte == 0x0D:
                raw = bytes(self._line)
                self._line.clear()
                out += self._command(raw, t)
            elif len(self._line) < _MAX_LINE * 2:
                self._line.append(byte)
        return out

    def _eol(self) -> bytes:
        return b"\r\n" if self._settings.linefeeds else b"\r"

    def _lines(self, lines: list[str]) -> bytes:
        """Reply lines, each ended, then the blank line and the ``>`` prompt."""
        eol = self._eol()
        return b"".join(line.encode("latin-1") + eol for line in lines) + eol + b">"

    def _command(self, raw: bytes, t: float) -> list[Output]:
        self.stats.commands += 1
        fault = self.fault_at(t)
        if fault in ("silence", "disconnect"):
            self.stats.faults[fault] += 1
            return []
        if fault == "garbage":
            self.stats.faults[fault] += 1
            rng = random.Random(f"{self._seed}:{self.stats.commands}:{t:.3f}")
            junk = bytes(rng.choice(_GARBAGE) for _ in range(rng.randint(8, 40)))
            return [Output(self._obd_delay(), junk + b"\r\r>")]
        echo = [Output(0.0, raw + self._eol())] if self._settings.echo else []
        text = "".join(ch for ch in raw.decode("latin-1") if ch > " ").upper()
        if len(text) > _MAX_LINE:
            return [*echo, Output(_AT_DELAY_S, self._lines(["?"]))]
        if not text:
            if self._last_obd is None:
                return [*echo, Output(0.0, self._eol() + b">")]
            text = self._last_obd
        if text.startswith("AT"):
            return echo + self._at(text[2:], t)
        if re.fullmatch(r"[0-9A-F]+", text):
            return echo + self._obd(text, t, fault)
        return [*echo, Output(_AT_DELAY_S, self._lines(["?"]))]

    # ------------------------------------------------------------------ AT commands

    def _at(self, cmd: str, t: float) -> list[Output]:
        s = self._settings
        delay = _AT_DELAY_S
        reply: list[str] = ["OK"]
        if cmd in ("Z", "WS"):
            self._settings = _Settings(protocol=self._stored[0], auto=self._stored[1])
            self._last_obd = None
            reply = ["", "", self.version]
            delay = _RESET_DELAY_S if cmd == "Z" else _WARM_START_DELAY_S
        elif cmd == "D":
            self._settings = _Settings(protocol=self._stored[0], auto=self._stored[1])
        elif cmd == "I":
            reply = [self.version]
        elif cmd == "@1":
            reply = ["OBDII to RS232 Interpreter"]
        elif cmd in _AT_FLAGS:
            name, on = _AT_FLAGS[cmd]
            setattr(s, name, on)
        elif cmd in _AT_OK:
            pass
        elif cmd == "LP":
            self._low_power = True
        elif cmd == "RV":
            reply = [f"{self.model.state_at(t).battery_v:.1f}V"]
        elif cmd == "DP":
            name = PROTOCOL_NAMES[s.found or s.protocol]
            if s.auto:
                name = f"AUTO, {name}" if s.found or s.protocol != "0" else "AUTO"
            reply = [name]
        elif cmd == "DPN":
            number = s.found or s.protocol
            reply = [f"A{number}" if s.auto else number]
        elif m := re.fullmatch(r"(SP|TP)(A?)([0-9A-C])", cmd):
            kind, auto, number = m.groups()
            s.protocol, s.auto, s.found = number, bool(auto) or number == "0", None
            if kind == "SP":
                self._stored = (s.protocol, s.auto)
        elif m := re.fullmatch(r"ST([0-9A-F]{2})", cmd):
            s.st = int(m.group(1), 16) or _DEFAULT_ST
        elif m := re.fullmatch(r"SH([0-9A-F]{3}|[0-9A-F]{6}|[0-9A-F]{8})", cmd):
            digits = m.group(1)
            s.header = int(digits, 16) | (0x18000000 if len(digits) == 6 else 0)
        elif re.fullmatch(r"CP[0-9A-F]{2}", cmd):
            pass
        else:
            reply = ["?"]
        return [Output(delay, self._lines(reply))]

    # ------------------------------------------------------------------ OBD requests

    def _obd_delay(self) -> float:
        return self.obd.response_delay_ms / 1000

    def _no_answer_delay(self) -> float:
        return self._settings.st * 0.004

    def _obd(self, text: str, t: float, fault: str | None) -> list[Output]:
        s = self._settings
        digits, count = text, None
        if len(digits) % 2:
            if len(digits) < 3:
                return [Output(_AT_DELAY_S, self._lines(["?"]))]
            digits, count = digits[:-1], int(digits[-1], 16)
        request = bytes.fromhex(digits)
        if len(request) > 7:
            return [Output(_AT_DELAY_S, self._lines(["?"]))]
        self.stats.obd_requests += 1
        self._last_obd = text
        if not s.caf:  # formatting off: the host sends the PCI byte itself
            if request[0] != len(request) - 1:
                return [Output(self._no_answer_delay(), self._lines(["NO DATA"]))]
            request = request[1:]
        delay = self._obd_delay() + (0.0 if count else _MORE_REPLIES_S)
        if fault == "slow":
            self.stats.faults[fault] += 1
            slow = next(f for f in self.obd.faults if f.kind == "slow" and f.active(t))
            delay += (slow.delay_ms if slow.delay_ms is not None else 2000.0) / 1000
        head: list[Output] = []
        if s.found is None:
            protocol_error = self._protocol_error()
            if protocol_error:
                return [Output(self._no_answer_delay(), self._lines([protocol_error]))]
            if s.auto:
                head = [Output(_AT_DELAY_S, b"SEARCHING..." + self._eol())]
                delay += _SEARCH_DELAY_S
        if fault in _FAULT_TEXT:
            self.stats.faults[fault] += 1
            return [*head, Output(delay, self._lines([_FAULT_TEXT[fault]]))]
        reply = self.model.respond(request, t) if self._to_engine() else None
        if reply is None:
            text_out = "UNABLE TO CONNECT" if s.found is None and s.auto else "NO DATA"
            return [*head, Output(delay + self._no_answer_delay(), self._lines([text_out]))]
        s.found = self.car_protocol
        return [*head, Output(delay, self._lines(self._format(reply)))]

    def _protocol_error(self) -> str | None:
        """What a fixed protocol that is not the vehicle's prints (None: it can talk)."""
        s = self._settings
        if s.auto or s.protocol == self.car_protocol:
            return None
        if s.protocol in _KLINE:
            return "BUS INIT: ...ERROR"
        if _CAN_BITRATE.get(s.protocol) not in (None, _CAN_BITRATE[self.car_protocol]):
            return "CAN ERROR"
        return "NO DATA"

    def _extended(self) -> bool:
        return self.car_protocol in _EXTENDED

    def _to_engine(self) -> bool:
        """Whether the ATSH header addresses the engine ECU (functionally or physically)."""
        header = self._settings.header
        if header is None:
            return True
        if self._extended():
            return header in (_FUNCTIONAL_29, _PHYSICAL_29)
        return header in (_FUNCTIONAL_11, _PHYSICAL_11)

    def _format(self, payload: bytes) -> list[str]:
        """The ELM's text for one ECU reply: ISO-TP frames, headers, spaces, CAF."""
        s = self._settings
        sep = " " if s.spaces else ""
        frames = _isotp_frames(payload)

        def hexed(data: bytes) -> str:
            return sep.join(f"{b:02X}" for b in data)

        if s.headers:
            if self._extended():
                ident = hexed(EcuModel.REPLY_ID_29.to_bytes(4, "big"))
            else:
                ident = f"{EcuModel.REPLY_ID:03X}"
            return [f"{ident}{sep}{hexed(f)}" for f in frames]
        if not s.caf:
            return [hexed(f) for f in frames]
        if len(frames) == 1:
            return [hexed(payload)]
        lines = [f"{len(payload):03X}", f"0:{sep}{hexed(frames[0][2:])}"]
        lines += [f"{i & 0xF:X}:{sep}{hexed(f[1:])}" for i, f in enumerate(frames[1:], 1)]
        return lines


def _isotp_frames(payload: bytes) -> list[bytes]:
    """ISO 15765-2 frames (PCI + data) for one message; no padding."""
    if len(payload) <= 7:
        return [bytes((len(payload),)) + payload]
    frames = [bytes((0x10 | (len(payload) >> 8), len(payload) & 0xFF)) + payload[:6]]
    rest, seq = payload[6:], 1
    while rest:
        frames.append(bytes((0x20 | (seq & 0xF),)) + rest[:7])
        rest, seq = rest[7:], seq + 1
    return frames


# --------------------------------------------------------------------------- ports


class Port(Protocol):
    """Where the adapter is plugged in; never blocks, never raises for a lost host."""

    @property
    def label(self) -> str: ...

    @property
    def is_open(self) -> bool: ...

    def open(self) -> None:
        """Plug in: create the pty / listen on the port."""

    def close(self) -> None:
        """Unplug: the host sees the device vanish."""

    def read_fds(self) -> list[int]: ...

    def want_write(self) -> list[int]: ...

    def on_readable(self, fd: int) -> bytes:
        """Service a readable descriptor; return what the host sent (maybe nothing)."""

    def on_writable(self, fd: int) -> None: ...

    def send(self, data: bytes) -> None:
        """Queue bytes for the host (dropped beyond a bound when nobody reads)."""

    def client_changed(self) -> bool:
        """True once after the host connection was replaced or lost (TCP)."""


class PtyPort:
    """A pseudo-terminal like a USB ELM327; ``link`` is kept pointing at its slave."""

    def __init__(self, link: str | os.PathLike[str] | None = None) -> None:
        self.link = Path(link) if link is not None else None
        self.path: str | None = None
        self._master = self._slave = -1
        self._pending = bytearray()
        self.opened = 0

    @property
    def label(self) -> str:
        where = f" -> {self.link}" if self.link else ""
        return f"pty {self.path}{where}"

    @property
    def is_open(self) -> bool:
        return self._master >= 0

    def open(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF mapping: the host gets our bytes
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self.opened += 1
        if self.link is not None:
            tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(self.path, tmp)
            os.replace(tmp, self.link)  # atomic: readers never see a missing link

    def close(self) -> None:
        if self.link is not None and self.path is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self.link) == self.path:
                    self.link.unlink()
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
        self._pending.clear()

    def read_fds(self) -> list[int]:
        return [self._master] if self._master >= 0 else []

    def want_write(self) -> list[int]:
        return [self._master] if self._pending and self._master >= 0 else []

    def on_readable(self, fd: int) -> bytes:
        try:
            return os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            return b""

    def on_writable(self, fd: int) -> None:
        self._flush()

    def send(self, data: bytes) -> None:
        if len(self._pending) + len(data) <= _MAX_PENDING:
            self._pending += data
        self._flush()

    def _flush(self) -> None:
        if not self._pending or self._master < 0:
            return
        try:
            n = os.write(self._master, self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EPIPE):
                raise
            n = len(self._pending)
        del self._pending[:n]

    def client_changed(self) -> bool:
        return False


class TcpPort:
    """A TCP listener like a WiFi ELM327: one client at a time, the newest wins."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: socket.socket | None = None
        self._client: socket.socket | None = None
        self._pending = bytearray()
        self._changed = False
        self.connections = 0

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp {host}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._server is not None

    def open(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server = socket.create_server((self.host, self.port), family=family, backlog=4)
        server.setblocking(False)
        self.port = int(server.getsockname()[1])  # the same port again after a disconnect
        self._server = server

    def close(self) -> None:
        self._drop_client()
        if self._server is not None:
            self._server.close()
            self._server = None

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._changed = True
        self._pending.clear()

    def read_fds(self) -> list[int]:
        fds = [self._server.fileno()] if self._server is not None else []
        return fds + ([self._client.fileno()] if self._client is not None else [])

    def want_write(self) -> list[int]:
        return [self._client.fileno()] if self._client is not None and self._pending else []

    def on_readable(self, fd: int) -> bytes:
        if self._server is not None and fd == self._server.fileno():
            try:
                sock, _addr = self._server.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return b""
            self._drop_client()
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._client = sock
            self.connections += 1
            return b""
        if self._client is None:
            return b""
        try:
            data = self._client.recv(4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            data = b""
        if not data:
            self._drop_client()
        return data

    def on_writable(self, fd: int) -> None:
        self._flush()

    def send(self, data: bytes) -> None:
        if self._client is None:
            return
        if len(self._pending) + len(data) <= _MAX_PENDING:
            self._pending += data
        self._flush()

    def _flush(self) -> None:
        if self._client is None or not self._pending:
            return
        try:
            n = self._client.send(self._pending, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop_client()
            return
        del self._pending[:n]

    def client_changed(self) -> bool:
        changed, self._changed = self._changed, False
        return changed


# --------------------------------------------------------------------------- device


@dataclass
class ElmSummary:
    """How a run went: for the one-line report and for tests."""

    commands: int = 0
    obd_requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    disconnects: int = 0
    connections: int = 0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    finished: bool = False
    stopped_by: str | None = None


class _DefaultClock:
    """Scenario seconds: ``start_offset + speed x`` monotonic time since the first call."""

    def __init__(self, speed: float, start_offset_s: float) -> None:
        self._speed = speed
        self._offset = start_offset_s
        self._start: float | None = None

    def __call__(self) -> float:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        return self._offset + (now - self._start) * self._speed


class Elm327Device:
    """The adapter on a port: reads commands, sends timed replies, obeys faults.

    ``clock`` returns scenario seconds (default: monotonic time since ``run``
    x ``speed`` + ``start_offset_s``); tests pass a frozen or stepped one.
    ``request_stop`` is safe from signal handlers and other threads.
    """

    def __init__(
        self,
        elm: Elm327,
        port: PtyPort | TcpPort,
        *,
        clock: Clock | None = None,
        speed: float = 1.0,
        start_offset_s: float = 0.0,
        duration_s: float | None = None,
        poll_s: float = 0.02,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.elm = elm
        self.port = port
        self._clock = clock or _DefaultClock(speed, start_offset_s)
        self._duration = duration_s
        self._poll = poll_s
        self._queue: deque[tuple[float, bytes]] = deque()
        self._stop: str | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.summary = ElmSummary()

    def request_stop(self, reason: str = "stopped") -> None:
        """Make ``run`` return soon; callable from a signal handler or thread."""
        if self._stop is None:
            self._stop = reason
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def open(self) -> None:
        """Plug the adapter in (``run`` does it when needed); announce ``port`` after this."""
        if not self.port.is_open:
            self.port.open()
            self.elm.power_on()

    def run(self) -> ElmSummary:
        """Serve until a stop is requested or ``duration_s`` scenario seconds have passed."""
        summary = self.summary
        began = time.monotonic()
        t = self._clock()
        try:
            while self._stop is None:
                t = self._clock()
                if self._duration is not None and t >= self._duration:
                    summary.finished = True
                    break
                self._plug(t)
                self._send_due()
                self._wait(t)
        finally:
            self.port.close()
            summary.sim_seconds = t
            summary.wall_seconds = time.monotonic() - began
            summary.stopped_by = self._stop
            summary.commands = self.elm.stats.commands
            summary.obd_requests = self.elm.stats.obd_requests
            summary.faults = Counter(self.elm.stats.faults)
            summary.faults["disconnect"] += summary.disconnects
            summary.faults = +summary.faults
            if isinstance(self.port, TcpPort):
                summary.connections = self.port.connections
        return summary

    def _plug(self, t: float) -> None:
        """Unplug during a ``disconnect`` fault, plug back in (reset) after it."""
        down = self.elm.disconnected(t)
        if down and self.port.is_open:
            self.port.close()
            self._queue.clear()
            self.summary.disconnects += 1
        elif not down and not self.port.is_open:
            self.port.open()
            self.elm.power_on()

    def _send_due(self) -> None:
        now = time.monotonic()
        while self._queue and self._queue[0][0] <= now:
            self.port.send(self._queue.popleft()[1])

    def _wait(self, t: float) -> None:
        timeout = self._poll
        if self._queue:
            timeout = min(timeout, max(0.0, self._queue[0][0] - time.monotonic()))
        reads = [self._wake_r.fileno(), *self.port.read_fds()]
        try:
            readable, writable, _ = select.select(reads, self.port.want_write(), [], timeout)
        except InterruptedError:
            return
        for fd in writable:
            self.port.on_writable(fd)
        for fd in readable:
            if fd == self._wake_r.fileno():
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while self._wake_r.recv(512):
                        pass
                continue
            data = self.port.on_readable(fd)
            if self.port.client_changed():
                self._queue.clear()
            if data:
                self._schedule(self.elm.feed(data, self._clock()))

    def _schedule(self, outputs: list[Output]) -> None:
        due = max(time.monotonic(), self._queue[-1][0] if self._queue else 0.0)
        for out in outputs:
            due += out.delay_s
            self._queue.append((due, out.data))

    def close(self) -> None:
        """Release the port and the wake-up sockets."""
        self.port.close()
        self._wake_r.close()
        self._wake_w.close()
