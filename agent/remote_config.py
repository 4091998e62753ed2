"""Deciding what to do with a configuration pushed from the cloud.

Pure: given the payload and the zone set that runs, say whether to apply
it, that it already runs, or why it is refused.  agent.runtime does the I/O
around the decision (store, swap the detector's zones, answer on
``cmd/result``, record an event).  A config is retained, so the same payload
comes back at every reconnect: a refusal is remembered and answered again
without being recorded again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from agent.geofence.model import ZoneSet
from agent.messages import DesiredConfig, validation_reason

MAX_CONFIG_BYTES = 8 * 1024 * 1024

Status = Literal["applied", "unchanged", "rejected"]


@dataclass(frozen=True, slots=True)
class Decision:
    status: Status
    version: int | None  # the version the payload claims (None: it has none)
    reason: str | None = None
    zones: ZoneSet | None = None  # the set to run, when applied
    record: bool = True  # False: a refusal already recorded once


class ConfigGate:
    """``decide(payload, running) -> Decision | None`` (None: nothing to do)."""

    def __init__(self) -> None:
        self._refused: tuple[str, Decision] | None = None

    def decide(self, payload: bytes, running: ZoneSet) -> Decision | None:
        if not payload:
            return None  # the retained config was cleared: keep what runs
        digest = hashlib.sha256(payload).hexdigest()
        if self._refused is not None and self._refused[0] == digest:
            previous = self._refused[1]
            return Decision("rejected", previous.version, previous.reason, record=False)
        self._refused = None
        decision = self._judge(payload, running)
        if decision.status == "rejected":
            self._refused = (digest, decision)
        return decision

    def refuse(self, payload: bytes, version: int | None, reason: str) -> Decision:
        """Refuse after the fact (e.g. it could not be stored)."""
        decision = Decision("rejected", version, reason)
        self._refused = (hashlib.sha256(payload).hexdigest(), decision)
        return decision

    @staticmethod
    def _judge(payload: bytes, running: ZoneSet) -> Decision:
        claimed = claimed_version(payload)
        if len(payload) > MAX_CONFIG_BYTES:
            return Decision("rejected", claimed, f"{len(payload)} bytes > {MAX_CONFIG_BYTES}")
        try:
            desired = DesiredConfig.model_validate_json(payload)
        except ValidationError as exc:
            return Decision("rejected", claimed, validation_reason(exc))
        if desired.version == running.version:
            return Decision("unchanged", desired.version)
        if desired.version < running.version:
            reason = f"older than the running version {running.version}"
            return Decision("rejected", desired.version, reason)
        if desired.geofences is None:
            # Keeps the zones it does not mention.
            zones = running.model_copy(update={"version": desired.version})
            return Decision("applied", desired.version, zones=zones)
        try:
            zones = ZoneSet.model_validate({"version": desired.version, "zones": desired.geofences})
        except Exception as exc:  # whatever a zone does, refuse it; the old set runs on
            reason = validation_reason(exc) if isinstance(exc, ValidationError) else str(exc)
            return Decision("rejected", desired.version, reason or type(exc).__name__)
        return Decision("applied", desired.version, zones=zones)


def claimed_version(payload: bytes) -> int | None:
    """The version a refused payload says it is, so the cloud knows what was refused."""
    try:
        version = json.loads(payload).get("version")
    except (ValueError, AttributeError, RecursionError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None
