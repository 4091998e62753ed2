"""Benchmark: bytes on the wire per position, MQTT overhead included, per uplink setting.

    .venv/bin/python bench/bench_uplink.py [--scenario urban_delivery] [--no-tls]

The 1-hour urban drive (the delivery round looped, 1 Hz NMEA from the
simulator, parsed by the agent's NmeaParser) goes through the agent's
Pipeline (sampler, stops, trips, idle, overspeed), a real SQLite outbox
committing once a second of drive time (events at once), and the real
Uplink, to a real mosquitto through agent-independent byte counting:
simulators.mqtt_meter sits between them and counts every MQTT packet by
kind and topic.  The drive is replayed at speed; the uplink's telemetry
hold runs on the drive's clock, so batches are cut as they would be live,
and every publish is acknowledged before the next second of drive.

Per setting it prints positions, publishes, and bytes per position for
telemetry: the PUBLISH packets (fixed header, topic, packet id, MQTT 5
properties, payload) plus their PUBACKs.  Events, the retained status and
keepalive pings are listed beside it: status and pings depend on wall time,
so their cost for a real hour is computed from the measured packet sizes
and the configured intervals (marked "computed").  With TLS (default; the
broker is given a test CA), the default setting is run again over TLS and
its total bytes compared with the plaintext run: TLS's record overhead and
handshake.  TCP/IP headers (40-60 bytes per segment) are below a proxy's
sight and not counted.  The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support.pki

from bench_sampling import Drive, load

from agent.buffer.outbox import Outbox
from agent.clock import Clock
from agent.config import MqttConfig, SamplerConfig, TlsConfig
from agent.messages import EventData, Status, record_body
from agent.pipeline import Pipeline
from agent.uplink import Uplink
from simulators.broker import Mosquitto
from simulators.mqtt_meter import MqttMeter

DEVICE = "van-0042"  # a realistic id length: it is in every topic


@dataclass(frozen=True)
class Case:
    name: str
    encoding: str = "c1"
    hold_s: float = 30.0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


def cases() -> list[Case]:
    d = MqttConfig()
    sparse = SamplerConfig(period_s=10, distance_m=100, heading_change_deg=10, speed_change_kmh=10)
    return [
        Case(
            f"defaults ({d.encoding}, hold {d.telemetry_hold_s:g} s)",
            d.encoding,
            d.telemetry_hold_s,
        ),
        Case("c1, hold 60 s", "c1", 60.0),
        Case("c1, hold 10 s", "c1", 10.0),
        Case("c1, no hold", "c1", 0.0),
        Case("json, hold 30 s", "json", 30.0),
        Case("json, no hold (before)", "json", 0.0),
        Case("c1, hold 30 s, 10s/100m/10deg/10kmh", "c1", 30.0, sparse),
    ]


class DriveClock:
    """The drive's own seconds: the uplink's hold reads this instead of the wall."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def settle(uplink: Uplink, deadline_s: float = 20.0) -> None:
    """Let the uplink fill its window, then wait for every PUBACK."""
    for _ in range(3):
        await asyncio.sleep(0)
    end = time.monotonic() + deadline_s
    while uplink.status()["inflight"]:
        if time.monotonic() > end:
            raise TimeoutError(f"publishes unacknowledged: {uplink.status()}")
        await asyncio.sleep(0.0005)


def van_status(workdir: Path) -> str:
    """The birth the agent publishes for a van with serial GPS, ELM327 and I2C IMU."""
    from agent.config import AgentConfig
    from agent.runtime import Agent, gps_source, status_json

    cfg = AgentConfig.model_validate(
        {
            "device": {"id": DEVICE},
            "gps": {"source": "serial", "device": "/dev/gps0"},
            "obd": {"source": "elm327", "port": "/dev/obd0"},
            "imu": {"source": "i2c"},
            "buffer": {"path": workdir / "status-probe.sqlite"},
        }
    )
    agent = Agent(cfg, gps_source(cfg.gps))
    text = status_json(cfg, agent.outbox, agent.clock, "online", agent.health())
    agent.outbox.close()
    return text


