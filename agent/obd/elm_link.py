"""ELM327 adapters (USB, Bluetooth rfcomm, Wi-Fi TCP) through python-OBD.

python-OBD does the hard, adapter-specific part: the AT initialisation,
protocol search, and turning the ELM's text (headers, CAN multi-frame
"0: 49 02 ..." lines, legacy K-line frames) into messages.  We use its
synchronous ``OBD`` object only, from one thread, and do the rest
ourselves:

* its ``Async`` thread stops on a disconnect and nothing restarts it, so
  the reader above supervises this link and reopens it with backoff;
* it parses replies into messages; decoding the values is ``pids`` (shared
  with the CAN path and replay), so we ask for raw message data;
* it keeps the adapter's error text ("NO DATA", "CAN ERROR", ...) as
  non-OBD messages; we classify them into :class:`ObdError` kinds;
* its serial read timeout is a hard-coded 10 s; a silent adapter would
  stall the poll loop that long per request, so after opening we set the
  port's timeout to ``read_timeout_s`` (the one private attribute we touch,
  guarded so a python-OBD change degrades to the 10 s default).

Ports: ``/dev/ttyUSB0``, ``/dev/rfcomm0``, ``/dev/obd0`` (udev symlink) or
``socket://192.168.0.10:35000`` for Wi-Fi adapters; always pass the baud
rate (python-OBD's baud probe hangs on sockets and on symlinked ptys).
"""

from __future__ import annotations

import logging
from typing import Any

import obd
from obd import OBDStatus
from obd.OBDCommand import OBDCommand
from obd.protocols import ECU

from agent.obd.link import ErrorKind, LinkInfo, LinkLost, ObdError, ObdLink, Replies

log = logging.getLogger(__name__)
# python-OBD prints every failed open and read to its own stderr handler; the
# reader reports each state change once instead (journald-friendly).
_obd_logger = logging.getLogger("obd")
_obd_logger.handlers.clear()
_obd_logger.propagate = False

# ELM327 answers that are not data, longest first (BUS INIT: ...ERROR before ERROR).
_ERRORS: tuple[tuple[str, ErrorKind], ...] = (
    ("UNABLE TO CONNECT", "unable_to_connect"),
    ("BUS INIT", "bus_init"),
    ("CAN ERROR", "can_error"),
    ("BUFFER FULL", "buffer_full"),
    ("NO DATA", "no_data"),
    ("STOPPED", "stopped"),
    ("BUS BUSY", "can_error"),
    ("FB ERROR", "can_error"),
    ("DATA ERROR", "garbage"),
    ("<DATA ERROR", "garbage"),
    ("<RX ERROR", "garbage"),
    ("LV RESET", "disconnected"),
    ("?", "unknown_command"),
)
# python-OBD protocol ids whose frames carry 11-bit / 29-bit CAN ids.
_CAN11 = {"6", "8"}
_CAN29 = {"7", "9"}


def _raw(messages: list[Any]) -> list[Any]:
    return messages


def classify(lines: list[str]) -> ObdError | None:
    """The error an ELM327 reported in its non-data lines, or None when there is none."""
    for line in lines:
        text = line.strip().upper()
        if not text or text.startswith(("SEARCHING", "OK")):
            continue
        for marker, kind in _ERRORS:
            if marker in text:
                return ObdError(kind, line.strip())
        return ObdError("garbage", line.strip()[:40])
    return None


class ElmLink(ObdLink):
    """An ELM327 (or clone) on a serial port, rfcomm device or TCP socket."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 38400,
        protocol: str | None = None,
        read_timeout_s: float = 2.0,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.protocol = protocol
        self.read_timeout_s = read_timeout_s
        self._conn: obd.OBD | None = None
        self._ecu_base = 0
        self._learned: str | None = None  # protocol found by the first search

    def open(self) -> LinkInfo:
        self.close()
        # fast=False: cheap clones mishandle the response-count suffix and the
        # empty "repeat last command" request that fast mode sends.
        conn = obd.OBD(
            self.port,
            baudrate=self.baudrate,
            protocol=self.protocol or self._learned,
            fast=False,
            timeout=self.read_timeout_s,
            check_voltage=True,
        )
        status = conn.status()
        if status == OBDStatus.NOT_CONNECTED:
            conn.close()
            raise LinkLost(f"no ELM327 answering on {self.port}")
        self._conn = conn
        self._set_read_timeout(conn)
        if status != OBDStatus.CAR_CONNECTED:
            # The adapter answers but the vehicle does not: ignition off, or no
            # protocol found.  Keep the connection so ATRV still tells the
            # engine state; the reader retries the vehicle later (searching
            # afresh: the protocol we learnt may be another vehicle's).
            self._learned = None
            raise ObdError("unable_to_connect", f"adapter on {self.port} answers, vehicle does not")
        proto_id = conn.protocol_id()
        self._learned = proto_id or None
        self._ecu_base = 0x7E8 if proto_id in _CAN11 else 0x18DAF100 if proto_id in _CAN29 else 0
        version = self._query_text(obd.commands.ELM_VERSION) or "ELM327"
        return LinkInfo(adapter=version, protocol=conn.protocol_name(), port=self.port)

    @property
    def adapter_connected(self) -> bool:
        """True when the adapter itself answers (even with the vehicle off)."""
        return self._conn is not None and self._conn.status() != OBDStatus.NOT_CONNECTED

    def request(self, service: int, pid: int | None = None) -> Replies:
        conn = self._live()
        if conn.status() != OBDStatus.CAR_CONNECTED:
            raise ObdError("unable_to_connect", "vehicle not connected")
        text = f"{service:02X}" + ("" if pid is None else f"{pid:02X}")
        cmd = OBDCommand(text, f"raw {text}", text.encode(), 0, _raw, ECU.ALL, False)
        response = conn.query(cmd, force=True)
        if conn.status() == OBDStatus.NOT_CONNECTED:
            self.close()
            raise LinkLost(f"{self.port} closed")
        replies: Replies = {}
        errors: list[str] = []
        for message in response.messages:
            if message.ecu == ECU.UNKNOWN and not message.data:
                errors.extend(frame.raw for frame in message.frames)
                continue
            data = bytes(message.data)
            if data:
                replies[self._ecu_base + message.tx_id if self._ecu_base else message.tx_id] = data
        if replies:
            return replies
        error = classify(errors)
        if error is not None:
            raise error
        raise ObdError("silence", f"no answer to {text} within {self.read_timeout_s:g} s")

    def voltage(self) -> float | None:
        conn = self._conn
        if conn is None:
            return None
        response = conn.query(obd.commands.ELM_VOLTAGE)
        if conn.status() == OBDStatus.NOT_CONNECTED:
            self.close()
            raise LinkLost(f"{self.port} closed")
        value = response.value
        if value is None:
            return None
        return float(value.magnitude)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # the port is already gone; closing must not raise
                log.debug("closing %s: %s", self.port, exc)

    def _live(self) -> obd.OBD:
        if self._conn is None or self._conn.status() == OBDStatus.NOT_CONNECTED:
            self.close()
            raise LinkLost(f"{self.port} is not open")
        return self._conn

    def _query_text(self, cmd: OBDCommand) -> str | None:
        assert self._conn is not None
        response = self._conn.query(cmd, force=True)
        return str(response.value).strip() if response.value else None

    def _set_read_timeout(self, conn: obd.OBD) -> None:
        port = getattr(conn.interface, "_ELM327__port", None)
        if port is not None and hasattr(port, "timeout"):
            port.timeout = self.read_timeout_s
