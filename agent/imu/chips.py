"""Register maps of the supported IMU chips, as data, and the pure decoding of their FIFOs.

Nothing here touches a bus: a ``ChipDriver`` says which registers to write
(``setup()``, ``reset_fifo()``, ``shutdown()``) and read (``level_reads()``),
and turns what was read into numbers (``parse_level()``, ``decode()``).  The
I/O loop is ``agent.imu.i2c``.  So the register logic can be checked
byte for byte against an emulated chip.

UNTESTED ON HARDWARE.  Every address, bit and scale below is taken from the
manufacturers' register maps and datasheets (InvenSense RM-MPU-6000A,
RM-MPU-9250A, DS-000189 ICM-20948; ST LSM6DS3, LSM6DSL, LSM6DSO datasheets)
and cross-checked with drivers that run on those chips (Linux
``st_lsm6dsx``, PX4's ICM-20948 driver).  The tests exercise it only
against emulated registers, never a real chip; check it on the bench with
``status()`` (rate, overflows, health) before trusting a new board.

Families and what differs:

- MPU-6050 / MPU-6500 / MPU-9250 / MPU-9255 (InvenSense, WHO_AM_I at 0x75):
  one register map for accel and gyro; rate = 1 kHz / (1 + SMPLRT_DIV) with
  the DLPF on; FIFO records of 12 bytes, big-endian, accel xyz then gyro
  xyz; FIFO 1024 bytes (6050) or 512; overflow flag INT_STATUS bit 4.
- ICM-20948 (WHO_AM_I 0xEA at 0x00 in bank 0): the same record layout, but
  registers in four user banks (REG_BANK_SEL 0x7F), separate accel and gyro
  dividers (1125 Hz and 1100 Hz bases; the FIFO is written at the gyro
  rate, so the accel is set at least as fast), FIFO 512 bytes.
- LSM6DS3 / LSM6DSL (ST, WHO_AM_I 0x69 / 0x6A at 0x0F): ODR codes (52, 104,
  208 Hz...), untagged FIFO of 16-bit little-endian words in a pattern of
  gyro xyz then accel xyz; the level counts words; FIFO_PATTERN says which
  word comes next.
- LSM6DSO / LSM6DSOX (WHO_AM_I 0x6C): tagged FIFO, 7-byte words (a tag byte
  naming the sensor and a 2-bit time-slot counter, then xyz little-endian);
  accel and gyro words are paired by that counter.

Axes: all these chips are right-handed, +1 g on the axis pointing up when
still, gyro positive counter-clockwise, which is ``ImuSample``'s convention;
the sign table per driver stays to make that explicit and fixable.
"""

from __future__ import annotations

import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.imu.sample import GRAVITY

ACCEL_RANGES_G = (2, 4, 8, 16)
GYRO_RANGES_DPS = (250, 500, 1000, 2000)
MIN_RATE_HZ = 50.0
MAX_RATE_HZ = 200.0

Vec6 = tuple[float, float, float, float, float, float]  # ax ay az (m/s²) gx gy gz (rad/s)
Signs = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class ImuSettings:
    """What is asked of the chip; the driver picks the nearest rate it can do.

    ±8 g by default: harsh driving stays under 1 g but the impact threshold
    is 2.5 g and a pothole can exceed 4 g, which ±2 g would clip.
    """

    rate_hz: float = 100.0
    accel_range_g: int = 8
    gyro_range_dps: int = 500

    def __post_init__(self) -> None:
        if not MIN_RATE_HZ <= self.rate_hz <= MAX_RATE_HZ:
            raise ValueError(f"rate_hz must be {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g}, got {self.rate_hz}")
        if self.accel_range_g not in ACCEL_RANGES_G:
            raise ValueError(f"accel_range_g must be one of {ACCEL_RANGES_G}")
        if self.gyro_range_dps not in GYRO_RANGES_DPS:
            raise ValueError(f"gyro_range_dps must be one of {GYRO_RANGES_DPS}")


@dataclass(frozen=True, slots=True)
class Write:
    """Write ``value`` to ``reg`` (in user ``bank`` on banked chips), then wait ``delay_s``."""

    reg: int
    value: int
    bank: int | None = None
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Read:
    """Read ``length`` consecutive registers from ``reg`` (in ``bank`` on banked chips)."""

    reg: int
    length: int = 1
    bank: int | None = None


