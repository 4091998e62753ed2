"""``telematics-sim``: run the device simulators from a scenario file.

    telematics-sim list
    telematics-sim info SCENARIO
    telematics-sim gps --scenario S (--pty | --tcp PORT | --out FILE) [options]
    telematics-sim elm327 --scenario S (--pty [--link PATH] | --tcp PORT) [options]
    telematics-sim can --scenario S [--interface socketcan|virtual|udp_multicast] [--channel C]
    telematics-sim obd-log --scenario S [--out FILE]
    telematics-sim imu --scenario S [--out FILE|-] [--rate HZ] [--seed N] [--duration SEC]
    telematics-sim zones --scenario S [--format geojson|zoneset|toml]
    telematics-sim truth --scenario S [--kind zones|idle|engine|harsh|impacts] [--duration SEC] [--loop]
    telematics-sim fleet --port P [--host H] --devices N [--speedup X] [--minutes M] [--workdir DIR]

Scripts read the first stdout line (the pty path, or the TCP port) and then
talk to the device; the one-line summary goes to stderr at the end.  Exit
status: 0 at the end of the route or on SIGTERM/SIGINT, 2 for a bad command
line or scenario, 1 when the device cannot be set up (port in use ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from datetime import timedelta
from types import FrameType
from typing import Protocol

from simulators.args import positive
from simulators.can_ecu import add_can_arguments, run_can
from simulators.ecu import EcuModel
from simulators.elm327 import Elm327, Elm327Device, ElmSummary, PtyPort, TcpPort
from simulators.gps_device import GpsDevice, Outlet, PtyOutlet, RunSummary, TcpOutlet, write_drive
from simulators.nmea_out import EncodedEpoch, iter_epochs
from simulators.route import build_drive
from simulators.scenario import Scenario, ScenarioError, bundled_scenarios, load_scenario, with_gnss
from simulators.truth import (
    engine_periods,
    idle_periods,
    zone_visits,
    zones_geojson,
    zones_toml,
    zoneset,
)

__all__ = ["main"]

PROG = "telematics-sim"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from simulators.stack import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["fleet"]:
        from simulators.fleet import main as fleet_main

        return fleet_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return _list()
        if args.command == "info":
            return _info(load_scenario(args.scenario))
        if args.command == "zones":
            return _zones(load_scenario(args.scenario), args.format)
        if args.command == "truth":
            return _truth(parser, args)
        if args.command == "elm327":
            return _elm327(args)
        if args.command == "can":
            return run_can(args, prog=f"{PROG} can")
        if args.command == "obd-log":
            return _obd_log(args)
        if args.command == "imu":
            return _imu(args)
        return _gps(parser, args)
    except ScenarioError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Device simulators for test drives.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the bundled scenarios")
    sub.add_parser(
        "demo", help="the whole chain: simulator -> agent -> mosquitto -> bridge", add_help=False
    )
    info = sub.add_parser("info", help="distance, duration and stop times of a scenario")
    info.add_argument("scenario", help="scenario file or bundled name")

    gps = sub.add_parser("gps", help="NMEA GPS on a pty, over TCP, or into a file")
    gps.add_argument("--scenario", required=True, help="scenario file or bundled name")
    out = gps.add_argument_group("outputs (--pty and --tcp may be combined)")
    out.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal")
    out.add_argument("--tcp", type=_port, metavar="PORT", help="serve TCP clients (0: any port)")
    out.add_argument("--host", default="127.0.0.1", help="TCP address (default 127.0.0.1)")
    out.add_argument("--out", metavar="FILE", help="write the drive at once ('-' for stdout)")
    gps.add_argument("--rate", type=int, metavar="HZ", help="epochs per second (1-10)")
    gps.add_argument("--talker", choices=("GP", "GN"), help="NMEA talker id")
    gps.add_argument(
        "--speed", type=positive, metavar="X", help="simulated seconds per wall second (1)"
    )
    gps.add_argument("--duration", type=positive, metavar="SEC", help="stop after SEC simulated")
    gps.add_argument("--loop", action="store_true", help="repeat the route (needs --duration)")

    can_sim = sub.add_parser(
        "can", help="OBD-II engine ECU on a CAN bus (socketcan, virtual, udp_multicast)"
    )
    add_can_arguments(can_sim)
    obd_log = sub.add_parser(
        "obd-log", help="the drive as an OBD log (JSON lines) for telematics-agent replay --obd"
    )
    obd_log.add_argument("--scenario", required=True, help="scenario file or bundled name")
    obd_log.add_argument("--out", default="-", help="file to write, - for stdout (default)")
    imu = sub.add_parser(
        "imu", help="the drive's IMU samples as CSV (t,ax,ay,az,gx,gy,gz) for replay --imu"
    )
    imu.add_argument("--scenario", required=True, help="scenario file or bundled name")
    imu.add_argument("--out", default="-", help="file to write, - for stdout (default)")
    imu.add_argument("--rate", type=positive, metavar="HZ", help="samples per second (imu.rate_hz)")
    imu.add_argument(
        "--seed", type=_seed, metavar="N", help="noise, bumps, random mount (imu.seed)"
    )
    imu.add_argument("--duration", type=positive, metavar="SEC", help="stop after SEC simulated")
    elm = sub.add_parser("elm327", help="ELM327 OBD-II adapter on a pty or over TCP")
    elm.add_argument("--scenario", required=True, help="scenario file or bundled name")
    where = elm.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal")
    where.add_argument(
        "--tcp", type=_port, metavar="PORT", help="serve one TCP client (0: any port)"
    )
    elm.add_argument("--link", metavar="PATH", help="with --pty: keep this symlink on the pty")
    elm.add_argument("--host", default="127.0.0.1", help="TCP address (default 127.0.0.1)")
    elm.add_argument(
        "--speed", type=positive, metavar="X", help="simulated seconds per wall second (1)"
    )
    elm.add_argument(
        "--start-offset",
        type=_non_negative,
        default=0.0,
        metavar="SEC",
        help="scenario second at which to start (default 0)",
    )
    elm.add_argument(
        "--duration", type=positive, metavar="SEC", help="stop after SEC simulated seconds"
    )

    zones = sub.add_parser("zones", help="print the scenario's geofence zones")
    zones.add_argument("--scenario", required=True, help="scenario file or bundled name")
    zones.add_argument(
        "--format",
        choices=("geojson", "zoneset", "toml"),
        default="geojson",
        help="GeoJSON FeatureCollection (default), zone set as JSON, or zone set as TOML",
    )
    truth = sub.add_parser("truth", help="true zone visits, idles or engine runs as JSON lines")
    truth.add_argument("--scenario", required=True, help="scenario file or bundled name")
    truth.add_argument(
        "--kind",
        choices=("zones", "idle", "engine", "harsh", "impacts"),
        default="zones",
        help="zone visits (default), idle periods, engine running periods, harsh episodes "
        "(detector defaults) or scripted shocks of 2.5 g and more",
    )
    truth.add_argument(
        "--duration", type=positive, metavar="SEC", help="period in simulated seconds"
    )
    truth.add_argument("--loop", action="store_true", help="repeat the route (needs --duration)")
    return parser


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("port must be 0..65535")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be an integer >= 0")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("must be a number >= 0")
    return value


# --------------------------------------------------------------------------- list / info


def _list() -> int:
    for name in bundled_scenarios():
        scenario = load_scenario(name)
        lap = build_drive(scenario).first
        stops = len([s for s in lap.stops if 0 < s.waypoint < len(scenario.route.waypoints) - 1])
        print(
            f"{name:<16} {lap.distance / 1000:6.1f} km  {_clock(lap.duration):>8}  "
            f"{stops} stop{'' if stops == 1 else 's'}  {scenario.description}"
        )
    return 0


def _info(scenario: Scenario) -> int:
    lap = build_drive(scenario).first
    dwell = sum(s.depart_s - s.arrive_s for s in lap.stops)
    print(f"{scenario.name}: {scenario.description}")
    print(f"start {scenario.start_utc:%Y-%m-%d %H:%M:%S}Z, {lap.distance / 1000:.2f} km")
    print(f"duration {_clock(lap.duration)} (driving {_clock(lap.duration - dwell)})")
    for stop in lap.stops:
        utc = scenario.start_utc + timedelta(seconds=stop.arrive_s)
        print(
            f"  t={stop.arrive_s:8.1f}s  {utc:%H:%M:%S}Z  waypoint {stop.waypoint:>3}  "
            f"dwell {stop.depart_s - stop.arrive_s:5.0f}s  {stop.name}"
        )
    return 0


def _zones(scenario: Scenario, fmt: str) -> int:
    if fmt == "toml":
        text = zones_toml(scenario)
    else:
        data = zones_geojson(scenario) if fmt == "geojson" else zoneset(scenario)
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    _emit([text])
    return 0


def _truth(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.loop and args.duration is None:
        parser.error("truth with --loop needs --duration (the drive would never end)")
    scenario = load_scenario(args.scenario)
    if args.kind == "zones":
        visits = zone_visits(scenario, duration_s=args.duration, loop=args.loop)
        _emit(json.dumps(v.to_json(), ensure_ascii=False) + "\n" for v in visits)
        return 0
    if args.loop or args.duration is not None:
        parser.error(f"truth --kind {args.kind} covers the route once: no --loop or --duration")
    if args.kind == "idle":
        _emit(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in idle_periods(scenario))
        return 0
    if args.kind in ("harsh", "impacts"):
        from simulators.imu_out import truth_harsh, truth_impacts

        rows: list[dict[str, object]]
        if args.kind == "harsh":
            rows = [
                {"start_s": h.t_start, "end_s": h.t_end, "class": h.kind, "direction": h.direction}
                for h in truth_harsh(scenario)
            ]
        else:
            rows = [
                {"t_s": i.t_peak, "peak_g": round(i.peak_g, 3), "kind": i.kind}
                for i in truth_impacts(scenario)
            ]
        _emit(json.dumps(r) + "\n" for r in rows)
        return 0
    runs = [
        {"start_s": round(lo, 3), "end_s": round(hi, 3), "duration_s": round(hi - lo, 3)}
        for lo, hi in engine_periods(scenario)
    ]
    _emit(json.dumps(r) + "\n" for r in runs)
    return 0


def _emit(chunks: Iterable[str]) -> None:
    """Write to stdout; a reader that hangs up early (``| head``) is not an error."""
    try:
        for chunk in chunks:
            sys.stdout.write(chunk)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


# --------------------------------------------------------------------------- gps


def _gps(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not (args.pty or args.tcp is not None or args.out):
        parser.error("gps needs an output: --pty, --tcp PORT or --out FILE")
    if args.out and (args.pty or args.tcp is not None):
        parser.error("--out writes at once; it cannot be combined with --pty or --tcp")
    if args.out and args.speed is not None:
        parser.error("--speed paces --pty/--tcp; --out always writes as fast as possible")
    if args.out and args.loop and args.duration is None:
        parser.error("--out with --loop needs --duration (the drive would never end)")
    scenario = with_gnss(load_scenario(args.scenario), rate_hz=args.rate, talker=args.talker)
    epochs = iter_epochs(scenario, duration_s=args.duration, loop=args.loop)
    route_end = build_drive(scenario).duration
    ends_by_duration = args.duration is not None and (args.loop or args.duration < route_end)
    end_reason = "duration reached" if ends_by_duration else "end of route"

    with _signals() as stop_by:
        try:
            if args.out:
                summary = _write_out(epochs, args.out, stop_by)
            else:
                summary = _serve(epochs, args, stop_by)
        except _SetupError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
    _report(scenario, summary, args.speed, end_reason)
    return 0


class _SetupError(Exception):
    """The device could not be set up (port in use, no ptys, unwritable file)."""


class _Stoppable(Protocol):
    def request_stop(self, reason: str = ...) -> None: ...


class _StopBy:
    """Which signal asked us to stop; forwards the request to the running device."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.device: _Stoppable | None = None

    def requested(self) -> bool:
        return self.signal is not None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name
        if self.device is not None:
            self.device.request_stop(self.signal)


