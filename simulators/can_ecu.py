"""An engine ECU on python-can: answers OBD-II requests the way a car's ECM does on CAN.

* Requests: Single Frames on the functional id (0x7DF; 29-bit 0x18DB33F1)
  and on the ECU's physical id (0x7E0 + n; 29-bit 0x18DAxxF1).  The
  answer is ``EcuModel.respond(request, clock())``; the ECU stays silent
  when the model has none and the request was functional (SAE J1979: no
  negative answers to functional requests), and says ``7F sid 12`` to a
  physical one.
* Answers of up to 7 bytes go out as a Single Frame from 0x7E8 + n
  (0x18DAF1xx); longer ones (VIN, DTC lists) through can-isotp, which
  sends the First Frame, waits for the tester's Flow Control (and its
  wait frames) and honours block size and STmin.  It is an ISO-TP
  implementation we did not write, so the agent's own receiver
  (``agent.obd.can_link``) is tested against an independent sender.
* Background traffic (other ids at ``background_fps``, from the scenario's
  ``[can] background_load_pct``) proves the tester ignores a busy bus.
* Faults on cue, from the scenario's ``[[obd.faults]]`` (scenario seconds):
  ``silence`` and ``unable_to_connect``: no answers; ``no_data``: every
  request treated as unsupported; ``slow``: answers ``delay_ms`` late, with
  a response-pending NRC 0x78 first when that is beyond P2 (50 ms), as an
  ECU must; ``garbage``: random frames on the reply id instead of answers;
  ``disconnect``: off the bus (a bus built from a factory is shut down and
  reopened when the fault ends; a given bus just goes quiet).  The other
  kinds are ELM327 adapter faults and do nothing on CAN.  DTCs that appear
  and clear come from the model.

``main_can`` is the ``telematics-sim can`` command.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

import can
import isotp

from simulators.args import positive
from simulators.ecu import EcuModel
from simulators.scenario import ObdFault, Scenario, ScenarioError, load_scenario

__all__ = [
    "CanEcu",
    "EcuStats",
    "ResponderModel",
    "add_can_arguments",
    "background_fps",
    "main_can",
    "run_can",
]

log = logging.getLogger(__name__)

FUNCTIONAL_11 = 0x7DF
FUNCTIONAL_29 = 0x18DB33F1
TESTER_29 = 0xF1
ECU_PADDING = 0xAA  # the tester pads with 0x55: a log shows at a glance who sent a frame
P2_S = 0.050
_BITS_PER_FRAME = {False: 125, True: 150}  # 8 data bytes with average bit stuffing
_BACKGROUND_TICK_S = 0.005
_CAN_FAULTS = frozenset(
    {"silence", "unable_to_connect", "no_data", "slow", "garbage", "disconnect"}
)

BusFactory = Callable[[], can.BusABC]


class ResponderModel(Protocol):
    """What the ECU needs from ``simulators.ecu.EcuModel``: service-level answers."""

    def respond(self, request: bytes, t: float) -> bytes | None: ...


@dataclass
class EcuStats:
    """Counters for the summary line and tests (ints, written by the ECU's threads)."""

    functional: int = 0
    physical: int = 0
    answered: int = 0
    multi_frame: int = 0
    unanswered: int = 0  # the model had no answer
    negative: int = 0
    faulted: int = 0  # requests a fault swallowed, delayed or garbled
    garbage_frames: int = 0
    background_frames: int = 0
    send_failures: int = 0
    disconnects: int = 0
    reconnects: int = 0


def background_fps(load_pct: float, bitrate: int, extended: bool = False) -> float:
    """Frames per second that occupy ``load_pct`` of a bus at ``bitrate``."""
    return load_pct / 100 * bitrate / _BITS_PER_FRAME[extended]


class CanEcu:
    """One OBD ECU on a CAN bus, running in threads between ``start`` and ``stop``.

    ``bus`` is a bus, or a factory making one (then ``disconnect`` faults
    really leave the bus and rejoin it).  ``clock`` returns scenario
    seconds.  ``index`` n makes the ECU answer from 0x7E8 + n (29-bit:
    source address 0x10 + 8n: 0x10 engine, 0x18 transmission).
    """

    def __init__(
        self,
        bus: can.BusABC | BusFactory,
        model: ResponderModel,
        clock: Callable[[], float],
        *,
        extended_ids: bool = False,
        index: int = 0,
        faults: Sequence[ObdFault] = (),
        background_fps: float = 0.0,
        fc_timeout_s: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not 0 <= index <= 7:
            raise ValueError("index must be 0..7")
        self._factory: BusFactory | None = None if isinstance(bus, can.BusABC) else bus
        self._given = bus if isinstance(bus, can.BusABC) else None
        self.model = model
        self.clock = clock
        self.extended = extended_ids
        self.faults = tuple(faults)
        self.background_fps = background_fps
        self.fc_timeout_s = fc_timeout_s
        self.stats = EcuStats()
        if extended_ids:
            address = 0x10 + 8 * index
            self.reply_id = 0x18DAF100 | address
            self.physical_id = 0x18DA00F1 | address << 8
            self.functional_id = FUNCTIONAL_29
        else:
            self.reply_id = 0x7E8 + index
            self.physical_id = 0x7E0 + index
            self.functional_id = FUNCTIONAL_11
        self._rng = random.Random(seed)
        self._requests: queue.Queue[tuple[bytes, bool] | None] = queue.Queue()
        self._stop = threading.Event()
        self._online = threading.Event()  # on the bus (not in a disconnect fault)
        self._lock = threading.Lock()  # guards bus, notifier and stack swaps
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self._stack: isotp.NotifierBasedCanStack | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Join the bus and start answering; returns once requests are being received."""
        self._attach()
        self._threads = [threading.Thread(target=self._serve, name="can-ecu", daemon=True)]
        if self.background_fps > 0:
            self._threads.append(
                threading.Thread(target=self._background, name="can-ecu-bg", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop answering and leave the bus (a given bus stays open: it is the caller's)."""
        self._stop.set()
        self._requests.put(None)
        for thread in self._threads:
            thread.join(5.0)
        self._threads = []
        self._detach()

    def __enter__(self) -> CanEcu:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _attach(self) -> None:
        with self._lock:
            bus = self._given if self._given is not None else self._new_bus()
            bus.set_filters(
                [
                    {
                        "can_id": cid,
                        "can_mask": 0x1FFFFFFF if self.extended else 0x7FF,
                        "extended": self.extended,
                    }
                    for cid in (self.functional_id, self.physical_id)
                ]
            )
            notifier = can.Notifier(bus, [self._on_frame], timeout=0.05)
            width = (
                isotp.AddressingMode.Normal_29bits
                if self.extended
                else isotp.AddressingMode.Normal_11bits
            )
            stack = isotp.NotifierBasedCanStack(
                bus,
                notifier,
                address=isotp.Address(width, txid=self.reply_id, rxid=self.physical_id),
                error_handler=self._isotp_error,
                params={
                    "tx_padding": ECU_PADDING,
                    "blocking_send": True,
                    "rx_flowcontrol_timeout": round(self.fc_timeout_s * 1000),
                },
            )
            stack.start()
            self._bus, self._notifier, self._stack = bus, notifier, stack
            self._online.set()

    def _detach(self) -> None:
        with self._lock:
            self._online.clear()
            stack, notifier, bus = self._stack, self._notifier, self._bus
            self._stack = self._notifier = self._bus = None
        if stack is not None:
            stack.stop()
        if notifier is not None:
            notifier.stop()
        if bus is not None and bus is not self._given:
            bus.shutdown()

    def _new_bus(self) -> can.BusABC:
        assert self._factory is not None
        return self._factory()

    # -- receiving ---------------------------------------------------------------

    def _on_frame(self, msg: can.Message) -> None:
        """Notifier thread: queue Single Frame requests; the stack handles Flow Control."""
        if msg.is_error_frame or msg.is_remote_frame or msg.is_extended_id != self.extended:
            return
        data = bytes(msg.data)
        if not data or data[0] >> 4 != 0:
            return  # Flow Control for the stack, or a segmented request (none in OBD)
        length = data[0] & 0x0F
        if not 1 <= length <= len(data) - 1:
            return
        functional = msg.arbitration_id == self.functional_id
        if functional or msg.arbitration_id == self.physical_id:
            self._requests.put((data[1 : 1 + length], functional))

    def _isotp_error(self, error: Exception) -> None:
        log.debug("ECU %X ISO-TP: %s", self.reply_id, error)

    # -- answering ---------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._requests.get(timeout=0.02)
            except queue.Empty:
                item = None
            self._follow_disconnect()
            self._drain_stack()
            if item is not None and self._online.is_set():
                self._handle(*item)

    def _follow_disconnect(self) -> None:
        """Leave the bus when a disconnect fault starts; rejoin when it ends."""
        fault = self._fault_at(self.clock())
        off = fault is not None and fault.kind == "disconnect"
        if off and self._online.is_set():
            if self._factory is not None:
                self._detach()
            else:
                self._online.clear()
            self.stats.disconnects += 1
        elif not off and not self._online.is_set():
            if self._factory is not None:
                try:
                    self._attach()
                except (can.CanError, OSError) as exc:
                    log.warning("ECU %X cannot rejoin the bus yet: %s", self.reply_id, exc)
                    return
            else:
                self._online.set()
            self.stats.reconnects += 1

    def _drain_stack(self) -> None:
        """Physical requests also land in the stack's queue; they were handled from ours."""
        stack = self._stack
        while stack is not None and stack.available():
            stack.recv()

    def _fault_at(self, t: float) -> ObdFault | None:
        for fault in self.faults:
            if fault.kind in _CAN_FAULTS and fault.active(t):
                return fault
        return None

    def _handle(self, request: bytes, functional: bool) -> None:
        if functional:
            self.stats.functional += 1
        else:
            self.stats.physical += 1
        t = self.clock()
        fault = self._fault_at(t)
        kind = fault.kind if fault is not None else None
        if kind in ("silence", "unable_to_connect", "disconnect"):
            self.stats.faulted += 1
            return
        answer = None if kind == "no_data" else self.model.respond(request, t)
        if kind == "no_data":
            self.stats.faulted += 1
        if answer is None:
            self.stats.unanswered += 1
            if not functional:
                self._send_single(bytes([0x7F, request[0], 0x12]))
                self.stats.negative += 1
            return
        if kind == "garbage":
            self.stats.faulted += 1
            self._send_garbage()
            return
        if kind == "slow" and fault is not None:
            self.stats.faulted += 1
            delay = (fault.delay_ms or 1000.0) / 1000
            if delay > P2_S:
                if self._stop.wait(P2_S / 2):
                    return
                self._send_single(bytes([0x7F, request[0], 0x78]))
                delay -= P2_S / 2
            if self._stop.wait(delay):
                return
        self._send_answer(answer)

    def _send_answer(self, answer: bytes) -> None:
        if len(answer) <= 7:
            self._send_single(answer)
            self.stats.answered += 1
            return
        stack = self._stack
        if stack is None:
            return
        try:
            stack.send(answer, send_timeout=self.fc_timeout_s + 1.0)
        except (isotp.BlockingSendFailure, can.CanError, RuntimeError) as exc:
            self.stats.send_failures += 1
            log.debug("ECU %X multi-frame answer not delivered: %s", self.reply_id, exc)
            return
        self.stats.answered += 1
        self.stats.multi_frame += 1

    def _send_single(self, payload: bytes) -> None:
        data = (bytes([len(payload)]) + payload).ljust(8, bytes([ECU_PADDING]))
        self._send(self.reply_id, data)

    def _send_garbage(self) -> None:
        """1-3 frames no ECU sends: a frame type ISO 15765-2 lacks (4-F), or a Single
        Frame with no response service id (a bad transceiver, a wrong bitrate)."""
        for _ in range(self._rng.randint(1, 3)):
            data = bytearray(self._rng.getrandbits(8) for _ in range(8))
            if self._rng.random() < 0.5:
                data[0] = self._rng.randint(0x40, 0xFF)
            else:
                data[0] = self._rng.randint(2, 7)
                data[1] = self._rng.choice([*range(0x00, 0x40), *range(0x80, 0x100)])
            self._send(self.reply_id, bytes(data))
            self.stats.garbage_frames += 1

    def _send(self, arbitration_id: int, data: bytes, extended: bool | None = None) -> bool:
        bus = self._bus
        if bus is None:
            return False
        ext = self.extended if extended is None else extended
        try:
            bus.send(can.Message(arbitration_id=arbitration_id, is_extended_id=ext, data=data))
        except can.CanError as exc:
            self.stats.send_failures += 1
            log.debug("ECU %X send failed: %s", self.reply_id, exc)
            return False
        return True

    # -- background --------------------------------------------------------------

    def _background(self) -> None:
        """Other ECUs' traffic at ``background_fps``, paced by deadline (no drift)."""
        frames = _background_frames()
        start = time.monotonic()
        sent = 0
        while not self._stop.wait(_BACKGROUND_TICK_S):
            due = int((time.monotonic() - start) * self.background_fps)
            if not self._online.is_set():
                sent = due  # off the bus: those frames are not owed later
                continue
            for _ in range(min(due - sent, 1000)):
                arbitration_id, extended, data = frames[sent % len(frames)]
                payload = data[:-1] + bytes([sent & 0xFF])
                if self._send(arbitration_id, payload, extended):
                    self.stats.background_frames += 1
                sent += 1
            sent = max(sent, due - 1000)


def _background_frames() -> list[tuple[int, bool, bytes]]:
    """Typical non-OBD traffic, including ids next to the OBD ones (7C8, 7F0, 18DAF2xx)."""
    return [
        (0x0C9, False, bytes.fromhex("8012345600000000")),  # engine status
        (0x1A0, False, bytes.fromhex("0011223344556600")),
        (0x3E9, False, bytes.fromhex("1F40000000000000")),  # wheel speeds
        (0x7C8, False, bytes.fromhex("0662F19041424300")),  # UDS answer of another module
        (0x7F0, False, bytes.fromhex("024100BE3FA81300")),  # 41 00 just outside 7E8-7EF
        (0x7BB, False, bytes.fromhex("10266201007E5000")),  # KWP, as in real captures
        (0x0CF00400, True, bytes.fromhex("F0FF7D0000FFFF00")),  # J1939 EEC1
        (0x18FEF100, True, bytes.fromhex("FF0000FFFFFFFF00")),  # J1939 CCVS
        (0x18DAF210, True, bytes.fromhex("03410C1AF8AAAA00")),  # answer to tester F2, not us
        (0x09F80102, True, bytes.fromhex("36729A16021AB800")),  # NMEA 2000 position
    ]


# --------------------------------------------------------------------------- command line


def add_can_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``telematics-sim can`` (``simulators.cli`` adds this subparser)."""
    parser.add_argument("--scenario", required=True, help="scenario file or bundled name")
    parser.add_argument(
        "--interface",
        choices=("socketcan", "virtual", "udp_multicast"),
        help="python-can interface (default: virtual for --channel virtual, else socketcan)",
    )
    parser.add_argument(
        "--channel", help="vcan0, can0, 'virtual', a multicast group (default: scenario [can])"
    )
    parser.add_argument(
        "--speed",
        type=positive,
        default=1.0,
        metavar="X",
        help="simulated seconds per wall second",
    )
    parser.add_argument(
        "--start", type=float, default=0.0, metavar="SEC", help="scenario second to start at"
    )
    parser.add_argument("--duration", type=positive, metavar="SEC", help="stop after SEC simulated")
    ids = parser.add_mutually_exclusive_group()
    ids.add_argument(
        "--extended", dest="extended", action="store_true", default=None, help="29-bit ids"
    )
    ids.add_argument("--standard", dest="extended", action="store_false", help="11-bit ids")
    parser.add_argument(
        "--background",
        type=_percent,
        metavar="PCT",
        help="bus load of other traffic, 0-90 (default: scenario [can] background_load_pct)",
    )


def main_can(argv: Sequence[str] | None = None, prog: str = "telematics-sim can") -> int:
    """``telematics-sim can``: run the ECU until SIGTERM/SIGINT or ``--duration``."""
    parser = argparse.ArgumentParser(prog=prog, description="An OBD-II engine ECU on a CAN bus.")
    add_can_arguments(parser)
    return run_can(parser.parse_args(argv), prog=prog)


def run_can(args: argparse.Namespace, prog: str = "telematics-sim can") -> int:
    """Run the ECU for parsed ``telematics-sim can`` arguments; returns the exit status."""
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    interface, channel = _where(args, scenario)
    can_cfg = scenario.can
    extended = (
        args.extended if args.extended is not None else bool(can_cfg and can_cfg.extended_ids)
    )
    bitrate = can_cfg.bitrate if can_cfg is not None else 500000
    load = (
        args.background
        if args.background is not None
        else (can_cfg.background_load_pct if can_cfg else 0.0)
    )
    faults = scenario.obd.faults if scenario.obd is not None else ()
    model = EcuModel(scenario)
    began = time.monotonic()

    def clock() -> float:
        return float(args.start + (time.monotonic() - began) * args.speed)

    def factory() -> can.BusABC:
        return can.Bus(interface=interface, channel=channel, bitrate=bitrate)

    stop = threading.Event()
    with _signals(stop) as stopped_by:
        try:
            ecu = CanEcu(
                factory,
                model,
                clock,
                extended_ids=extended,
                faults=faults,
                background_fps=background_fps(load, bitrate, extended),
            )
            ecu.start()
        except (can.CanError, OSError, ValueError) as exc:
            print(f"{prog}: cannot join {interface} {channel}: {exc}", file=sys.stderr)
            return 1
        try:
            width = 29 if extended else 11
            print(
                f"ready {interface} {channel} ECU {ecu.reply_id:X} (CAN {width}/{bitrate // 1000})",
                flush=True,
            )
            end = math.inf if args.duration is None else began + args.duration / args.speed
            while not stop.is_set() and time.monotonic() < end:
                stop.wait(min(0.2, end - time.monotonic()))  # short: signals land between waits
        finally:
            ecu.stop()
    s = ecu.stats
    how = f"stopped by {stopped_by[0]}" if stopped_by else "duration reached"
    with contextlib.suppress(OSError):
        print(
            f"{prog}: {scenario.name}: {s.functional + s.physical} requests "
            f"({s.functional} functional), {s.answered} answered ({s.multi_frame} multi-frame), "
            f"{s.faulted} under faults, {s.background_frames} background frames, "
            f"{s.disconnects} disconnects; {how}",
            file=sys.stderr,
            flush=True,
        )
    return 0


def _where(args: argparse.Namespace, scenario: Scenario) -> tuple[str, str]:
    """Interface and channel from the options, falling back to the scenario's [can]."""
    interface = args.interface or ("virtual" if args.channel == "virtual" else "socketcan")
    channel = args.channel
    if channel is None:
        if interface == "udp_multicast":
            channel = "239.74.163.2"  # python-can's default IPv4 group
        elif interface == "virtual":
            channel = "virtual"
        else:
            channel = scenario.can.interface if scenario.can is not None else "vcan0"
    return interface, channel


@contextlib.contextmanager
def _signals(stop: threading.Event) -> Iterator[list[str]]:
    """SIGTERM and SIGINT end the run cleanly (summary, exit 0)."""
    by: list[str] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        by.append(signal.Signals(signum).name)
        stop.set()

    previous: dict[int, Any] = {
        sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield by
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 90:
        raise argparse.ArgumentTypeError("must be 0-90 (percent of the bus)")
    return value


if __name__ == "__main__":
    sys.exit(main_can())