@dataclass(frozen=True, slots=True)
class FifoLevel:
    """What the FIFO holds now, from its status registers.

    ``readable`` is whole records (or whole patterns) only, in bytes;
    ``records`` how many samples it holds, for counting losses (0 when the
    level register cannot tell); ``overflow`` data was lost; ``aligned``
    False when the next word is not the start of a record.
    """

    readable: int
    records: int
    overflow: bool = False
    aligned: bool = True


class ChipDriver(ABC):
    """One detected chip with its settings applied: registers to touch, bytes to decode.

    Pure; the only state is the decoder's (the tagged FIFO pairs words
    across reads), cleared by ``restart()`` after each FIFO reset.
    """

    family: str
    bank_select_reg: int | None = None  # register that selects the user bank, if banked
    fifo_data: Read  # where FIFO bytes are read from (the length is ignored)
    read_unit: int = 1  # FIFO reads (each block read) must be multiples of this
    record_size: int = 12  # bytes of one decoded record/pattern
    sample_bytes: int = 12  # FIFO bytes per sample (accel + gyro)
    accel_signs: Signs = (1, 1, 1)
    gyro_signs: Signs = (1, 1, 1)

    def __init__(self, model: str, settings: ImuSettings) -> None:
        self.model = model
        self.settings = settings
        self.rate_hz = 0.0  # actual output data rate, set by subclasses
        self.fifo_capacity = 0  # bytes
        self.accel_lsb = 0.0  # m/s² per count
        self.gyro_lsb = 0.0  # rad/s per count
        self.registers: dict[str, int] = {}  # what was configured, for status

    @property
    def fifo_samples(self) -> int:
        """How many samples a full FIFO holds."""
        return self.fifo_capacity // self.sample_bytes

    @property
    def accel_range_g(self) -> int:
        return self.settings.accel_range_g

    @property
    def gyro_range_dps(self) -> int:
        return self.settings.gyro_range_dps

    @abstractmethod
    def setup(self) -> list[Write]:
        """Reset, wake, set rate/ranges/filters, start the FIFO with accel and gyro."""

    @abstractmethod
    def level_reads(self) -> list[Read]:
        """Registers read every poll, given in the same order to ``parse_level``."""

    @abstractmethod
    def parse_level(self, raws: Sequence[bytes]) -> FifoLevel:
        """How much can be read now, and whether data was lost."""

    @abstractmethod
    def reset_fifo(self) -> list[Write]:
        """Empty the FIFO and restart it (after an overflow or misalignment)."""

    @abstractmethod
    def shutdown(self) -> list[Write]:
        """Stop the FIFO and power the sensors down (best effort, on close)."""

    @abstractmethod
    def decode(self, data: bytes) -> list[Vec6]:
        """FIFO bytes (whole records as ``parse_level`` allowed) to SI samples."""

    def restart(self) -> None:  # noqa: B027 (a hook: only the tagged FIFO keeps state)
        """Forget partial decoder state: the FIFO was just reset."""

    def info(self) -> dict[str, Any]:
        return {
            "chip": self.model,
            "family": self.family,
            "rate_hz": round(self.rate_hz, 2),
            "accel_range_g": self.accel_range_g,
            "gyro_range_dps": self.gyro_range_dps,
            "fifo_bytes": self.fifo_capacity,
            "registers": dict(self.registers),
        }

    def _vec(self, a: Sequence[int], g: Sequence[int]) -> Vec6:
        sa, sg, ka, kg = self.accel_signs, self.gyro_signs, self.accel_lsb, self.gyro_lsb
        return (
            a[0] * sa[0] * ka,
            a[1] * sa[1] * ka,
            a[2] * sa[2] * ka,
            g[0] * sg[0] * kg,
            g[1] * sg[1] * kg,
            g[2] * sg[2] * kg,
        )


def _dlpf(table: Sequence[tuple[int, float]], rate_hz: float) -> int:
    """The widest filter setting whose bandwidth stays at or below Nyquist (rate / 2)."""
    for cfg, bw in sorted(table, key=lambda e: -e[1]):
        if bw <= rate_hz / 2:
            return cfg
    return min(table, key=lambda e: e[1])[0]


# -- InvenSense MPU-6050 / 6500 / 9250 ---------------------------------------------------


