"""Service 01 signals: what each PID means, in COVESA VSS names and units.

Pure functions over bytes, shared by the ELM327 and CAN links and by
replay: the link returns the message data (``41 0C 1A F8``), this module
turns it into ``Vehicle.Powertrain.CombustionEngine.Speed = 1726.0``.
Formulas are SAE J1979 / ISO 15031-5.  Names follow VSS 4.x where a signal
exists there (the ``Vehicle.OBD.*`` branch otherwise), so a backend can
map our telemetry onto any VSS-based stack without a table of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

Decoder = Callable[[bytes], float]

# Discovery PIDs: each answers a 32-bit bitmap of the next 32 PIDs; bit 0 of the
# last byte says whether the next discovery PID is supported.
DISCOVERY_PIDS = tuple(range(0x00, 0xE0, 0x20))

#: Battery voltage from the adapter's ATRV (not a PID) carries this VSS name.
BATTERY_VOLTAGE = "Vehicle.LowVoltageBattery.CurrentVoltage"
VEHICLE_SPEED = "Vehicle.Speed"
ENGINE_SPEED = "Vehicle.Powertrain.CombustionEngine.Speed"
MAF = "Vehicle.Powertrain.CombustionEngine.MAF"
FUEL_RATE = "Vehicle.OBD.FuelRate"
ODOMETER = "Vehicle.TraveledDistance"
CONTROL_MODULE_VOLTAGE = "Vehicle.OBD.ControlModuleVoltage"


def _a(data: bytes) -> float:
    return float(data[0])


def _ab(data: bytes) -> float:
    return float(data[0] * 256 + data[1])


@dataclass(frozen=True, slots=True)
class Signal:
    """One service 01 PID: how many data bytes, how to decode them, how often to poll."""

    pid: int
    name: str  # VSS path
    unit: str  # VSS unit
    size: int  # data bytes after "41 PID"
    decode: Decoder
    period_s: float  # default poll period; the schedule may stretch it
    minimum: float
    maximum: float


SIGNALS: dict[int, Signal] = {
    s.pid: s
    for s in (
        Signal(0x0C, ENGINE_SPEED, "rpm", 2, lambda d: _ab(d) / 4, 0.5, 0, 16383.75),
        Signal(0x0D, VEHICLE_SPEED, "km/h", 1, _a, 0.5, 0, 255),
        Signal(
            0x04, "Vehicle.OBD.EngineLoad", "percent", 1, lambda d: _a(d) * 100 / 255, 5, 0, 100
        ),
        Signal(
            0x11,
            "Vehicle.OBD.ThrottlePosition",
            "percent",
            1,
            lambda d: _a(d) * 100 / 255,
            5,
            0,
            100,
        ),
        Signal(0x10, MAF, "g/s", 2, lambda d: _ab(d) / 100, 5, 0, 655.35),
        Signal(0x5E, FUEL_RATE, "l/h", 2, lambda d: _ab(d) / 20, 5, 0, 3276.75),
        Signal(
            0x05,
            "Vehicle.Powertrain.CombustionEngine.ECT",
            "celsius",
            1,
            lambda d: _a(d) - 40,
            30,
            -40,
            215,
        ),
        Signal(0x0F, "Vehicle.OBD.IntakeTemp", "celsius", 1, lambda d: _a(d) - 40, 30, -40, 215),
        Signal(
            0x2F,
            "Vehicle.Powertrain.FuelSystem.RelativeLevel",
            "percent",
            1,
            lambda d: _a(d) * 100 / 255,
            30,
            0,
            100,
        ),
        Signal(0x42, CONTROL_MODULE_VOLTAGE, "V", 2, lambda d: _ab(d) / 1000, 30, 0, 65.535),
        Signal(0x1F, "Vehicle.OBD.RunTime", "s", 2, _ab, 30, 0, 65535),
        Signal(0x31, "Vehicle.OBD.DistanceSinceDTCClear", "km", 2, _ab, 60, 0, 65535),
        Signal(
            0xA6,
            ODOMETER,
            "km",
            4,
            lambda d: int.from_bytes(d[:4], "big") / 10,
            60,
            0,
            429496729.5,
        ),
    )
}


class DecodeError(ValueError):
    """A reply that does not fit the request: wrong service, wrong PID, too short."""


def decode(pid: int, data: bytes) -> tuple[Signal, float]:
    """Decode one service 01 reply (``41 PID A B ...``) for a PID in :data:`SIGNALS`."""
    signal = SIGNALS.get(pid)
    if signal is None:
        raise DecodeError(f"PID {pid:02X} is not a signal we decode")
    if len(data) < 2 or data[0] != 0x41 or data[1] != pid:
        raise DecodeError(f"reply {data.hex(' ').upper()} does not answer 01 {pid:02X}")
    payload = data[2:]
    if len(payload) < signal.size:
        raise DecodeError(
            f"reply to 01 {pid:02X} has {len(payload)} data bytes, needs {signal.size}"
        )
    return signal, signal.decode(payload[: signal.size])


def supported_in(data: bytes) -> set[int]:
    """PIDs a discovery reply (``41 00 BE 3F A8 13``) marks as supported.

    Bit 7 of the first data byte is PID base+1, bit 0 of the fourth is base+0x20.
    """
    if len(data) < 6 or data[0] != 0x41 or data[1] not in DISCOVERY_PIDS:
        raise DecodeError(f"reply {data.hex(' ').upper()} is not a PID-support bitmap")
    base = data[1]
    bits = int.from_bytes(data[2:6], "big")
    return {base + 1 + i for i in range(32) if bits & (1 << (31 - i))}


def union_supported(replies: Iterable[bytes]) -> set[int]:
    """Supported PIDs over every ECU that answered a discovery request."""
    out: set[int] = set()
    for data in replies:
        out |= supported_in(data)
    return out