async def run_case(
    case: Case, drive: Drive, port: int, workdir: Path, tls: TlsConfig | None, parse: bool
) -> dict[str, Any]:
    status = van_status(workdir / f"status-{random.getrandbits(32):08x}")
    outbox = Outbox(workdir / f"{random.getrandbits(32):08x}.sqlite", DEVICE)
    clock = DriveClock()
    pipeline = Pipeline(case.sampler)
    counts = {"telemetry": 0, "events": 0}

    def birth() -> str:
        return status  # the agent's own, measured once (see van_status)

    async with MqttMeter(port, parse=parse) as meter:
        cfg = MqttConfig(
            host="localhost", port=meter.port, encoding=case.encoding,
            telemetry_hold_s=case.hold_s, tls=tls,
        )  # fmt: skip
        uplink = Uplink(
            cfg, DEVICE, outbox, Clock("system", synced=lambda: True),
            birth=birth, will=lambda: Status(device=DEVICE, state="offline").model_dump_json(),
            rng=random.Random(1), mono=clock,
        )  # fmt: skip
        task = asyncio.create_task(uplink.run())
        while not uplink.stats.connected:
            await asyncio.sleep(0.01)
        await settle(uplink)
        base_up, base_down = meter.up.total, meter.down.total
        start = drive.fixes[0].time
        last_commit = -1.0
        for fix in drive.fixes:
            if fix.time is None or start is None:
                continue
            clock.t = (fix.time - start).total_seconds()
            urgent = False
            for stream, record in pipeline.feed_fix(fix):
                priority = isinstance(record, EventData) and record.type == "impact"
                outbox.add(stream, record_body(record), priority=priority)
                counts[stream] += 1
                urgent |= stream == "events"
            if urgent or clock.t - last_commit >= 1.0:
                outbox.commit()
                last_commit = clock.t
                uplink.wake()
                await settle(uplink)
        clock.t += 3600  # the drive is over: the last hold runs out
        outbox.commit()
        uplink.wake()
        await settle(uplink)
        while any(outbox.depth().values()) and outbox.commit() >= 0:
            uplink.wake()
            await settle(uplink)
        drive_up, drive_down = meter.up.total - base_up, meter.down.total - base_down
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        up, down = meter.up, meter.down
    outbox.close()
    out: dict[str, Any] = {
        "positions": counts["telemetry"],
        "events": counts["events"],
        "session_up": up.total,
        "session_down": down.total,
        "drive_bytes": drive_up + drive_down,
        "connect_bytes": base_up + base_down,  # handshake, CONNECT, first status
    }
    if parse:
        puback = down.size["PUBACK"] / max(1, down.packets["PUBACK"])
        tel = up.size["PUBLISH telemetry"] + up.packets["PUBLISH telemetry"] * puback
        ev = up.size["PUBLISH events"] + up.packets["PUBLISH events"] * puback
        out |= {
            "telemetry_publishes": up.packets["PUBLISH telemetry"],
            "telemetry_bytes": round(tel),
            "bytes_per_position": tel / max(1, counts["telemetry"]),
            "event_publishes": up.packets["PUBLISH events"],
            "bytes_per_event": ev / max(1, counts["events"]),
            "status_packet": up.size["PUBLISH status"] / max(1, up.packets["PUBLISH status"]),
            "puback": puback,
            "connect": up.size["CONNECT"] + down.size["CONNACK"],
            "subscribe": up.size["SUBSCRIBE"] + down.size["SUBACK"],
        }
    return out


