"""Replay CSV and Android _terra readers: bad lines reported by number, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.imu.csv_file import (
    CsvReport,
    iter_android_terra,
    iter_imu_csv,
    read_android_terra,
    read_imu_csv,
)
from agent.imu.sample import ImuSample


def write(tmp_path: Path, text: str, name: str = "imu.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_documented_format_with_gyro_and_comments(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "# phone on the dashboard\n"
        "t,ax,ay,az,gx,gy,gz\n"
        "0.00,0.1,0.2,9.81,0.001,0.002,0.003\n"
        "\n"
        "# a comment mid-file\n"
        "0.01,0.2,0.3,9.80,0,0,-0.1\n",
    )
    samples, rep = read_imu_csv(p)
    assert samples == [
        ImuSample(0.0, 0.1, 0.2, 9.81, 0.001, 0.002, 0.003),
        ImuSample(0.01, 0.2, 0.3, 9.80, 0.0, 0.0, -0.1),
    ]
    assert rep.header and rep.has_gyro and rep.skipped == 0 and rep.samples == 2


def test_columns_in_any_order_without_gyro(tmp_path: Path) -> None:
    p = write(tmp_path, "AZ, ax, t, ay, note\n9.8,1,0.5,2,x\n9.7,1.5,0.6,2.5,y\n")
    samples, rep = read_imu_csv(p)
    assert samples[0] == ImuSample(0.5, 1.0, 2.0, 9.8)
    assert not samples[0].has_gyro and not rep.has_gyro and len(samples) == 2


def test_bad_lines_are_skipped_with_their_line_numbers(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "t,ax,ay,az,gx,gy,gz\n"  # 1
        "0.0,0,0,9.8,0,0,0\n"  # 2 ok
        "0.1,0,0\n"  # 3 too few fields
        "0.2,zero,0,9.8,0,0,0\n"  # 4 not a number
        "0.3,0,0,nan,0,0,0\n"  # 5 not finite
        "0.4,0,0,9.8,0.1,,\n"  # 6 gyro partly given
        "0.0,0,0,9.8,0,0,0\n"  # 7 time not increasing
        ",0,0,9.8,0,0,0\n"  # 8 empty time
        "0.5,0,0,9.8,,,\n"  # 9 ok, no gyro on this line
        "0.6,0,0,9.8,0,0,0\n",  # 10 ok
    )
    rep = CsvReport(str(p))
    samples = list(iter_imu_csv(p, rep))
    assert [s.t for s in samples] == [0.0, 0.5, 0.6]
    assert samples[1].gx is None and samples[2].gx == 0.0
    assert [n for n, _ in rep.errors] == [3, 4, 5, 6, 7, 8]
    reasons = dict(rep.errors)
    assert "fields" in reasons[3] and "not a number" in reasons[4]
    assert "not finite" in reasons[5] and "partly" in reasons[6]
    assert "not after" in reasons[7] and "empty" in reasons[8]
    assert rep.skipped == 6 and rep.samples == 3 and rep.lines == 10
    assert "line 3" in rep.summary()


def test_no_header_numbers_are_read_in_the_default_order(tmp_path: Path) -> None:
    p = write(tmp_path, "0,1,2,9.8\n0.01,1,2,9.8\n0.02,1,2\n")
    samples, rep = read_imu_csv(p)
    assert len(samples) == 2 and not rep.header and rep.notes
    assert rep.errors and rep.errors[0][0] == 3


def test_a_header_without_acceleration_reads_nothing(tmp_path: Path) -> None:
    p = write(tmp_path, "time,x,y\n0,1,2\n")
    samples, rep = read_imu_csv(p)
    assert samples == [] and rep.errors[0] == (1, "header lacks t, ax, ay, az")
    p = write(tmp_path, "t,ax,ay,az,gx\n0,1,2,3,4\n")
    assert read_imu_csv(p)[1].errors[0][1] == "header names only part of gx, gy, gz"


def test_garbage_bytes_do_not_crash(tmp_path: Path) -> None:
    p = tmp_path / "junk.csv"
    p.write_bytes(b"t,ax,ay,az\n0,0,0,9.8\n\xff\xfe\x00garbage\n1,0,0,9.8\n")
    samples, rep = read_imu_csv(p)
    assert len(samples) == 2 and rep.skipped == 1


ACC = (
    "timestamp,uptimeNanos,x,y,z\n"
    "14/05/2016 11:17:09,1000000000,0.1,0.2,9.8\n"
    "14/05/2016 11:17:09,1020000000,0.2,0.3,9.7\n"
    "14/05/2016 11:17:09,1040000000,0.3,bad,9.7\n"
    "14/05/2016 11:17:09,1060000000,0.4,0.5,9.6\n"
    "14/05/2016 11:17:10,1500000000,0.5,0.6,9.5\n"
)
GYRO = (
    "timestamp,uptimeNanos,x,y,z\n"
    "14/05/2016 11:17:09,1010000000,0.0,0.0,0.10\n"
    "14/05/2016 11:17:09,1030000000,0.0,0.0,0.30\n"
    "14/05/2016 11:17:09,1050000000,0.0,0.0,0.50\n"
    "14/05/2016 11:17:09,1070000000,0.0,0.0,0.70\n"
)


def test_android_terra_merges_gyro_by_uptime(tmp_path: Path) -> None:
    write(tmp_path, ACC, "acelerometro_terra.csv")
    write(tmp_path, GYRO, "giroscopio_terra.csv")
    (tmp_path / "viagem.json").write_text(json.dumps({"firstCollectionUptimeNanos": 900000000}))
    samples, rep = read_android_terra(tmp_path)
    assert [round(s.t, 3) for s in samples] == [0.1, 0.12, 0.16, 0.6]
    # before the first gyro sample (10 ms away): the nearest one
    assert samples[0].gz == pytest.approx(0.10)
    assert samples[1].gz == pytest.approx(0.20)  # halfway between 0.10 and 0.30
    assert samples[2].gz == pytest.approx(0.60)
    assert samples[3].gz is None  # 430 ms past the last gyro sample: none made up
    assert samples[1].ax == 0.2 and samples[1].az == 9.7
    assert rep.skipped == 1 and rep.errors[0][0] == 4 and rep.has_gyro


def test_android_without_viagem_or_gyro(tmp_path: Path) -> None:
    write(tmp_path, ACC, "acelerometro_terra.csv")
    rep = CsvReport(str(tmp_path))
    samples = list(iter_android_terra(tmp_path, rep))
    assert samples[0].t == 0.0 and samples[0].gz is None
    assert len(rep.notes) == 2 and not rep.has_gyro


@pytest.mark.shared_data
def test_real_android_trip_reads_whole(shared_data: Path) -> None:
    trip = shared_data / "driving" / "driverBehaviorDataset" / "data" / "17"
    samples, rep = read_android_terra(trip)
    assert rep.skipped == 0 and rep.has_gyro
    with open(trip / "acelerometro_terra.csv", encoding="utf-8") as fh:
        lines = sum(1 for _ in fh)
    assert len(samples) == 20675 == lines - 1
    assert all(s.has_gyro for s in samples)
    assert samples[0].t == pytest.approx(0.3235, abs=1e-3)  # after firstCollectionUptimeNanos
    rate = (len(samples) - 1) / (samples[-1].t - samples[0].t)
    assert 50 < rate < 52
