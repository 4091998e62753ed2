"""``telematics-agent``: run the daemon, check a config, show its status, replay a recording.

Exit status: 0 ok, 1 runtime failure, 2 bad configuration or usage, 75 a
``restart`` command asked for a restart (systemd's Restart= and runit start it again).
``status`` follows LSB: 0 running and healthy, 1 running but degraded, 3 not
running, 4 unknown (docs/STATUS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import signal
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TextIO

from agent import __version__, logs
from agent.buffer.outbox import OutboxError
from agent.config import (
    AgentConfig,
    BufferConfig,
    ConfigError,
    GeofenceConfig,
    ImuConfig,
    ObdConfig,
    SamplerConfig,
    TripsConfig,
    load_config,
)
from agent.geofence.model import ZoneError as ZoneFileError
from agent.messages import batch_json, record_body, with_seq
from agent.pipeline import Output
from agent.sdnotify import Notifier
from agent.status import BACKLOG_S, EXIT_UNKNOWN, NO_FIX_S, OFFLINE_S, Limits

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="telematics-agent", description=__doc__)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", "-c", type=Path, required=True)
    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_cmd", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file without running")
    check.add_argument("file", type=Path)
    ck = sub.add_parser("check", help="probe every configured source, say what to fix")
    ck.add_argument("--config", "-c", type=Path, required=True)
    ck.add_argument(
        "--timeout", type=float, default=30.0, help="longest wait, for the GPS fix (default 30 s)"
    )
    ck.add_argument("--json", action="store_true", help="print the rows as JSON")
    ck.add_argument("--verbose", "-v", action="store_true", help="show the agent's logs")
    st = sub.add_parser(
        "status",
        help="live health of the running agent (exit 0 ok, 1 degraded, 3 not running)",
        description="Live health of the agent running with this config, from the status file "
        "it keeps beside its outbox; the backlog from the outbox when it is not running. "
        "Exit status: 0 running and healthy, 1 running but degraded, 3 not running, 4 unknown.",
    )
    st.add_argument("--config", "-c", type=Path, required=True)
    st.add_argument("--json", action="store_true", help="print everything as one JSON object")
    st.add_argument(
        "--no-fix-after",
        type=float,
        default=NO_FIX_S,
        metavar="S",
        help=f"degraded without a GPS fix for this long (default {NO_FIX_S:g} s)",
    )
    st.add_argument(
        "--offline-after",
        type=float,
        default=OFFLINE_S,
        metavar="S",
        help=f"degraded when not connected this long (default {OFFLINE_S:g} s)",
    )
    st.add_argument(
        "--backlog-after",
        type=float,
        default=BACKLOG_S,
        metavar="S",
        help=f"degraded when the oldest unsent record is this old (default {BACKLOG_S:g} s)",
    )
    rp = sub.add_parser("replay", help="run the pipeline on a recording, print what it would send")
    rp.add_argument("--nmea", type=Path, help="recorded NMEA 0183 file")
    rp.add_argument(
        "--obd", type=Path, help="recorded OBD log (JSON lines, docs/PROTOCOL.md), merged by time"
    )
    rp.add_argument(
        "--imu",
        type=Path,
        help="IMU CSV (t,ax,ay,az[,gx,gy,gz]; docs/IMU.md), or a directory of Android _terra logs",
    )
    rp.add_argument(
        "--earth-frame",
        action="store_true",
        help="the IMU data is already in the earth frame (z up), as Android's _terra logs",
    )
    rp.add_argument(
        "--imu-start",
        type=_utc_arg,
        default=None,
        help="UTC of the IMU file's t = 0 (default: the first NMEA fix, else 1970-01-01T00:00:00Z)",
    )
    rp.add_argument(
        "--candump",
        type=Path,
        help="candump -l log: print the OBD service 01 readings found on the bus (alone)",
    )
    rp.add_argument("--every-fix", action="store_true", help="one position per fix, sampler off")
    rp.add_argument(
        "--zones", type=Path, help="geofences: GeoJSON FeatureCollection or zone-set JSON/TOML"
    )
    rp.add_argument("--config", "-c", type=Path, help="take device id and sampler settings here")
    rp.add_argument(
        "--device", default=None, help="device id to print (default: config or 'replay')"
    )
    rp.add_argument(
        "--rollover-floor",
        type=date.fromisoformat,
        default=None,
        help="dates before this are GPS week-rollover errors (default: config, else none)",
    )
    return ap


def _utc_arg(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError("give a UTC time with Z, e.g. 2024-05-14T07:30:00Z")
    return ts.astimezone(UTC)


def _config_check(path: Path) -> int:
    cfg = load_config(path)
    print(
        f"{path}: ok: device {cfg.device.id}, gps {cfg.gps.source}, obd {cfg.obd.source}, "
        f"broker {cfg.mqtt.host}:{cfg.mqtt.port} ({'TLS' if cfg.mqtt.tls else 'no TLS'}), "
        f"outbox {cfg.buffer.path}, config hash {cfg.digest()}"
    )
    return 0


def replay(
    nmea: Path | None,
    out: TextIO,
    *,
    device: str,
    sampler: SamplerConfig,
    every_fix: bool,
    rollover_floor: date | None,
    zones: Path | None = None,
    geofence: GeofenceConfig | None = None,
    trips: TripsConfig | None = None,
    obd: Path | None = None,
    obd_cfg: ObdConfig | None = None,
    imu: Path | None = None,
    imu_cfg: ImuConfig | None = None,
    earth_frame: bool = False,
    imu_start: datetime | None = None,
) -> int:
    """Print, as JSON lines, the payloads the live agent would publish for a recording.

    Each line is ``{"topic": ..., "payload": <Batch>}`` holding one record, as
    the live agent sends them one commit window at a time.  The epoch is
    derived from the files' content so the output is reproducible.  NMEA
    fixes and OBD exchanges are merged by their own UTC times, as the live
    agent receives them.
    """
    from agent.geofence.model import load_zone_file
    from agent.gps.nmea import iter_file_fixes
    from agent.imu.csv_file import CsvReport, iter_android_terra, iter_imu_csv
    from agent.imu.sample import ImuSample
    from agent.obd.exchange import LogReport, read_log
    from agent.obd.processor import ObdProcessor
    from agent.pipeline import ImuClock, Pipeline, geofence_detector

    digest = hashlib.sha256()
    for path in (nmea, obd, imu if imu is not None and imu.is_file() else None):
        if path is not None:
            digest.update(path.read_bytes())
    epoch = digest.hexdigest()[:32]
    detector = None
    if zones is not None:
        detector = geofence_detector(geofence or GeofenceConfig(), load_zone_file(zones))
    processor = None
    if obd is not None:
        processor = ObdProcessor((obd_cfg or ObdConfig()).snapshot_interval_s)
    fixes = list(iter_file_fixes(nmea, rollover_floor=rollover_floor)) if nmea is not None else []
    # Harsh driving runs with or without an IMU file (GNSS speed and course
    # otherwise), as live.  t = 0 on the IMU clock is this UTC instant.
    first = next((f.time for f in fixes if f.time is not None), None)
    anchor = imu_start or first or datetime(1970, 1, 1, tzinfo=UTC)
    imu_processor = (imu_cfg or ImuConfig()).processor(earth_frame=earth_frame)
    imu_clock = ImuClock(
        of_fix=lambda f: None if f.time is None else (f.time - anchor).total_seconds(),
        utc=lambda t: anchor + timedelta(seconds=t),
        of_utc=lambda ts: (ts - anchor).total_seconds(),
    )
    pipeline = Pipeline(
        sampler,
        every_fix=every_fix,
        geofence=detector,
        trips=trips,
        obd=processor,
        imu=imu_processor,
        imu_clock=imu_clock,
    )
    seq = 0

    def write(outputs: list[Output]) -> None:
        nonlocal seq
        for stream, record in outputs:
            seq += 1
            payload = batch_json(device, epoch, None, [with_seq(record_body(record), seq)])
            out.write(f'{{"topic":"fleet/{device}/{stream}","payload":{payload}}}\n')

    report = LogReport()
    exchanges = iter(read_log(obd, report)) if obd is not None else iter(())
    pending = next(exchanges, None)
    imu_report = CsvReport(str(imu))
    samples: Iterator[ImuSample] = iter(())
    if imu is not None:
        samples = (
            iter_android_terra(imu, imu_report) if imu.is_dir() else iter_imu_csv(imu, imu_report)
        )
    sample = next(samples, None)
    for fix in fixes:
        while pending is not None and fix.time is not None and pending.ts <= fix.time:
            write(pipeline.feed_obd(pending))
            pending = next(exchanges, None)
        t_fix = pipeline.imu_clock.of_fix(fix) if pipeline.imu_clock is not None else None
        while sample is not None and t_fix is not None and sample.t <= t_fix:
            write(pipeline.feed_imu(sample))
            sample = next(samples, None)
        write(pipeline.feed_fix(fix))
    while pending is not None:
        write(pipeline.feed_obd(pending))
        pending = next(exchanges, None)
    while sample is not None:
        write(pipeline.feed_imu(sample))
        sample = next(samples, None)
    write(pipeline.flush_imu())
    for number, why in imu_report.errors[:20]:
        print(f"{imu}:{number}: rejected: {why}", file=sys.stderr)
    for number, why in report.rejected:
        print(f"{obd}:{number}: rejected: {why}", file=sys.stderr)
    if processor is not None and processor.rejected:
        print(f"{obd}: replies not decoded: {dict(processor.rejected)}", file=sys.stderr)
    return 0


def replay_candump(path: Path, out: TextIO) -> int:
    """Print the OBD readings found in a candump log as JSON lines; a summary on stderr."""
    import json

    from agent.obd.candump import replay_candump as read

    report = read(path)
    for r in report.readings:
        out.write(
            json.dumps(
                {
                    "t": r.timestamp,
                    "id": f"{r.reply_id:X}",
                    "name": r.name,
                    "value": r.value,
                    "unit": r.unit,
                }
            )
            + "\n"
        )
    for number, why in report.errors[:20]:
        print(f"{path}:{number}: {why}", file=sys.stderr)
    print(report.summary(), file=sys.stderr)
    return 0


EXIT_RESTART = 75  # EX_TEMPFAIL: "try again", so any restart policy restarts it


def _run(cfg: AgentConfig) -> int:
    from agent.runtime import Agent, gps_source

    logs.setup_logging(cfg.log.level, secrets=logs.secret_values(cfg))
    try:
        agent = Agent(cfg, gps_source(cfg.gps), notifier=Notifier.from_env())
    except (ValueError, OSError) as exc:
        raise ConfigError(f"cannot start with this configuration: {exc}") from exc

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await agent.run()

    try:
        asyncio.run(main())
    finally:
        logs.shutdown()
    return EXIT_RESTART if agent.restart_requested else 0


def _status_outbox(path: Path) -> Path | None:
    """The outbox whose agent ``status`` reports on, from the config's ``buffer.path``.

    Read leniently: a config being edited (a typo elsewhere, a TLS file not
    there yet) must not hide the health of the agent that runs.  None (exit
    4, status unknown) when the file cannot be read at all.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        print(
            f"error: {path}: permission denied (run as root or the agent's user)", file=sys.stderr
        )
        return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return None
    try:
        return load_config(path).buffer.path
    except ConfigError as exc:
        buffer = raw.get("buffer")
        given = buffer.get("path") if isinstance(buffer, dict) else None
        outbox = Path(given) if isinstance(given, str) else BufferConfig().path
        print(f"note: the config has an error ({exc}); the outbox is {outbox}", file=sys.stderr)
        return outbox


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "config":
            return _config_check(args.file)
        if args.cmd == "status":
            from agent.status import status_command

            limits = Limits(args.no_fix_after, args.offline_after, args.backlog_after)
            outbox = _status_outbox(args.config)
            if outbox is None:
                return EXIT_UNKNOWN
            return status_command(outbox, as_json=args.json, limits=limits)
        cfg = load_config(args.config) if args.config is not None else None
        if args.cmd == "check":
            from agent.check import check_command

            assert cfg is not None
            if args.verbose:  # the check's own basicConfig then keeps these handlers
                logs.setup_logging(logging.DEBUG, secrets=logs.secret_values(cfg))
            return check_command(
                cfg, timeout=max(1.0, args.timeout), as_json=args.json, verbose=args.verbose
            )
        if args.cmd == "replay":
            if args.candump is not None:
                if args.nmea or args.obd:
                    raise ConfigError("--candump replays a CAN log alone (without --nmea/--obd)")
                return replay_candump(args.candump, sys.stdout)
            if args.nmea is None and args.obd is None and args.imu is None:
                raise ConfigError("replay needs --nmea, --obd, --imu (any of them), or --candump")
            floor = args.rollover_floor or (cfg.gps.rollover_floor if cfg else None)
            return replay(
                args.nmea,
                sys.stdout,
                device=args.device or (cfg.device.id if cfg else "replay"),
                sampler=cfg.sampler if cfg else SamplerConfig(),
                every_fix=args.every_fix,
                rollover_floor=floor,
                zones=args.zones,
                geofence=cfg.geofence if cfg else None,
                trips=cfg.trips if cfg else None,
                obd=args.obd,
                obd_cfg=cfg.obd if cfg else None,
                imu=args.imu,
                imu_cfg=cfg.imu if cfg else None,
                earth_frame=args.earth_frame,
                imu_start=args.imu_start,
            )
        assert cfg is not None
        return _run(cfg)
    except (ConfigError, OutboxError, ZoneFileError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:
        return 0
    except PermissionError as exc:  # e.g. the password file, as another user than the agent's
        print(
            f"error: {exc.filename or exc}: permission denied (run as the agent's user or root)",
            file=sys.stderr,
        )
        return EXIT_UNKNOWN if args.cmd == "status" else EXIT_CONFIG
    except FileNotFoundError as exc:
        print(f"error: {exc.filename}: no such file", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
