"""termux-api's answers as the phone prints them, for the stand-in executables in tests.

The format is termux-api's ``LocationAPI.locationToJson`` (a JsonWriter
indenting two spaces); the default values are one real published answer.
"""

from __future__ import annotations

import json
from typing import Any


def answer(
    lat: float = 52.3731339,
    lon: float = 4.8924534,
    *,
    altitude: float = 43.5,
    accuracy: float = 3.7899999618530273,
    vertical: float | None = 1.899999976158142,
    bearing: float = 271.29998779296875,
    speed: float = 13.40999984741211,
    elapsed_ms: int = 12,
    provider: str = "gps",
    mocked: bool | None = False,
) -> str:
    """One answer in LocationAPI.locationToJson's format (JsonWriter, indent two spaces)."""
    fields: list[tuple[str, Any]] = [
        ("latitude", lat),
        ("longitude", lon),
        ("altitude", altitude),
        ("accuracy", accuracy),
    ]
    if vertical is not None:
        fields.append(("vertical_accuracy", vertical))
    fields += [
        ("bearing", bearing),
        ("speed", speed),
        ("elapsedMs", elapsed_ms),
        ("provider", provider),
    ]
    if mocked is not None:
        fields.append(("mocked", mocked))
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in fields)
    return "{\n" + body + "\n}\n"
