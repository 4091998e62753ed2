"""Argument types shared by the simulators' command lines."""

from __future__ import annotations

import argparse
import math


def positive(text: str) -> float:
    """A finite number above zero (speeds, rates, durations)."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value
