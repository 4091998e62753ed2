"""Link bookkeeping shared by every source that opens a device and reopens it when lost.

GPS receivers and IMUs alike: a name, what is opened, whether it is open,
how often it came back, the last reason it went away, and a backoff for the
next attempt.  Each source family adds its own stream and counters.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from agent.backoff import Backoff

log = logging.getLogger(__name__)


class SupervisedDevice(ABC):
    kind: ClassVar[str]

    def __init__(self, *, name: str, backoff: Backoff | None = None) -> None:
        self.name = name
        self._backoff = backoff if backoff is not None else Backoff()
        self._connected = False
        self._connects = 0
        self._last_error: str | None = None

    @property
    @abstractmethod
    def target(self) -> str:
        """What this source opens (device path, host:port, file, command line), for status."""

    def link_status(self) -> dict[str, Any]:
        """The link part of ``status()``.

        ``reconnects`` counts successful opens after the first one, i.e. how
        often the device came back after being lost.
        """
        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "connected": self._connected,
            "reconnects": max(0, self._connects - 1),
            "last_error": self._last_error,
        }

    def _opened(self) -> None:
        self._connected = True
        self._connects += 1
        log.info("%s: opened %s", self.name, self.target)

    def _lost(self, error: str) -> None:
        """Record why the device was lost (or could not be opened); log a change once."""
        if error != self._last_error:
            log.warning("%s: %s: %s", self.name, self.target, error)
        else:
            log.debug("%s: %s: %s", self.name, self.target, error)
        self._connected = False
        self._last_error = error