class Mpu(ChipDriver):
    """MPU-6050, MPU-6500, MPU-9250, MPU-9255: accel and gyro through the FIFO, magnetometer unused."""

    family = "mpu"
    SMPLRT_DIV = 0x19
    CONFIG = 0x1A
    GYRO_CONFIG = 0x1B
    ACCEL_CONFIG = 0x1C
    ACCEL_CONFIG2 = 0x1D  # MPU-6500/9250 only
    FIFO_EN = 0x23
    INT_ENABLE = 0x38
    INT_STATUS = 0x3A
    USER_CTRL = 0x6A
    PWR_MGMT_1 = 0x6B
    PWR_MGMT_2 = 0x6C
    FIFO_COUNTH = 0x72
    FIFO_R_W = 0x74
    WHO_AM_I = 0x75

    FIFO_OFLOW = 0x10  # INT_STATUS / INT_ENABLE bit 4
    FIFO_ACCEL_GYRO = 0x78  # FIFO_EN: XG, YG, ZG, ACCEL
    USER_FIFO_EN = 0x40
    USER_FIFO_RESET = 0x04
    CONFIG_FIFO_MODE = 0x40  # 6500/9250: stop writing when full (keeps records aligned)
    ACCEL_LSB_PER_G: ClassVar[Mapping[int, float]] = {2: 16384.0, 4: 8192.0, 8: 4096.0, 16: 2048.0}
    GYRO_LSB_PER_DPS: ClassVar[Mapping[int, float]] = {
        250: 131.0,
        500: 65.5,
        1000: 32.8,
        2000: 16.4,
    }
    FS_CODE: ClassVar[Mapping[int, int]] = {
        2: 0,
        4: 1,
        8: 2,
        16: 3,
        250: 0,
        500: 1,
        1000: 2,
        2000: 3,
    }
    # DLPF_CFG -> gyro bandwidth (Hz); the internal rate is 1 kHz for settings 1-6
    DLPF_6050 = ((1, 188.0), (2, 98.0), (3, 42.0), (4, 20.0), (5, 10.0), (6, 5.0))
    DLPF_6500 = ((1, 184.0), (2, 92.0), (3, 41.0), (4, 20.0), (5, 10.0), (6, 5.0))

    fifo_data = Read(FIFO_R_W)
    read_unit = 1
    record_size = 12

    def __init__(self, model: str, settings: ImuSettings) -> None:
        super().__init__(model, settings)
        self.is_6050 = model == "MPU-6050"
        self.fifo_capacity = 1024 if self.is_6050 else 512
        self.divider = max(0, min(255, round(1000.0 / settings.rate_hz) - 1))
        self.rate_hz = 1000.0 / (1 + self.divider)
        self.dlpf = _dlpf(self.DLPF_6050 if self.is_6050 else self.DLPF_6500, self.rate_hz)
        self.accel_lsb = GRAVITY / self.ACCEL_LSB_PER_G[settings.accel_range_g]
        self.gyro_lsb = math.radians(1.0 / self.GYRO_LSB_PER_DPS[settings.gyro_range_dps])

    def setup(self) -> list[Write]:
        s = self.settings
        config = self.dlpf | (0 if self.is_6050 else self.CONFIG_FIFO_MODE)
        gyro = self.FS_CODE[s.gyro_range_dps] << 3  # FCHOICE_B = 00: DLPF in use
        accel = self.FS_CODE[s.accel_range_g] << 3
        self.registers = {
            "SMPLRT_DIV": self.divider,
            "CONFIG": config,
            "GYRO_CONFIG": gyro,
            "ACCEL_CONFIG": accel,
        }
        writes = [
            Write(self.PWR_MGMT_1, 0x80, delay_s=0.1),  # DEVICE_RESET
            Write(self.PWR_MGMT_1, 0x01, delay_s=0.05),  # awake, clock from the X gyro PLL
        ]
        if not self.is_6050:
            writes.append(Write(self.PWR_MGMT_2, 0x00))  # all axes on
        writes += [
            Write(self.USER_CTRL, 0x00),  # FIFO off while configuring
            Write(self.SMPLRT_DIV, self.divider),
            Write(self.CONFIG, config),
            Write(self.GYRO_CONFIG, gyro),
            Write(self.ACCEL_CONFIG, accel),
        ]
        if not self.is_6050:
            writes.append(Write(self.ACCEL_CONFIG2, self.dlpf))  # A_DLPF_CFG, FCHOICE_B = 0
            self.registers["ACCEL_CONFIG2"] = self.dlpf
        writes += [
            Write(self.INT_ENABLE, self.FIFO_OFLOW),
            Write(self.FIFO_EN, self.FIFO_ACCEL_GYRO),
            *self.reset_fifo(),
        ]
        return writes

    def level_reads(self) -> list[Read]:
        return [Read(self.INT_STATUS), Read(self.FIFO_COUNTH, 2)]  # reading INT_STATUS clears it

    def parse_level(self, raws: Sequence[bytes]) -> FifoLevel:
        status, count = raws[0][0], ((raws[1][0] << 8) | raws[1][1]) & 0x1FFF
        full = count > self.fifo_capacity - self.record_size  # no room for another record
        return FifoLevel(
            readable=count - count % self.record_size,
            records=count // self.record_size,
            overflow=bool(status & self.FIFO_OFLOW) or full,
        )

    def reset_fifo(self) -> list[Write]:
        return [
            Write(self.USER_CTRL, 0x00),
            Write(self.USER_CTRL, self.USER_FIFO_RESET),  # self-clearing, works with FIFO_EN = 0
            Write(self.USER_CTRL, self.USER_FIFO_EN),
        ]

    def shutdown(self) -> list[Write]:
        return [Write(self.USER_CTRL, 0x00), Write(self.PWR_MGMT_1, 0x40)]  # FIFO off, SLEEP

    def decode(self, data: bytes) -> list[Vec6]:
        out: list[Vec6] = []
        for off in range(0, len(data) - len(data) % 12, 12):
            v = struct.unpack_from(">6h", data, off)
            out.append(self._vec(v[0:3], v[3:6]))
        return out


