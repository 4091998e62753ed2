"""NMEA parser and epoch assembler, on real sentences taken from the GPSD logs.

Each block of sentences below is copied from ``shared/data/gpsd/logs`` (the
log is named); the few synthetic ones (midnight, faults) are real sentences
with a field changed and the checksum recomputed, and say so.
"""

from __future__ import annotations

import time
import tracemalloc
from datetime import UTC, date, datetime, timedelta

import pytest

from agent.gps.epoch import KNOTS_TO_MPS, correct_rollover
from agent.gps.fix import Fix, FixMode
from agent.gps.nmea import MAX_LINE, NmeaParser

# bn-9015.log (Bluenext BN-9015, SkyTraq Venus 6, 1 Hz): two no-fix epochs, then fixes.
BN9015 = """\
$GPGGA,171000.972,5200.8499,N,00421.7860,E,0,00,0.0,48.8,M,0.0,M,,0000*57
$GPGSA,A,1,,,,,,,,,,,,,0.0,0.0,0.0*30
$GPGSV,3,1,11,12,73,067,,30,67,271,39,14,44,267,34,09,28,136,*77
$GPGSV,3,2,11,29,27,200,,02,25,101,,27,23,137,,04,21,055,*77
$GPGSV,3,3,11,31,18,305,,32,06,331,,20,02,354,*40
$GPRMC,171000.972,V,5200.8499,N,00421.7860,E,000.0,000.0,120610,,,N*7C
$GPVTG,000.0,T,,M,000.0,N,000.0,K,N*02
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
"""

# nmea-rtk.log (Trimble, RTK, 10 Hz); the talker switches from GN to GP mid-stream.
RTK_10HZ = """\
$GNGGA,132820.00,4134.49802199,N,09345.03419022,W,2,10,0.9,278.254,M,-31.442,M,7.0,0133*6A
$GNRMC,132820.00,A,4134.49802199,N,09345.03419022,W,1.114,127.194,180320,11.5985,E,D*32
$GNGGA,132820.10,4134.49800566,N,09345.03411940,W,2,09,0.9,278.255,M,-31.442,M,7.0,0133*61
$GNRMC,132820.10,A,4134.49800566,N,09345.03411940,W,1.447,118.806,180320,11.5985,E,D*3D
$GNGGA,132820.20,4134.49807884,N,09345.03400297,W,2,10,0.9,278.230,M,-31.442,M,7.2,0133*6C
$GNRMC,132820.20,A,4134.49807884,N,09345.03400297,W,1.870,113.057,180320,11.5985,E,D*36
$GNGGA,132820.30,4134.49808679,N,09345.03390744,W,2,10,0.9,278.188,M,-31.442,M,7.2,0133*6B
$GNRMC,132820.30,A,4134.49808679,N,09345.03390744,W,2.194,102.985,180320,11.5985,E,D*37
$GNGGA,132820.40,4134.49821522,N,09345.03375619,W,2,10,0.9,278.122,M,-31.442,M,7.4,0133*6E
$GNRMC,132820.40,A,4134.49821522,N,09345.03375619,W,2.627,91.414,180320,11.5985,E,D*05
$GNGGA,132820.50,4134.49819100,N,09345.03363938,W,2,10,0.9,278.071,M,-31.442,M,7.4,0133*6C
$GNRMC,132820.50,A,4134.49819100,N,09345.03363938,W,2.973,94.772,180320,11.5985,E,D*08
$GPGGA,132820.60,4134.49821229,N,09345.03351845,W,2,09,1.0,278.020,M,-31.442,M,7.6,0133*7E
$GPRMC,132820.60,A,4134.49821229,N,09345.03351845,W,3.252,92.308,180320,11.5985,E,D*1A
$GPGGA,132820.70,4134.49822493,N,09345.03347183,W,2,09,1.0,277.995,M,-31.442,M,7.6,0133*77
$GPRMC,132820.70,A,4134.49822493,N,09345.03347183,W,3.019,89.298,180320,11.5985,E,D*14
$GPGGA,132820.80,4134.49824549,N,09345.03341957,W,2,09,1.0,278.029,M,-31.442,M,7.8,0133*70
$GPRMC,132820.80,A,4134.49824549,N,09345.03341957,W,2.770,87.163,180320,11.5985,E,D*1C
$GPGGA,132820.90,4134.49825089,N,09345.03336021,W,2,09,1.0,278.001,M,-31.442,M,7.8,0133*7B
$GPRMC,132820.90,A,4134.49825089,N,09345.03336021,W,2.537,85.520,180320,11.5985,E,D*1D
$GPGGA,132821.00,4134.49827211,N,09345.03332539,W,2,09,1.0,278.067,M,-31.442,M,8.0,0133*7D
$GPRMC,132821.00,A,4134.49827211,N,09345.03332539,W,2.219,82.467,180320,11.5985,E,D*12
"""

