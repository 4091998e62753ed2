"""IMU chips over I2C, against emulated chips (there is no I2C bus here).

Each fake below is a register file and a FIFO that behave as the datasheet
describes: the sample rate and the scale are derived from what the driver
wrote into the fake's registers (with the fake's own tables, not the
driver's), the FIFO is filled with records encoded as the chip encodes them,
the level registers count what is in it, reading the data register pops
bytes, overflows overwrite or stop as the chip's mode says.  So a wrong
register, bit, byte order or scale in ``agent.imu.chips`` shows up as wrong
samples here.  What this cannot show is a datasheet misread the same way in
both places: the code is still untested on hardware.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import itertools
import math
import random
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.backoff import Backoff
from agent.imu.chips import (
    ChipDriver,
    ImuSettings,
    Lsm6dso,
    Mpu,
    families_for,
)
from agent.imu.health import HealthConfig, HealthMonitor, accel_range_si, gyro_range_si
from agent.imu.i2c import ChipError, FifoClock, I2cImu, I2cImuSource
from agent.imu.sample import GRAVITY, ImuSample

DATA = Path(__file__).resolve().parent.parent / "data" / "imu"
Vec6 = tuple[float, float, float, float, float, float]
Raw6 = tuple[int, int, int, int, int, int]


def drive(t: float) -> Vec6:
    """A smooth synthetic drive: braking/acceleration, cornering, road vibration, yaw."""
    return (
        0.3 * GRAVITY * math.sin(2 * math.pi * 0.5 * t),
        2.0 * math.sin(2 * math.pi * 0.3 * t + 1.0),
        GRAVITY + 0.5 * math.sin(2 * math.pi * 3.0 * t),
        0.05 * math.sin(2 * math.pi * 0.7 * t),
        -0.02,
        0.3 * math.sin(2 * math.pi * 0.2 * t),
    )


def clamp16(x: float) -> int:
    return max(-32768, min(32767, round(x)))


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


# -- the emulated chips -----------------------------------------------------------------


class FakeChip:
    """Register banks, a FIFO, sampling driven by a clock.  Subclasses are chips."""

    who_reg = 0x75
    who = 0x00
    fifo_reg = 0x00
    word = 1  # bytes popped together from the FIFO data register(s)

    def __init__(self, truth: Callable[[float], Vec6], clock: Callable[[], float]) -> None:
        self.truth = truth
        self.clock = clock
        self.rate_scale = 1.0  # < 1: the chip's oscillator is slow
        self.regs: dict[tuple[int, int], int] = {}
        self.bank = 0
        self.writes: list[tuple[int, int, int]] = []  # (bank, reg, value)
        self.fifo_reads: list[int] = []  # bytes per FIFO data transaction
        self.produced: list[tuple[float, Raw6]] = []  # every record written to the FIFO
        self.underflows = 0
        self.wrong_bank_reads = 0
        self.lock = threading.Lock()
        self.next_t: float | None = None
        self.reset()

    # subclass hooks
    def reset(self) -> None:
        self.regs.clear()
        self.bank = 0
        self.regs[(0, self.who_reg)] = self.who

    def rate(self) -> float | None:
        raise NotImplementedError

    def push(self, t: float) -> None:
        raise NotImplementedError

    def on_write(self, reg: int, value: int) -> None:
        self.regs[(self.bank, reg)] = value

    def special_read(self, reg: int) -> int | None:
        return None

    def fifo_pop(self, n: int) -> bytes:
        raise NotImplementedError

    # sampling
    def advance(self) -> None:
        now = self.clock()
        rate = self.rate()
        if rate is None:
            self.next_t = None
            return
        period = 1.0 / (rate * self.rate_scale)
        if self.next_t is None:
            self.next_t = now + period
        while self.next_t <= now:
            self.push(self.next_t)
            self.next_t += period

    # bus side
    def read_byte(self, reg: int) -> int:
        with self.lock:
            self.advance()
            if reg == self.fifo_reg and self.bank == 0:
                self.fifo_reads.append(1)
                return self.fifo_pop(1)[0]
            v = self.special_read(reg)
            return v if v is not None else self.regs.get((self.bank, reg), 0)

    def read_block(self, reg: int, n: int) -> bytes:
        with self.lock:
            self.advance()
            if reg == self.fifo_reg and self.bank == 0:
                self.fifo_reads.append(n)
                return self.fifo_pop(n)
            return self.block(reg, n)

    def block(self, reg: int, n: int) -> bytes:
        out = []
        for i in range(n):
            v = self.special_read(reg + i)
            out.append(v if v is not None else self.regs.get((self.bank, reg + i), 0))
        return bytes(out)

    def write(self, reg: int, value: int) -> None:
        with self.lock:
            self.advance()
            self.writes.append((self.bank, reg, value))
            self.on_write(reg, value)

    def wrote(self, reg: int, bank: int = 0) -> list[int]:
        return [v for b, r, v in self.writes if r == reg and b == bank]


class FakeMpu(FakeChip):
    """MPU-6050 (1024-byte FIFO, overwrites when full) or MPU-6500/9250 (512, FIFO_MODE)."""

    fifo_reg = 0x74

    def __init__(
        self, who: int, truth: Callable[[float], Vec6], clock: Callable[[], float]
    ) -> None:
        self.who = who
        self.capacity = 1024 if who == 0x68 else 512
        self.fifo = bytearray()
        self.int_status = 0
        self.partial_count = False  # report a record being written (seen on MPU-6050s)
        super().__init__(truth, clock)

    def reset(self) -> None:
        super().reset()
        self.regs[(0, 0x6B)] = 0x40  # PWR_MGMT_1: asleep after reset
        self.fifo.clear()
        self.int_status = 0

    def r(self, reg: int) -> int:
        return self.regs.get((0, reg), 0)

    def on_write(self, reg: int, value: int) -> None:
        if reg == 0x6B and value & 0x80:  # DEVICE_RESET
            self.reset()
            return
        if reg == 0x6A:  # USER_CTRL
            if value & 0x04 and not value & 0x40:  # FIFO_RESET works while FIFO_EN = 0
                self.fifo.clear()
            value &= ~0x04  # self-clearing
        super().on_write(reg, value)

    def rate(self) -> float | None:
        if self.r(0x6B) & 0x40 or not self.r(0x6A) & 0x40 or not self.r(0x23):
            return None
        dlpf = self.r(0x1A) & 0x07
        base = 1000.0 if 1 <= dlpf <= 6 else 8000.0
        return base / (1 + self.r(0x19))

    def encode(self, t: float) -> tuple[bytes, Raw6]:
        a_lsb = 16384 >> ((self.r(0x1C) >> 3) & 3)  # LSB per g
        g_lsb = (131.0, 65.5, 32.8, 16.4)[(self.r(0x1B) >> 3) & 3]  # LSB per dps
        v = self.truth(t)
        raw = (
            *(clamp16(x / GRAVITY * a_lsb) for x in v[:3]),
            *(clamp16(math.degrees(x) * g_lsb) for x in v[3:]),
        )
        en = self.r(0x23)
        rec = b""
        if en & 0x08:
            rec += struct.pack(">3h", *raw[:3])
        if en & 0x80:
            rec += struct.pack(">h", 1234)  # temperature
        for bit, i in ((0x40, 3), (0x20, 4), (0x10, 5)):
            if en & bit:
                rec += struct.pack(">h", raw[i])
        return rec, raw  # type: ignore[return-value]

    def push(self, t: float) -> None:
        rec, raw = self.encode(t)
        if len(self.fifo) + len(rec) > self.capacity:
            if self.r(0x38) & 0x10:
                self.int_status |= 0x10  # FIFO_OFLOW_INT
            if self.who != 0x68 and self.r(0x1A) & 0x40:
                return  # FIFO_MODE = 1: no more writes when full
            self.fifo += rec
            del self.fifo[: len(self.fifo) - self.capacity]  # the oldest bytes go
        else:
            self.fifo += rec
        self.produced.append((t, raw))

    def count(self) -> int:
        c = len(self.fifo)
        return c + 6 if self.partial_count and c else c

    def special_read(self, reg: int) -> int | None:
        if reg == 0x3A:
            v, self.int_status = self.int_status, 0
            return v
        if reg == 0x72:
            return self.count() >> 8
        if reg == 0x73:
            return self.count() & 0xFF
        return None

    def block(self, reg: int, n: int) -> bytes:
        if reg == 0x72 and n == 2:  # one consistent snapshot of the count
            c = self.count()
            return bytes([c >> 8, c & 0xFF])
        return super().block(reg, n)

    def fifo_pop(self, n: int) -> bytes:
        out = bytes(self.fifo[:n])
        del self.fifo[:n]
        if len(out) < n:
            self.underflows += 1
            out += b"\xff" * (n - len(out))
        return out


class FakeIcm20948(FakeMpu):
    """ICM-20948: four register banks, FIFO written at the gyro rate, accel held."""

    who_reg = 0x00
    fifo_reg = 0x72

    def __init__(self, truth: Callable[[float], Vec6], clock: Callable[[], float]) -> None:
        super().__init__(0xEA, truth, clock)
        self.capacity = 512

    def reset(self) -> None:
        self.regs.clear()
        self.bank = 0
        self.regs[(0, 0x00)] = 0xEA
        self.regs[(0, 0x06)] = 0x41  # PWR_MGMT_1: SLEEP, CLKSEL 1
        self.fifo.clear()
        self.int_status = 0

    def b(self, bank: int, reg: int) -> int:
        return self.regs.get((bank, reg), 0)

    def on_write(self, reg: int, value: int) -> None:
        if reg == 0x7F:  # REG_BANK_SEL exists in every bank
            self.bank = (value >> 4) & 3
            return
        if self.bank == 0 and reg == 0x06 and value & 0x80:
            self.reset()
            return
        if self.bank == 0 and reg == 0x68 and value & 0x1F:  # FIFO_RST asserted
            self.fifo.clear()
        self.regs[(self.bank, reg)] = value

    def rate(self) -> float | None:
        if self.b(0, 0x06) & 0x40 or not self.b(0, 0x03) & 0x40 or self.b(0, 0x68) & 0x1F:
            return None
        if not self.b(0, 0x67):
            return None
        gyro_cfg = self.b(2, 0x01)
        return 1100.0 / (1 + self.b(2, 0x00)) if gyro_cfg & 1 else 9000.0

    def encode(self, t: float) -> tuple[bytes, Raw6]:
        acfg, gcfg = self.b(2, 0x14), self.b(2, 0x01)
        adiv = ((self.b(2, 0x10) & 0x0F) << 8) | self.b(2, 0x11)
        arate = 1125.0 / (1 + adiv) if acfg & 1 else 4500.0
        ta = math.floor(t * arate) / arate  # the latest accel sample
        a_lsb = 16384 >> ((acfg >> 1) & 3)
        g_lsb = (131.0, 65.5, 32.8, 16.4)[(gcfg >> 1) & 3]
        va, vg = self.truth(ta), self.truth(t)
        raw = (
            *(clamp16(x / GRAVITY * a_lsb) for x in va[:3]),
            *(clamp16(math.degrees(x) * g_lsb) for x in vg[3:]),
        )
        en = self.b(0, 0x67)
        rec = b""
        if en & 0x10:
            rec += struct.pack(">3h", *raw[:3])
        for bit, i in ((0x02, 3), (0x04, 4), (0x08, 5)):
            if en & bit:
                rec += struct.pack(">h", raw[i])
        if en & 0x01:
            rec += struct.pack(">h", 1234)
        return rec, raw  # type: ignore[return-value]

    def push(self, t: float) -> None:
        rec, raw = self.encode(t)
        if len(self.fifo) + len(rec) > self.capacity:
            self.int_status |= 0x01  # INT_STATUS_2 FIFO_OVERFLOW_INT
            if self.b(0, 0x69) & 0x01:
                return  # snapshot mode
            self.fifo += rec
            del self.fifo[: len(self.fifo) - self.capacity]
        else:
            self.fifo += rec
        self.produced.append((t, raw))

    def special_read(self, reg: int) -> int | None:
        if self.bank != 0:
            if reg in (0x1B, 0x70, 0x71, 0x72):
                self.wrong_bank_reads += 1
            return None
        if reg == 0x1B:
            v, self.int_status = self.int_status, 0
            return v
        if reg == 0x70:
            return len(self.fifo) >> 8
        if reg == 0x71:
            return len(self.fifo) & 0xFF
        if reg == 0x75:
            return 0x00
        return None

    def block(self, reg: int, n: int) -> bytes:
        if self.bank == 0 and reg == 0x70 and n == 2:
            c = len(self.fifo)
            return bytes([c >> 8, c & 0xFF])
        if self.bank != 0 and reg in (0x70, 0x72):
            self.wrong_bank_reads += 1
        return FakeChip.block(self, reg, n)


ST_ODR_HZ = {1: 12.5, 2: 26.0, 3: 52.0, 4: 104.0, 5: 208.0, 6: 416.0}
ST_MG = {0: 0.061, 1: 0.488, 2: 0.122, 3: 0.244}  # FS_XL bits -> mg/LSB (01 = +-16 g)
ST_MDPS = {0: 8.75, 1: 17.5, 2: 35.0, 3: 70.0}


class FakeLsm6(FakeChip):
    """What the ST fakes share: CTRL registers, the FIFO as a deque of words."""

    who_reg = 0x0F

    def __init__(
        self, who: int, truth: Callable[[float], Vec6], clock: Callable[[], float]
    ) -> None:
        self.who = who
        self.words: deque[Any] = deque()
        self.overrun = False
        super().__init__(truth, clock)

    def reset(self) -> None:
        super().reset()
        self.regs[(0, 0x12)] = 0x04  # CTRL3_C: IF_INC
        self.words.clear()
        self.overrun = False

    def r(self, reg: int) -> int:
        return self.regs.get((0, reg), 0)

    def on_write(self, reg: int, value: int) -> None:
        if reg == 0x12 and value & 0x01:  # SW_RESET
            self.reset()
            return
        super().on_write(reg, value)
        if reg == 0x0A and value & 0x07 == 0:  # bypass: FIFO off and emptied
            self.words.clear()
            self.overrun = False

    def sensor_rate(self) -> float | None:
        xl, g = self.r(0x10) >> 4, self.r(0x11) >> 4
        if self.r(0x0A) & 0x07 != 0x06 or not xl or not g:
            return None  # only continuous mode with both sensors on is modelled
        assert xl == g, "the fake models equal accel and gyro rates only"
        return ST_ODR_HZ[xl]

    def raw(self, t: float) -> Raw6:
        mg = ST_MG[(self.r(0x10) >> 2) & 3]
        mdps = ST_MDPS[(self.r(0x11) >> 2) & 3]
        v = self.truth(t)
        return (  # type: ignore[return-value]
            *(clamp16(x / GRAVITY * 1000.0 / mg) for x in v[:3]),
            *(clamp16(math.degrees(x) * 1000.0 / mdps) for x in v[3:]),
        )

    def add(self, items: list[Any]) -> None:
        for item in items:
            if len(self.words) >= self.capacity:
                self.words.popleft()  # continuous mode: the oldest word is overwritten
                self.overrun = True
            self.words.append(item)


class FakeLsm6ds3(FakeLsm6):
    """LSM6DS3 / LSM6DSL: untagged 16-bit words, pattern Gx Gy Gz Ax Ay Az."""

    fifo_reg = 0x3E

    def __init__(
        self, who: int, truth: Callable[[float], Vec6], clock: Callable[[], float]
    ) -> None:
        self.capacity = 4096 if who == 0x69 else 2048  # words: 8 KB / 4 KB
        self.diff_hi = 0x0F if who == 0x69 else 0x07
        self.half: int | None = None
        super().__init__(who, truth, clock)

    def rate(self) -> float | None:
        rate = self.sensor_rate()
        if rate is None:
            return None
        fifo_odr = (self.r(0x0A) >> 3) & 0x0F
        assert self.r(0x08) == 0x09, "the fake models no decimation (FIFO_CTRL3 = 0x09) only"
        assert fifo_odr == self.r(0x10) >> 4, "the fake models FIFO ODR = sensor ODR only"
        return rate

    def push(self, t: float) -> None:
        raw = self.raw(t)
        self.add([(i, raw[3 + i] if i < 3 else raw[i - 3]) for i in range(6)])
        self.produced.append((t, raw))

    def special_read(self, reg: int) -> int | None:
        n = len(self.words)
        if reg == 0x3A:
            return n & 0xFF
        if reg == 0x3B:
            return (
                ((n >> 8) & self.diff_hi) | (0x10 if n == 0 else 0) | (0x40 if self.overrun else 0)
            )
        if reg == 0x3C:
            return self.words[0][0] if self.words else 0
        if reg == 0x3D:
            return 0
        return None

    def fifo_pop(self, n: int) -> bytes:
        out = bytearray()
        for i in range(n):  # each transaction starts at FIFO_DATA_OUT_L; H pops the word
            if not self.words:
                self.underflows += 1
                out.append(0)
                continue
            w = self.words[0][1] & 0xFFFF
            if i % 2 == 0:
                out.append(w & 0xFF)
            else:
                out.append(w >> 8)
                self.words.popleft()
        return bytes(out)


class FakeLsm6dso(FakeLsm6):
    """LSM6DSO: tagged 7-byte words; gyro and accel of a time slot in either order."""

    fifo_reg = 0x78
    capacity = 512

    def __init__(self, truth: Callable[[float], Vec6], clock: Callable[[], float]) -> None:
        self.slot = 0
        super().__init__(0x6C, truth, clock)

    def rate(self) -> float | None:
        rate = self.sensor_rate()
        if rate is None:
            return None
        bdr = self.r(0x09)
        assert bdr & 0x0F == bdr >> 4 == self.r(0x10) >> 4, "the fake models BDR = ODR only"
        return rate

    def push(self, t: float) -> None:
        raw = self.raw(t)
        cnt = self.slot % 4
        gyro = bytes([(0x01 << 3) | (cnt << 1)]) + struct.pack("<3h", *raw[3:])
        accel = bytes([(0x02 << 3) | (cnt << 1)]) + struct.pack("<3h", *raw[:3])
        self.add([gyro, accel] if self.slot % 2 == 0 else [accel, gyro])
        self.slot += 1
        self.produced.append((t, raw))

    def special_read(self, reg: int) -> int | None:
        n = len(self.words)
        if reg == 0x3A:
            return n & 0xFF
        if reg == 0x3B:
            return ((n >> 8) & 0x03) | (0x40 if self.overrun else 0)
        return None

    def fifo_pop(self, n: int) -> bytes:
        out = bytearray()
        for i in range(n):  # each transaction starts at FIFO_DATA_OUT_TAG; Z_H pops the word
            if not self.words:
                self.underflows += 1
                out.append(0)
                continue
            out.append(self.words[0][i % 7])
            if i % 7 == 6:
                self.words.popleft()
        return bytes(out)


class FakeBus:
    """``smbus2.SMBus`` as far as the driver uses it, with chips at addresses."""

    def __init__(self, chips: dict[int, FakeChip]) -> None:
        self.chips = chips
        self.closed = False
        self.unplugged = False
        self.block_lengths: list[int] = []

    def _chip(self, addr: int) -> FakeChip:
        if self.closed:
            raise OSError(errno.EBADF, "bus closed")
        if self.unplugged or addr not in self.chips:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return self.chips[addr]

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        return self._chip(i2c_addr).read_byte(register)

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        self._chip(i2c_addr).write(register, value)

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        if length > 32:
            raise ValueError("Desired block length over 32 bytes")  # as smbus2 does
        self.block_lengths.append(length)
        return list(self._chip(i2c_addr).read_block(register, length))

    def i2c_rdwr(self, *msgs: Any) -> None:
        write, read = msgs
        reg = ctypes.string_at(write.buf, write.len)[0]
        data = self._chip(read.addr).read_block(reg, read.len)
        ctypes.memmove(read.buf, data, len(data))

    def close(self) -> None:
        self.closed = True


CHIPS: dict[str, Callable[[Callable[[float], Vec6], Callable[[], float]], FakeChip]] = {
    "MPU-6050": lambda tr, ck: FakeMpu(0x68, tr, ck),
    "MPU-9250": lambda tr, ck: FakeMpu(0x71, tr, ck),
    "MPU-6500": lambda tr, ck: FakeMpu(0x70, tr, ck),
    "ICM-20948": FakeIcm20948,
    "LSM6DS3": lambda tr, ck: FakeLsm6ds3(0x69, tr, ck),
    "LSM6DSL": lambda tr, ck: FakeLsm6ds3(0x6A, tr, ck),
    "LSM6DSO": FakeLsm6dso,
}
ADDRESS = {
    "MPU-6050": 0x68,
    "MPU-9250": 0x69,
    "MPU-6500": 0x68,
    "ICM-20948": 0x69,
    "LSM6DS3": 0x6A,
    "LSM6DSL": 0x6B,
    "LSM6DSO": 0x6A,
}


def rig(
    model: str,
    settings: ImuSettings | None = None,
    truth: Callable[[float], Vec6] = drive,
    **kw: Any,
) -> tuple[I2cImu, FakeChip, FakeBus, FakeClock]:
    clock = FakeClock()
    chip = CHIPS[model](truth, clock)
    bus = FakeBus({ADDRESS[model]: chip})
    imu = I2cImu(lambda: bus, settings or ImuSettings(), mono=clock, sleep=clock.sleep, **kw)
    return imu, chip, bus, clock


def run(
    imu: I2cImu, clock: FakeClock, seconds: float, poll: float = 0.025, jitter: float = 0.0
) -> list[ImuSample]:
    rng = random.Random(5)
    out: list[ImuSample] = []
    end = clock.t + seconds
    while clock.t < end:
        clock.t += poll + rng.uniform(-jitter, jitter)
        out += imu.poll()
    return out


def expected_lsb(model: str, settings: ImuSettings) -> tuple[float, float]:
    """m/s² and rad/s per count, from the datasheet sensitivities (independent of chips.py)."""
    if model.startswith("LSM"):
        mg = {2: 0.061, 4: 0.122, 8: 0.244, 16: 0.488}[settings.accel_range_g]
        mdps = {250: 8.75, 500: 17.5, 1000: 35.0, 2000: 70.0}[settings.gyro_range_dps]
        return mg * 1e-3 * GRAVITY, math.radians(mdps * 1e-3)
    per_g = {2: 16384, 4: 8192, 8: 4096, 16: 2048}[settings.accel_range_g]
    per_dps = {250: 131.0, 500: 65.5, 1000: 32.8, 2000: 16.4}[settings.gyro_range_dps]
    return GRAVITY / per_g, math.radians(1 / per_dps)


def check_stream(
    model: str, samples: list[ImuSample], chip: FakeChip, settings: ImuSettings, rate: float
) -> None:
    """Every record the chip produced came out once, in order, with its value and time."""
    produced = chip.produced[: len(samples)]
    assert len(samples) == len(produced)
    assert len(chip.produced) - len(samples) <= rate * 0.05 + 2  # only the last poll's worth left
    ka, kg = expected_lsb(model, settings)
    period = 1 / rate
    for s, (t, raw) in zip(samples, produced, strict=True):
        got = (s.ax, s.ay, s.az, s.gx, s.gy, s.gz)
        want = tuple(r * ka for r in raw[:3]) + tuple(r * kg for r in raw[3:])
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert abs(s.t - t) <= period, (s.t, t)
    # and the values are the truth to within half a count (not clipped here)
    for s, (t, _raw) in zip(samples[:50], produced[:50], strict=True):
        truth = drive(t)
        if model == "ICM-20948":
            continue  # its accel is the held sample, not the value at t
        assert abs(s.ax - truth[0]) <= ka / 2 + 1e-9
        assert abs(s.gz - truth[5]) <= kg / 2 + 1e-9
    ts = [s.t for s in samples]
    assert all(b > a for a, b in itertools.pairwise(ts))


# -- probing and configuration -------------------------------------------------------------


@pytest.mark.parametrize("model", list(CHIPS))
def test_probe_finds_the_chip(model: str) -> None:
    imu, _chip, _bus, _clock = rig(model)
    found = imu.open()
    assert found.driver.model == ("LSM6DSL" if model == "LSM6DSL" else model)
    assert found.address == ADDRESS[model]


def test_probe_icm20948_left_in_another_bank() -> None:
    imu, chip, _bus, _clock = rig("ICM-20948")
    chip.bank = 2  # a previous run died while configuring bank 2
    assert imu.open().driver.model == "ICM-20948"


def test_probe_reports_what_answered() -> None:
    clock = FakeClock()
    clone = FakeMpu(0x98, drive, clock)  # an ICM-20689 answers 0x98 at 0x75
    imu = I2cImu(lambda: FakeBus({0x68: clone}), ImuSettings(), mono=clock, sleep=clock.sleep)
    with pytest.raises(ChipError) as err:
        imu.open()
    text = str(err.value)
    assert "0x68 reg 0x75 = 0x98 (ICM-20689, not supported)" in text
    assert "0x6a: no answer" in text


def test_probe_limited_to_the_configured_chip() -> None:
    imu, _chip, _bus, _clock = rig("MPU-9250", chip="lsm6dso")
    with pytest.raises(ChipError):
        imu.open()
    assert families_for("mpu9250")[0].name == "mpu"
    assert families_for("LSM6DS3TR-C")[0].name == "lsm6ds3"
    with pytest.raises(ValueError):
        families_for("bmi160")


def test_mpu6050_configuration_registers() -> None:
    imu, chip, _bus, _clock = rig("MPU-6050", ImuSettings(100, 8, 500))
    imu.open()
    # RM-MPU-6000A: rate = 1 kHz / (1 + SMPLRT_DIV) with DLPF_CFG 1-6; DLPF 3 = 42 Hz < 50 Hz
    assert chip.wrote(0x19) == [9]
    assert chip.wrote(0x1A) == [3]
    assert chip.wrote(0x1B) == [0x08]  # FS_SEL 1: +-500 dps
    assert chip.wrote(0x1C) == [0x10]  # AFS_SEL 2: +-8 g
    assert chip.wrote(0x23) == [0x78]  # XG YG ZG ACCEL into the FIFO
    assert chip.wrote(0x6A)[-1] == 0x40  # FIFO_EN last
    assert chip.wrote(0x6B)[:2] == [0x80, 0x01]  # reset, then wake on the gyro PLL
    assert isinstance(chip, FakeMpu) and chip.rate() == 100.0


@pytest.mark.parametrize(
    ("rate", "div", "dlpf"), [(50, 19, 4), (100, 9, 3), (200, 4, 2), (150, 6, 3)]
)
def test_mpu_rates(rate: float, div: int, dlpf: int) -> None:
    d = Mpu("MPU-9250", ImuSettings(rate_hz=rate))
    assert d.divider == div and d.dlpf == dlpf
    assert d.rate_hz == pytest.approx(1000 / (1 + div))


def test_icm20948_configuration_registers() -> None:
    imu, chip, _bus, _clock = rig("ICM-20948", ImuSettings(100, 16, 2000))
    imu.open()
    assert chip.wrote(0x00, bank=2) == [10]  # GYRO_SMPLRT_DIV: 1100 / 11 = 100 Hz
    gyro_cfg = chip.wrote(0x01, bank=2)[0]
    assert gyro_cfg & 0x07 == 0x07  # FS 11 (+-2000 dps), FCHOICE
    accel_cfg = chip.wrote(0x14, bank=2)[0]
    assert accel_cfg & 0x07 == 0x07  # FS 11 (+-16 g), FCHOICE
    assert chip.wrote(0x11, bank=2) == [10]  # accel 1125 / 11 = 102 Hz >= the gyro
    assert chip.wrote(0x67) == [0x1E]
    assert chip.bank == 0  # left in bank 0 for the FIFO reads


def test_st_configuration_registers() -> None:
    imu, chip, _bus, _clock = rig("LSM6DSO", ImuSettings(100, 8, 500))
    d = imu.open().driver
    assert d.rate_hz == 104.0
    assert chip.wrote(0x10) == [0x4C]  # ODR 0100 (104 Hz), FS_XL 11 (+-8 g)
    assert chip.wrote(0x11) == [0x44]  # ODR 0100, FS_G 01 (+-500 dps)
    assert chip.wrote(0x09) == [0x44]  # BDR_GY = BDR_XL = 104 Hz
    assert chip.wrote(0x0A)[-1] == 0x06  # continuous
    imu2, chip2, _bus2, _clock2 = rig("LSM6DS3", ImuSettings(200, 16, 2000))
    imu2.open()
    assert chip2.wrote(0x10) == [0x54]  # 208 Hz, FS_XL 01 = +-16 g
    assert chip2.wrote(0x11) == [0x5C]  # 208 Hz, 2000 dps
    assert chip2.wrote(0x08) == [0x09]  # no decimation for either data set
    assert chip2.wrote(0x0A)[-1] == (0x5 << 3) | 0x06  # FIFO ODR 208 Hz, continuous


# -- the FIFO stream -------------------------------------------------------------------


@pytest.mark.parametrize("model", list(CHIPS))
@pytest.mark.parametrize("rate", [50.0, 100.0, 200.0])
def test_stream_matches_what_the_chip_produced(model: str, rate: float) -> None:
    settings = ImuSettings(rate_hz=rate, accel_range_g=4, gyro_range_dps=250)
    imu, chip, bus, clock = rig(model, settings)
    d = imu.open().driver
    samples = run(imu, clock, 4.0, jitter=0.01)
    check_stream(model, samples, chip, settings, d.rate_hz)
    assert chip.underflows == 0 and chip.wrong_bank_reads == 0
    assert imu.overflows == 0
    assert all(n <= 32 and n % d.read_unit == 0 for n in chip.fifo_reads)
    assert max(bus.block_lengths) <= 32
    assert abs(imu.clock.measured_rate_hz - d.rate_hz) < 0.02 * d.rate_hz  # type: ignore[union-attr]
    health = HealthMonitor(HealthConfig(expected_rate_hz=d.rate_hz))
    health.update(samples)
    assert health.problems() == []
    assert health.measured_rate_hz() == pytest.approx(d.rate_hz, rel=0.05)


@pytest.mark.parametrize("model", ["MPU-6050", "ICM-20948", "LSM6DS3", "LSM6DSO"])
def test_combined_transactions(model: str) -> None:
    settings = ImuSettings(rate_hz=200)
    imu, chip, _bus, clock = rig(model, settings, use_rdwr=True)
    d = imu.open().driver
    samples = run(imu, clock, 2.0, poll=0.05)
    check_stream(model, samples, chip, settings, d.rate_hz)
    assert max(chip.fifo_reads) > 32  # one combined read per poll, not 32-byte blocks
    assert all(n % d.read_unit == 0 for n in chip.fifo_reads)


def test_partial_record_in_the_count_is_left_for_later() -> None:
    imu, chip, _bus, clock = rig("MPU-6050")
    assert isinstance(chip, FakeMpu)
    chip.partial_count = True  # count includes half a record still being written
    d = imu.open().driver
    samples = run(imu, clock, 2.0)
    check_stream("MPU-6050", samples, chip, ImuSettings(), d.rate_hz)
    assert chip.underflows == 0


def test_decode_recorded_mpu_records() -> None:
    data = hex_fixture("mpu6050_fifo_2g_250dps.hex")
    d = Mpu("MPU-6050", ImuSettings(accel_range_g=2, gyro_range_dps=250))
    v = d.decode(data)
    assert len(v) == 3
    assert v[0] == pytest.approx((GRAVITY, 0, 0, 0, 0, 0))
    assert v[1] == pytest.approx((0, 0, GRAVITY, math.radians(1), math.radians(-1), 0))
    g, fs = GRAVITY, math.radians(32767 / 131)
    assert v[2] == pytest.approx((-g, g / 2, -g / 2, fs, -math.radians(32768 / 131), 0))


def test_decode_recorded_lsm6dso_words() -> None:
    data = hex_fixture("lsm6dso_fifo_2g_250dps.hex")
    d = Lsm6dso("LSM6DSO", ImuSettings(accel_range_g=2, gyro_range_dps=250))
    mg, dps = 0.061e-3 * GRAVITY, math.radians(8.75e-3)
    for split in (len(data), 7, 14, 21):  # the same words whatever the read boundaries
        d.restart()
        d.unpaired = d.other_tags = 0
        v = [x for i in range(0, len(data), split) for x in d.decode(data[i : i + split])]
        assert len(v) == 3
        assert v[0] == pytest.approx((0, 0, 16393 * mg, 1000 * dps, -1000 * dps, 0))
        assert v[1] == pytest.approx((-8197 * mg, 0, 16393 * mg, 0, 0, 4000 * dps))
        assert v[2] == pytest.approx((0, -16393 * mg, 0, 0, 0, 0))
        assert (d.unpaired, d.other_tags) == (1, 1)


def hex_fixture(name: str) -> bytes:
    out = bytearray()
    for line in (DATA / name).read_text().splitlines():
        out += bytes.fromhex(line.split("#", 1)[0])
    return bytes(out)


# -- overflow, saturation, wrong rate -------------------------------------------------------


@pytest.mark.parametrize("model", ["MPU-6050", "MPU-9250", "ICM-20948", "LSM6DSL", "LSM6DSO"])
def test_overflow_is_reset_counted_and_shows_as_a_gap(model: str) -> None:
    settings = ImuSettings(rate_hz=200)
    imu, chip, _bus, clock = rig(model, settings)
    d = imu.open().driver
    before = run(imu, clock, 1.0)
    stall = 30.0 if model.startswith("LSM6DSL") else 3.0  # longer than the FIFO holds
    clock.t += stall  # the reader thread was starved
    assert imu.poll() == []
    assert imu.overflows == 1 and imu.lost_samples > 0
    after = run(imu, clock, 1.0)
    assert len(after) >= 0.9 * d.rate_hz * 0.95
    assert after[0].t > before[-1].t + stall * 0.9
    # what comes after the reset is the chip's new stream, value for value
    ka, kg = expected_lsb(model, settings)
    new = chip.produced[-len(after) - 10 :]
    tail = [(round(s.ax / ka), round(s.gz / kg)) for s in after]
    want = [(raw[0], raw[5]) for _, raw in new]
    assert any(want[i : i + len(tail)] == tail for i in range(len(want) - len(tail) + 1))
    health = HealthMonitor(HealthConfig(expected_rate_hz=d.rate_hz))
    health.update(before + after)
    gap = [p for p in health.problems() if p.code == "gap"]
    assert gap and f"longest {after[0].t - before[-1].t:.2f} s" in gap[0].message
    assert chip.underflows == 0


def test_saturation_at_the_range_limit() -> None:
    def pothole(t: float) -> Vec6:
        v = drive(t)
        hit = 3.5 * GRAVITY if 1.0 <= t - 1000.0 <= 1.05 else 0.0
        return (v[0], v[1], v[2] + hit, v[3], v[4], v[5])

    settings = ImuSettings(rate_hz=100, accel_range_g=2)
    imu, _chip, _bus, clock = rig("MPU-9250", settings, truth=pothole)
    imu.open()
    samples = run(imu, clock, 2.0)
    peak = max(s.az for s in samples)
    assert peak == pytest.approx(32767 * GRAVITY / 16384)  # clipped at +2 g
    health = HealthMonitor(
        HealthConfig(
            expected_rate_hz=100,
            accel_range=accel_range_si(2),
            gyro_range=gyro_range_si(500),
        )
    )
    health.update(samples)
    sat = [p for p in health.problems() if p.code == "saturated_accel"]
    assert sat and "clipped at ±2 g in 5 samples" in sat[0].message


def test_chip_running_at_half_rate_is_seen() -> None:
    """A clone whose oscillator runs at half speed: configured 200 Hz, delivers 100."""
    settings = ImuSettings(rate_hz=200)
    imu, chip, _bus, clock = rig("MPU-6050", settings)
    chip.rate_scale = 0.5
    imu.open()
    samples = run(imu, clock, 6.0)
    assert imu.clock is not None and imu.clock.measured_rate_hz == pytest.approx(100, rel=0.03)
    health = HealthMonitor(HealthConfig(expected_rate_hz=200))
    health.update(samples)
    rate = [p for p in health.problems() if p.code == "rate"]
    assert rate and rate[0].message == "rate 100 Hz, expected 200 Hz"
    # and the times still follow the chip's real clock
    for s, (t, _) in zip(samples[200:], chip.produced[200:], strict=False):
        assert abs(s.t - t) <= 0.01


# -- the clock -------------------------------------------------------------------------


def test_fifo_clock_spacing_and_anchor() -> None:
    c = FifoClock(100.0)
    rng = random.Random(2)
    true_t, mono, stamps, truths = 0.0, 0.0, [], []
    for _ in range(400):
        mono += 0.025 + rng.uniform(-0.01, 0.01)
        n = 0
        while true_t + 0.0102 <= mono:  # a chip 2 % slow
            true_t += 0.0102
            truths.append(true_t)
            n += 1
        stamps += c.stamp(n, mono)
    assert c.measured_rate_hz == pytest.approx(1 / 0.0102, rel=0.01)
    errors = [s - t for s, t in zip(stamps, truths, strict=True)]
    assert max(abs(e) for e in errors[100:]) < 0.006
    steps = [b - a for a, b in itertools.pairwise(stamps[100:])]
    assert min(steps) > 0.0102 * 0.6 and max(steps) < 0.0102 * 1.4
    c.restart()
    after = c.stamp(3, mono + 5.0)
    assert after[-1] == pytest.approx(mono + 5.0 - c.period / 2)


# -- the asynchronous source, in real time ---------------------------------------------------


def test_source_streams_reports_and_recovers() -> None:
    chip = FakeLsm6dso(drive, time.monotonic)
    bus_holder: dict[str, FakeBus] = {}
    opens = 0

    def factory() -> FakeBus:
        nonlocal opens
        opens += 1
        bus = bus_holder["bus"] = FakeBus({0x6A: chip})
        return bus

    async def main() -> None:
        src = I2cImuSource(
            bus_factory=factory,
            settings=ImuSettings(rate_hz=200),
            poll_s=0.02,
            backoff=Backoff(min_s=0.02, max_s=0.1, rng=random.Random(1)),
        )
        got: list[ImuSample] = []

        async def consume() -> None:
            async for batch in src.batches():
                got.extend(batch)

        task = asyncio.create_task(consume())

        async def until(cond: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 15
            while not cond():
                assert not task.done(), f"source ended waiting for {what}"
                assert time.monotonic() < deadline, f"timed out: {what}; {src.status()}"
                await asyncio.sleep(0.01)

        await until(lambda: len(got) >= 150, "150 samples")
        st = src.status()
        assert st["connected"] is True
        assert st["chip"]["chip"] == "LSM6DSO" and st["chip"]["address"] == "0x6a"
        assert st["chip"]["rate_hz"] == 208.0
        assert st["fifo_overflows"] == 0
        assert st["health"]["expected_rate_hz"] == 208.0
        assert all(b.t > a.t for a, b in itertools.pairwise(got))
        assert got[-1].t <= time.monotonic()

        polls = st["polls"]
        bus_holder["bus"].unplugged = True  # the board lost power or the cable came off
        await until(lambda: src.status()["reconnects"] >= 1 and opens >= 2, "reconnects")
        assert "Remote I/O error" in (src.status()["last_error"] or "")
        n = len(got)
        await until(lambda: len(got) > n + 50, "samples after the reconnect")
        assert src.status()["polls"] > polls  # counted over both connections

        await src.close()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert bus_holder["bus"].closed
    assert chip.wrote(0x10)[-1] == 0x00 and chip.wrote(0x11)[-1] == 0x00  # powered down


def test_source_with_no_chip_keeps_retrying() -> None:
    async def main() -> None:
        src = I2cImuSource(
            bus_factory=lambda: FakeBus({}),
            backoff=Backoff(min_s=0.02, max_s=0.05, rng=random.Random(1)),
        )

        async def consume() -> None:
            async for _ in src.batches():
                pass

        task = asyncio.create_task(consume())
        deadline = time.monotonic() + 10
        while src.status()["last_error"] is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert src.status()["last_error"].startswith("ChipError: no supported IMU found")
        assert src.status()["connected"] is False
        await src.close()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        ImuSettings(rate_hz=400)
    with pytest.raises(ValueError):
        ImuSettings(accel_range_g=3)
    with pytest.raises(ValueError):
        I2cImuSource(chip="bmi088")
    assert isinstance(Mpu("MPU-6050", ImuSettings()), ChipDriver)
