"""The OBD reader's thread, joined to the agent's asyncio loop.

Both links block, so the reader runs in its own thread; each exchange is
handed to the loop with ``call_soon_threadsafe``, where the runtime stamps
UTC and processes it.  A reader that dies of a bug is logged and restarted
after a pause: the rest of the agent (GPS, uplink) keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.config import ObdConfig
from agent.obd.link import ObdLink
from agent.obd.reader import ObdReader, Stamped
from agent.obd.schedule import PollSchedule, default_items, pid_item

log = logging.getLogger(__name__)


def open_link(cfg: ObdConfig) -> ObdLink:
    """The configured link (not yet opened: the reader opens and reopens it)."""
    if cfg.source == "elm327":
        from agent.obd.elm_link import ElmLink

        return ElmLink(
            cfg.port,
            baudrate=cfg.baud,
            protocol=None if cfg.protocol == "auto" else cfg.protocol,
            read_timeout_s=cfg.read_timeout_s,
        )
    if cfg.source == "can":
        from agent.obd.can_link import CanLink

        return CanLink(
            interface=cfg.can_interface,
            channel=cfg.can_channel,
            bitrate=cfg.can_bitrate,
            extended_ids=cfg.can_extended_ids,
        )
    raise ValueError("obd.source is none: there is no link to open")


def schedule_periods(cfg: ObdConfig) -> dict[str, float]:
    """Config poll overrides ("0C", "voltage") as schedule item names ("010C", "voltage")."""
    return {
        k if k in ("voltage", "dtc", "mil") else pid_item(int(k, 16)): v
        for k, v in cfg.poll.items()
    }


class ObdService:
    """``await service.run()`` until cancelled; exchanges go to ``on_exchange`` on the loop."""

    def __init__(
        self,
        cfg: ObdConfig,
        on_exchange: Callable[[Stamped], None],
        *,
        link: ObdLink | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_exchange = on_exchange
        periods = schedule_periods(cfg)
        self.reader = ObdReader(
            link or open_link(cfg),
            self._emit,
            schedule=lambda: PollSchedule(default_items(periods)),
            reconnect_max_s=cfg.reconnect_max_s,
            vehicle_retry_s=cfg.vehicle_retry_s,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self.crashes = 0
        self.closed = False  # set when run ends: late exchanges are dropped

    def _emit(self, stamped: Stamped) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed() and not self.closed:
            with contextlib.suppress(RuntimeError):  # loop closing under us at shutdown
                loop.call_soon_threadsafe(self.on_exchange, stamped)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            stop = threading.Event()
            thread = threading.Thread(target=self._guarded, args=(stop,), name="obd", daemon=True)
            thread.start()
            try:
                while thread.is_alive():
                    await asyncio.sleep(0.2)
            finally:
                stop.set()
                self.closed = True
                # Don't wait out python-OBD's 10 s open timeout on shutdown: the
                # thread is a daemon and its late exchanges are dropped.
                await asyncio.to_thread(thread.join, 3)
            await asyncio.sleep(5.0)  # the reader died of a bug: pause, then start afresh
            self.closed = False

    def _guarded(self, stop: threading.Event) -> None:
        try:
            self.reader.run(stop)
        except Exception:
            self.crashes += 1
            log.exception("OBD reader failed; restarting it")

    def status(self) -> dict[str, Any]:
        import time

        out = self.reader.status.snapshot(time.monotonic())
        if self.crashes:
            out["crashes"] = self.crashes
        return out