# -- InvenSense ICM-20948 ---------------------------------------------------------------


class Icm20948(ChipDriver):
    """ICM-20948 (accel and gyro; its AK09916 magnetometer is not used)."""

    family = "icm20948"
    REG_BANK_SEL = 0x7F
    bank_select_reg = REG_BANK_SEL
    # bank 0
    WHO_AM_I = 0x00
    USER_CTRL = 0x03
    PWR_MGMT_1 = 0x06
    PWR_MGMT_2 = 0x07
    INT_ENABLE_2 = 0x12
    INT_STATUS_2 = 0x1B
    FIFO_EN_1 = 0x66
    FIFO_EN_2 = 0x67
    FIFO_RST = 0x68
    FIFO_MODE = 0x69
    FIFO_COUNTH = 0x70
    FIFO_R_W = 0x72
    # bank 2
    GYRO_SMPLRT_DIV = 0x00
    GYRO_CONFIG_1 = 0x01
    ODR_ALIGN_EN = 0x09
    ACCEL_SMPLRT_DIV_1 = 0x10
    ACCEL_SMPLRT_DIV_2 = 0x11
    ACCEL_CONFIG = 0x14

    FIFO_ACCEL_GYRO = 0x1E  # FIFO_EN_2: ACCEL, GYRO_Z, GYRO_Y, GYRO_X
    FIFO_OVERFLOW = 0x1F  # INT_STATUS_2 / INT_ENABLE_2 bits 4:0
    ACCEL_LSB_PER_G = Mpu.ACCEL_LSB_PER_G
    GYRO_LSB_PER_DPS = Mpu.GYRO_LSB_PER_DPS
    FS_CODE = Mpu.FS_CODE
    GYRO_DLPF = ((0, 196.6), (1, 151.8), (2, 119.5), (3, 51.2), (4, 23.9), (5, 11.6), (6, 5.7))
    ACCEL_DLPF = ((1, 246.0), (2, 111.4), (3, 50.4), (4, 23.9), (5, 11.5), (6, 5.7))

    fifo_data = Read(FIFO_R_W, bank=0)
    read_unit = 1
    record_size = 12

    def __init__(self, model: str, settings: ImuSettings) -> None:
        super().__init__(model, settings)
        self.fifo_capacity = 512
        self.gyro_div = max(0, min(255, round(1100.0 / settings.rate_hz) - 1))
        self.rate_hz = 1100.0 / (1 + self.gyro_div)  # the FIFO is written at the gyro rate
        # accel at least as fast as the gyro, so every record holds a fresh accel sample
        self.accel_div = max(0, min(4095, math.floor(1125.0 / self.rate_hz) - 1))
        self.accel_rate_hz = 1125.0 / (1 + self.accel_div)
        self.gyro_dlpf = _dlpf(self.GYRO_DLPF, self.rate_hz)
        self.accel_dlpf = _dlpf(self.ACCEL_DLPF, self.rate_hz)
        self.accel_lsb = GRAVITY / self.ACCEL_LSB_PER_G[settings.accel_range_g]
        self.gyro_lsb = math.radians(1.0 / self.GYRO_LSB_PER_DPS[settings.gyro_range_dps])

    def setup(self) -> list[Write]:
        s = self.settings
        gyro_cfg = (self.gyro_dlpf << 3) | (self.FS_CODE[s.gyro_range_dps] << 1) | 1  # FCHOICE
        accel_cfg = (self.accel_dlpf << 3) | (self.FS_CODE[s.accel_range_g] << 1) | 1
        self.registers = {
            "GYRO_SMPLRT_DIV": self.gyro_div,
            "GYRO_CONFIG_1": gyro_cfg,
            "ACCEL_SMPLRT_DIV": self.accel_div,
            "ACCEL_CONFIG": accel_cfg,
        }
        return [
            Write(self.PWR_MGMT_1, 0x80, bank=0, delay_s=0.1),  # DEVICE_RESET
            Write(self.PWR_MGMT_1, 0x01, bank=0, delay_s=0.05),  # awake, auto clock
            Write(self.PWR_MGMT_2, 0x00, bank=0),  # accel and gyro on
            Write(self.USER_CTRL, 0x00, bank=0),  # FIFO off while configuring
            Write(self.GYRO_SMPLRT_DIV, self.gyro_div, bank=2),
            Write(self.GYRO_CONFIG_1, gyro_cfg, bank=2),
            Write(self.ACCEL_SMPLRT_DIV_1, self.accel_div >> 8, bank=2),
            Write(self.ACCEL_SMPLRT_DIV_2, self.accel_div & 0xFF, bank=2),
            Write(self.ACCEL_CONFIG, accel_cfg, bank=2),
            Write(self.ODR_ALIGN_EN, 0x01, bank=2),
            Write(self.INT_ENABLE_2, self.FIFO_OVERFLOW, bank=0),
            Write(self.FIFO_EN_1, 0x00, bank=0),  # no external sensors
            Write(self.FIFO_EN_2, self.FIFO_ACCEL_GYRO, bank=0),
            Write(self.FIFO_MODE, 0x01, bank=0),  # snapshot: stop when full, records stay whole
            *self.reset_fifo(),
        ]

    def level_reads(self) -> list[Read]:
        return [Read(self.INT_STATUS_2, 1, bank=0), Read(self.FIFO_COUNTH, 2, bank=0)]

    def parse_level(self, raws: Sequence[bytes]) -> FifoLevel:
        status, count = raws[0][0], ((raws[1][0] << 8) | raws[1][1]) & 0x1FFF
        full = count > self.fifo_capacity - self.record_size
        return FifoLevel(
            readable=count - count % self.record_size,
            records=count // self.record_size,
            overflow=bool(status & self.FIFO_OVERFLOW) or full,
        )

    def reset_fifo(self) -> list[Write]:
        return [
            Write(self.USER_CTRL, 0x00, bank=0),
            Write(self.FIFO_RST, 0x1F, bank=0),  # assert the reset of every FIFO ...
            Write(self.FIFO_RST, 0x00, bank=0),  # ... and release it
            Write(self.USER_CTRL, 0x40, bank=0),  # FIFO_EN
        ]

    def shutdown(self) -> list[Write]:
        return [Write(self.USER_CTRL, 0x00, bank=0), Write(self.PWR_MGMT_1, 0x41, bank=0)]

    def decode(self, data: bytes) -> list[Vec6]:
        out: list[Vec6] = []
        for off in range(0, len(data) - len(data) % 12, 12):
            v = struct.unpack_from(">6h", data, off)
            out.append(self._vec(v[0:3], v[3:6]))
        return out

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["accel_rate_hz"] = round(self.accel_rate_hz, 2)
        return out


