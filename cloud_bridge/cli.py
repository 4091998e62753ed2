"""``telematics-bridge``: run a bridge worker, manage API tokens, look at what it stored.

``--db`` takes a SQLite file path (the embedded default) or a
``postgresql://`` URL.  One ``run`` process is one worker: it ingests (MQTT),
sends webhooks and, with ``--http``, serves the API and live view.  Start N
workers with ``--share-group`` to split the stream (docs/SCALING.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from agent.logs import setup_logging
from cloud_bridge.db import describe_url
from cloud_bridge.storage import BridgeStore, StorageError
from cloud_bridge.subscriber import Bridge, BridgeSettings

log = logging.getLogger("cloud_bridge")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="telematics-bridge", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def db(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--db",
            default=os.environ.get("TELEMATICS_BRIDGE_DB"),
            help="SQLite file or postgresql:// URL (default: $TELEMATICS_BRIDGE_DB)",
        )

    run = sub.add_parser("run", help="one bridge worker: ingest, webhooks, optionally the API")
    db(run)
    run.add_argument("--host", default="localhost", help="MQTT broker")
    run.add_argument("--port", type=int, default=1883)
    run.add_argument("--prefix", default="fleet")
    run.add_argument("--client-id", default="telematics-bridge")
    run.add_argument("--mqtt-protocol", choices=["5", "3.1.1"], default="5")
    run.add_argument(
        "--share-group",
        help="MQTT 5 shared subscription group: workers with the same group split the stream",
    )
    run.add_argument("--username")
    run.add_argument("--password-file", type=Path, help="file holding the password")
    run.add_argument("--ca", type=Path)
    run.add_argument("--cert", type=Path)
    run.add_argument("--key", type=Path)
    run.add_argument("--http", metavar="HOST:PORT", help="serve the API and live view here")
    run.add_argument("--tile-url", help="map tiles for the live view ({z}/{x}/{y}); none: no tiles")
    run.add_argument("--tile-attribution", default="")
    run.add_argument("--no-webhooks", action="store_true", help="do not send webhooks here")
    run.add_argument(
        "--webhook-backoff-max",
        type=float,
        default=600.0,
        help="longest wait between retries of a failing webhook, seconds",
    )
    run.add_argument("--log-level", default="INFO")
    run.add_argument(
        "--busy-timeout", type=float, default=5.0, help="SQLite: seconds to wait for a lock"
    )

    tok = sub.add_parser("token", help="API tokens")
    tok_sub = tok.add_subparsers(dest="token_cmd", required=True)
    create = tok_sub.add_parser("create", help="print a new token (shown once)")
    db(create)
    create.add_argument("name", help="who or what uses it, e.g. dispatch-backend")
    revoke = tok_sub.add_parser("revoke", help="revoke every token of a name")
    db(revoke)
    revoke.add_argument("name")

    mig = sub.add_parser("migrate", help="create or upgrade the schema, then exit")
    db(mig)
    sub.add_parser("openapi", help="print the HTTP API's OpenAPI spec")
    q = sub.add_parser("query", help="print a device's records in sequence order")
    db(q)
    q.add_argument("--device", required=True)
    q.add_argument("--stream", choices=["telemetry", "events"])
    s = sub.add_parser("summary", help="per-device counts and rejected payloads")
    db(s)
    return ap


def _serve_http(app: Any, where: str) -> tuple[Any, threading.Thread]:
    import uvicorn

    host, _, port = where.rpartition(":")
    server = uvicorn.Server(
        uvicorn.Config(app, host=host or "127.0.0.1", port=int(port), log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    return server, thread


def _run(args: argparse.Namespace) -> int:
    password = None
    if args.password_file is not None:
        password = args.password_file.read_text(encoding="utf-8").strip()
    # The agent's logging: journald priorities under systemd, repeats summarised,
    # the broker password and URL credentials (a PostgreSQL DSN) masked.
    setup_logging(args.log_level.upper(), secrets=[password] if password else [])
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
        protocol=args.mqtt_protocol,
        share_group=args.share_group,
    )
    log.info("database %s", describe_url(args.db))
    store = BridgeStore(args.db, busy_timeout_s=args.busy_timeout)
    bridge = Bridge(store, settings)
    client = bridge.make_client()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    server = None

    if not args.no_webhooks:
        from cloud_bridge.webhooks import Dispatcher, WebhookQueue

        hooks_store = BridgeStore(args.db, busy_timeout_s=args.busy_timeout, migrated=True)
        dispatcher = Dispatcher(
            WebhookQueue(hooks_store.db),
            backoff_min_s=min(2.0, args.webhook_backoff_max),
            backoff_max_s=args.webhook_backoff_max,
        )
        bridge.on_new_events = lambda _n: dispatcher.wake()
        threads.append(
            threading.Thread(target=dispatcher.run, args=(stop,), name="webhooks", daemon=True)
        )
    if args.http:
        from cloud_bridge.api import ApiSettings, create_app

        api_store = BridgeStore(args.db, busy_timeout_s=args.busy_timeout, migrated=True)
        app = create_app(
            api_store,
            bridge.publish_downlink,
            ApiSettings(tile_url=args.tile_url, attribution=args.tile_attribution),
            ingest_counts=bridge.counts,
        )
        server, http_thread = _serve_http(app, args.http)
        threads.append(http_thread)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        client.disconnect()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for t in threads:
        if not t.is_alive():
            t.start()
    bridge.connect(client)
    client.loop_start()
    last_report = time.monotonic()
    try:
        while not stop.wait(0.5) and bridge.fatal is None:
            if time.monotonic() - last_report >= 30.0:
                log.info("counts: %s", dict(bridge.counts))
                last_report = time.monotonic()
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        client.loop_stop()
        for t in threads:
            t.join(timeout=5)
        log.info("bridge stopped; counts: %s", dict(bridge.counts))
        store.close()
    return 1 if bridge.fatal is not None else 0


def openapi_spec() -> dict[str, Any]:
    """The API's OpenAPI document, built on a throwaway in-memory database."""
    import tempfile

    from cloud_bridge.api import create_app

    with tempfile.TemporaryDirectory() as tmp:
        store = BridgeStore(Path(tmp) / "spec.sqlite")
        try:
            spec: dict[str, Any] = create_app(store, lambda *_: None).openapi()
        finally:
            store.close()
    return spec


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "openapi":
        print(json.dumps(openapi_spec(), indent=2, sort_keys=True))
        return 0
    if not args.db:
        print("telematics-bridge: --db (or $TELEMATICS_BRIDGE_DB) is required", file=sys.stderr)
        return 2
    if args.cmd == "run":
        return _run(args)
    if args.cmd in ("query", "summary") and "://" not in args.db and not Path(args.db).exists():
        print(f"no bridge database at {args.db}", file=sys.stderr)
        return 2
    try:
        store = BridgeStore(args.db)
    except StorageError as exc:
        print(f"telematics-bridge: database {describe_url(args.db)}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.cmd == "migrate":
            from cloud_bridge.migrations import schema_version

            print(f"schema version {schema_version(store.db)}")
        elif args.cmd == "token":
            now = datetime.now(UTC)
            if args.token_cmd == "create":
                print(store.add_token(args.name, now))
            else:
                n = store.revoke_tokens(args.name, now)
                print(f"revoked {n} token(s) of {args.name!r}")
        elif args.cmd == "query":
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