@contextlib.contextmanager
def _signals() -> Iterator[_StopBy]:
    """SIGTERM and SIGINT end the run cleanly (summary, exit 0) instead of a traceback."""
    stop_by = _StopBy()
    previous = {sig: signal.signal(sig, stop_by) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop_by
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(
    epochs: Iterator[EncodedEpoch], args: argparse.Namespace, stop_by: _StopBy
) -> RunSummary:
    outlets: list[Outlet] = []
    announce: list[str] = []  # the first stdout line(s): where to connect
    with contextlib.ExitStack() as stack:
        try:
            if args.pty:
                pty = PtyOutlet()
                stack.callback(pty.close)
                outlets.append(pty)
                announce.append(pty.path)
            if args.tcp is not None:
                tcp = TcpOutlet(args.host, args.tcp)
                stack.callback(tcp.close)
                outlets.append(tcp)
                announce.append(str(tcp.port))
        except OSError as exc:
            raise _SetupError(f"cannot start the device: {exc}") from None
        print("\n".join(announce), flush=True)
        device = GpsDevice(epochs, outlets, speed=args.speed or 1.0)
        stack.callback(device.close)
        stop_by.device = device
        if stop_by.signal is not None:
            device.request_stop(stop_by.signal)
        return device.run()


def _write_out(epochs: Iterator[EncodedEpoch], target: str, stop_by: _StopBy) -> RunSummary:
    if target != "-":
        try:
            out = open(target, "wb")  # noqa: SIM115 (closed below, errors reported)
        except OSError as exc:
            raise _SetupError(f"cannot write {target}: {exc}") from None
        with out:
            return write_drive(epochs, out, should_stop=stop_by.requested)
    summary = write_drive(epochs, sys.stdout.buffer, should_stop=stop_by.requested)
    if summary.stopped_by is not None:
        # The pipe is gone: point stdout at /dev/null so the exit flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    elif stop_by.signal is not None:
        summary.stopped_by = stop_by.signal
    return summary


# --------------------------------------------------------------------------- obd-log


def _obd_log(args: argparse.Namespace) -> int:
    from simulators.obd_log import iter_obd_log

    scenario = load_scenario(args.scenario)
    lines = (ex.to_json() + "\n" for ex in iter_obd_log(scenario))
    if args.out == "-":
        _emit(lines)
        return 0
    try:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
    except OSError as exc:
        print(f"{PROG}: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- imu


def _imu(args: argparse.Namespace) -> int:
    import numpy as np

    from agent.imu.calibration import euler_from_rotation
    from agent.imu.sample import ImuSample
    from simulators.imu_out import csv_lines, iter_imu, mount_rotation

    scenario = load_scenario(args.scenario)
    imu = scenario.imu
    rate = args.rate if args.rate is not None else (imu.rate_hz if imu else 50)
    rotation = mount_rotation(scenario, args.seed)
    samples = iter_imu(scenario, rate_hz=rate, seed=args.seed, duration_s=args.duration)
    count = 0
    last_t = 0.0

    def counted() -> Iterator[ImuSample]:
        nonlocal count, last_t
        for sample in samples:
            count += 1
            last_t = sample.t
            yield sample

    if args.out == "-":
        _emit(csv_lines(counted()))
    else:
        try:
            with open(args.out, "w", encoding="utf-8") as fh:
                fh.writelines(csv_lines(counted()))
        except OSError as exc:
            print(f"{PROG}: cannot write {args.out}: {exc}", file=sys.stderr)
            return 1
    roll, pitch, yaw = euler_from_rotation(np.asarray(rotation))
    print(
        f"{PROG} imu: {scenario.name}: {count} samples at {rate:g} Hz ({last_t:.1f} s); "
        f"mount roll {roll:.1f} pitch {pitch:.1f} yaw {yaw:.1f} deg",
        file=sys.stderr,
    )
    return 0


# --------------------------------------------------------------------------- elm327


def _elm327(args: argparse.Namespace) -> int:
    if args.link and not args.pty:
        print(f"{PROG} elm327: --link needs --pty", file=sys.stderr)
        return 2
    scenario = load_scenario(args.scenario)
    elm = Elm327(EcuModel(scenario))
    port: PtyPort | TcpPort = PtyPort(args.link) if args.pty else TcpPort(args.host, args.tcp)
    device = Elm327Device(
        elm,
        port,
        speed=args.speed or 1.0,
        start_offset_s=args.start_offset,
        duration_s=None if args.duration is None else args.start_offset + args.duration,
    )
    with _signals() as stop_by:
        try:
            try:
                device.open()
            except OSError as exc:
                print(f"{PROG}: cannot start the device: {exc}", file=sys.stderr)
                return 1
            print(port.path if isinstance(port, PtyPort) else port.port, flush=True)
            stop_by.device = device
            if stop_by.signal is not None:
                device.request_stop(stop_by.signal)
            summary = device.run()
        finally:
            device.close()
    _report_elm(scenario, summary, args.speed, port.label)
    return 0


def _report_elm(scenario: Scenario, s: ElmSummary, speed: float | None, label: str) -> None:
    """One line on stderr: requests served, faults injected, how the run ended."""
    how = f"stopped by {s.stopped_by}" if s.stopped_by else "duration reached"
    pace = f" (x{speed:g})" if speed else ""
    faults = ", ".join(f"{kind} {n}" for kind, n in sorted(s.faults.items())) or "none"
    line = (
        f"{PROG} elm327: {scenario.name}: {s.commands} commands ({s.obd_requests} OBD "
        f"requests), faults injected: {faults}; {s.sim_seconds:.1f} s simulated in "
        f"{s.wall_seconds:.1f} s{pace}, {how}; {label}"
    )
    if label.startswith("tcp"):
        line += f", {s.connections} connections"
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def _report(scenario: Scenario, summary: RunSummary, speed: float | None, end: str) -> None:
    """One line on stderr: what was sent, how long it took, what was dropped."""
    if summary.stopped_by:
        how = f"stopped by {summary.stopped_by}"
    else:
        how = end if summary.finished else "stopped"
    pace = f" (x{speed:g})" if speed else ""
    parts = [
        f"{PROG} gps: {scenario.name}: {summary.epochs} epochs, "
        f"{summary.sim_seconds:.1f} s simulated in {summary.wall_seconds:.1f} s{pace}, "
        f"{summary.odometer_m / 1000:.2f} km, {how}"
    ]
    for label, stats in summary.outlets:
        part = f"{label}: {stats.sent_bytes} B sent, {stats.dropped_bytes} B dropped"
        if stats.dropped_epochs:
            part += f" ({stats.dropped_epochs} epochs)"
        if stats.flushed_backlogs:
            part += f", {stats.flushed_backlogs} unread backlogs discarded"
        if label.startswith("tcp"):
            part += f", {stats.connections} connections"
        parts.append(part)
    if summary.resyncs:
        parts.append(f"{summary.resyncs} late resyncs")
    with contextlib.suppress(OSError):
        print("; ".join(parts), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
