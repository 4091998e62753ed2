"""``telematics-bridge``: run the subscriber, or look at what it stored."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from cloud_bridge.storage import BridgeStore
from cloud_bridge.subscriber import Bridge, BridgeSettings

log = logging.getLogger("cloud_bridge")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="telematics-bridge", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="subscribe to device topics and store what arrives")
    run.add_argument("--db", type=Path, required=True, help="SQLite file to store into")
    run.add_argument("--host", default="localhost")
    run.add_argument("--port", type=int, default=1883)
    run.add_argument("--prefix", default="fleet")
    run.add_argument("--client-id", default="telematics-bridge")
    run.add_argument("--username")
    run.add_argument("--password-file", type=Path, help="file holding the password")
    run.add_argument("--ca", type=Path)
    run.add_argument("--cert", type=Path)
    run.add_argument("--key", type=Path)
    run.add_argument("--log-level", default="INFO")
    run.add_argument(
        "--busy-timeout", type=float, default=5.0, help="seconds to wait for a locked database"
    )
    q = sub.add_parser("query", help="print a device's records in sequence order")
    q.add_argument("--db", type=Path, required=True)
    q.add_argument("--device", required=True)
    q.add_argument("--stream", choices=["telemetry", "events"])
    s = sub.add_parser("summary", help="per-device counts and rejected payloads")
    s.add_argument("--db", type=Path, required=True)
    return ap


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    password = None
    if args.password_file is not None:
        password = args.password_file.read_text(encoding="utf-8").strip()
    settings = BridgeSettings(
        host=args.host,
        port=args.port,
        prefix=args.prefix,
        client_id=args.client_id,
        username=args.username,
        password=password,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
    )
    store = BridgeStore(args.db, busy_timeout_s=args.busy_timeout)
    bridge = Bridge(store, settings)
    client = bridge.make_client()
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        client.disconnect()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    client.connect_async(settings.host, settings.port, keepalive=30)
    client.loop_start()
    last_report = time.monotonic()
    try:
        while not stop.wait(0.5) and bridge.fatal is None:
            if time.monotonic() - last_report >= 30.0:
                log.info("counts: %s", dict(bridge.counts))
                last_report = time.monotonic()
    finally:
        client.loop_stop()
        log.info("bridge stopped; counts: %s", dict(bridge.counts))
        store.close()
    return 1 if bridge.fatal is not None else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "run":
        return _run(args)
    if not args.db.exists():
        print(f"no bridge database at {args.db}", file=sys.stderr)
        return 2
    store = BridgeStore(args.db)
    try:
        if args.cmd == "query":
            for record in store.records(args.device, args.stream):
                print(json.dumps(record, separators=(",", ":")))
        else:
            print(
                json.dumps(
                    {"devices": store.summary(), "rejected": store.reject_counts()}, indent=2
                )
            )
    except BrokenPipeError:
        # `query ... | head`: the reader has what it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