# -- ST LSM6DS3 / LSM6DSL / LSM6DSO -------------------------------------------------------


class _Lsm6(ChipDriver):
    """What the LSM6DS3-family chips share: ODR codes, ranges, control registers."""

    CTRL1_XL = 0x10
    CTRL2_G = 0x11
    CTRL3_C = 0x12
    WHO_AM_I = 0x0F
    FIFO_STATUS1 = 0x3A
    ODR_CODE: ClassVar[Mapping[float, int]] = {
        12.5: 0x1,
        26.0: 0x2,
        52.0: 0x3,
        104.0: 0x4,
        208.0: 0x5,
        416.0: 0x6,
    }
    FS_XL: ClassVar[Mapping[int, int]] = {
        2: 0x0,
        4: 0x2,
        8: 0x3,
        16: 0x1,
    }  # note the order: 01 is ±16 g
    MG_PER_LSB: ClassVar[Mapping[int, float]] = {2: 0.061, 4: 0.122, 8: 0.244, 16: 0.488}
    FS_G: ClassVar[Mapping[int, int]] = {250: 0x0, 500: 0x1, 1000: 0x2, 2000: 0x3}
    MDPS_PER_LSB: ClassVar[Mapping[int, float]] = {250: 8.75, 500: 17.5, 1000: 35.0, 2000: 70.0}
    CTRL3_BDU_IF_INC = 0x44
    SW_RESET = 0x01

    def __init__(self, model: str, settings: ImuSettings) -> None:
        super().__init__(model, settings)
        self.rate_hz = min(self.ODR_CODE, key=lambda r: abs(math.log(r / settings.rate_hz)))
        self.odr = self.ODR_CODE[self.rate_hz]
        self.accel_lsb = self.MG_PER_LSB[settings.accel_range_g] * 1e-3 * GRAVITY
        self.gyro_lsb = math.radians(self.MDPS_PER_LSB[settings.gyro_range_dps] * 1e-3)

    def _sensor_writes(self) -> list[Write]:
        s = self.settings
        xl = (self.odr << 4) | (self.FS_XL[s.accel_range_g] << 2)
        g = (self.odr << 4) | (self.FS_G[s.gyro_range_dps] << 2)
        self.registers = {"CTRL1_XL": xl, "CTRL2_G": g}
        return [
            Write(self.CTRL3_C, self.SW_RESET, delay_s=0.05),
            Write(self.CTRL3_C, self.CTRL3_BDU_IF_INC),
            Write(self.CTRL1_XL, xl),
            Write(self.CTRL2_G, g),
        ]

    def shutdown(self) -> list[Write]:
        return [*self._fifo_off(), Write(self.CTRL1_XL, 0x00), Write(self.CTRL2_G, 0x00)]

    @abstractmethod
    def _fifo_off(self) -> list[Write]:
        """Bypass mode: the FIFO stops and empties."""