# telit-pls83-w.log (Telit PLS83-W): GPS + Galileo + GLONASS + BeiDou, NMEA 4.11.
TELIT_MULTI = """\
$GPGGA,043539.00,4333.190206,N,00127.618380,E,1,05,1.3,250.8,M,50.0,M,,*62
$GAGGA,043539.00,4333.190206,N,00127.618380,E,1,01,1.3,250.8,M,50.0,M,,*77
$GNGNS,043539.00,4333.190206,N,00127.618380,E,AAAAN,14,1.3,250.8,50.0,,,V*62
$GPVTG,,T,1.7,M,0.0,N,0.0,K,A*0B
$GAVTG,,T,1.7,M,0.0,N,0.0,K,A*1A
$GPRMC,043539.00,A,4333.190206,N,00127.618380,E,0.0,,040925,1.7,W,A,V*7C
$GARMC,043539.00,A,4333.190206,N,00127.618380,E,0.0,,040925,1.7,W,A,V*6D
$GNGSA,A,2,02,08,10,23,27,,,,,,,,1.6,1.3,0.9,1*33
$GNGSA,A,2,65,66,73,81,82,,,,,,,,1.6,1.3,0.9,2*3B
$GNGSA,A,2,33,,,,,,,,,,,,1.6,1.3,0.9,3*3E
$GNGSA,A,2,208,211,213,,,,,,,,,,1.6,1.3,0.9,4*01
$GNGSA,A,2,,,,,,,,,,,,,1.6,1.3,0.9,5*38
$GLGSV,3,1,10,66,40,075,48,82,56,327,48,73,22,320,34,80,37,257,18,1*75
$GLGSV,3,2,10,79,12,205,20,65,16,026,43,83,16,281,17,81,45,054,46,1*7D
$GLGSV,3,3,10,67,23,143,22,88,00,084,,1*73
$BDGSV,2,1,05,08,09,030,39,11,40,081,42,13,17,036,43,21,,,49,4*4D
$BDGSV,2,2,05,14,39,136,,4*4E
$GAGSV,4,1,13,33,53,047,47,07,08,039,,10,36,258,,11,10,251,,7*7B
$GAGSV,4,2,13,12,60,272,,16,33,306,,19,04,133,,23,01,161,,7*7C
$GAGSV,4,3,13,24,51,278,,25,13,320,,26,06,063,,29,14,090,,7*7D
$GAGSV,4,4,13,31,41,192,,7*4C
$GPGSV,3,1,10,02,51,278,26,07,00,274,18,08,77,310,32,10,52,060,50,1*69
$GPGSV,3,2,10,14,,,30,23,13,040,43,27,62,118,24,32,17,111,20,1*59
$GPGSV,3,3,10,16,24,180,,30,00,300,,1*6D
$GPGGA,043540.00,4333.190199,N,00127.618384,E,1,05,1.3,250.8,M,50.0,M,,*6D
"""

# april6_2019.log (Telit HE910 just after the April 2019 GPS week rollover).
TELIT_ROLLOVER = """\
$GPRMC,,V,,,,,,,,,,N*53
$GPRMC,000231.099,A,4829.0005,N,00022.0015,E,0.15,212.28,2208-1,,,A*73
$GPRMC,000231.42,A,4829.0005,N,00022.0016,E,0.16,212.28,220899,,,A*59
"""

# magellan315.log: GLL carries milliseconds, GGA and RMC centiseconds, for one epoch.
MAGELLAN = """\
$GPGLL,3908.8199,N,00023.0832,W,120824.758,A*22
$GPGGA,120824.76,3908.8199,N,00023.0832,W,1,06,2.1,00176,M,,,,*39
$GPRMC,120824.76,A,3908.8199,N,00023.0832,W,00.0,000.0,130305,01.,W*62
$GPGSA,A,3,19,15,03,18,22,11,,,,,,,3.5,2.1,2.7*34
$GPGLL,3908.8200,N,00023.0832,W,120827.523,A*2C
"""

