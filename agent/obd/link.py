"""The interface every OBD-II transport implements: one request, the ECUs' answers.

Like python-can's ``BusABC`` and its interface modules, the reader above
(discovery, poll schedule, DTCs, VIN, engine state) is written once against
:class:`ObdLink`; ``elm_link`` (python-OBD over serial, rfcomm or TCP) and
``can_link`` (python-can, ISO 15765-4) only move bytes.

A link is blocking and used from one thread.  It raises :class:`ObdError`
with a ``kind`` the supervisor understands; :class:`LinkLost` means the
connection itself is gone (unplugged, socket closed) and must be reopened.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

ErrorKind = Literal[
    "no_data",  # NO DATA: the ECU did not answer this request (unsupported PID, ignition off)
    "can_error",  # CAN ERROR: bus problem seen by the adapter
    "bus_init",  # BUS INIT: ...ERROR (K-line init failed)
    "stopped",  # STOPPED: the adapter was interrupted mid-request
    "unknown_command",  # ?: the adapter did not understand the command
    "unable_to_connect",  # UNABLE TO CONNECT: no protocol found, ignition off
    "silence",  # nothing at all within the timeout
    "garbage",  # bytes that are neither a reply nor a known message
    "buffer_full",  # BUFFER FULL: the adapter could not keep up
    "disconnected",  # the port or socket closed
]


class ObdError(Exception):
    """A request failed in a way the adapter or bus told us (or by silence)."""

    def __init__(self, kind: ErrorKind, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind: ErrorKind = kind
        self.detail = detail


class LinkLost(ObdError):
    """The connection is gone; the supervisor closes the link and reopens it with backoff."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("disconnected", detail)


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What ``open`` found, for status and the installer's check."""

    adapter: str  # e.g. "ELM327 v1.5" or "socketcan can0"
    protocol: str  # e.g. "ISO 15765-4 (CAN 11/500)"
    port: str


# ECU address (CAN id of the reply, e.g. 0x7E8; or the legacy header byte) -> message data
# starting at the response service id, e.g. bytes.fromhex("410C1AF8").  Mode 03/07
# answers keep the DTC-count byte (python-OBD inserts 0x00 on non-CAN protocols).
Replies = dict[int, bytes]


class ObdLink(ABC):
    """One diagnostic connection to the vehicle."""

    @abstractmethod
    def open(self) -> LinkInfo:
        """Connect to the adapter and the vehicle; raises ObdError/LinkLost on failure."""

    @abstractmethod
    def request(self, service: int, pid: int | None = None) -> Replies:
        """Send one request (e.g. service 0x01 pid 0x0C; 0x03 with pid None) and collect replies.

        Never returns an empty dict: no answer is ``ObdError("no_data")`` or
        ``ObdError("silence")``.
        """

    @abstractmethod
    def voltage(self) -> float | None:
        """Supply voltage at the OBD port (ELM327 ``ATRV``), or None when the link cannot tell."""

    @abstractmethod
    def close(self) -> None:
        """Release the port; safe to call twice and after a failed ``open``."""