class Lsm6ds3(_Lsm6):
    """LSM6DS3 and LSM6DSL/LSM6DSM/LSM6DS3TR-C: untagged FIFO in a gyro-then-accel pattern."""

    family = "lsm6ds3"
    FIFO_CTRL3 = 0x08  # DEC_FIFO_GYRO[5:3], DEC_FIFO_XL[2:0]
    FIFO_CTRL5 = 0x0A  # ODR_FIFO[6:3], FIFO_MODE[2:0]
    FIFO_DATA_OUT_L = 0x3E
    NO_DECIMATION = 0x09  # 001 for both data sets
    CONTINUOUS = 0x06
    OVER_RUN = 0x40  # FIFO_STATUS2
    FIFO_EMPTY = 0x10
    PATTERN_WORDS = 6  # Gx Gy Gz Ax Ay Az

    fifo_data = Read(FIFO_DATA_OUT_L)
    read_unit = 6  # whole data sets per block read (the Linux driver reads 30 bytes)
    record_size = 12

    def __init__(self, model: str, settings: ImuSettings) -> None:
        super().__init__(model, settings)
        # DIFF_FIFO: 12 bits on the LSM6DS3 (8 KB FIFO), 11 bits on the DSL family (4 KB)
        self.diff_mask = 0x0FFF if model == "LSM6DS3" else 0x07FF
        self.fifo_capacity = 8192 if model == "LSM6DS3" else 4096

    def setup(self) -> list[Write]:
        writes = self._sensor_writes()
        self.registers["FIFO_CTRL3"] = self.NO_DECIMATION
        self.registers["FIFO_CTRL5"] = self._continuous()
        return [*writes, Write(self.FIFO_CTRL3, self.NO_DECIMATION), *self.reset_fifo()]

    def _continuous(self) -> int:
        return (self.odr << 3) | self.CONTINUOUS  # FIFO ODR = sensor ODR

    def _fifo_off(self) -> list[Write]:
        return [Write(self.FIFO_CTRL5, 0x00)]

    def reset_fifo(self) -> list[Write]:
        return [*self._fifo_off(), Write(self.FIFO_CTRL5, self._continuous())]

    def level_reads(self) -> list[Read]:
        return [Read(self.FIFO_STATUS1, 4)]  # STATUS1..4: level, flags, pattern

    def parse_level(self, raws: Sequence[bytes]) -> FifoLevel:
        s1, s2, s3, s4 = raws[0][:4]
        words = 0 if s2 & self.FIFO_EMPTY else ((s2 << 8) | s1) & self.diff_mask
        patterns = words // self.PATTERN_WORDS
        pattern = ((s4 & 0x03) << 8) | s3  # index of the word read next
        return FifoLevel(
            readable=patterns * self.record_size,
            records=patterns,
            overflow=bool(s2 & self.OVER_RUN),
            aligned=words == 0 or pattern == 0,
        )

    def decode(self, data: bytes) -> list[Vec6]:
        out: list[Vec6] = []
        for off in range(0, len(data) - len(data) % 12, 12):
            v = struct.unpack_from("<6h", data, off)
            out.append(self._vec(v[3:6], v[0:3]))  # gyro comes first in the pattern
        return out