async def run_all(args: argparse.Namespace, drive: Drive, workdir: Path) -> dict[str, Any]:
    broker = Mosquitto(workdir / "broker").start()
    report: dict[str, Any] = {}
    try:
        for case in cases():
            report[case.name] = await run_case(case, drive, broker.port, workdir, None, True)
    finally:
        broker.kill()
    if not args.no_tls:
        from tests.support.pki import Pki

        pki = Pki(workdir / "pki", name="ca")
        pki.server()
        tls_broker = Mosquitto(
            workdir / "tls-broker",
            listener_extra=(
                f"cafile {pki.dir / 'ca.crt'}\ncertfile {pki.dir / 'server.crt'}\n"
                f"keyfile {pki.dir / 'server.key'}\n"
            ),
        ).start()
        try:
            tls = TlsConfig(ca=pki.dir / "ca.crt")
            default = cases()[0]
            report["tls"] = await run_case(default, drive, tls_broker.port, workdir, tls, False)
        finally:
            tls_broker.kill()
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="urban_delivery")
    ap.add_argument("--no-tls", action="store_true", help="skip the TLS run")
    args = ap.parse_args()
    drive = load(args.scenario)
    hours = (drive.truth[-1].t - drive.truth[0].t) / 3600
    print(f"{args.scenario}: {len(drive.fixes)} fixes at 1 Hz, {hours:.2f} h, {drive.km:.2f} km")
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(run_all(args, drive, Path(tmp)))
    d = MqttConfig()
    print(
        f"\n{'setting':<38} {'pos':>5} {'pubs':>5} {'B/pos':>6} {'B/km':>6} "
        f"{'events':>6} {'B/event':>7}"
    )
    for name, r in report.items():
        if name == "tls":
            continue
        print(
            f"{name:<38} {r['positions']:>5} {r['telemetry_publishes']:>5} "
            f"{r['bytes_per_position']:>6.1f} {r['telemetry_bytes'] / drive.km:>6.0f} "
            f"{r['events']:>6} {r['bytes_per_event']:>7.1f}"
        )
    first = next(iter(report.values()))
    status_h = first["status_packet"] * 3600 / d.status_interval_s
    ping_h = 4 * 3600 / d.keepalive_s  # PINGREQ + PINGRESP, 2 bytes each, when nothing else
    print(
        f"\nper-session costs (measured packet sizes): CONNECT+CONNACK {first['connect']:.0f} B, "
        f"SUBSCRIBE+SUBACK {first['subscribe']:.0f} B, PUBACK {first['puback']:.0f} B, "
        f"status {first['status_packet']:.0f} B"
    )
    print(
        f"computed for a real hour: status every {d.status_interval_s:g} s = {status_h:.0f} B/h; "
        f"pings at most {ping_h:.0f} B/h (keepalive {d.keepalive_s} s, only when idle)"
    )
    tls_pos = 0.0
    if "tls" in report:
        plain, tls = first["drive_bytes"], report["tls"]["drive_bytes"]
        packets = first["telemetry_publishes"] + first["event_publishes"]
        handshake = report["tls"]["connect_bytes"] - first["connect_bytes"]
        print(
            f"TLS (default setting): drive {tls} B vs {plain} B plaintext: "
            f"{(tls - plain) / max(1, 2 * packets):.1f} B per record (publish and PUBACK), "
            f"{(tls - plain) / max(1, first['positions']):.1f} B per position; "
            f"TLS handshake {handshake:.0f} B per connection"
        )
        tls_pos = (tls - plain) / max(1, first["positions"])
        report["tls"]["per_position_overhead"] = tls_pos
    hour = first["telemetry_bytes"] + first["bytes_per_event"] * first["events"] + status_h
    all_in = hour / first["positions"] + tls_pos
    print(
        f"all-in for the drive hour (telemetry, events, status, TLS; pings and TCP/IP not): "
        f"{hour / 1024 * (1 + tls_pos * first['positions'] / hour):.1f} KiB/h, "
        f"{all_in:.1f} B per position"
    )
    report["all_in_bytes_per_position"] = all_in
    report["drive"] = {"scenario": args.scenario, "km": round(drive.km, 3), "hours": hours}
    print(json.dumps({k: _round(v) for k, v in report.items()}))
    return 0


def _round(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, float) and math.isfinite(v):
        return round(v, 2)
    return v


if __name__ == "__main__":
    raise SystemExit(main())
