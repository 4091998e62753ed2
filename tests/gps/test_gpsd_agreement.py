"""Agreement with gpsd on the 86 real receivers of the GPSD regression suite.

For every log in ``shared/data/gpsd/logs`` the parser's fixes are compared
with gpsd's (``expected/NAME.log.epochs.jsonl``, the last TPV gpsd gave for
each time).  Every gpsd epoch with a time and mode >= 2 must come out of
``iter_file_fixes`` with the same UTC time, lat/lon within 1e-6 degree, and
speed and track within 0.01 m/s and degree where gpsd has them.  Where gpsd
has a time with mode < 2 the parser must give no position for that time.
Where the parser gives several fixes for one time (a cycle ender proved
wrong, or a log spliced from two captures) the last counts, as in gpsd's
file.

gpsd is not always right.  Each case where it is wrong or arguable is in
``KNOWN_DISAGREEMENTS`` below, keyed by log and time, with the reason (see
docs/NMEA-COMPATIBILITY.md for the raw sentences).  They are counted and
reported separately, never silently dropped, and an entry that stops
disagreeing fails the test so the list cannot go stale.  The test fails
when less than 99 % of the epochs agree or are such a documented gpsd
error, or when any no-fix epoch gets a position unexplained.

The Debian gpsd on the build machine is never consulted: it shifts the dates
of logs from 2016 and earlier by 1024 weeks.  Scoring is against the files.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.gps.fix import Fix
from agent.gps.nmea import iter_file_fixes

# Received dates before 2000-01-01 are taken as 1024 weeks early.  The floor
# must lie after 1999-08-22 (the first rollover: the Telit log's "22/08/99"
# is really 2019-04-07) and on or before the oldest capture (2001-06-06,
# garmin48).  A live agent uses its release date minus a margin instead.
ROLLOVER_FLOOR = date(2000, 1, 1)
POSITION_TOLERANCE_DEG = 1e-6
MOTION_TOLERANCE = 0.01  # m/s and degrees
THRESHOLD = 0.99
EXPECTED_SCORED_EPOCHS = 1608  # epochs with a time and mode >= 2 in the expected files
NON_NMEA_KINDS = frozenset({"binary", "non-nmea"})  # index.csv kinds to skip (none occur)

DERIVED_SPEED = (
    "gpsd's speed is derived from the position change since its previous report: the "
    "receiver sent no speed for this time (or sent it after gpsd had reported); we report "
    "only the receiver's own speed, not a difference of noisy, coarsely quantised fixes"
)
RELAY_LAG = (
    "B&G Zeus2 relays GLL labelled a second after the GGA with the same position; gpsd "
    "reports at the GSV before this second's RMC/VTG (5.4-6.0 kn) arrive, with GLL's "
    "position and a speed derived from two equal positions (0.000/0.291 m/s); we report "
    "RMC/VTG speed and the newest position labelled with this time (GGA)"
)
STALE_TIME = (
    "gpsd labels the no-fix report that follows a fix with the previous fix's time (it does "
    "not take time from an RMC with status V); at this time the receiver had a valid fix "
    "(RMC A, GGA quality >= 1)"
)
TELIT_ROLLOVER = (
    "Telit HE910 after the April 2019 GPS week rollover reports 22/08/99 (and year -1): "
    "gpsd keeps 1999-08-22, we add 1024 weeks and report 2019-04-07T00:02:31.420Z"
)
GLL_MILLISECONDS = (
    "GLL gives 12:08:27.523 where GGA and RMC of the same burst give 27.52 (same position); "
    "gpsd makes it a separate epoch, we merge times less than 10 ms apart into one epoch"
)
SURVEY_POSITION = (
    "gpsd replaces the fix with the Trimble $PERC,GPavp long-term averaged (survey) "
    "position, 18 m away; we report the navigation fix of GNS/GLL"
)


def _each_second(first: str, last: str) -> list[str]:
    t, end = datetime.fromisoformat(first), datetime.fromisoformat(last)
    out = []
    while t <= end:
        out.append(t.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        t += timedelta(seconds=1)
    return out


def _known() -> dict[tuple[str, str], str]:
    table: dict[tuple[str, str], str] = {}

    def add(log: str, times: list[str], reason: str) -> None:
        for t in times:
            table[(log, t)] = reason

    add("april6_2019.log", ["1999-08-22T00:02:31.420Z"], TELIT_ROLLOVER)
    add("magellan315.log", ["2005-03-13T12:08:27.523Z"], GLL_MILLISECONDS)
    add(
        "ericsson-gru04-02-70sec.log",
        ["2026-02-12T21:37:13.000Z", "2026-02-12T21:38:13.000Z"],
        SURVEY_POSITION,
    )
    add("bundg_zeus_9.log", _each_second("2018-08-20T09:48:17", "2018-08-20T09:48:54"), RELAY_LAG)
    add("bundg_zeus_9.log", ["2018-08-20T09:50:04.000Z"], DERIVED_SPEED)
    garmin48 = ["09", "11", "13", "15", "17", "33", "35"]
    add("garmin48.log", [f"2001-06-06T22:53:{s}.000Z" for s in garmin48], DERIVED_SPEED)
    humminbird = ["02", "08", "14", "18", "20", "24"]
    add("humminbird-M37.log", [f"2006-09-16T19:41:{s}.000Z" for s in humminbird], DERIVED_SPEED)
    add("mr-350p.log", _each_second("2012-07-04T05:11:35", "2012-07-04T05:11:46"), DERIVED_SPEED)
    tn204 = ["51", "53", "55"]
    add("tn204.log", [f"2002-10-26T23:01:{s}.000Z" for s in tn204], DERIVED_SPEED)
    add("tr737A+.log", ["2011-11-11T07:17:43.000Z"], DERIVED_SPEED)
    add("triton400.log", ["2013-04-01T03:01:30.000Z"], DERIVED_SPEED)
    add("ublox-lea-5h.log", ["2010-08-21T08:55:15.000Z"], DERIVED_SPEED)
    add("gp-320fw-2019-04-07-coldboot.log", ["2019-04-07T00:03:45.030Z"], STALE_TIME)
    add("meinberg-gps164.log", ["2023-12-18T22:10:14.000Z"], STALE_TIME)
    add("tomtom-mkII.log", ["2010-06-20T17:57:39.000Z"], STALE_TIME)
    add("ublox-lea-4h.log", ["2006-08-10T03:09:01.000Z"], STALE_TIME)
    add("unicore-um621.log", ["2024-06-09T00:07:05.000Z"], STALE_TIME)
    return table


KNOWN_DISAGREEMENTS = _known()


@dataclass
class LogScore:
    """One log's comparison: counts and the disagreements found."""

    name: str
    kind: str
    scored: int = 0  # gpsd epochs with time and mode >= 2
    agreed: int = 0
    known: list[str] = field(default_factory=list)  # times, documented gpsd errors
    failed: list[str] = field(default_factory=list)  # "time: why", unexplained
    nofix_checked: int = 0  # gpsd times with mode < 2
    nofix_known: list[str] = field(default_factory=list)  # of those, documented gpsd errors
    stale: list[str] = field(default_factory=list)  # known entries that now agree


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _mismatch(exp: dict[str, Any], fix: Fix | None) -> str | None:
    """Why our fix disagrees with gpsd's epoch (mode >= 2), or None."""
    if fix is None:
        return "no fix with this time"
    if not fix.has_position or fix.lat is None or fix.lon is None:
        return f"no position (mode {fix.mode.name})"
    if abs(fix.lat - exp["lat"]) > POSITION_TOLERANCE_DEG:
        return f"lat {fix.lat:.9f} vs {exp['lat']}"
    if abs(fix.lon - exp["lon"]) > POSITION_TOLERANCE_DEG:
        return f"lon {fix.lon:.9f} vs {exp['lon']}"
    for ours, theirs in ((fix.speed, exp.get("speed")), (fix.course, exp.get("track"))):
        if theirs is not None and (ours is None or abs(ours - theirs) > MOTION_TOLERANCE):
            which = "speed" if ours is fix.speed else "track"
            return f"{which} {ours} vs {theirs}"
    return None