class Lsm6dso(_Lsm6):
    """LSM6DSO/LSM6DSOX: tagged FIFO, accel and gyro words paired by their time-slot counter."""

    family = "lsm6dso"
    FIFO_CTRL3 = 0x09  # BDR_GY[7:4], BDR_XL[3:0]
    FIFO_CTRL4 = 0x0A  # FIFO_MODE[2:0]
    FIFO_DATA_OUT_TAG = 0x78
    CONTINUOUS = 0x06
    FIFO_OVR_IA = 0x40  # FIFO_STATUS2
    TAG_GYRO = 0x01
    TAG_ACCEL = 0x02
    WORD = 7

    fifo_data = Read(FIFO_DATA_OUT_TAG)
    read_unit = WORD  # whole tagged words per block read (28 bytes in 32)
    record_size = WORD
    sample_bytes = 2 * WORD  # a gyro word and an accel word

    def __init__(self, model: str, settings: ImuSettings) -> None:
        super().__init__(model, settings)
        self.fifo_capacity = 512 * self.WORD  # 3 KB of data: 512 words
        self.bdr = (self.odr << 4) | self.odr
        self.unpaired = 0  # words whose partner was lost (FIFO reset between them)
        self.other_tags = 0
        self._slot: int | None = None
        self._accel: tuple[int, int, int] | None = None
        self._gyro: tuple[int, int, int] | None = None

    def setup(self) -> list[Write]:
        writes = self._sensor_writes()
        self.registers["FIFO_CTRL3"] = self.bdr
        return [*writes, *self._fifo_off(), Write(self.FIFO_CTRL3, self.bdr), *self.reset_fifo()]

    def _fifo_off(self) -> list[Write]:
        return [Write(self.FIFO_CTRL4, 0x00)]

    def reset_fifo(self) -> list[Write]:
        return [*self._fifo_off(), Write(self.FIFO_CTRL4, self.CONTINUOUS)]

    def level_reads(self) -> list[Read]:
        return [Read(self.FIFO_STATUS1, 2)]

    def parse_level(self, raws: Sequence[bytes]) -> FifoLevel:
        s1, s2 = raws[0][:2]
        words = ((s2 & 0x03) << 8) | s1
        return FifoLevel(
            readable=words * self.WORD, records=words // 2, overflow=bool(s2 & self.FIFO_OVR_IA)
        )

    def restart(self) -> None:
        if self._accel is not None or self._gyro is not None:
            self.unpaired += 1
        self._slot, self._accel, self._gyro = None, None, None

    def decode(self, data: bytes) -> list[Vec6]:
        out: list[Vec6] = []
        for off in range(0, len(data) - len(data) % self.WORD, self.WORD):
            tag_byte = data[off]
            tag, slot = tag_byte >> 3, (tag_byte >> 1) & 0x03
            xyz: tuple[int, int, int] = struct.unpack_from("<3h", data, off + 1)
            if tag not in (self.TAG_ACCEL, self.TAG_GYRO):
                self.other_tags += 1
                continue
            if slot != self._slot:
                self.restart()  # counts a half-filled slot as unpaired
                self._slot = slot
            if tag == self.TAG_ACCEL:
                self._accel = xyz
            else:
                self._gyro = xyz
            if self._accel is not None and self._gyro is not None:
                out.append(self._vec(self._accel, self._gyro))
                self._accel = self._gyro = None
        return out

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["unpaired_words"] = self.unpaired
        out["other_tags"] = self.other_tags
        return out


