"""OBD-II on a native CAN interface (a Pi CAN HAT, vcan, python-can's virtual bus).

ISO 15765-4 over python-can: one functional request, answers from every ECU.

* The request is a Single Frame on the functional id (0x7DF, or 0x18DB33F1
  with 29-bit ids), sent by this module: can-isotp's stacks address one
  peer each and, for 11-bit normal addressing, send "functional" frames on
  the physical id, so they cannot emit the 0x7DF request.
* Replies come on 0x7E8-0x7EF (0x18DAF1xx).  The bus gets a receive filter
  for just those ids, so a busy vehicle bus is dropped in the kernel on
  socketcan (in python-can's ``recv`` on other interfaces); a frame that
  still slips through is counted and ignored.
* A reply longer than 7 bytes (VIN, DTC lists) starts with a First Frame:
  we send a Flow Control (``30 00 00``: all frames, no gap) to that ECU's
  physical id (reply id - 8; 29-bit: source and target swapped) and collect
  its Consecutive Frames with :class:`Reassembler`.

Why a small hand-written receiver rather than can-isotp here: a tester
only *receives* segmented messages (every OBD request fits a Single
Frame), always grants the whole message in one Flow Control, and must
demultiplex up to 8 (29-bit: 256) ECUs answering one functional request
in the single receive loop that also sent it.  can-isotp's stacks each
own a receive loop for one address pair (threads, or a polled
``TransportLayerLogic`` fed from a queue per ECU); adapting them costs more
code than the receive state machine they would replace (SF, FF, CF with
sequence check), and that machine is pure and tested frame by frame.  The
transmit side, where block sizes, STmin and wait frames make a library
worth having, is can-isotp's job in the CAN simulator
(``simulators/can_ecu.py``), so this receiver is tested against an
independent implementation, not against its mirror image.

Padding: every frame we send is 8 bytes (ISO 15765-4 requires DLC 8),
filled with 0x55.  Its alternating bits never need a stuff bit, so padded
frames stay at the minimum length on the wire, unlike 0x00 filler; ECUs
ignore the filler value.

Timing (ISO 15765-4): each ECU's first frame within P2 (50 ms) of the
request; an ECU that needs longer says so with NRC 0x78 and then has P2*
(5 s); Consecutive Frames at most N_Cr (150 ms) apart.  Once the ECUs
known to support a request (learned from the PID-support replies that pass
through) have answered, or ``settle_s`` after the first answer when none
are known, the request is done: waiting the full P2 every time would cap
polling at 20 requests a second.

Errors: no answer from any ECU is ``no_data`` (CAN ECUs stay silent for
unsupported PIDs; an ELM327 says NO DATA in the same case); a negative
response is ``no_data`` with the NRC; a segmented reply that stops is
``silence``; frames that break ISO 15765-2 or carry no response service id
(0x40-0x7F) are ``garbage``.  Well-formed answers to other services on the
reply ids (another tester's UDS 0x62 or KWP 0x61 session) are ignored, and
their First Frames get no Flow Control from us.
``can.CanError`` (interface gone, closed bus, transmit queue full: nobody acks)
and a SocketCAN bus-off error frame are :class:`LinkLost`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import can

from agent.obd.link import LinkInfo, LinkLost, ObdError, ObdLink, Replies
from agent.obd.pids import DISCOVERY_PIDS

__all__ = [
    "FUNCTIONAL_ID_11",
    "FUNCTIONAL_ID_29",
    "PADDING",
    "CanLink",
    "CanLinkStats",
    "IsoTpError",
    "Reassembler",
    "Step",
    "flow_control",
    "is_reply_id",
    "nrc_name",
    "physical_request_id",
    "reply_filters",
    "single_frame",
]

log = logging.getLogger(__name__)

FUNCTIONAL_ID_11 = 0x7DF
FUNCTIONAL_ID_29 = 0x18DB33F1
PADDING = 0x55
P2_S = 0.050
P2_STAR_S = 5.0
N_CR_S = 0.150
MAX_MESSAGE = 4095  # the largest length a classic-CAN First Frame can state
_CAN_ERR_BUSOFF = 0x40  # error class bit of a SocketCAN error frame (linux/can/error.h)

_NRC_NAMES = {
    0x10: "general reject",
    0x11: "service not supported",
    0x12: "sub-function not supported",
    0x13: "incorrect message length",
    0x21: "busy, repeat request",
    0x22: "conditions not correct",
    0x31: "request out of range",
    0x78: "response pending",
}
# Services every emission-related ECU answers (the DTC services), so the ECUs
# that answered 01 00 are the ones to wait for.
_ALL_ECU_SERVICES = frozenset({0x03, 0x07, 0x0A})


def nrc_name(code: int) -> str:
    """``0x12 (sub-function not supported)`` for an error detail."""
    name = _NRC_NAMES.get(code)
    return f"0x{code:02X}" + (f" ({name})" if name else "")


def reply_filters(extended: bool | None) -> list[can.typechecking.CanFilter]:
    """Receive filters passing only OBD reply ids (both widths when ``extended`` is None)."""
    eleven: can.typechecking.CanFilter = {"can_id": 0x7E8, "can_mask": 0x7F8, "extended": False}
    twenty_nine: can.typechecking.CanFilter = {
        "can_id": 0x18DAF100,
        "can_mask": 0x1FFFFF00,
        "extended": True,
    }
    if extended is None:
        return [eleven, twenty_nine]
    return [twenty_nine] if extended else [eleven]


def is_reply_id(arbitration_id: int, extended: bool) -> bool:
    """True for 0x7E8-0x7EF (11-bit) and 0x18DAF1xx (29-bit): where ECUs answer a tester."""
    if extended:
        return arbitration_id & 0x1FFFFF00 == 0x18DAF100
    return 0x7E8 <= arbitration_id <= 0x7EF


def physical_request_id(reply_id: int, extended: bool) -> int:
    """Where to send Flow Control to the ECU answering on ``reply_id``."""
    if extended:
        return 0x18DA00F1 | (reply_id & 0xFF) << 8  # 18DA F1 xx -> 18DA xx F1
    return reply_id - 8


def single_frame(payload: bytes, padding: int = PADDING) -> bytes:
    """``payload`` (1-7 bytes) as an ISO 15765-2 Single Frame, padded to 8 bytes."""
    if not 1 <= len(payload) <= 7:
        raise ValueError(f"a Single Frame carries 1-7 bytes, not {len(payload)}")
    return (bytes([len(payload)]) + payload).ljust(8, bytes([padding]))


def flow_control(padding: int = PADDING) -> bytes:
    """Continue To Send, block size 0 (no further Flow Control), STmin 0: ``30 00 00``."""
    return bytes([0x30, 0x00, 0x00]).ljust(8, bytes([padding]))


# --------------------------------------------------------------------------- receiving


class IsoTpError(Exception):
    """A frame that breaks ISO 15765-2 (the detail says how)."""


@dataclass(frozen=True, slots=True)
class Step:
    """What one frame did: completed a message, or asks for a Flow Control to be sent."""

    message: bytes | None = None
    flow_control: bool = False


_NOTHING = Step()


class Reassembler:
    """ISO 15765-2 receive side for one sender: Single Frames, First + Consecutive Frames.

    Pure (no I/O, no clock): the caller sends the Flow Control a ``Step``
    asks for and times the gaps, so it can be tested frame by frame.
    """

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        self.max_size = max_size
        self.expected = 0  # length the First Frame announced; 0 when idle
        self.stray = 0  # Consecutive / Flow Control frames outside a reception
        self._buf = bytearray()
        self._seq = 0

    @property
    def active(self) -> bool:
        """A segmented message is half received."""
        return self.expected > 0

    @property
    def received(self) -> int:
        return len(self._buf)

    @property
    def head(self) -> bytes:
        """The start of the message under way (a First Frame carries 6 bytes)."""
        return bytes(self._buf[:6])

    def reset(self) -> None:
        self.expected = 0
        self._buf.clear()

    def feed(self, data: bytes) -> Step:
        """Take one CAN frame's data; raises IsoTpError for a frame that breaks the protocol."""
        if not data:
            raise IsoTpError("empty frame")
        kind, low = data[0] >> 4, data[0] & 0x0F
        if kind == 0:  # Single Frame (interrupts a reception, ISO 15765-2 9.8.3)
            if low == 0 or low > len(data) - 1:
                raise IsoTpError(f"Single Frame says {low} bytes in a {len(data)}-byte frame")
            self.reset()
            return Step(message=bytes(data[1 : 1 + low]))
        if kind == 1:  # First Frame (restarts a reception)
            self.reset()
            size = low << 8 | data[1] if len(data) > 1 else 0
            if len(data) < 8:
                raise IsoTpError(f"First Frame of {len(data)} bytes (needs 8)")
            if size <= 7 or size > self.max_size:
                raise IsoTpError(f"First Frame announces {size} bytes (8-{self.max_size} allowed)")
            self.expected, self._seq = size, 1
            self._buf += data[2:]
            return Step(flow_control=True)
        if kind == 2:  # Consecutive Frame
            if not self.active:
                self.stray += 1  # the tail of a message given up on, or another tester's
                return _NOTHING
            if low != self._seq:
                expected, got = self._seq, self.received
                self.reset()
                raise IsoTpError(
                    f"Consecutive Frame {low:X} where {expected:X} was due (after {got} bytes)"
                )
            self._seq = (self._seq + 1) & 0x0F
            self._buf += data[1:]
            if len(self._buf) < self.expected:
                return _NOTHING
            message = bytes(self._buf[: self.expected])
            self.reset()
            return Step(message=message)
        if kind == 3:  # Flow Control: an ECU talking to another tester
            self.stray += 1
            return _NOTHING
        raise IsoTpError(f"PCI type {kind:X} is not ISO 15765-2 (frame {data.hex().upper()})")


