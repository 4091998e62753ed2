"""OBD rows of the installer's check: the adapter answers, the vehicle answers.

It runs the agent's own ``ObdReader`` over the configured link (python-OBD
for an ELM327, python-can for a CAN HAT) exactly as the agent would, and
watches what it reports: the adapter's reply to ATZ/ATI (``LinkInfo``), the
protocol found, the PID-support walk and the VIN request the reader makes
right after connecting.  The VIN is decoded by the agent's ``ObdProcessor``.
Nothing here speaks ELM327 itself.

Two rows:

* ``obd.adapter``: the adapter answers (a silent adapter and a missing
  port are told apart, with different fixes);
* ``obd.vehicle``: the ECU answers; protocol, ECU addresses, supported PIDs,
  VIN (a missing VIN is no failure: many pre-2005 vehicles have no mode 09).
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

from agent.check.report import Row
from agent.config import ObdConfig
from agent.obd.exchange import Exchange
from agent.obd.link import ObdLink
from agent.obd.pids import DISCOVERY_PIDS
from agent.obd.processor import ObdProcessor
from agent.obd.reader import ObdReader, Stamped

_DISCOVERY = frozenset(f"01{p:02X}" for p in DISCOVERY_PIDS)


class _Watch:
    """What the reader has emitted so far (filled on the reader's thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exchanges: list[Exchange] = []
        self.done = threading.Event()

    def emit(self, stamped: Stamped) -> None:
        ex = stamped.exchange
        with self.lock:
            self.exchanges.append(ex)
        # After the support walk the reader asks for the VIN, then starts polling:
        # any other request (ATRV is the adapter's own voltage) means both are behind it.
        if ex.req and ex.req not in _DISCOVERY and ex.req != "ATRV":
            self.done.set()

    def snapshot(self) -> list[Exchange]:
        with self.lock:
            return list(self.exchanges)


def _is_device_path(port: str) -> bool:
    return "://" not in port


def _adapter_where(cfg: ObdConfig) -> str:
    if cfg.source == "can":
        return f"{cfg.can_interface} {cfg.can_channel}"
    if _is_device_path(cfg.port):
        return f"{cfg.port} at {cfg.baud} baud"
    return cfg.port


def missing_port_rows(cfg: ObdConfig) -> list[Row]:
    """The adapter's device path does not exist: not plugged in, or not bound."""
    return [
        Row(
            "obd.adapter",
            "fail",
            f"no adapter at {cfg.port}",
            "plug the adapter into the OBD socket (under the dashboard) and its USB lead "
            "into the device; a Bluetooth adapter must be paired and bound (sudo rfcomm bind "
            "0 <adapter address>) before /dev/rfcomm0 exists; check obd.port",
            data={"port": cfg.port},
        ),
        Row("obd.vehicle", "skip", "not checked: no adapter"),
    ]


def silent_rows(cfg: ObdConfig, waited_s: float, error: str) -> list[Row]:
    """Nothing answered on the port: the adapter is off, on another port or another speed."""
    where = _adapter_where(cfg)
    if cfg.source == "can":
        fix = (
            f"the CAN interface {cfg.can_channel} is not usable: bring it up "
            f"(sudo ip link set {cfg.can_channel} up type can bitrate {cfg.can_bitrate}) and "
            "check the HAT's wiring to the OBD socket (CAN-H pin 6, CAN-L pin 14)"
        )
    else:
        fix = (
            "the adapter does not answer: check it is firmly in the OBD socket and lit "
            "(most adapters need the ignition on for power), that obd.port is the adapter, "
            "and obd.baud (clones use 38400, some 9600 or 115200; Wi-Fi adapters "
            "socket://192.168.0.10:35000)"
        )
    detail = f"adapter silent: no answer on {where} within {waited_s:.0f} s"
    if cfg.source == "can":
        detail = f"CAN interface {where} not usable: {error.removeprefix('disconnected: ')}"
    return [
        Row(
            "obd.adapter",
            "fail",
            detail,
            fix,
            data={"port": cfg.port, "baud": cfg.baud, "error": error},
        ),
        Row("obd.vehicle", "skip", "not checked: the adapter does not answer"),
    ]


def vehicle_off_rows(cfg: ObdConfig, volts: float | None, error: str) -> list[Row]:
    """The adapter answers, the ECU does not: ignition off, or no protocol found."""
    battery = "" if volts is None else f", battery {volts:.1f} V"
    return [
        Row(
            "obd.adapter",
            "pass",
            f"adapter answers on {_adapter_where(cfg)}{battery}",
            data={"port": cfg.port, "volts": volts},
        ),
        Row(
            "obd.vehicle",
            "fail",
            f"the vehicle does not answer ({error})",
            "switch the ignition on (engine running is best) and check the adapter is "
            "pushed fully into the OBD socket; if it still fails, set obd.protocol to the "
            "vehicle's protocol (6 = CAN 11-bit 500k on most vans since 2008)",
            data={"error": error},
        ),
    ]


def connected_rows(
    cfg: ObdConfig,
    adapter: str,
    protocol: str,
    supported: int,
    exchanges: list[Exchange],
) -> list[Row]:
    """The adapter and ECU answered: name them, count the PIDs, decode the VIN."""
    processor = ObdProcessor(cfg.snapshot_interval_s)
    stamp = datetime.now(UTC)
    ecus: set[int] = set()
    for ex in exchanges:
        processor.feed(Exchange(stamp, ex.req, ex.replies, ex.error, ex.volts, ex.link, ex.info))
        if ex.req in _DISCOVERY and ex.replies:
            ecus |= set(ex.replies)
    vin = processor.vin
    adapter_row = Row(
        "obd.adapter",
        "pass",
        f"{adapter} on {_adapter_where(cfg)}",
        data={"adapter": adapter, "port": cfg.port},
    )
    ecu_text = ", ".join(f"{e:X}" for e in sorted(ecus)) or "?"
    data = {
        "protocol": protocol,
        "ecus": [f"{e:X}" for e in sorted(ecus)],
        "supported_pids": supported,
        "vin": vin,
    }
    vin_text = f"VIN {vin}" if vin else "no VIN (mode 09 unsupported: normal before 2005)"
    if not supported:
        return [
            adapter_row,
            Row(
                "obd.vehicle",
                "fail",
                f"{protocol}: the ECU answers no PID-support request",
                "switch the ignition on and run the check again; the vehicle may not "
                "support OBD-II mode 01",
                data=data,
            ),
        ]
    detail = f"{protocol}; ECU {ecu_text}; {supported} PIDs supported; {vin_text}"
    return [adapter_row, Row("obd.vehicle", "pass", detail, data=data)]


def probe_obd(cfg: ObdConfig, deadline: float, *, link: ObdLink | None = None) -> list[Row]:
    """Run the agent's reader on the configured link until the VIN request is behind it."""
    if cfg.source == "elm327" and _is_device_path(cfg.port):
        if not os.path.exists(cfg.port):
            return missing_port_rows(cfg)
        if not os.access(cfg.port, os.R_OK | os.W_OK):
            return [
                Row(
                    "obd.adapter",
                    "fail",
                    f"permission denied on {cfg.port}",
                    "the user running this may not open serial ports: sudo usermod -aG "
                    "dialout <agent user> and log in again, or run the check as the agent's user",
                    data={"port": cfg.port},
                ),
                Row("obd.vehicle", "skip", "not checked: the adapter did not open"),
            ]
    if link is None:
        from agent.obd.service import open_link

        link = open_link(cfg)
    watch = _Watch()
    reader = ObdReader(
        link, watch.emit, reconnect_max_s=cfg.reconnect_max_s, vehicle_retry_s=cfg.vehicle_retry_s
    )
    stop = threading.Event()
    thread = threading.Thread(target=reader.run, args=(stop,), name="check-obd", daemon=True)
    start = time.monotonic()
    thread.start()
    state = "starting"
    try:
        while time.monotonic() < deadline and thread.is_alive():
            state = reader.status.state
            if state in ("no_adapter", "vehicle_off") or watch.done.is_set():
                break
            watch.done.wait(0.05)
        state = reader.status.state
        if state == "vehicle_off":  # the reader reads the battery next: wait for it briefly
            end = min(deadline, time.monotonic() + 2.5)
            while time.monotonic() < end and not any(e.volts for e in watch.snapshot()):
                time.sleep(0.05)
    finally:
        status = reader.status
        adapter, protocol = status.adapter, status.protocol
        supported, error = status.supported, status.last_error
        stop.set()
        # The reader closes the link on its way out, after the request in hand; but
        # python-OBD may still be in its 10 s open timeout: not waited for (a daemon).
        thread.join(cfg.read_timeout_s + 1.0 if state in ("connected", "quiet") else 0.5)
    waited = time.monotonic() - start
    exchanges = watch.snapshot()
    if watch.done.is_set() or state in ("connected", "quiet"):
        return connected_rows(cfg, adapter, protocol, supported, exchanges)
    if state == "vehicle_off":
        volts = next((ex.volts for ex in reversed(exchanges) if ex.volts is not None), None)
        return vehicle_off_rows(cfg, volts, error or "no answer")
    return silent_rows(cfg, waited, error or "no answer")