# rx210.log: a GSA of the previous (no-fix) epoch trails after its GGA.
RX210 = """\
$GNRMC,184101.00,V,,,,,,,030416,,,N*6E
$GNGGA,184101.00,,,,,0,04,28.64,,,,,,*79
$GNGSA,A,1,31,21,,,,,,,,,,,53.32,28.64,44.97*2E
$GNGSA,A,1,75,86,,,,,,,,,,,53.32,28.64,44.97*23
$GNRMC,184102.00,A,5000.14318,N,00838.63715,E,0.419,,030416,,,A*63
$GNGGA,184102.00,5000.14318,N,00838.63715,E,1,05,3.62,159.6,M,47.6,M,,*4F
$GNRMC,184103.00,A,5000.14112,N,00838.63658,E,0.424,,030416,,,A*6C
"""

# hemi.log (Hemisphere): quality 1 with zero satellites while acquiring, then a real fix.
HEMI = """\
$GPGGA,194056.50,4221.8236184,N,07101.9416602,W,1,00,3.3,11.389,M,-33.057,M,,*67
$GPVTG,74.45,T,89.09,M,0.00,N,0.00,K,A*29
$GPHDT,,T*1B
$GPGGA,194057.00,4221.8236070,N,07101.9417726,W,1,00,3.3,11.706,M,-33.057,M,,*6C
$GPVTG,74.45,T,89.09,M,0.00,N,0.00,K,A*29
$GPZDA,194057.00,07,09,2018,00,00*6D
$GPHDT,,T*1B
$GPGGA,194057.50,4221.8237090,N,07101.9439268,W,1,04,1.4,7.671,M,-33.057,M,,*52
$GPVTG,97.75,T,112.39,M,0.04,N,0.07,K,A*14
$GPHDT,,T*1B
$GPGGA,194058.00,4221.8236441,N,07101.9438734,W,1,04,1.4,6.786,M,-33.057,M,,*54
"""

# ericsson-gru04-02-70sec.log (ST Teseo III): GNS + GLL only, proprietary PERC/PTNL around.
ERICSSON = """\
$GNZDA,213712.000,12,02,2026,,*4B
$GNGNS,213712.000,4111.59903,N,11156.54809,W,AANN,13,0.93,01482.5,-016.5,,*52
$GNVTG,000.0,T,348.3,M,000.0,N,000.1,K,A*30
$GNGLL,4111.59903,N,11156.54809,W,213712.000,A,A*50
$PTNLRBA,1,0*56
$PERC,GPppr,423451,02405,00050,12,0,0*4D
$GNZDA,213713.000,12,02,2026,,*4A
"""


def nmea(body: str) -> str:
    """A sentence with its checksum (for the few synthetic lines)."""
    cs = 0
    for b in body.encode("ascii"):
        cs ^= b
    return f"${body}*{cs:02X}"


def run(text: str, floor: date | None = None, mono: float = 0.0) -> tuple[list[Fix], NmeaParser]:
    """Feed ``text`` in one piece, flush, and return all fixes and the parser."""
    p = NmeaParser(rollover_floor=floor)
    fixes = p.feed(text.replace("\n", "\r\n").encode(), mono)
    fixes += p.flush(mono)
    return fixes, p


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


# -- one epoch, all fields ------------------------------------------------------


def test_fix_epoch_carries_every_field() -> None:
    fixes, p = run(BN9015)
    last = fixes[-1]
    assert last.time == utc("2010-06-12T17:10:03.972")
    assert last.mode is FixMode.FIX_3D
    assert last.lat == pytest.approx(52 + 0.8519 / 60, abs=1e-9)
    assert last.lon == pytest.approx(4 + 21.7819 / 60, abs=1e-9)
    assert last.alt_msl == 8.8
    assert last.geoid_sep == 44.8
    assert last.alt_hae == pytest.approx(53.6)
    assert last.speed == pytest.approx(0.9 * KNOTS_TO_MPS)
    assert last.speed == pytest.approx(0.463, abs=1e-3)  # gpsd's figure
    assert last.course == 22.1
    assert last.quality == 1
    assert last.sats_used == 8
    assert last.sats_in_view == 11
    assert (last.hdop, last.pdop, last.vdop) == (1.0, 2.3, 2.0)
    assert p.stats.sentences == 28 and p.stats.rejected() == 0


