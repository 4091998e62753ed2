"""What every IMU source is: an endless async stream of sample batches plus a status.

Shaped like ``agent.gps.source_base.GpsSource``: the interface and the
bookkeeping shared by all sources live here, each concrete module only
knows its device (``agent.imu.termux``: a phone through termux-sensor;
``agent.imu.i2c``: a chip on a Pi's I2C bus).

Why batches: at 100-200 Hz one await per sample costs more than the
detectors that read them, and the devices deliver in bursts anyway (a
FIFO read returns a few samples, a pipe read a few JSON objects).  So the
primary stream is ``batches()``, lists of ``ImuSample`` in time order;
``samples()`` flattens it for consumers that want one at a time.

Contract of ``batches()``: it runs until cancelled or ``close()``.  A consumer
that stops early should ``await source.close()`` (or iterate inside
``contextlib.aclosing``): an abandoned async generator is only finalised by
the garbage collector, and the device is released then, not at once.  When the
device goes away it releases it, waits (exponential backoff with jitter) and
opens it again, and reports this in ``status()``; it never raises because of
what the device sends.  Samples carry the monotonic clock in ``t``, strictly
increasing within a connection.  Every batch also goes through a
``HealthMonitor`` so that clipping, a frozen sensor, a wrong rate and gaps
show up in ``status()`` with advice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

from agent.backoff import Backoff
from agent.device import SupervisedDevice
from agent.imu.health import HealthConfig, HealthMonitor
from agent.imu.sample import ImuSample

log = logging.getLogger(__name__)


class ImuSource(SupervisedDevice):
    """An IMU, however it is reached.

    Subclasses set ``kind``, implement ``batches()`` (an async generator) and
    ``target``, and add their own counters through ``_source_status()``.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        *,
        name: str | None = None,
        backoff: Backoff | None = None,
        health: HealthConfig | None = None,
    ) -> None:
        super().__init__(name=name or f"imu-{self.kind}", backoff=backoff)
        self._health = HealthMonitor(health)
        self._samples = 0
        self._batches = 0
        self._closing = asyncio.Event()

    @abstractmethod
    def batches(self) -> AsyncGenerator[list[ImuSample], None]:
        """Yield non-empty batches of samples until cancelled or closed, reopening as needed."""

    async def samples(self) -> AsyncGenerator[ImuSample, None]:
        """One sample at a time, for consumers that do not care about batching."""
        async with contextlib.aclosing(self.batches()) as batches:
            async for batch in batches:
                for sample in batch:
                    yield sample

    async def close(self) -> None:
        """Stop delivering and release the device; a running ``batches()`` ends.

        Subclasses extend this with whatever their device needs on the way
        out (the phone's sensors are released, the chip put to sleep).
        """
        self._closing.set()

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    def status(self) -> dict[str, Any]:
        """A JSON-able health snapshot: link state, counters, sample checks, problems."""
        out: dict[str, Any] = {
            **self.link_status(),
            "samples": self._samples,
            "batches": self._batches,
        }
        out.update(self._source_status())
        out["health"] = self._health.status()
        out["problems"] = [p.as_dict() for p in self._health.problems(time.monotonic())]
        return out

    def _source_status(self) -> dict[str, Any]:
        """Counters particular to this kind of source."""
        return {}

    # -- helpers for subclasses -------------------------------------------------

    def _expect(self, config: HealthConfig) -> None:
        """Set what the health checks expect once the device says what it runs at."""
        if config != self._health.config:
            self._health = HealthMonitor(config)

    def _deliver(self, batch: list[ImuSample]) -> None:
        """Count a batch and run the health checks over it (call before yielding it)."""
        self._batches += 1
        self._samples += len(batch)
        self._health.update(batch)

    async def _wait_before_retry(self) -> None:
        """Back off before reopening; returns at once when the source is closed."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._backoff.next()):
                await self._closing.wait()


def describe(exc: BaseException) -> str:
    """One line for status: the exception type and its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
