"""Property tests: whatever arrives, feed() never raises and every line is accounted for.

* arbitrary bytes, and real sentences mangled at random, never raise and keep
  ``lines == sentences + rejected()``;
* a log split into chunks at arbitrary points gives exactly the fixes and
  counters of the log fed whole;
* faults of each kind injected into a clean real stream are counted exactly,
  one counter per fault, and leave the fixes unchanged.
"""

from __future__ import annotations

import os
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.gps.fix import Fix, FixMode
from agent.gps.nmea import MAX_LINE, NmeaParser

# Real sentences: bn-9015.log (1 Hz, no fix then fix), nmea-rtk.log (10 Hz),
# telit-pls83-w.log (four constellations, NMEA 4.11), ericsson-gru04-02 (GNS/GLL).
CORPUS = """\
$GPGGA,171001.972,5200.8499,N,00421.7860,E,0,00,0.0,48.8,M,0.0,M,,0000*56
$GPGSA,A,1,,,,,,,,,,,,,0.0,0.0,0.0*30
$GPGSV,3,1,11,12,73,067,,30,67,271,39,14,44,267,34,09,28,136,*77
$GPGSV,3,2,11,29,27,200,,02,25,101,,27,23,137,,04,21,055,*77
$GPGSV,3,3,11,31,18,305,,32,06,331,,20,02,354,*40
$GPRMC,171001.972,V,5200.8499,N,00421.7860,E,000.0,000.0,120610,,,N*7D
$GPVTG,000.0,T,,M,000.0,N,000.0,K,N*02
$GPGGA,171002.972,5200.8519,N,00421.7812,E,1,08,1.0,8.8,M,44.8,M,,0000*5D
$GPGSA,A,3,14,30,09,29,02,27,04,31,,,,,2.3,1.0,2.0*35
$GPGSV,3,1,11,12,73,067,,30,67,271,39,14,44,267,33,09,28,136,26*74
$GPGSV,3,2,11,29,27,200,25,02,25,101,28,27,23,137,28,04,21,055,38*7B
$GPGSV,3,3,11,31,18,305,31,32,06,331,,20,02,354,*42
$GPRMC,171002.972,A,5200.8519,N,00421.7812,E,000.0,000.0,120610,,,A*6A
$GPVTG,000.0,T,,M,000.0,N,000.0,K,A*0D
$GPGGA,171003.972,5200.8519,N,00421.7819,E,1,08,1.0,8.8,M,44.8,M,,0000*57
$GPGSA,A,3,14,30,09,29,02,27,04,31,,,,,2.3,1.0,2.0*35
$GPGSV,3,1,11,12,73,067,,30,67,271,39,14,44,267,34,09,28,136,27*72
$GPGSV,3,2,11,29,27,200,27,02,25,101,28,27,23,137,26,04,21,055,38*77
$GPGSV,3,3,11,31,18,305,30,32,06,331,,20,02,354,*43
$GPRMC,171003.972,A,5200.8519,N,00421.7819,E,000.9,022.1,120610,,,A*68
$GPVTG,022.1,T,,M,000.9,N,001.8,K,A*0C
$GNGGA,132820.40,4134.49821522,N,09345.03375619,W,2,10,0.9,278.122,M,-31.442,M,7.4,0133*6E
$GNRMC,132820.40,A,4134.49821522,N,09345.03375619,W,2.627,91.414,180320,11.5985,E,D*05
$GNGGA,132820.50,4134.49819100,N,09345.03363938,W,2,10,0.9,278.071,M,-31.442,M,7.4,0133*6C
$GNRMC,132820.50,A,4134.49819100,N,09345.03363938,W,2.973,94.772,180320,11.5985,E,D*08
$GPGGA,132820.60,4134.49821229,N,09345.03351845,W,2,09,1.0,278.020,M,-31.442,M,7.6,0133*7E
$GPRMC,132820.60,A,4134.49821229,N,09345.03351845,W,3.252,92.308,180320,11.5985,E,D*1A
$GPGGA,043539.00,4333.190206,N,00127.618380,E,1,05,1.3,250.8,M,50.0,M,,*62
$GAGGA,043539.00,4333.190206,N,00127.618380,E,1,01,1.3,250.8,M,50.0,M,,*77
$GNGNS,043539.00,4333.190206,N,00127.618380,E,AAAAN,14,1.3,250.8,50.0,,,V*62
$GPVTG,,T,1.7,M,0.0,N,0.0,K,A*0B
$GPRMC,043539.00,A,4333.190206,N,00127.618380,E,0.0,,040925,1.7,W,A,V*7C
$GNGSA,A,2,02,08,10,23,27,,,,,,,,1.6,1.3,0.9,1*33
$GNGSA,A,2,65,66,73,81,82,,,,,,,,1.6,1.3,0.9,2*3B
$GLGSV,3,3,10,67,23,143,22,88,00,084,,1*73
$BDGSV,2,2,05,14,39,136,,4*4E
$GAGSV,4,4,13,31,41,192,,7*4C
$GPGSV,3,3,10,16,24,180,,30,00,300,,1*6D
$GNZDA,213713.000,12,02,2026,,*4A
$GNGNS,213713.000,4111.59903,N,11156.54809,W,AANN,13,0.93,01482.5,-016.5,,*53
$GNVTG,000.0,T,348.3,M,000.0,N,000.1,K,A*30
$GNGLL,4111.59903,N,11156.54809,W,213713.000,A,A*51
"""
LINES = [line.encode() for line in CORPUS.splitlines()]
STREAM = b"\r\n".join(LINES) + b"\r\n"
RMC_GGA = [line for line in LINES if line[3:6] in (b"RMC", b"GGA")]

