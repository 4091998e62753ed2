"""Reconnect delays shared by every link the agent keeps open (GPS, CAN, MQTT).

Exponential with a cap, and jittered so that a fleet which lost the same
server does not come back in the same second.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays for reopening a device: ``min_s``, x ``factor`` each failure, capped at ``max_s``.

    Jitter scales each delay down by up to ``jitter`` (0..1) so that many vans
    that lost the same network server do not all come back in the same second;
    it never pushes a delay above ``max_s``.  Pure: the randomness comes from
    the ``rng`` passed in, so tests can fix it.
    """

    def __init__(
        self,
        min_s: float = 0.5,
        max_s: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"need 0 < min_s <= max_s, got min_s={min_s} max_s={max_s}")
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be in 0..1, got {jitter}")
        self.min_s = min_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._base = min_s

    def next(self) -> float:
        """The delay before the next attempt; each call grows the following one."""
        base = self._base
        self._base = min(self.max_s, base * self.factor)
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Back to ``min_s``: call once a connection has proved healthy (data arrived)."""
        self._base = self.min_s
