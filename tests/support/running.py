"""Run a GPS source's ``fixes()`` in a task and wait on what it collected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from agent.gps.fix import Fix
from agent.gps.source_base import GpsSource


class Running:
    """``async with Running(source) as r: await r.until(lambda: len(r.fixes) > 3, "fixes")``."""

    def __init__(self, source: GpsSource) -> None:
        self.source = source
        self.fixes: list[Fix] = []
        self.done = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async for fix in self.source.fixes():
            self.fixes.append(fix)
        self.done = True

    async def until(self, cond: Callable[[], bool], what: str, timeout: float = 10) -> None:
        """Wait for ``cond`` with a deadline; fail at once if the source died."""
        deadline = time.monotonic() + timeout
        while not cond():
            assert self._task is not None
            if self._task.done() and self._task.exception() is not None:
                raise AssertionError(f"source died waiting for {what}") from self._task.exception()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; "
                    f"{len(self.fixes)} fixes, status {self.source.status()}"
                )
            await asyncio.sleep(0.005)

    def status(self) -> dict[str, Any]:
        return self.source.status()
