"""The configured IMU source (not yet started: ``batches()`` opens and reopens it)."""

from __future__ import annotations

from agent.config import ImuConfig
from agent.imu.source_base import ImuSource


def open_imu_source(cfg: ImuConfig) -> ImuSource:
    if cfg.source == "termux":
        from agent.imu.termux import TermuxSensorSource

        return TermuxSensorSource.from_config(cfg)
    if cfg.source == "i2c":
        from agent.imu.i2c import I2cImuSource

        source: ImuSource = I2cImuSource.from_config(cfg)
        return source
    raise ValueError("imu.source is none: there is no IMU to open")