# -- probing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Family:
    """How to recognise a family on the bus, and how to build its driver."""

    name: str
    addresses: tuple[int, ...]
    who_am_i: Read
    models: Mapping[int, str]  # WHO_AM_I value -> model
    make: Callable[[str, ImuSettings], ChipDriver]
    bank_select: Write | None = None  # write before reading WHO_AM_I (banked chips)
    aliases: tuple[str, ...] = ()  # other model names answering the same WHO_AM_I

    def names(self) -> set[str]:
        """Names a user may configure for this family, normalised (see ``chip_key``)."""
        return {chip_key(n) for n in (self.name, *self.models.values(), *self.aliases)}


def chip_key(name: str) -> str:
    """ "MPU-9250", "mpu9250" and "mpu_9250" are the same chip to a user."""
    return name.strip().lower().replace("-", "").replace("_", "")


MPU = Family(
    "mpu",
    (0x68, 0x69),
    Read(Mpu.WHO_AM_I),
    {0x68: "MPU-6050", 0x70: "MPU-6500", 0x71: "MPU-9250", 0x73: "MPU-9255"},
    Mpu,
)
ICM20948 = Family(
    "icm20948",
    (0x68, 0x69),
    Read(Icm20948.WHO_AM_I),
    {0xEA: "ICM-20948"},
    Icm20948,
    bank_select=Write(Icm20948.REG_BANK_SEL, 0x00),
)
LSM6DS3 = Family(
    "lsm6ds3",
    (0x6A, 0x6B),
    Read(_Lsm6.WHO_AM_I),
    {0x69: "LSM6DS3", 0x6A: "LSM6DSL"},
    Lsm6ds3,
    aliases=("lsm6dsm", "lsm6ds3tr-c", "ism330dlc", "lsm6ds33"),
)
LSM6DSO = Family(
    "lsm6dso",
    (0x6A, 0x6B),
    Read(_Lsm6.WHO_AM_I),
    {0x6C: "LSM6DSO"},
    Lsm6dso,
    aliases=("lsm6dsox",),
)
FAMILIES: tuple[Family, ...] = (MPU, ICM20948, LSM6DS3, LSM6DSO)
ADDRESSES: tuple[int, ...] = (0x68, 0x69, 0x6A, 0x6B)

# Answers that identify a chip this agent does not drive, for a helpful error:
# (WHO_AM_I register, value) -> what it probably is.
KNOWN_UNSUPPORTED: Mapping[tuple[int, int], str] = {
    (0x75, 0x98): "ICM-20689",
    (0x75, 0x12): "ICM-20602",
    (0x75, 0x11): "ICM-20600",
    (0x75, 0xAF): "ICM-20608",
    (0x75, 0x47): "ICM-42688-P",
    (0x0F, 0x6B): "LSM6DSR/ASM330LHH/ISM330DHCX",
    (0x0F, 0x70): "LSM6DSV",
}


def families_for(chip: str) -> tuple[Family, ...]:
    """The families to probe for a configured ``chip``: "auto", a family or a model name."""
    key = chip_key(chip)
    if key == "auto":
        return FAMILIES
    found = tuple(f for f in FAMILIES if key in f.names())
    if not found:
        names = sorted({n for f in FAMILIES for n in f.names()})
        raise ValueError(f"unknown chip {chip!r}; use auto or one of {', '.join(names)}")
    return found