def _score(name: str, kind: str, data: Path) -> LogScore:
    score = LogScore(name, kind)
    ours: dict[str, Fix] = {}
    for out in iter_file_fixes(data / "logs" / name, rollover_floor=ROLLOVER_FLOOR):
        if out.time is not None:
            ours[_iso(out.time)] = out  # the last fix for a time counts
    expected_path = data / "expected" / f"{name}.epochs.jsonl"
    for line in expected_path.read_text().splitlines():
        exp = json.loads(line)
        t = exp.get("time")
        if not t:
            continue
        fix = ours.get(t)
        if exp["mode"] >= 2:
            score.scored += 1
            why = _mismatch(exp, fix)
        else:
            score.nofix_checked += 1
            why = (
                f"gpsd mode {exp['mode']}, we have a position" if fix and fix.has_position else None
            )
        known = (name, t) in KNOWN_DISAGREEMENTS
        if why is None:
            score.agreed += exp["mode"] >= 2
            if known:
                score.stale.append(t)
        elif known:
            (score.known if exp["mode"] >= 2 else score.nofix_known).append(t)
        else:
            score.failed.append(f"{t}: {why}")
    return score


def _report(scores: list[LogScore], skipped: list[str]) -> str:
    lines = [
        f"{'log':34s} {'kind':12s} {'epochs':>6s} {'agree':>5s} {'known':>5s} {'fail':>4s}"
        f" | {'nofix':>5s} {'known':>5s}"
    ]
    for s in scores:
        lines.append(
            f"{s.name:34s} {s.kind:12s} {s.scored:6d} {s.agreed:5d} {len(s.known):5d}"
            f" {len(s.failed):4d} | {s.nofix_checked:5d} {len(s.nofix_known):5d}"
        )
        lines.extend(f"    FAIL {f}" for f in s.failed)
    total = sum(s.scored for s in scores)
    agreed = sum(s.agreed for s in scores)
    known = sum(len(s.known) for s in scores)
    nofix = sum(s.nofix_checked for s in scores)
    nofix_known = sum(len(s.nofix_known) for s in scores)
    lines.append(
        f"logs {len(scores)}, skipped {len(skipped)} ({', '.join(skipped) or 'none'}); "
        f"epochs with time and mode>=2: {total}; gpsd no-fix times checked: {nofix}, "
        f"of which {nofix_known} documented gpsd errors"
    )
    lines.append(f"agree with gpsd:                {agreed}/{total} = {agreed / total:.2%}")
    lines.append(f"documented gpsd errors (known): {known}/{total} = {known / total:.2%}")
    by_reason: dict[str, int] = {}
    for s in scores:
        for t in s.known + s.nofix_known:
            reason = KNOWN_DISAGREEMENTS[(s.name, t)]
            by_reason[reason] = by_reason.get(reason, 0) + 1
    lines.extend(f"  {n:3d} x {reason[:80]}..." for reason, n in by_reason.items())
    lines.append(
        f"agree or documented:            {agreed + known}/{total} = {(agreed + known) / total:.2%}"
    )
    return "\n".join(lines)