# Logs from shared/data for the chunking property (noise, binary, 10 Hz, NMEA 4.11).
CHUNKED_LOGS = [
    "gp-320fw-2019-04-07-coldboot.log",
    "et-332.log",
    "nmea-rtk.log",
    "telit-pls83-w.log",
    "skytraq-PX1172RH_DS.log",
    "bundg_zeus_9.log",
]

# NMEA_FUZZ_EXAMPLES=5000 for a long run; the default keeps the suite fast.
FUZZ = settings(max_examples=int(os.environ.get("NMEA_FUZZ_EXAMPLES", "150")), deadline=None)


def run(chunks: list[bytes]) -> tuple[list[Fix], NmeaParser]:
    p = NmeaParser()
    fixes = [f for chunk in chunks for f in p.feed(chunk, 0.0)]
    return fixes + p.flush(0.0), p


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in pairwise(points)]


def checksum(body: bytes) -> bytes:
    cs = 0
    for b in body:
        cs ^= b
    return b"%02X" % cs


def assert_consistent(p: NmeaParser, fixes: list[Fix], fed: int) -> None:
    s = p.stats
    assert s.lines == s.sentences + s.rejected()
    assert s.bytes == fed
    assert 0 <= s.missing_checksum <= s.sentences
    for fix in fixes:
        assert isinstance(fix, Fix)
        if fix.mode < FixMode.FIX_2D:
            assert fix.lat is None and fix.lon is None and fix.speed is None


# -- never raises ---------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=20))
def test_arbitrary_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    fixes, p = run(split(data, cuts))
    assert_consistent(p, fixes, len(data))


@st.composite
def mangled_line(draw: st.DrawFn) -> bytes:
    """A real sentence with a few random edits: flips, cuts, inserts, deletes."""
    line = bytearray(draw(st.sampled_from(LINES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "field"]))
        at = draw(st.integers(min_value=0, max_value=max(len(line) - 1, 0)))
        if op == "flip" and line:
            line[at] = draw(st.integers(min_value=0, max_value=255))
        elif op == "cut":
            del line[at:]
        elif op == "insert":
            line[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and line:
            del line[at]
        elif op == "field":
            line[at:at] = draw(st.sampled_from([b",", b"*", b"$", b".", b"-", b"99999999"]))
    return bytes(line)


@FUZZ
@given(st.lists(mangled_line(), min_size=1, max_size=60), st.sampled_from([b"\r\n", b"\n", b"\r"]))
def test_mangled_real_sentences_never_raise(lines: list[bytes], end: bytes) -> None:
    data = end.join(lines) + end
    fixes, p = run([data])
    assert_consistent(p, fixes, len(data))


@FUZZ
@given(st.lists(mangled_line(), min_size=1, max_size=30))
def test_feed_line_never_raises_on_str_either(lines: list[bytes]) -> None:
    p = NmeaParser()
    for line in lines:
        p.feed_line(line.decode("latin-1"), 0.0)  # str with arbitrary code points < 256
        p.feed_line(line, 0.0)
    p.feed_line("$GPRMC,\udcff\u20ac,A*00", 0.0)  # lone surrogate, non-Latin text
    assert p.stats.lines == p.stats.sentences + p.stats.rejected()


# -- chunking does not matter ------------------------------------------------------------


@FUZZ
@given(st.lists(st.integers(min_value=0), max_size=80))
def test_any_chunking_of_a_valid_stream_gives_the_same_fixes(cuts: list[int]) -> None:
    whole, p_whole = run([STREAM])
    chunked, p_chunked = run(split(STREAM, cuts))
    assert chunked == whole
    assert p_chunked.stats == p_whole.stats
    assert len(whole) == 8 and p_whole.stats.rejected() == 0


@pytest.mark.shared_data
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CHUNKED_LOGS), st.lists(st.integers(min_value=0), max_size=200))
def test_any_chunking_of_real_logs_gives_the_same_fixes(
    shared_data: Path, name: str, cuts: list[int]
) -> None:
    data = (shared_data / "gpsd" / "logs" / name).read_bytes()
    whole, p_whole = run([data])
    chunked, p_chunked = run(split(data, cuts))
    assert chunked == whole
    assert p_chunked.stats == p_whole.stats


