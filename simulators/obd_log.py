"""A scenario's drive as an OBD log: what an agent polling the simulated ECU would record.

Pure and paced by scenario time, not the wall clock, so the same scenario
always gives the same lines.  Together with ``telematics-sim gps --out``
it makes a deterministic recording of a whole drive (NMEA + OBD) that
``telematics-agent replay --nmea F --obd G`` turns into the events the live
agent would send: the idle and trip acceptance tests run on exactly that.

The poll plan mirrors the agent's defaults: RPM and speed every 0.5 s
(staggered), battery voltage every 5 s, fuel rate every 5 s, odometer every 10 s, DTCs (03
then 07) every 60 s, the VIN once at the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from agent.obd.exchange import Exchange
from simulators.ecu import EcuModel
from simulators.route import build_drive
from simulators.scenario import Scenario


def _exchange(model: EcuModel, scenario: Scenario, t: float, req: str) -> Exchange:
    ts = scenario.start_utc + timedelta(seconds=t)
    if req == "ATRV":
        return Exchange(ts=ts, req=req, volts=round(model.state_at(t).battery_v, 1))
    reply = model.respond(bytes.fromhex(req), t)
    if reply is None:
        return Exchange(ts=ts, req=req, error="no_data")
    return Exchange(ts=ts, req=req, replies={model.REPLY_ID: reply})


def iter_obd_log(
    scenario: Scenario, *, duration_s: float | None = None, tail_s: float = 30.0
) -> Iterator[Exchange]:
    """Exchanges in time order from t = 0 to ``tail_s`` past the end of the drive.

    The engine goes off for good when the route ends; the tail records that,
    so an idle or trip still open at the end is closed as the live agent would.
    ``duration_s`` cuts the log earlier (no tail).
    """
    model = EcuModel(scenario)
    end = build_drive(scenario).duration + tail_s if duration_s is None else duration_s
    yield _exchange(model, scenario, 0.0, "0100")
    yield _exchange(model, scenario, 0.05, "0902")
    tick = 0
    while True:
        t = tick * 0.25  # four slots a second: RPM, speed, and the slower jobs between
        if t > end:
            return
        slot = tick % 4
        if slot == 0:
            yield _exchange(model, scenario, t, "010C")
        elif slot == 2:
            yield _exchange(model, scenario, t, "010D")
        elif tick % 20 == 1:
            yield _exchange(model, scenario, t, "ATRV")
        elif tick % 20 == 3:
            yield _exchange(model, scenario, t, "015E")
        elif tick % 240 == 7:
            yield _exchange(model, scenario, t, "03")
            yield _exchange(model, scenario, t + 0.05, "07")
        elif tick % 40 == 5:
            yield _exchange(model, scenario, t, "01A6")
        tick += 1
