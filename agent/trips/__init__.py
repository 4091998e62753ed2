"""Driving behaviour from GNSS (and OBD when present): stops, trips, idling, speeding.

Pure detectors, no I/O and no wall clock: each turns fixes (and engine
samples) into :class:`~agent.messages.EventData` using only their own times,
so a replay gives the same events.  Runtime wiring is done elsewhere.
"""

from agent.trips.idle import IdleDetector
from agent.trips.overspeed import OverspeedDetector
from agent.trips.stops import Stop, StopDetector
from agent.trips.trips import TripDetector

__all__ = ["IdleDetector", "OverspeedDetector", "Stop", "StopDetector", "TripDetector"]
