"""Run the agent's Uplink on its own loop until a condition holds or a deadline passes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

from agent.buffer.outbox import Outbox
from agent.clock import Clock
from agent.config import MqttConfig
from agent.messages import Status
from agent.uplink import Uplink


def run_uplink(
    device: str,
    cfg: MqttConfig,
    outbox: Outbox,
    done: Callable[[Uplink], bool],
    timeout: float,
) -> Uplink:
    """The Uplink until ``done(uplink)`` or ``timeout`` s; the outbox commits as the agent's does.

    Telemetry goes out unheld: these tests are about delivery and security,
    not batching (tests/test_uplink_bridge.py covers the hold).
    """
    status = Status(device=device, state="online").model_dump_json()
    uplink = Uplink(
        cfg.model_copy(update={"telemetry_hold_s": 0.0}),
        device,
        outbox,
        Clock("system", synced=lambda: True),
        birth=lambda: status,
        will=lambda: status,
        rng=random.Random(0),
    )

    async def main() -> None:
        task = asyncio.create_task(uplink.run())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outbox.commit()  # acknowledged rows leave the outbox
            if done(uplink):
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return uplink
