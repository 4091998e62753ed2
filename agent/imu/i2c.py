"""An IMU chip on a Raspberry Pi's I2C bus, read through its FIFO with smbus2.

UNTESTED ON HARDWARE.  The register logic (``agent.imu.chips``) and this
loop are exercised against emulated chips in the tests (registers, FIFO
count and data served byte for byte as the datasheets specify), never a
real MPU/ICM/LSM6 chip.  Bring a new board up by watching ``status()``:
chip and rate found, no overflows, health rate equal to the chip's rate.

Why it reads the way it does:

- The chip's FIFO, not its output registers: the chip samples at its own
  rate (50-200 Hz) and buffers, so a Linux thread that wakes every ~25 ms a
  few ms late loses nothing, and each wake costs one level read and one or
  two burst reads instead of 2-8 register reads per sample.
- Burst reads: ``read_i2c_block_data`` moves at most 32 bytes per SMBus
  transaction, so the FIFO is read in chunks that keep whole records or
  words (32, 30 or 28 bytes); ``use_rdwr`` reads it in one combined I2C
  transaction (``i2c_rdwr``) where the adapter allows.
- Time: the FIFO has no timestamps.  Samples are spaced by the measured
  output period (FIFO count over monotonic time, initially the configured
  rate) and anchored to the monotonic clock at each level read
  (``FifoClock``), so the stream shows the chip's real rate: a chip running
  off its configured rate is seen by the health checks.
- Overflow (the thread was starved, the bus failed for a while): the FIFO
  is reset, the loss is counted, and the timeline restarts; the health
  checks report the gap.
- One thread owns the bus for its whole life (open, probe, configure, poll,
  power down, close) and hands batches to the event loop; an ``OSError``
  (the chip unplugged, a bus error) ends it and the source reopens with
  backoff, like the serial GPS source.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from agent.backoff import Backoff
from agent.imu.chips import (
    ADDRESSES,
    KNOWN_UNSUPPORTED,
    ChipDriver,
    Family,
    Read,
    Write,
    families_for,
)
from agent.imu.chips import ImuSettings as ImuSettings
from agent.imu.health import HealthConfig, accel_range_si, gyro_range_si
from agent.imu.sample import ImuSample
from agent.imu.source_base import ImuSource, describe

if TYPE_CHECKING:
    from agent.config import ImuConfig

SMBUS_BLOCK_MAX = 32  # bytes per SMBus block read (I2C_SMBUS_BLOCK_MAX)
RDWR_MAX = 240  # bytes per combined transaction in use_rdwr mode


class I2cBus(Protocol):
    """The part of ``smbus2.SMBus`` used here (a test passes an emulated chip)."""

    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...

    def i2c_rdwr(self, *i2c_msgs: Any) -> None: ...

    def close(self) -> None: ...


class ChipError(Exception):
    """No supported chip answered (nothing on the bus, or an unsupported one)."""


def open_smbus(bus: int | str) -> I2cBus:
    """``smbus2.SMBus(bus)``, imported here so phones without smbus2 can import this module."""
    from smbus2 import SMBus

    return SMBus(bus)


class FifoClock:
    """Monotonic timestamps for FIFO samples, which carry none.

    ``stamp(n, mono)``: ``n`` samples were counted in the FIFO at ``mono``;
    the newest was taken up to one period earlier (half on average).  The
    period is measured: samples counted over the last ``window_s`` of
    monotonic time, clamped to half/double the nominal one, the nominal
    until ``min_span_s`` has passed.  Each batch continues from the previous
    one with a small pull (``gain``) towards the anchor so that errors do
    not accumulate; if the two drift apart by more than ``max_error_s``
    (after an overflow, a stall) the timeline restarts at the anchor.
    """

    def __init__(
        self,
        rate_hz: float,
        *,
        window_s: float = 5.0,
        min_span_s: float = 0.5,
        gain: float = 0.1,
        max_error_s: float = 0.1,
    ) -> None:
        self.nominal = 1.0 / rate_hz
        self.period = self.nominal
        self.window_s = window_s
        self.min_span_s = min_span_s
        self.gain = gain
        self.max_error_s = max_error_s
        self.reanchors = 0
        self._counts: deque[tuple[float, int]] = deque()
        self._total = 0
        self._last: float | None = None

    def restart(self) -> None:
        """The FIFO was reset: samples were lost, the next batch starts a new timeline."""
        self._counts.clear()
        self._last = None

    @property
    def measured_rate_hz(self) -> float:
        return 1.0 / self.period

    def stamp(self, n: int, mono: float) -> list[float]:
        self._total += n
        self._counts.append((mono, self._total))
        while len(self._counts) > 2 and self._counts[0][0] < mono - self.window_s:
            self._counts.popleft()
        (m0, c0), (m1, c1) = self._counts[0], self._counts[-1]
        if m1 - m0 >= self.min_span_s and c1 > c0:
            measured = (m1 - m0) / (c1 - c0)
            self.period = min(2 * self.nominal, max(0.5 * self.nominal, measured))
        if n == 0:
            return []
        p = self.period
        newest = mono - p / 2  # expected time of the newest sample
        last = self._last
        if last is None or abs(last + n * p - newest) > max(self.max_error_s, 2 * p):
            if last is not None:
                self.reanchors += 1
            first = newest - (n - 1) * p
            if last is not None and first <= last:
                first = last + p / 2
            step = p
        else:
            step = max(0.5 * p, p + self.gain * (newest - (last + n * p)) / n)
            first = last + step
        times = [first + i * step for i in range(n)]
        self._last = times[-1]
        return times


@dataclass(frozen=True, slots=True)
class ChipFound:
    """What the probe found and how it was configured (posted to the loop once open)."""

    address: int
    who_am_i: int
    driver: ChipDriver


class I2cImu:
    """One chip on one bus: probe, configure, poll the FIFO.  Blocking; no threads.

    The source runs it in a thread; tests drive it directly with an emulated
    bus and a fake clock.  ``address`` None probes 0x68, 0x69, 0x6A, 0x6B.
    """

    def __init__(
        self,
        bus_factory: Callable[[], I2cBus],
        settings: ImuSettings,
        *,
        address: int | None = None,
        chip: str = "auto",
        use_rdwr: bool = False,
        mono: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.bus_factory = bus_factory
        self.settings = settings
        self.address = address
        self.families = families_for(chip)
        self.use_rdwr = use_rdwr
        self._mono = mono
        self._sleep = sleep
        self.bus: I2cBus | None = None
        self.found: ChipFound | None = None
        self.clock: FifoClock | None = None
        self._bank: int | None = None
        # counters, read by the source's status from another thread (plain ints)
        self.polls = 0
        self.empty_polls = 0
        self.transactions = 0
        self.bytes_read = 0
        self.overflows = 0
        self.lost_samples = 0  # in the FIFO when it overflowed: thrown away with the reset
        self.misaligned = 0
        self.samples = 0

    @property
    def driver(self) -> ChipDriver:
        assert self.found is not None, "open() first"
        return self.found.driver

    # -- open / close --------------------------------------------------------------

    def open(self) -> ChipFound:
        """Open the bus, find the chip, configure it and start its FIFO."""
        self.bus = self.bus_factory()
        self._bank = None
        found = self._probe()
        self.found = found
        for w in found.driver.setup():
            self._write(w)
        self.clock = FifoClock(found.driver.rate_hz)
        return found

    def close(self) -> None:
        """Power the chip down (best effort: it may be the reason we close) and close the bus."""
        bus, self.bus = self.bus, None
        if bus is None:
            return
        if self.found is not None:
            with contextlib.suppress(OSError):
                for w in self.found.driver.shutdown():
                    self._write(w, bus)
        with contextlib.suppress(OSError):
            bus.close()

    def _probe(self) -> ChipFound:
        addresses = (self.address,) if self.address is not None else ADDRESSES
        seen: list[str] = []
        for addr in addresses:
            families = [f for f in self.families if addr in f.addresses]
            if not families and self.address is not None:
                families = list(self.families)  # an explicit address: try what was asked
            answered = False
            for fam in families:
                try:
                    value = self._who_am_i(addr, fam)
                except OSError:
                    continue  # nothing at this address (NACK) or it does not like the probe
                answered = True
                model = fam.models.get(value)
                if model is not None:
                    self._bank = 0 if fam.bank_select is not None else None
                    return ChipFound(addr, value, fam.make(model, self.settings))
                guess = KNOWN_UNSUPPORTED.get((fam.who_am_i.reg, value))
                seen.append(
                    f"0x{addr:02x} reg 0x{fam.who_am_i.reg:02x} = 0x{value:02x}"
                    + (f" ({guess}, not supported)" if guess else "")
                )
            if not answered:
                seen.append(f"0x{addr:02x}: no answer")
        raise ChipError("no supported IMU found: " + "; ".join(seen))

    def _who_am_i(self, addr: int, fam: Family) -> int:
        bus = self._bus()
        value = bus.read_byte_data(addr, fam.who_am_i.reg)
        if value not in fam.models and fam.bank_select is not None:
            # A banked chip left in another bank by a previous run: select bank 0, ask again.
            bus.write_byte_data(addr, fam.bank_select.reg, fam.bank_select.value)
            value = bus.read_byte_data(addr, fam.who_am_i.reg)
        return value

    # -- polling -------------------------------------------------------------------

    def poll(self) -> list[ImuSample]:
        """Read what the FIFO holds: whole records, stamped; [] if empty or just reset."""
        d, clock = self.driver, self.clock
        assert clock is not None
        self.polls += 1
        raws = [self._read(r) for r in d.level_reads()]
        mono = self._mono()
        level = d.parse_level(raws)
        if level.overflow or not level.aligned:
            if level.overflow:
                self.overflows += 1
                # a full FIFO's count can wrap to 0 (LSM6DSL: 11 bits for 2048 words)
                self.lost_samples += level.records or d.fifo_samples
            else:
                self.misaligned += 1
            for w in d.reset_fifo():
                self._write(w)
            d.restart()
            clock.restart()
            return []
        if level.readable == 0:
            self.empty_polls += 1
            return []
        data = self._read_fifo(level.readable)
        values = d.decode(data)
        times = clock.stamp(len(values), mono)
        self.samples += len(values)
        return [ImuSample(t, *v) for t, v in zip(times, values, strict=True)]

    def counters(self) -> dict[str, int]:
        """The counts of this connection (the source adds up those of past ones)."""
        return {
            "polls": self.polls,
            "empty_polls": self.empty_polls,
            "transactions": self.transactions,
            "bytes_read": self.bytes_read,
            "fifo_overflows": self.overflows,
            "fifo_lost_samples": self.lost_samples,
            "fifo_misaligned": self.misaligned,
        }

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters())
        out["burst"] = "i2c_rdwr" if self.use_rdwr else "smbus_block"
        if self.clock is not None:
            out["measured_rate_hz"] = round(self.clock.measured_rate_hz, 2)
            out["clock_reanchors"] = self.clock.reanchors
        return out

    # -- bus access ----------------------------------------------------------------

    def _bus(self) -> I2cBus:
        if self.bus is None:
            raise OSError("bus closed")
        return self.bus

    def _addr(self) -> int:
        assert self.found is not None
        return self.found.address

    def _select_bank(self, bank: int | None, bus: I2cBus) -> None:
        reg = self.found.driver.bank_select_reg if self.found is not None else None
        if bank is None or reg is None or bank == self._bank:
            return
        bus.write_byte_data(self._addr(), reg, bank << 4)
        self.transactions += 1
        self._bank = bank

    def _write(self, w: Write, bus: I2cBus | None = None) -> None:
        bus = bus if bus is not None else self._bus()
        self._select_bank(w.bank, bus)
        bus.write_byte_data(self._addr(), w.reg, w.value)
        self.transactions += 1
        if w.delay_s:
            self._sleep(w.delay_s)

    def _read(self, r: Read) -> bytes:
        bus = self._bus()
        self._select_bank(r.bank, bus)
        if r.length == 1:
            data = bytes([bus.read_byte_data(self._addr(), r.reg)])
        else:
            data = bytes(bus.read_i2c_block_data(self._addr(), r.reg, r.length))
        self.transactions += 1
        return data

    def _read_fifo(self, n: int) -> bytes:
        """``n`` FIFO bytes in bursts that each keep whole records/words."""
        d, bus = self.driver, self._bus()
        self._select_bank(d.fifo_data.bank, bus)
        limit = RDWR_MAX if self.use_rdwr else SMBUS_BLOCK_MAX
        chunk = limit - limit % d.read_unit
        out = bytearray()
        while len(out) < n:
            size = min(chunk, n - len(out))
            if self.use_rdwr:
                out += _rdwr_read(bus, self._addr(), d.fifo_data.reg, size)
            else:
                out += bytes(bus.read_i2c_block_data(self._addr(), d.fifo_data.reg, size))
            self.transactions += 1
        self.bytes_read += len(out)
        return bytes(out)


def _rdwr_read(bus: I2cBus, addr: int, reg: int, size: int) -> bytes:
    """Write the register address, then read ``size`` bytes, as one combined transaction."""
    from smbus2 import i2c_msg

    write, read = i2c_msg.write(addr, [reg]), i2c_msg.read(addr, size)
    bus.i2c_rdwr(write, read)
    return ctypes.string_at(read.buf, read.len)


_Item = ChipFound | list[ImuSample] | BaseException


class I2cImuSource(ImuSource):
    """A chip on ``/dev/i2c-<bus>`` (``bus=1`` on a Raspberry Pi), probed or at ``address``.

    ``chip`` "auto" probes every supported family; a family or model name
    ("mpu", "icm20948", "lsm6dso", "MPU-9250") limits the probe to it.
    ``poll_s`` is how often the FIFO is read (20-50 ms: far below what
    fills the smallest FIFO, 512 bytes = 42 records = 210 ms at 200 Hz).
    UNTESTED ON HARDWARE (see the module docstring).
    """

    kind: ClassVar[str] = "i2c"

    def __init__(
        self,
        *,
        bus: int | str = 1,
        address: int | None = None,
        chip: str = "auto",
        settings: ImuSettings | None = None,
        poll_s: float = 0.025,
        use_rdwr: bool = False,
        bus_factory: Callable[[], I2cBus] | None = None,
        name: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if not 0.005 <= poll_s <= 0.1:
            raise ValueError(f"poll_s must be 0.005-0.1 s, got {poll_s}")
        self.settings = settings if settings is not None else ImuSettings()
        super().__init__(name=name, backoff=backoff, health=self._health_config(None))
        families_for(chip)  # a typo in the config fails now, not in the thread
        self.bus = bus
        self.address = address
        self.chip = chip
        self.poll_s = poll_s
        self.use_rdwr = use_rdwr
        self.bus_factory = bus_factory if bus_factory is not None else lambda: open_smbus(bus)
        self._worker: _Worker | None = None
        self._found: ChipFound | None = None
        self._past: Counter[str] = Counter()  # counters of finished connections

    @classmethod
    def from_config(
        cls,
        cfg: ImuConfig,
        *,
        bus_factory: Callable[[], I2cBus] | None = None,
        backoff: Backoff | None = None,
    ) -> I2cImuSource:
        """The source the ``[imu]`` section describes (``source = "i2c"``)."""
        return cls(
            bus=cfg.i2c_bus,
            address=cfg.i2c_address,
            chip=cfg.chip,
            settings=ImuSettings(
                rate_hz=float(cfg.rate_hz),
                accel_range_g=cfg.accel_range_g,
                gyro_range_dps=cfg.gyro_range_dps,
            ),
            bus_factory=bus_factory,
            backoff=backoff,
        )

    def _health_config(self, driver: ChipDriver | None) -> HealthConfig:
        s = self.settings
        return HealthConfig(
            expected_rate_hz=driver.rate_hz if driver is not None else s.rate_hz,
            accel_range=accel_range_si(s.accel_range_g),
            gyro_range=gyro_range_si(s.gyro_range_dps),
        )

    @property
    def target(self) -> str:
        bus = self.bus if isinstance(self.bus, str) else f"/dev/i2c-{self.bus}"
        addr = self._found.address if self._found is not None else self.address
        return f"{bus} " + (f"0x{addr:02x}" if addr is not None else "(probing)")

    def _source_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chip": None}
        if self._found is not None:
            out["chip"] = {
                "address": f"0x{self._found.address:02x}",
                "who_am_i": f"0x{self._found.who_am_i:02x}",
                **self._found.driver.info(),
            }
        worker = self._worker
        if worker is not None:
            out.update(worker.imu.stats())
        for key, past in self._past.items():  # counts over every connection, not just this one
            out[key] = out.get(key, 0) + past
        return out

    async def batches(self) -> AsyncGenerator[list[ImuSample], None]:
        while not self.closed:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[_Item] = asyncio.Queue()
            imu = I2cImu(
                self.bus_factory,
                self.settings,
                address=self.address,
                chip=self.chip,
                use_rdwr=self.use_rdwr,
            )
            worker = self._worker = _Worker(self, imu, loop, queue)
            worker.start()
            healthy = False
            try:
                while not self.closed:
                    item = await queue.get()
                    if isinstance(item, ChipFound):
                        self._found = item
                        self._expect(self._health_config(item.driver))
                        self._opened()
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        if not healthy:
                            healthy = True
                            self._backoff.reset()
                        self._deliver(item)
                        yield item
                reason = "closed"
            except Exception as exc:  # bus, chip or a driver bug: reopen, never kill the agent
                reason = describe(exc)
            finally:
                self._connected = False
                await worker.stop()
                self._past.update(imu.counters())
                self._worker = None
            if self.closed:
                break
            self._lost(reason)
            await self._wait_before_retry()

    async def close(self) -> None:
        """Stop the reader thread; it puts the chip to sleep and closes the bus."""
        await super().close()
        worker = self._worker
        if worker is not None:
            await worker.stop()


class _Worker(threading.Thread):
    """Owns the bus for its whole life: open, poll every ``poll_s``, power down, close."""

    def __init__(
        self,
        source: I2cImuSource,
        imu: I2cImu,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[_Item],
    ) -> None:
        super().__init__(name=f"{source.name}-reader", daemon=True)
        self.imu = imu
        self.poll_s = source.poll_s
        self._loop = loop
        self._queue = queue
        self._stopping = threading.Event()

    def _post(self, item: _Item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is exiting
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def run(self) -> None:
        try:
            self._post(self.imu.open())
            while not self._stopping.is_set():
                started = time.monotonic()
                batch = self.imu.poll()
                if batch:
                    self._post(batch)
                self._stopping.wait(max(0.0, self.poll_s - (time.monotonic() - started)))
        except Exception as exc:  # a thread must not die silently: the loop re-raises it
            if not self._stopping.is_set():
                self._post(exc)
        finally:
            self.imu.close()
        # wake the loop if it waits on the queue after a stop it did not ask for
        if self._stopping.is_set():
            self._post(OSError("reader stopped"))

    async def stop(self) -> None:
        """Ask the thread to finish and wait, off the loop, while it powers the chip down."""
        self._stopping.set()
        if self.is_alive():
            await asyncio.to_thread(self.join, 2.0)