def test_no_fix_epoch_has_no_position_even_if_sentences_carry_one() -> None:
    # RMC V, GGA quality 0, GSA 1 -- and a stale position in the RMC and GGA.
    fixes, _ = run(BN9015)
    first = fixes[0]
    assert first.time == utc("2010-06-12T17:10:00.972")
    assert first.mode is FixMode.NO_FIX
    assert (first.lat, first.lon, first.speed, first.course, first.alt_msl) == (None,) * 5
    assert not first.has_position
    assert first.quality == 0 and first.sats_used == 0 and first.sats_in_view == 11


def test_one_fix_per_epoch_in_order() -> None:
    fixes, _ = run(BN9015)
    assert [f.time for f in fixes] == [utc(f"2010-06-12T17:10:0{s}.972") for s in range(4)]
    assert [f.mode for f in fixes] == [FixMode.NO_FIX] * 2 + [FixMode.FIX_3D] * 2


# -- latency: cycle ender ---------------------------------------------------------


def test_cycle_ender_is_learned_and_fix_leaves_with_the_last_sentence() -> None:
    p = NmeaParser()
    emitted_by: list[str] = []
    for line in BN9015.splitlines():
        for _ in p.feed_line(line, 0.0):
            emitted_by.append(line[:6])
    assert p.cycle_ender == "GPVTG#1"
    # Epochs 1 and 2 go out with the next epoch's first sentence (ender not yet
    # known); from then on with their own closing VTG, no cycle of delay.
    assert emitted_by == ["$GPGGA", "$GPGGA", "$GPVTG", "$GPVTG"]


def test_before_learning_fix_leaves_no_later_than_next_epochs_first_sentence() -> None:
    p = NmeaParser()
    lines = RTK_10HZ.splitlines()
    assert p.feed_line(lines[0], 1.0) == [] and p.feed_line(lines[1], 2.0) == []
    out = p.feed_line(lines[2], 3.0)  # first sentence of the next epoch
    assert [f.time for f in out] == [utc("2020-03-18T13:28:20.00")]
    assert out[0].mono == 3.0


def test_flush_emits_the_pending_epoch() -> None:
    p = NmeaParser()
    assert p.feed_line(RTK_10HZ.splitlines()[0], 0.0) == []
    (fix,) = p.flush(5.0)
    assert fix.time is None  # a GGA alone has no date
    assert fix.lat == pytest.approx(41.574967033, abs=1e-9) and fix.mono == 5.0
    assert p.flush(6.0) == []


# -- rates and constellations -------------------------------------------------------


def test_10hz_keeps_subsecond_times_exactly() -> None:
    fixes, _ = run(RTK_10HZ)
    assert [f.time for f in fixes] == [
        utc("2020-03-18T13:28:20") + timedelta(milliseconds=100 * i) for i in range(11)
    ]
    assert fixes[6].speed == pytest.approx(3.252 * KNOTS_TO_MPS)  # after the GN->GP switch
    assert all(f.mode is FixMode.FIX_3D and f.quality == 2 for f in fixes)


