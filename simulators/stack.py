"""The whole chain on one machine: simulated GPS -> agent -> mosquitto -> bridge.

Used by ``telematics-sim demo`` (the README's main job) and by the end-to-end
tests, which also kill and restart pieces of it.  Every piece is the real
program run as a process: the simulator writes NMEA into a pseudo-terminal,
the agent reads it as a serial port, a real mosquitto carries the messages
and the bridge stores them in SQLite.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from agent.config import MqttConfig
from simulators.broker import Mosquitto, free_port, wait_for

BIN = Path(sys.executable).parent


def command(name: str) -> str:
    """Path of one of the project's console scripts, installed beside this Python."""
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"{name} is not installed beside {sys.executable}: pip install -e .")
    return str(path)


def stop_group(
    popen: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20.0
) -> int:
    """Signal a child's whole process group, wait, SIGKILL it if it lingers."""
    if popen.poll() is None:
        os.killpg(popen.pid, sig)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(5)
    return popen.returncode


class Proc:
    """A child process in its own session, logging to a file."""

    def __init__(self, args: list[str], log: Path, stdout_pipe: bool = False) -> None:
        self.args = args
        self.log = log
        self._log_file = log.open("ab")
        self.popen = subprocess.Popen(
            args,
            stdout=subprocess.PIPE if stdout_pipe else self._log_file,
            stderr=self._log_file,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def stdout(self) -> IO[bytes]:
        assert self.popen.stdout is not None
        return self.popen.stdout

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        code = stop_group(self.popen, sig, timeout)
        self._log_file.close()
        return code


def bridge_worker(
    db: str,
    broker_port: int,
    log: Path,
    *,
    client_id: str,
    share_group: str | None = None,
    http_port: int | None = None,
    extra: tuple[str, ...] = (),
    timeout: float = 30.0,
) -> Proc:
    """One ``telematics-bridge run`` process, returned once it is subscribed.

    A QoS 1 publish with no subscriber is acknowledged and dropped, so
    devices start only after this returns.
    """
    args = [
        command("telematics-bridge"),
        "run",
        "--db",
        db,
        "--host",
        "127.0.0.1",
        "--port",
        str(broker_port),
        "--client-id",
        client_id,
        *(["--share-group", share_group] if share_group else []),
        *(["--http", f"127.0.0.1:{http_port}"] if http_port else []),
        *extra,
    ]
    seen = log.stat().st_size if log.exists() else 0  # a restart appends to the same log
    proc = Proc(args, log)
    wait_for(
        lambda: b"bridge connected" in log.read_bytes()[seen:] or not proc.alive(),
        timeout,
        f"bridge {client_id} subscribed",
    )
    if not proc.alive():
        raise RuntimeError(f"bridge {client_id} exited: see {log}")
    return proc


class Stack:
    """Broker, bridge, GPS simulator and agent in ``workdir``; start/stop each."""

    def __init__(
        self,
        workdir: Path,
        *,
        scenario: str = "urban_delivery",
        speed: float = 10.0,
        rate_hz: int = 1,
        device: str = "van-demo",
        duration_s: float | None = None,
        obd: bool = False,
        agent_extra: str = "",
        status_interval_s: float | None = None,
        bridge_db: str | None = None,
        http: bool = False,
        bridge_extra: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.scenario = scenario
        self.speed = speed
        self.rate_hz = rate_hz
        self.device = device
        self.duration_s = duration_s
        workdir.mkdir(parents=True, exist_ok=True)
        self.broker = Mosquitto(workdir / "broker")
        self.bridge_db = workdir / "bridge.sqlite"
        # A postgresql:// URL puts the bridge on PostgreSQL (the SQLite helpers
        # below then see nothing: query through BridgeStore(stack.bridge_url)).
        self.bridge_url = bridge_db or str(self.bridge_db)
        self.http_port = free_port() if http else None
        self.bridge_extra = bridge_extra
        self.outbox_db = workdir / "outbox.sqlite"
        self.agent_config = workdir / "agent.toml"
        self.bridge: Proc | None = None
        self.sim: Proc | None = None
        self.agent: Proc | None = None
        self.pty: str | None = None
        # The ELM327 simulator, reached through a stable symlink like udev's /dev/obd0.
        self.obd = obd
        self.obd_port = workdir / "obd0"
        self.obd_log = workdir / "obd.jsonl"
        self.elm: Proc | None = None
        self.agent_extra = agent_extra
        self.status_interval_s = status_interval_s

    # -- pieces -----------------------------------------------------------------

    def start_broker(self) -> None:
        self.broker.start()

    def start_bridge(self) -> None:
        self.bridge = bridge_worker(
            self.bridge_url,
            self.broker.port,
            self.workdir / "bridge.log",
            client_id=f"bridge-{self.workdir.name}",
            http_port=self.http_port,
            extra=self.bridge_extra,
        )

    def start_sim(self) -> None:
        args = [
            command("telematics-sim"),
            "gps",
            "--scenario",
            self.scenario,
            "--pty",
            "--speed",
            str(self.speed),
            "--rate",
            str(self.rate_hz),
        ]
        if self.duration_s is not None:
            args += ["--duration", str(self.duration_s)]
        self.sim = Proc(args, self.workdir / "sim.log", stdout_pipe=True)
        line = self.sim.stdout.readline().decode().strip()
        if not line.startswith("/dev/"):
            raise RuntimeError(
                f"simulator did not print a pty path (got {line!r}); see {self.sim.log}"
            )
        self.pty = line

    def start_elm(self) -> None:
        """The ELM327 simulator on a pty behind ``obd_port``, paced like the GPS one."""
        args = [
            command("telematics-sim"),
            "elm327",
            "--scenario",
            self.scenario,
            "--pty",
            "--link",
            str(self.obd_port),
            "--speed",
            str(self.speed),
        ]
        self.elm = Proc(args, self.workdir / "elm.log", stdout_pipe=True)
        line = self.elm.stdout.readline().decode().strip()
        if not line.startswith("/dev/"):
            raise RuntimeError(f"ELM327 simulator printed {line!r}; see {self.elm.log}")

    def write_zones(self) -> Path | None:
        """The scenario's zones as GeoJSON for the agent, when it has any."""
        from simulators.scenario import load_scenario
        from simulators.truth import zones_geojson

        scenario = load_scenario(self.scenario)
        if not scenario.all_zones:
            return None
        path = self.workdir / "zones.geojson"
        path.write_text(json.dumps(zones_geojson(scenario)))
        return path

    def write_agent_config(self) -> None:
        assert self.pty is not None
        zones = self.write_zones()
        geofence = "" if zones is None else f'[geofence]\nzones_file = "{zones}"\n\n'
        self.agent_config.write_text(
            f'[device]\nid = "{self.device}"\n\n'
            f'[gps]\nsource = "serial"\ndevice = "{self.pty}"\nbaud = 9600\n'
            "rollover_floor = 2020-01-01\n\n"
            f'[buffer]\npath = "{self.outbox_db}"\ncommit_interval_s = 0.5\n\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port}\n'
            "backoff_min_s = 0.5\nbackoff_max_s = 4.0\n"
            # The hold is wall time: the default's share of the simulated drive.
            f"telemetry_hold_s = {MqttConfig().telemetry_hold_s / self.speed:g}\n"
            + (
                f"status_interval_s = {self.status_interval_s}\n"
                if self.status_interval_s is not None
                else ""
            )
            + "\n"
            f'{geofence}[log]\nlevel = "INFO"\n\n'
            + (
                f'[obd]\nsource = "elm327"\nport = "{self.obd_port}"\nbaud = 38400\n'
                f'record = "{self.obd_log}"\n\n'
                if self.obd
                else ""
            )
            + self.agent_extra
        )

    def start_agent(self) -> None:
        if not self.agent_config.exists():
            self.write_agent_config()
        self.agent = Proc(
            [command("telematics-agent"), "run", "--config", str(self.agent_config)],
            self.workdir / "agent.log",
        )

    def start(self) -> None:
        self.start_broker()
        self.start_bridge()
        if self.obd:
            self.start_elm()
        self.start_sim()
        self.start_agent()

    # -- observing --------------------------------------------------------------

    def _query(self, db: Path, sql: str) -> list[tuple[Any, ...]]:
        if not db.exists():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []  # table not created yet
        finally:
            con.close()

    def outbox_depth(self) -> int:
        rows = self._query(self.outbox_db, "SELECT COUNT(*) FROM outbox")
        return int(rows[0][0]) if rows else -1

    def outbox_high_water(self) -> int:
        rows = self._query(self.outbox_db, "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
        return int(rows[0][0]) if rows else 0

    def bridge_seqs(self) -> list[tuple[str, int]]:
        """(stream, seq) of the device's records in arrival order (SQLite bridge)."""
        from cloud_bridge.storage import BridgeStore, StorageError

        if not self.bridge_db.exists():
            return []
        try:
            store = BridgeStore(self.bridge_db, migrated=True)
        except (StorageError, sqlite3.Error):  # busy while the bridge creates it
            return []
        try:
            return [(s, q) for s, _, q in store.arrival_order(self.device)]
        except StorageError:
            return []  # the bridge has not created its tables yet
        finally:
            store.close()

    def wait_sim_done(self, timeout: float) -> None:
        assert self.sim is not None
        self.sim.popen.wait(timeout)

    def wait_delivered(self, timeout: float) -> None:
        """Until every seq the agent committed is at the bridge."""

        def done() -> bool:
            high = self.outbox_high_water()
            return high > 0 and len(self.bridge_seqs()) >= high and self.outbox_depth() == 0

        wait_for(done, timeout, "all committed records at the bridge", poll=0.25)

    def stop(self) -> None:
        for proc in (self.agent, self.sim, self.elm, self.bridge):
            if proc is not None:
                proc.stop()
        self.broker.stop()

    def summary(self) -> dict[str, Any]:
        rows = self._query(
            self.bridge_db,
            "SELECT kind, COUNT(*), MIN(ts), MAX(ts) FROM ("
            "SELECT 'position' AS kind, ts, device FROM positions "
            "UNION ALL SELECT 'obd', ts, device FROM obd "
            "UNION ALL SELECT 'event', ts, device FROM events"
            f") WHERE device = '{self.device}' GROUP BY kind",
        )
        seqs = sorted(q for _, q in self.bridge_seqs())
        events = self._query(
            self.bridge_db,
            f"SELECT type, COUNT(*) FROM events WHERE device = '{self.device}' GROUP BY type",
        )
        rejects = self._query(
            self.bridge_db, "SELECT reason, COUNT(*) FROM rejects GROUP BY reason"
        )
        return {
            "device": self.device,
            "records": {k: n for k, n, _, _ in rows},
            "first_fix": min((t0 for _, _, t0, _ in rows), default=None),
            "last_fix": max((t1 for _, _, _, t1 in rows), default=None),
            "seq_range": [seqs[0], seqs[-1]] if seqs else None,
            "missing_seqs": (seqs[-1] - len(set(seqs))) if seqs else 0,
            "duplicates_stored": len(seqs) - len(set(seqs)),
            "events": dict(events),
            "rejected": dict(rejects),
        }


def run_demo(
    workdir: Path,
    *,
    scenario: str,
    speed: float,
    duration_s: float | None,
    fleet: int = 0,
    keep: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """The README's main job: drive, deliver, summarise; the live view meanwhile."""
    import threading
    from datetime import UTC, datetime

    from cloud_bridge.storage import BridgeStore

    stack = Stack(workdir, scenario=scenario, speed=speed, duration_s=duration_s, http=True)
    out(f"workdir {workdir}")
    fleet_thread: threading.Thread | None = None
    try:
        stack.start_broker()
        stack.start_bridge()
        store = BridgeStore(stack.bridge_url)
        token = store.add_token("demo", datetime.now(UTC))
        store.close()
        base = f"http://127.0.0.1:{stack.http_port}"
        out(f"live view: {base}/#token={token}")
        out(f"API:       curl -H 'Authorization: Bearer {token}' {base}/api/v1/devices")
        if fleet:
            from simulators.fleet import run_fleet

            fleet_thread = threading.Thread(
                target=run_fleet,
                args=("127.0.0.1", stack.broker.port, fleet, workdir / "fleet"),
                kwargs={"scenario": scenario, "speedup": speed, "until_delivered_timeout": 60},
                daemon=True,
            )
            fleet_thread.start()
        stack.start_sim()
        stack.start_agent()
        out(
            f"broker 127.0.0.1:{stack.broker.port}, simulator on {stack.pty} at {speed:g}x, "
            f"agent and bridge running{f', {fleet} more vans' if fleet else ''}; driving..."
        )
        assert stack.sim is not None
        started = time.monotonic()
        while stack.sim.alive():
            time.sleep(5)
            out(
                f"  {time.monotonic() - started:5.0f}s  agent committed {stack.outbox_high_water()} "
                f"records, bridge holds {len(stack.bridge_seqs())}"
            )
        stack.wait_delivered(60)
        if fleet_thread is not None:
            fleet_thread.join(120)
        report = _api_report(base, token, stack.device)
        if keep:
            out(f"\n{report}\nstill serving {base}/#token={token}; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                while stack.bridge is not None and stack.bridge.alive():
                    time.sleep(1)
    finally:
        stack.stop()
    s = stack.summary()
    held = s["records"]
    out(
        f"\nThe bridge holds {held.get('position', 0)} positions and {held.get('event', 0)} events "
        f"from {s['device']} ({s['first_fix']} .. {s['last_fix']}); sequence "
        f"{s['seq_range']}, {s['missing_seqs']} missing, {s['duplicates_stored']} duplicates, "
        f"{sum(s['rejected'].values())} payloads rejected."
    )
    if s["events"]:
        out("Events: " + ", ".join(f"{n} x {kind}" for kind, n in sorted(s["events"].items())))
    out(report)
    out(json.dumps(s, indent=2))
    out(f"logs: {workdir}/agent.log, bridge.log, sim.log; bridge database {stack.bridge_db}")
    out(f"try: telematics-bridge query --db {stack.bridge_db} --device {stack.device} | head")
    out(
        f"     telematics-bridge run --db {stack.bridge_db} --port 1 --http 127.0.0.1:8080 "
        "(then the live view above on port 8080; no broker needed to browse)"
    )
    return 0


def _api_report(base: str, token: str, device: str) -> str:
    """What a fleet backend would read from the HTTP API about the demo van."""
    import httpx

    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as api:
        trips = api.get(f"/api/v1/devices/{device}/trips").json()["trips"]
        first = api.get(f"/api/v1/devices/{device}/positions", params={"limit": 1}).json()
        start = first["positions"][0]["ts"] if first["positions"] else None
        params = {"from": start, "to": "2100-01-01T00:00:00Z"} if start else {}
        card = api.get(f"/api/v1/devices/{device}/scorecard", params=params).json()
    harsh = card["harsh"]
    return (
        f"API: {len(trips)} trip(s), {card['distance_km']} km; harsh {harsh['total']} "
        f"({harsh['per_100km']} per 100 km); overspeed {card['overspeed']['count']} x; "
        f"GPX: {base}/api/v1/devices/{device}/positions?format=gpx"
    )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(
        prog="telematics-sim demo",
        description="simulated drive -> agent -> local mosquitto -> bridge, then a summary",
    )
    ap.add_argument("--scenario", default="urban_delivery")
    ap.add_argument("--speed", type=float, default=10.0, help="simulated seconds per second")
    ap.add_argument("--duration", type=float, default=None, help="cut the drive after N seconds")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--fleet", type=int, default=0, help="N more simulated vans for the map")
    ap.add_argument("--keep", action="store_true", help="keep serving the live view at the end")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="telematics-demo-"))
    return run_demo(
        workdir,
        scenario=args.scenario,
        speed=args.speed,
        duration_s=args.duration,
        fleet=args.fleet,
        keep=args.keep,
    )


if __name__ == "__main__":
    sys.exit(main())