# --------------------------------------------------------------------------- the link


@dataclass
class CanLinkStats:
    """Counters for status and tests; written by the link's thread only."""

    requests: int = 0
    replies: int = 0
    flow_controls: int = 0
    foreign: int = 0  # frames on other ids that the filter let through
    stray: int = 0  # frames on reply ids that answered nothing we asked
    broken: int = 0  # frames that broke ISO 15765-2
    nrcs: dict[int, int] = field(default_factory=dict)


@dataclass
class _Ecu:
    """One ECU's progress through a request."""

    rx: Reassembler = field(default_factory=Reassembler)
    deadline: float | None = None  # next Consecutive Frame, or the response-pending limit
    answer: bytes | None = None
    nrc: int | None = None
    garbage: str | None = None  # the first broken or unrelated frame, described
    stalled: str | None = None  # what was left half done when time ran out


class CanLink(ObdLink):
    """OBD-II over python-can: SocketCAN (``can0``, ``vcan0``), ``virtual``, or any interface.

    Give either the python-can settings (the link creates the bus on
    ``open`` and shuts it down on ``close``) or an existing ``bus``, which
    the link uses but does not shut down.  ``extended_ids`` None tries
    11-bit and then 29-bit ids on ``open``, as an ELM327 searches.
    """

    def __init__(
        self,
        *,
        interface: str = "socketcan",
        channel: str = "can0",
        bitrate: int | None = 500000,
        extended_ids: bool | None = False,
        bus: can.BusABC | None = None,
        p2_s: float = P2_S,
        p2_star_s: float = P2_STAR_S,
        cf_timeout_s: float = N_CR_S,
        settle_s: float = 0.02,
        padding: int = PADDING,
        set_filters: bool = True,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interface = interface
        self.channel = channel
        self.bitrate = bitrate
        self.extended_ids = extended_ids
        self.p2_s = p2_s
        self.p2_star_s = p2_star_s
        self.cf_timeout_s = cf_timeout_s
        self.settle_s = settle_s
        self.padding = padding
        self.set_filters = set_filters
        self._given = bus
        self._bus: can.BusABC | None = None
        self._extended = bool(extended_ids)
        self._mono = mono
        self.stats = CanLinkStats()
        # (service, pid) -> ECUs whose support bitmap lists it; ECUs that answered 01 00.
        self._supporters: dict[tuple[int, int], set[int]] = {}
        self._ecus: set[int] = set()

    # -- ObdLink -----------------------------------------------------------------

    def open(self) -> LinkInfo:
        """Open the bus (or adopt the given one) and probe the vehicle with 01 00."""
        self.close()
        candidates = [self.extended_ids] if self.extended_ids is not None else [False, True]
        bus = self._given
        try:
            if bus is None:
                kwargs: dict[str, Any] = {"receive_own_messages": False}
                if self.bitrate is not None:
                    kwargs["bitrate"] = self.bitrate
                bus = can.Bus(
                    interface=self.interface,
                    channel=self.channel,
                    can_filters=reply_filters(self.extended_ids) if self.set_filters else None,
                    **kwargs,
                )
            elif self.set_filters:
                bus.set_filters(reply_filters(self.extended_ids))
        except (can.CanError, OSError, ValueError) as exc:
            raise LinkLost(f"cannot open {self.interface} {self.channel}: {exc}") from None
        self._bus = bus
        self._supporters.clear()
        self._ecus.clear()
        failure: ObdError | None = None
        for extended in candidates:
            self._extended = bool(extended)
            try:
                self.request(0x01, 0x00)
            except LinkLost:
                self.close()
                raise
            except ObdError as exc:
                failure = exc
                continue
            if self.set_filters and self.extended_ids is None:
                bus.set_filters(reply_filters(self._extended))
            return self.info
        self.close()
        widths = "/".join("29" if e else "11" for e in candidates)
        detail = failure.detail if failure is not None else ""
        raise ObdError("unable_to_connect", f"no ECU answered 01 00 on CAN {widths}: {detail}")

    @property
    def info(self) -> LinkInfo:
        """Adapter, protocol and port as the reader reports them."""
        if self._given is not None:
            adapter, port = type(self._given).__name__, str(self._given.channel_info)
        else:
            adapter, port = f"{self.interface} {self.channel}", self.channel
        width = "29" if self._extended else "11"
        rate = f"/{self.bitrate // 1000}" if self.bitrate else ""
        return LinkInfo(adapter=adapter, protocol=f"ISO 15765-4 (CAN {width}{rate})", port=port)

    def request(self, service: int, pid: int | None = None) -> Replies:
        """Send one functional request and collect every ECU's answer (see the module doc)."""
        bus = self._bus
        if bus is None:
            raise LinkLost("the CAN link is not open")
        payload = bytes([service]) if pid is None else bytes([service, pid])
        self.stats.requests += 1
        self._drain(bus)
        functional = FUNCTIONAL_ID_29 if self._extended else FUNCTIONAL_ID_11
        self._send(bus, functional, single_frame(payload, self.padding))
        sent = self._mono()
        ecus = self._collect(bus, service, pid, sent)
        replies = {ecu: st.answer for ecu, st in ecus.items() if st.answer is not None}
        if replies:
            self.stats.replies += len(replies)
            self._learn(service, pid, replies)
            return replies
        raise self._failure(service, pid, ecus)

    def voltage(self) -> float | None:
        """A CAN interface cannot measure the OBD port's pin 16; PID 0x42 is the reader's."""
        return None

    def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None and bus is not self._given:
            try:
                bus.shutdown()
            except (can.CanError, OSError) as exc:
                log.debug("CAN bus shutdown: %s", exc)

    # -- internals ---------------------------------------------------------------

    def _send(self, bus: can.BusABC, arbitration_id: int, data: bytes) -> None:
        msg = can.Message(arbitration_id=arbitration_id, is_extended_id=self._extended, data=data)
        try:
            bus.send(msg, timeout=self.p2_s)
        except (can.CanError, OSError) as exc:
            raise LinkLost(f"CAN send failed: {exc}") from None

    def _recv(self, bus: can.BusABC, timeout: float) -> can.Message | None:
        try:
            msg = bus.recv(timeout)
        except (can.CanError, OSError) as exc:
            raise LinkLost(f"CAN receive failed: {exc}") from None
        if msg is not None and msg.is_error_frame and msg.arbitration_id & _CAN_ERR_BUSOFF:
            raise LinkLost("the CAN controller went bus-off")  # SocketCAN error frame
        return msg

    def _drain(self, bus: can.BusABC) -> None:
        """Drop what queued up since the last request: late answers to earlier requests.

        Not ``recv(0)``: where python-can filters in software (virtual, most USB
        adapters) it returns None at the first frame the filter drops, leaving the
        answers queued behind it; a 1 ms timeout makes it read on to the end.
        """
        until = self._mono() + 0.5
        while self._recv(bus, 0.001) is not None:
            self.stats.stray += 1
            if self._mono() > until:
                return  # an unfiltered bus this busy: the request loop copes

    def _expected(self, service: int, pid: int | None) -> set[int]:
        if service in _ALL_ECU_SERVICES:
            return set(self._ecus)
        if pid is not None:
            return set(self._supporters.get((service, pid), ()))
        return set()

    def _collect(
        self, bus: can.BusABC, service: int, pid: int | None, sent: float
    ) -> dict[int, _Ecu]:
        """Receive until every expected ECU answered, or the time limits run out."""
        ecus: dict[int, _Ecu] = {}
        expected = self._expected(service, pid)
        # Finding out who is there (01 00, 09 00) always waits the whole P2.
        settle = not (service in (0x01, 0x09) and pid == 0x00)
        end = sent + self.p2_s
        while True:
            busy = [st.deadline for st in ecus.values() if st.deadline is not None]
            done = expected and all(e in ecus and ecus[e].answer is not None for e in expected)
            if done and not busy:
                break
            now = self._mono()
            limit = max([end, *busy])
            if now >= limit:
                self._expire(ecus)
                break
            msg = self._recv(bus, limit - now)
            if msg is None:
                continue
            ecu = msg.arbitration_id
            if (
                msg.is_error_frame
                or msg.is_remote_frame
                or msg.is_extended_id != self._extended
                or not is_reply_id(ecu, self._extended)
            ):
                self.stats.foreign += 1
                continue
            state = ecus.setdefault(ecu, _Ecu())
            if state.answer is not None:
                self.stats.stray += 1
                continue
            self._take(bus, ecu, state, bytes(msg.data), service, pid)
            if state.answer is not None and settle and not expected:
                end = min(end, self._mono() + self.settle_s)
        return ecus

    def _take(
        self, bus: can.BusABC, ecu: int, state: _Ecu, data: bytes, service: int, pid: int | None
    ) -> None:
        """One frame from ``ecu``: reassemble, send Flow Control, judge whole messages."""
        now, strays = self._mono(), state.rx.stray
        try:
            step = state.rx.feed(data)
            self.stats.stray += state.rx.stray - strays
        except IsoTpError as exc:
            self.stats.broken += 1
            state.garbage = state.garbage or f"{_ecu_text(ecu)}: {exc}"
            state.deadline = None
            return
        if step.flow_control:
            # Only for our answer: another tester's UDS session on 0x7E8-0x7EF must not
            # get a second Flow Control from us.
            if _judge(state.rx.head, service, pid) != "answer":
                self._other(ecu, state, state.rx.head)
                state.rx.reset()
                return
            self._send(bus, physical_request_id(ecu, self._extended), flow_control(self.padding))
            self.stats.flow_controls += 1
        if state.rx.active:
            state.deadline = now + self.cf_timeout_s
            return
        if step.message is None:
            return
        state.deadline = None
        verdict = _judge(step.message, service, pid)
        if verdict == "answer":
            state.answer = step.message
        elif verdict == "pending":
            state.deadline = now + self.p2_star_s
        elif verdict == "nrc":
            state.nrc = step.message[2]
            self.stats.nrcs[state.nrc] = self.stats.nrcs.get(state.nrc, 0) + 1
        else:
            self._other(ecu, state, step.message)

    def _other(self, ecu: int, state: _Ecu, message: bytes) -> None:
        """A message that does not answer our request: someone else's, or garbage."""
        self.stats.stray += 1
        if not 0x40 <= message[0] <= 0x7F:  # not a response service id at all
            state.garbage = state.garbage or f"{_ecu_text(ecu)} sent {message.hex(' ').upper()}"

    @staticmethod
    def _expire(ecus: dict[int, _Ecu]) -> None:
        """Mark what was still under way at the end: a stalled message, a pending answer."""
        for ecu, st in ecus.items():
            if st.rx.active:
                done, size = st.rx.received, st.rx.expected
                st.stalled = f"{_ecu_text(ecu)} stopped after {done} of {size} bytes"
            elif st.deadline is not None:
                st.stalled = f"{_ecu_text(ecu)} said response pending, then nothing"
            st.deadline = None

    def _failure(self, service: int, pid: int | None, ecus: dict[int, _Ecu]) -> ObdError:
        req = f"{service:02X}" + ("" if pid is None else f" {pid:02X}")
        nrcs = [
            f"{_ecu_text(e)} NRC {nrc_name(st.nrc)}" for e, st in ecus.items() if st.nrc is not None
        ]
        if nrcs:
            return ObdError("no_data", f"{req}: " + ", ".join(nrcs))
        # Broken frames explain a stalled message, so they are reported first.
        garbage = [st.garbage for st in ecus.values() if st.garbage]
        if garbage:
            return ObdError("garbage", f"{req}: " + "; ".join(garbage))
        stalled = [st.stalled for st in ecus.values() if st.stalled]
        if stalled:
            return ObdError("silence", f"{req}: " + "; ".join(stalled))
        return ObdError("no_data", f"no ECU answered {req} within {round(self.p2_s * 1000)} ms")

    def _learn(self, service: int, pid: int | None, replies: Replies) -> None:
        """Remember who supports what from PID-support bitmaps (services 01 and 09)."""
        if pid is None or service not in (0x01, 0x09) or pid not in DISCOVERY_PIDS:
            return
        for ecu, data in replies.items():
            if service == 0x01 and pid == 0x00:
                self._ecus.add(ecu)
            if len(data) < 6:
                continue
            bits = int.from_bytes(data[2:6], "big")
            for i in range(32):
                if bits & (1 << (31 - i)):
                    self._supporters.setdefault((service, pid + 1 + i), set()).add(ecu)


def _judge(
    message: bytes, service: int, pid: int | None
) -> Literal["answer", "pending", "nrc", "other"]:
    """What a whole message from an ECU is to the request just sent."""
    if message[0] == service + 0x40 and (pid is None or message[1:2] == bytes([pid])):
        return "answer"
    if len(message) >= 3 and message[0] == 0x7F and message[1] == service:
        return "pending" if message[2] == 0x78 else "nrc"
    return "other"  # an answer to an earlier request, to another tester, or garbage


def _ecu_text(ecu: int) -> str:
    return f"{ecu:03X}" if ecu <= 0x7FF else f"{ecu:08X}"