def test_5hz_receiver() -> None:
    lines = RTK_10HZ.splitlines()
    five_hz = [ln for i, ln in enumerate(lines) if (i // 2) % 2 == 0]  # .0 .2 .4 .6 .8 .0
    fixes, _ = run("\n".join(five_hz) + "\n")
    assert [f.time for f in fixes] == [
        utc("2020-03-18T13:28:20") + timedelta(milliseconds=200 * i) for i in range(6)
    ]


def test_multi_constellation_epoch() -> None:
    fixes, p = run(TELIT_MULTI)
    fix = fixes[0]
    assert fix.time == utc("2025-09-04T04:35:39")
    assert fix.lat == pytest.approx(43 + 33.190206 / 60, abs=1e-9)
    assert fix.lon == pytest.approx(1 + 27.618380 / 60, abs=1e-9)
    assert fix.mode is FixMode.FIX_2D  # the GSAs say 2D, whatever GGA's altitude suggests
    assert fix.sats_used == 14  # GNGNS and the five GSAs; GPGGA says 5, GAGGA 1
    assert fix.sats_in_view == 10 + 5 + 13 + 10  # GLONASS, BeiDou, Galileo, GPS
    assert (fix.hdop, fix.pdop, fix.vdop) == (1.3, 1.6, 0.9)
    assert fix.speed == 0.0 and fix.course is None
    assert p.cycle_ender is None and p.stats.rejected() == 0


def test_gns_and_gll_receiver_with_proprietary_noise() -> None:
    fixes, p = run(ERICSSON)
    (fix,) = fixes
    assert fix.time == utc("2026-02-12T21:37:12")
    assert fix.mode is FixMode.FIX_3D
    assert fix.lat == pytest.approx(41 + 11.59903 / 60, abs=1e-9)
    assert fix.lon == pytest.approx(-(111 + 56.54809 / 60), abs=1e-9)
    assert (fix.alt_msl, fix.geoid_sep, fix.sats_used) == (1482.5, -16.5, 13)
    assert p.stats.proprietary == 2


def test_times_a_few_ms_apart_are_one_epoch() -> None:
    fixes, _ = run(MAGELLAN)
    assert [f.time for f in fixes] == [
        utc("2005-03-13T12:08:24.760"),
        utc("2005-03-13T12:08:27.523"),
    ]
    assert fixes[0].mode is FixMode.FIX_3D and fixes[0].alt_msl == 176.0


# -- which sentence decides -----------------------------------------------------------


def test_trailing_gsa_of_previous_epoch_does_not_void_the_fix() -> None:
    fixes, _ = run(RX210)
    assert [f.mode for f in fixes] == [FixMode.NO_FIX, FixMode.FIX_3D, FixMode.FIX_2D]
    assert fixes[1].lat == pytest.approx(50 + 0.14318 / 60, abs=1e-9)


def test_quality_one_with_zero_satellites_is_not_a_fix_on_its_own() -> None:
    fixes, _ = run(HEMI)
    assert [f.mode for f in fixes] == [FixMode.UNKNOWN] * 2 + [FixMode.FIX_3D] * 2
    assert fixes[1].time == utc("2018-09-07T19:40:57")  # date from ZDA
    assert fixes[2].time == utc("2018-09-07T19:40:57.5")  # date carried
    assert not fixes[0].has_position and fixes[2].has_position


def test_zero_satellite_gga_counts_when_other_sentences_confirm() -> None:
    # furuno_gl_ga.log: Furuno's GNGGA always says 00 satellites.
    text = """\
$GNRMC,120213.000,A,5957.0062,N,01100.6429,E,0.00,0.00,310722,,,D,V*0A
$GNGNS,120213.000,5957.0062,N,01100.6429,E,NDD,11,1.3,168.9,39.5,,,V*57
$GNGGA,120213.000,5957.0062,N,01100.6429,E,2,00,1.3,168.9,M,39.5,M,,*4A
$GNGSA,A,3,68,69,70,78,84,85,,,,,,,1.5,1.3,1.0,2*3D
$GNGSA,A,3,04,05,09,11,36,,,,,,,,1.5,1.3,1.0,3*39
$GPZDA,120213.000,31,07,2022,+00,00*79
"""
    (fix,), _ = run(text)
    assert fix.mode is FixMode.FIX_3D and fix.sats_used == 11 and fix.quality == 2
    assert fix.lat == pytest.approx(59 + 57.0062 / 60, abs=1e-9)


# -- dates -----------------------------------------------------------------------------


def test_week_rollover_telit_year_99_and_minus_1() -> None:
    fixes, _ = run(TELIT_ROLLOVER, floor=date(2000, 1, 1))
    assert [f.time for f in fixes] == [
        None,  # no time at all yet
        utc("2019-04-07T00:02:31.099"),  # "2208-1": year -1
        utc("2019-04-07T00:02:31.420"),  # "220899"
    ]
    assert fixes[0].mode is FixMode.NO_FIX and fixes[2].mode is FixMode.FIX_2D


def test_without_a_floor_dates_are_taken_as_received() -> None:
    fixes, _ = run(TELIT_ROLLOVER)
    assert fixes[2].time == utc("1999-08-22T00:02:31.420")


@pytest.mark.parametrize(
    ("received", "floor", "corrected"),
    [
        (date(1999, 8, 22), date(2000, 1, 1), date(2019, 4, 7)),
        (date(1980, 1, 5), date(2000, 1, 1), date(2019, 4, 6)),  # two rollovers
        (date(2019, 4, 6), date(2019, 4, 7), date(2038, 11, 20)),
        (date(2019, 4, 7), date(2019, 4, 7), date(2019, 4, 7)),  # on the floor: trusted
        (date(2001, 6, 6), date(2000, 1, 1), date(2001, 6, 6)),
        (date(2001, 6, 6), None, date(2001, 6, 6)),
    ],
)
def test_rollover_floor(received: date, floor: date | None, corrected: date) -> None:
    assert correct_rollover(received, floor) == corrected


def test_date_carries_over_midnight_for_epochs_without_rmc() -> None:
    # bu353s4.log sentences moved to midnight; the receiver sends RMC only now and then.
    gga = "GPGGA,{},3747.0877,S,17518.8941,E,1,07,1.1,60.2,M,23.7,M,,0000"
    text = "\n".join(
        [
            nmea(gga.format("235959.000")),
            nmea("GPRMC,235959.000,A,3747.0877,S,17518.8941,E,0.00,181.39,311214,,,A"),
            nmea(gga.format("235959.500")),
            nmea(gga.format("000000.000")),
            nmea(gga.format("000000.500")),
        ]
    )
    fixes, _ = run(text + "\n")
    assert [f.time for f in fixes] == [
        utc("2014-12-31T23:59:59"),
        utc("2014-12-31T23:59:59.5"),
        utc("2015-01-01T00:00:00"),
        utc("2015-01-01T00:00:00.5"),
    ]


def test_an_ender_proven_wrong_is_not_learned_again() -> None:
    # RMC every third second: GGA closes two cycles in a row and is learned, then
    # an RMC follows it.  That epoch goes out again, complete; GGA is never
    # trusted as the ender again, so no further repeats.
    gga = "GPGGA,{},3747.0877,S,17518.8941,E,1,07,1.1,60.2,M,23.7,M,,0000"
    rmc = "GPRMC,{},A,3747.0877,S,17518.8941,E,0.00,181.39,311214,,,A"
    lines = []
    for s in range(9):
        t = f"0000{s:02d}.000"
        lines.append(nmea(gga.format(t)))
        if s % 3 == 0:
            lines.append(nmea(rmc.format(t)))
    fixes, p = run("\n".join(lines) + "\n")
    seconds = [f.time.second for f in fixes if f.time is not None]
    assert seconds == [0, 1, 2, 3, 3, 4, 5, 6, 7, 8]
    assert fixes[3].speed is None and fixes[4].speed == 0.0  # the repeat is the complete one
    assert p.cycle_ender is None


def test_late_zda_across_midnight_gives_the_epochs_own_date() -> None:
    # ac12.log sends ZDA two seconds after its epoch; here that crosses midnight.
    text = "\n".join(
        [
            nmea("GPGGA,235959.00,2037.72792,N,08704.08478,W,1,04,1.7,-30.40,M,-13.9,M,,"),
            nmea("GPZDA,000001.00,24,12,2007,00,00"),
        ]
    )
    (fix,), _ = run(text + "\n")
    assert fix.time == utc("2007-12-23T23:59:59")


def test_leap_second_stays_distinct() -> None:
    text = "\n".join(
        nmea(f"GPRMC,{t},A,3747.0877,S,17518.8941,E,0.00,181.39,{d},,,A")
        for t, d in (("235959.000", "311216"), ("235960.000", "311216"), ("000000.000", "010117"))
    )
    fixes, _ = run(text + "\n")
    assert [f.time for f in fixes] == [
        utc("2016-12-31T23:59:59"),
        utc("2016-12-31T23:59:59.999999"),
        utc("2017-01-01T00:00:00"),
    ]


# -- a wrong ender guess is repaired --------------------------------------------------------


def test_sentence_after_a_wrongly_learned_ender_reopens_the_epoch() -> None:
    # gp-320fw-2019-04-07-coldboot.log: garbled cycles taught GSV as the ender;
    # then GLL and ZDA follow the GSV.  The epoch goes out again, complete.
    cycle = [
        "GPRMC,{},V,0000.0000,N,00000.0000,E,,,220899,,,N",
        "GPGGA,{},0000.0000,N,00000.0000,E,0,00,0.0,,M,,M,,",
        "GPGSV,3,3,12,20,09,090,40,06,08,270,,16,00,090,,31,26,090,40",
    ]
    times = ("000428.00", "000429.00", "000430.00")
    text = "\n".join(nmea(body.format(t)) for t in times for body in cycle)
    p = NmeaParser()
    fixes = p.feed((text + "\n").encode(), 0.0)
    assert p.cycle_ender == "GPGSV#1"
    late = nmea("GPGLL,0000.0000,N,00000.0000,E,000430.00,V,N")
    assert p.feed_line(late, 1.0) == []
    assert p.cycle_ender is None
    again = p.feed_line(nmea("GPRMC,000431.00,V,0000.0000,N,00000.0000,E,,,220899,,,N"), 2.0)
    assert [f.time for f in again] == [fixes[-1].time]
    assert again[0].mode is FixMode.NO_FIX and again[0].sats_in_view == 12


# -- faults: each counted exactly once, none changes the fixes --------------------------------

FAULTS: dict[str, list[bytes]] = {
    "garbage": [
        b"\xa0\xa2\x00\x02\x84\x00\x00\x84\xb0\xb3",  # a SiRF binary frame
        b"1.3,1.4*3\x1b[H\x1b[J",  # et-332.log: a terminal's escape codes in a cut line
        b"\x00\x00\x00",  # NUL padding
    ],
    # checksum digit changed
    "bad_checksum": [
        b"$GPGSA,A,3,14,30,09,29,02,27,04,31,,,,,2.3,1.0,2.0*36",
        b"$GPVTG,022.1,T,,M,000.9,N,001.8,K,A*0D",
        b"$GPGSA,A,1,,,,,,,,,,,,,,,*1E0,*4E",  # gp-320fw coldboot: two lines spliced
    ],
    "truncated": [
        b"$GPGGA,012530.562,4131.7353,N,09336.8150,W,0,00,50.",  # holux-gm-210.log
        b"$GPGSV,3,1,11,01,78,221,47,03,09,042,00,04,05,242,00,06,04,149,00*7",  # garmin48.log
        b"$GP",  # gp-320fw coldboot
    ],
    "parse_error": [
        nmea("GPRMC,171003.972,A,5200.8519,N,00421.7819,E,x.039,022.1,120610,,,A").encode(),
        nmea("GPGGA,17a003.972,5200.8519,N,00421.7819,E,1,08,1.0,8.8,M,44.8,M,,0000").encode(),
        nmea("GPGSA,A,7,14,30,09,29,02,27,04,31,,,,,2.3,1.0,2.0").encode(),
    ],
    "unknown_type": [b"$GPXTE,,,,,N,N*5E", b"$SDHDG,234.3,,,1.3,E*31", b"$STI,IC,error=4"],
    "proprietary": [b"$PGRME,9.1,M,15.0,M,12.0,M*21", b"$PMTK010,001*2E", b"$POLYN,EPH,0,00000000"],
    "oversized": [b"A" * 10_000, b"\xff" * (MAX_LINE + 1), b"9" * (MAX_LINE + 1)],
}


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_each_fault_kind_is_counted_exactly(kind: str) -> None:
    clean_fixes, clean = run(BN9015)
    lines = BN9015.splitlines()
    noisy = []
    faults = iter(FAULTS[kind])
    for i, line in enumerate(lines):  # a fault after every 9th line, 3 in all
        noisy.append(line.encode())
        if i % 9 == 4:
            noisy.append(next(faults))
    p = NmeaParser()
    fixes = p.feed(b"\r\n".join(noisy) + b"\r\n", 0.0) + p.flush(0.0)
    assert fixes == clean_fixes
    expected = clean.stats.as_dict() | {"lines": clean.stats.lines + 3, kind: 3}
    expected["bytes"] = p.stats.bytes
    assert p.stats.as_dict() == expected
    assert p.stats.rejected() == 3


def test_faults_that_are_accepted_change_counts_not_fixes() -> None:
    # hp58534a.log has no checksums at all; bn-9015 with lower-case hex and "$$".
    clean_fixes, _ = run(BN9015)
    lines = BN9015.splitlines()
    lines[0] = lines[0].rsplit("*", 1)[0]  # missing checksum, complete sentence
    lines[5] = lines[5].replace("*7C", "*7c")  # lower-case hex
    lines[7] = "$$" + lines[7][1:]  # doubled start
    lines[8] = "\x00\x00\x00" + lines[8]  # NUL padding before a sentence
    fixes, p = run("\n".join(lines) + "\n")
    assert fixes == clean_fixes
    assert p.stats.missing_checksum == 1
    assert p.stats.sentences == 28
    assert p.stats.garbage == 1  # the NUL run alone
    assert p.stats.lines == 29


def test_sentences_glued_without_newline_are_both_used() -> None:
    # gp-320fw-2019-04-07-coldboot.log
    p = NmeaParser()
    gsa = b"$GPGSA,A,1,,,,,,,,,,,,,,,*1E"
    rmc = b"$GPRMC,235949.00,V,0000.0000,N,00000.0000,E,,,161206,,,N*44"
    p.feed(gsa + rmc + b"\r\n", 0.0)
    (fix,) = p.flush(0.0)
    assert p.stats.sentences == 2 and p.stats.rejected() == 0
    assert fix.time == utc("2006-12-16T23:59:49") and fix.mode is FixMode.NO_FIX


def test_noise_glued_before_a_sentence_is_garbage_and_the_sentence_is_kept() -> None:
    # tomtom-mkII.log
    p = NmeaParser()
    p.feed(b"r$GPRMC,175804,V,5125.8697,N,00524.2288,E,0.0000,0.000,200610,,*30\r\n", 0.0)
    assert (p.stats.garbage, p.stats.sentences) == (1, 1)
    assert p.flush(0.0)[0].time == utc("2010-06-20T17:58:04")


def test_nul_padded_cut_line_is_garbage() -> None:
    # gp-320fw-2019-04-07-coldboot.log
    p = NmeaParser()
    p.feed(b"$GPRMC,000346.03,A,4808" + b"\x00" * 12 + b" " * 18 + b"\r\n", 0.0)
    assert p.stats.as_dict() | {"bytes": 0} == {
        **dict.fromkeys(p.stats.as_dict(), 0),
        "lines": 1,
        "garbage": 1,
    }


def test_missing_checksum_is_accepted_only_when_complete() -> None:
    # hp58534a.log: the HP 58534A sends no checksums
    p = NmeaParser()
    p.feed_line("$GPZDA,222449,25,10,2010,+00,00", 0.0)
    p.feed_line("$GPGGA,222449,3349.0337,S,01843.9282,E,1,07,02.31,000115.4,M,0033.3,M,,", 0.0)
    p.feed_line("$GPGGA,222450,3349.0337,S,01843.9282,E,1", 0.0)  # cut short
    assert (p.stats.sentences, p.stats.missing_checksum, p.stats.truncated) == (2, 2, 1)
    (fix,) = p.flush(0.0)
    assert fix.time == utc("2010-10-25T22:24:49") and fix.alt_msl == 115.4


def test_pynmea2_would_hand_back_a_string_here_we_count_a_parse_error() -> None:
    import pynmea2

    line = FAULTS["parse_error"][0].decode()
    assert pynmea2.parse(line).spd_over_grnd == "x.039"  # the trap
    p = NmeaParser()
    assert p.feed_line(line, 0.0) == [] and p.stats.parse_error == 1


def test_ten_kilobytes_without_newline_is_one_oversized_line() -> None:
    p = NmeaParser()
    for _ in range(10):
        assert p.feed(b"x" * 1000, 0.0) == []  # no newline yet: nothing counted
    assert p.stats.lines == 0
    p.feed(b"\r\n" + BN9015.splitlines()[0].encode() + b"\r\n", 0.0)
    assert (p.stats.oversized, p.stats.sentences, p.stats.lines) == (1, 1, 2)
    assert p.stats.bytes == 10_000 + 2 + len(BN9015.splitlines()[0]) + 2


def test_untimed_sentences_alone_make_no_fix_and_do_not_pile_up() -> None:
    # A receiver configured to send only GSV: 20 000 of them, then one real epoch.
    gsv = BN9015.splitlines()[2].encode() + b"\r\n"
    p = NmeaParser()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(200):
        assert p.feed(gsv * 100, 0.0) == []
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 200_000, grown  # unbounded, 20 000 reports would hold several MB
    assert p.flush(0.0) == []  # leftovers without a time are no epoch
    fixes = p.feed(BN9015.encode(), 0.0) + p.flush(0.0)
    assert len(fixes) == 4 and p.stats.sentences == 20_028


def test_feed_line_matches_feed() -> None:
    by_feed, p1 = run(BN9015)
    p2 = NmeaParser()
    by_line = [f for ln in BN9015.splitlines() for f in p2.feed_line(ln, 0.0)] + p2.flush(0.0)
    assert by_line == by_feed
    assert p2.stats.sentences == p1.stats.sentences


def test_throughput_is_far_above_what_a_raspberry_pi_needs() -> None:
    block = (BN9015 + RTK_10HZ + TELIT_MULTI).replace("\n", "\r\n").encode()
    lines = (BN9015 + RTK_10HZ + TELIT_MULTI).count("\n")
    p = NmeaParser()
    start = time.perf_counter()
    for _ in range(40):
        p.feed(block, 0.0)
    rate = 40 * lines / (time.perf_counter() - start)
    assert rate > 10_000, f"{rate:.0f} lines/s"  # ~100k/s on a dev machine; a Pi 4 ~1/5