# -- injected faults are counted exactly -----------------------------------------------------

_NOISE = bytes(b for b in range(256) if b not in b"\r\n$")
_TEXT = bytes(b for b in range(0x20, 0x7F) if b not in b"$*")


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """Binary or wrong-baud noise: at least one byte that is not printable ASCII."""
    body = draw(
        st.binary(min_size=0, max_size=60).map(lambda b: bytes(_NOISE[x % len(_NOISE)] for x in b))
    )
    bad = draw(st.sampled_from([b"\x00", b"\x07", b"\x80", b"\xff", b"\x1b", b"\t"]))
    at = draw(st.integers(min_value=0, max_value=len(body)))
    return body[:at] + bad + body[at:]


@st.composite
def bad_checksum(draw: st.DrawFn) -> bytes:
    line = draw(st.sampled_from(LINES))
    body, cs = line[:-3], int(line[-2:], 16)
    wrong = draw(st.integers(min_value=0, max_value=255).filter(lambda c: c != cs))
    return body + b"*%02X" % wrong


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    line = draw(st.sampled_from(LINES))
    if draw(st.booleans()):
        return line[:-1]  # checksum cut to one digit
    fields = line.split(b",")
    return b",".join(fields[: draw(st.integers(min_value=1, max_value=3))])[:-1] or b"$"


@st.composite
def parse_error(draw: st.DrawFn) -> bytes:
    fields = draw(st.sampled_from(RMC_GGA))[1:-3].split(b",")
    fields[1] = draw(st.sampled_from([b"12x456", b"256161", b"1234", b"nan", b"-10000"]))
    body = b",".join(fields)
    return b"$" + body + b"*" + checksum(body)


@st.composite
def unknown_type(draw: st.DrawFn) -> bytes:
    header = draw(st.sampled_from([b"GPTXT", b"SDHDG", b"GPXTE", b"IIMWV", b"GPRMB", b"GPGBS"]))
    body = (
        header
        + b","
        + draw(st.binary(max_size=40).map(lambda b: bytes(_TEXT[x % len(_TEXT)] for x in b)))
    )
    return b"$" + body + b"*" + checksum(body)


@st.composite
def proprietary(draw: st.DrawFn) -> bytes:
    maker = draw(st.sampled_from([b"PGRME", b"PMTK010", b"PUBX", b"PSRF103", b"PERC", b"PTNLRBA"]))
    body = (
        maker
        + b","
        + draw(st.binary(max_size=40).map(lambda b: bytes(_TEXT[x % len(_TEXT)] for x in b)))
    )
    with_cs = draw(st.booleans())
    return b"$" + body + (b"*" + checksum(body) if with_cs else b"")


@st.composite
def oversized(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(min_value=MAX_LINE + 1, max_value=12_000))
    return draw(st.sampled_from([b"A", b"\xff", b",", b"0"])) * n


FAULT_KINDS = {
    "garbage": garbage(),
    "bad_checksum": bad_checksum(),
    "truncated": truncated(),
    "parse_error": parse_error(),
    "unknown_type": unknown_type(),
    "proprietary": proprietary(),
    "oversized": oversized(),
}


@st.composite
def faulty_stream(draw: st.DrawFn) -> tuple[bytes, dict[str, int], int]:
    """The clean stream with faults inserted between lines and benign edits made.

    Returns the bytes, the number of faults of each kind, and how many
    sentences lost their checksum (still accepted).
    """
    counts = dict.fromkeys(FAULT_KINDS, 0)
    lines: list[bytes] = []
    stripped = 0
    for line in LINES:
        edit = draw(st.sampled_from(["none", "none", "strip", "lower", "dollars"]))
        if edit == "strip":
            line, stripped = line[:-3], stripped + 1
        elif edit == "lower":
            line = line[:-2] + line[-2:].lower()
        elif edit == "dollars":
            line = b"$" * draw(st.integers(min_value=1, max_value=3)) + line
        lines.append(line)
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            kind = draw(st.sampled_from(sorted(FAULT_KINDS)))
            lines.append(draw(FAULT_KINDS[kind]))
            counts[kind] += 1
    return b"\r\n".join(lines) + b"\r\n", counts, stripped


@FUZZ
@given(faulty_stream(), st.lists(st.integers(min_value=0), max_size=30))
def test_injected_faults_are_counted_exactly(
    stream: tuple[bytes, dict[str, int], int], cuts: list[int]
) -> None:
    data, counts, stripped = stream
    clean_fixes, clean = run([STREAM])
    fixes, p = run(split(data, cuts))
    assert fixes == clean_fixes
    got = p.stats.as_dict()
    assert {kind: got[kind] for kind in counts} == counts
    assert p.stats.sentences == clean.stats.sentences
    assert p.stats.missing_checksum == stripped
    assert p.stats.lines == clean.stats.lines + sum(counts.values())