@pytest.mark.shared_data
def test_gpsd_agreement(shared_data: Path, record_property: Any, figures: list[str]) -> None:
    data = shared_data / "gpsd"
    with (data / "index.csv").open(newline="") as fh:
        index = list(csv.DictReader(fh))
    skipped = [row["file"] for row in index if row["kind"] in NON_NMEA_KINDS]
    scores = [_score(row["file"], row["kind"], data) for row in index if row["file"] not in skipped]
    report = _report(scores, skipped)
    print("\n" + report)
    figures.extend(
        "gpsd agreement: " + line
        for line in report.splitlines()
        if line.startswith(("agree", "documented", "logs "))
    )
    total = sum(s.scored for s in scores)
    agreed = sum(s.agreed for s in scores)
    known = sum(len(s.known) for s in scores)
    record_property("gpsd_epochs", total)
    record_property("gpsd_agree", agreed)
    record_property("gpsd_known_disagreements", known)
    record_property("gpsd_agreement", f"{agreed / total:.4f}")

    assert len(index) == 86
    assert total == EXPECTED_SCORED_EPOCHS
    stale = [f"{s.name} {t}" for s in scores for t in s.stale]
    assert not stale, f"known disagreements that now agree, remove them: {stale}"
    unexplained_nofix = [f for s in scores for f in s.failed if "we have a position" in f]
    assert not unexplained_nofix, unexplained_nofix
    assert (agreed + known) / total >= THRESHOLD, report


@pytest.mark.shared_data
def test_every_known_disagreement_is_in_the_expected_files(shared_data: Path) -> None:
    """The list names real gpsd epochs (a typo would otherwise excuse nothing, silently)."""
    times: dict[str, set[str]] = {}
    for log, _ in KNOWN_DISAGREEMENTS:
        if log not in times:
            path = shared_data / "gpsd" / "expected" / f"{log}.epochs.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            times[log] = {r["time"] for r in rows if r.get("time")}
    missing = [key for key in KNOWN_DISAGREEMENTS if key[1] not in times[key[0]]]
    assert not missing
