"""``telematics-agent check``: probe every configured source and say what to fix.

For the installer in the van: the same config file the agent runs with,
every source probed with the agent's own code (GPS parser, OBD reader and
links, IMU sources, the uplink's MQTT settings, the outbox read-only), one
row per step with PASS/WARN/FAIL/SKIP and, for each problem, a fix in plain
words.  docs/CHECK.md lists every row and every piece of advice.

The probes are independent, so they run at once on their own threads and
the whole check takes as long as the slowest (a GPS waiting for its first
fix); each has a deadline, and a probe that overruns it is reported as such
rather than waited for.  Only the clock row waits for the GPS row, to say
how far the system clock is from GNSS time.

Exit status: 0 when every required row passed (warnings allowed), 1 when a
required row failed; the CLI maps a configuration error to 2 as for ``run``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

from agent.buffer.peek import lock_holder, read_state
from agent.check.broker import probe_broker
from agent.check.buffer import probe_buffer
from agent.check.clock import clock_row
from agent.check.gps import NMEA_WINDOW_S, probe_gps
from agent.check.imu import mounting_row, probe_imu
from agent.check.obd import probe_obd
from agent.check.report import Row, busy_row, exit_status, format_table, to_json, with_required
from agent.clock import kernel_clock_synchronised
from agent.config import AgentConfig
from agent.imu.i2c import I2cBus

__all__ = ["CheckOptions", "Row", "check_command", "required_groups", "run_checks"]

DEFAULT_TIMEOUT_S = 30.0
GRACE_S = 5.0  # past its deadline a probe is given up on (its thread is a daemon)
BROKER_LIMIT_S = 20.0
IMU_LIMIT_S = 10.0
ORDER = ("gps", "obd", "imu", "broker", "clock", "buffer")


@dataclass(frozen=True, slots=True)
class CheckOptions:
    """How long to wait, and what replaces hardware that cannot exist here (tests).

    ``timeout``: the longest any probe waits (the GPS fix); ``nmea_window``:
    how long the GPS port may stay without NMEA before that is the verdict;
    ``i2c_bus_factory``: an emulated I2C bus instead of ``/dev/i2c-N``;
    ``kernel_synced``: the NTP test (the agent's own by default).
    """

    timeout: float = DEFAULT_TIMEOUT_S
    nmea_window: float = NMEA_WINDOW_S
    i2c_bus_factory: Callable[[], I2cBus] | None = None
    kernel_synced: Callable[[], bool] = kernel_clock_synchronised


def required_groups(cfg: AgentConfig) -> frozenset[str]:
    """GPS, broker and buffer always; OBD and IMU when configured; the clock when trusted blindly."""
    groups = {"gps", "broker", "buffer"}
    if cfg.obd.source != "none":
        groups.add("obd")
    if cfg.imu.source != "none":
        groups.add("imu")
    if cfg.clock.source == "system":
        groups.add("clock")
    return frozenset(groups)


class _Probe(threading.Thread):
    """One probe on a daemon thread; its rows, or a row saying it crashed."""

    def __init__(self, group: str, run: Callable[[], list[Row]]) -> None:
        super().__init__(name=f"check-{group}", daemon=True)
        self.group = group
        self._run = run
        self.rows: list[Row] | None = None

    def run(self) -> None:
        try:
            self.rows = self._run()
        except Exception as exc:  # a bug in a probe must not hide the other rows
            self.rows = [
                Row(
                    self.group,
                    "fail",
                    f"the check itself failed: {type(exc).__name__}: {exc}",
                    "run it again with --verbose and report the output",
                )
            ]

    def result(self, until: float, limit: float) -> list[Row]:
        self.join(max(0.0, until - time.monotonic()))
        if self.rows is None:
            return [
                Row(
                    self.group,
                    "fail",
                    f"no result within {limit:.0f} s: the probe hung",
                    "run the check again; if it hangs again, unplug and replug the device",
                )
            ]
        return self.rows


def _not_configured(group: str, key: str) -> list[Row]:
    return [Row(group, "skip", f"not configured ({key} = none)", required=False)]


def run_checks(cfg: AgentConfig, options: CheckOptions | None = None) -> list[Row]:
    """Every row, in table order, each marked required or not."""
    opt = options or CheckOptions()
    start = time.monotonic()
    deadline = start + opt.timeout
    pid = lock_holder(cfg.buffer.path)
    probes: dict[str, tuple[_Probe, float]] = {}

    def add(group: str, run: Callable[[], list[Row]], limit: float) -> None:
        probes[group] = (_Probe(group, run), limit)

    if pid is not None and cfg.gps.source == "serial":
        add("gps", lambda: [busy_row(c, pid) for c in ("gps.port", "gps.nmea", "gps.fix")], 1)
    else:
        add("gps", lambda: probe_gps(cfg.gps, deadline, window=opt.nmea_window), opt.timeout)
    if cfg.obd.source != "none" and pid is not None:
        add("obd", lambda: [busy_row("obd.adapter", pid), busy_row("obd.vehicle", pid)], 1)
    elif cfg.obd.source != "none":
        add("obd", lambda: probe_obd(cfg.obd, deadline), opt.timeout)
    imu_limit = min(opt.timeout, IMU_LIMIT_S)
    if cfg.imu.source != "none" and pid is not None:
        add(
            "imu",
            lambda: [
                busy_row("imu.chip", pid),
                busy_row("imu.rate", pid),
                mounting_row(cfg.imu, read_state(cfg.buffer.path, "imu_mounting")),
            ],
            1,
        )
    elif cfg.imu.source != "none":
        add(
            "imu",
            lambda: probe_imu(
                cfg.imu, cfg.buffer.path, start + imu_limit, bus_factory=opt.i2c_bus_factory
            ),
            imu_limit,
        )
    broker_limit = min(opt.timeout, BROKER_LIMIT_S)
    add(
        "broker",
        lambda: probe_broker(cfg.mqtt, cfg.device.id, start + broker_limit, agent_pid=pid),
        broker_limit,
    )
    add("buffer", lambda: probe_buffer(cfg.buffer.path, cfg.device.id, pid), opt.timeout)
    for probe, _limit in probes.values():
        probe.start()

    results: dict[str, list[Row]] = {
        "obd": _not_configured("obd", "obd.source"),
        "imu": _not_configured("imu", "imu.source"),
    }
    for group, (probe, limit) in probes.items():
        results[group] = probe.result(start + limit + GRACE_S, limit)
    offset = next(
        (r.data.get("system_minus_gnss_s") for r in results["gps"] if r.check == "gps.fix"),
        None,
    )
    results["clock"] = [clock_row(cfg.clock.source, opt.kernel_synced(), offset)]
    required = required_groups(cfg)
    rows: list[Row] = []
    for group in ORDER:
        group_rows = results[group]
        if group in ("obd", "imu") and group not in required:
            rows.extend(group_rows)
        else:
            rows.extend(with_required(group_rows, group in required))
    return rows


@contextlib.contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    """The agent's modules log their link changes; the check shows them only with --verbose."""
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
        yield
        return
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def check_command(
    cfg: AgentConfig,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    as_json: bool = False,
    verbose: bool = False,
    out: TextIO | None = None,
    options: CheckOptions | None = None,
) -> int:
    """Run the check, print the table (or JSON) on ``out``; the exit status."""
    out = out if out is not None else sys.stdout
    opt = options or CheckOptions(timeout=timeout)
    if not as_json and sys.stderr.isatty():
        print(
            f"checking {cfg.device.id}: GPS, OBD, IMU, broker, clock, buffer "
            f"(up to {opt.timeout:.0f} s for a GPS fix) ...",
            file=sys.stderr,
        )
    try:
        with _logging(verbose):
            rows = run_checks(cfg, opt)
    except KeyboardInterrupt:
        print("check interrupted", file=sys.stderr)
        return 130
    if as_json:
        out.write(to_json(rows) + "\n")
    else:
        colour = out.isatty() and "NO_COLOR" not in os.environ
        out.write(format_table(rows, colour=colour))
    out.flush()
    return exit_status(rows)


def rows_by_check(rows: Sequence[Row]) -> dict[str, Row]:
    """The rows keyed by check name (tests and scripts look rows up by name)."""
    return {r.check: r for r in rows}
