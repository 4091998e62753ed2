"""Agent configuration: one TOML file, environment overrides, strict validation.

An installer gets one line back for a mistake: the key, the value given and
what is allowed (``ConfigError``), and the CLI exits with status 2.  Unknown
keys are errors, because a misspelt key silently ignored is a van that
reports to the wrong broker.

Environment overrides: ``TELEMATICS_<SECTION>__<KEY>=value`` (double
underscore between levels, case-insensitive), e.g. ``TELEMATICS_MQTT__HOST``.
They are applied over the file before validation, so they are checked the
same way.  docs/CONFIG.md documents every key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from agent.messages import DeviceId

if TYPE_CHECKING:
    from agent.buffer.trim import Caps
    from agent.gps.termux_source import TermuxOptions
    from agent.imu.harsh import HarshConfig
    from agent.imu.processor import ImuProcessor

ENV_PREFIX = "TELEMATICS_"

PositiveFloat = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=0, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceConfig(_Section):
    id: DeviceId = Field(description="unique device id; also the MQTT topic segment")


class TermuxGpsConfig(_Section):
    """``[gps.termux]``: a phone's GNSS through termux-location, paced by its battery."""

    provider: Literal["gps", "network", "passive"] = Field(
        "gps", description="gps: the GNSS chip; network: cell/Wi-Fi; passive: other apps' fixes"
    )
    fix_timeout_s: Annotated[float, Field(ge=5, le=600)] = Field(
        60.0,
        description="after this long without a fix, status says it is waiting (indoors); "
        "the request is kept, never repeated, until it answers",
    )
    max_age_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        10.0, description="an answer whose fix is older than this (elapsedMs) is rejected"
    )
    moving_s: Annotated[float, Field(ge=0.5, le=300)] = Field(
        1.0, description="poll interval while moving (or on a charger)"
    )
    stopped_s: Annotated[float, Field(ge=0.5, le=3600)] = Field(
        15.0, description="poll interval once stopped for stopped_after_s"
    )
    parked_s: Annotated[float, Field(ge=0.5, le=3600)] = Field(
        60.0, description="poll interval once stopped for parked_after_s"
    )
    stopped_after_s: Annotated[float, Field(gt=0, le=86400)] = 120.0
    parked_after_s: Annotated[float, Field(gt=0, le=86400)] = 900.0
    low_battery_pct: Annotated[float, Field(gt=0, le=100)] = Field(
        20.0, description="below this, not charging: intervals x3"
    )
    critical_battery_pct: Annotated[float, Field(ge=0, lt=100)] = Field(
        10.0, description="below this, not charging: intervals x10, IMU off"
    )
    battery: bool = Field(True, description="read termux-battery-status to pace the polling")
    accept_mock: bool = Field(False, description="accept locations from mock-location apps")
    geoid_sep_m: Annotated[float, Field(ge=-120, le=120)] | None = Field(
        None, description="local geoid height: Android's ellipsoid altitude minus it is MSL"
    )

    @model_validator(mode="after")
    def _order(self) -> TermuxGpsConfig:
        if not self.moving_s <= self.stopped_s <= self.parked_s:
            raise ValueError(
                f"gps.termux: need moving_s ({self.moving_s:g}) <= stopped_s "
                f"({self.stopped_s:g}) <= parked_s ({self.parked_s:g})"
            )
        if self.stopped_after_s >= self.parked_after_s:
            raise ValueError(
                f"gps.termux: stopped_after_s ({self.stopped_after_s:g}) must be below "
                f"parked_after_s ({self.parked_after_s:g})"
            )
        if self.critical_battery_pct >= self.low_battery_pct:
            raise ValueError(
                f"gps.termux: critical_battery_pct ({self.critical_battery_pct:g}) must be below "
                f"low_battery_pct ({self.low_battery_pct:g})"
            )
        return self

    def options(self, imu_delay_ms: int | None = None) -> TermuxOptions:
        """The source's settings, with the power policy built from these figures.

        ``imu_delay_ms``: the phone IMU's configured print interval
        (``imu.rate_hz``: ``round(1000 / rate_hz)``), the plan's full IMU
        rate, which the plan only multiplies (low battery, heat); None keeps
        the policy's default (10 ms, the default 100 Hz).
        """
        from dataclasses import replace

        from agent.gps.termux_source import TermuxOptions
        from agent.power import PowerPolicy

        policy = PowerPolicy(
            moving_s=self.moving_s,
            stopped_s=self.stopped_s,
            parked_s=self.parked_s,
            low_pct=self.low_battery_pct,
            critical_pct=self.critical_battery_pct,
            max_s=max(300.0, self.parked_s),
        )
        if imu_delay_ms is not None:
            policy = replace(policy, imu_delay_ms=max(1, int(imu_delay_ms)))
        return TermuxOptions(
            provider=self.provider,
            fix_timeout_s=self.fix_timeout_s,
            max_age_s=self.max_age_s,
            battery=self.battery,
            accept_mock=self.accept_mock,
            geoid_sep_m=self.geoid_sep_m,
            policy=policy,
            stopped_after_s=self.stopped_after_s,
            parked_after_s=self.parked_after_s,
        )


class GpsConfig(_Section):
    source: Literal["serial", "tcp", "file", "gpsd", "termux"] = Field(
        "serial", description="termux: a phone's GNSS through termux-location ([gps.termux])"
    )
    device: str = Field("/dev/ttyACM0", description="serial device path (source = serial)")
    baud: Literal[4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800] = 9600
    host: str = Field("127.0.0.1", description="host for source = tcp or gpsd")
    port: Port = Field(2947, description="TCP port for source = tcp or gpsd")
    path: Path | None = Field(None, description="NMEA file for source = file")
    rollover_floor: date = Field(
        date(2024, 1, 1),
        description="receiver dates before this are GPS week-rollover errors (+1024 weeks)",
    )
    termux: TermuxGpsConfig = TermuxGpsConfig()

    @model_validator(mode="after")
    def _file_needs_path(self) -> GpsConfig:
        if self.source == "file" and self.path is None:
            raise ValueError("gps.path is required when gps.source = 'file'")
        return self


class SamplerConfig(_Section):
    period_s: PositiveFloat = Field(1.0, description="position period while moving")
    heading_change_deg: Annotated[float, Field(gt=0, le=180)] = 15.0
    distance_m: PositiveFloat = 100.0
    heartbeat_s: PositiveFloat = Field(300.0, description="position period while stopped")
    moving_speed_kmh: Annotated[float, Field(ge=0)] = 5.0
    speed_change_kmh: PositiveFloat | None = Field(
        None, description="extra position when speed changed this much since the last one"
    )


class BufferConfig(_Section):
    path: Path = Path("/var/lib/telematics/outbox.sqlite")
    commit_interval_s: Annotated[float, Field(ge=0, le=10)] = Field(
        1.0, description="group-commit window: the most data a kill -9 or power cut can lose"
    )
    max_mb: Annotated[float, Field(ge=1)] = Field(
        64.0, description="soft cap: above it routine telemetry is thinned, oldest first"
    )
    hard_max_mb: Annotated[float, Field(ge=1)] = Field(
        96.0, description="hard cap: above it the oldest records go, events included"
    )
    max_age_h: Annotated[float, Field(gt=0)] | None = Field(
        168.0, description="routine telemetry older than this (before the newest) goes"
    )
    thin_keep_every: Annotated[int, Field(ge=2, le=100)] = Field(
        4, description="thinning keeps every Nth routine record of the oldest stretch"
    )
    reserve_mb: Annotated[float, Field(ge=0)] = Field(
        32.0, description="free space kept on the buffer's filesystem; the soft cap gives way"
    )

    @model_validator(mode="after")
    def _cap_order(self) -> BufferConfig:
        if self.hard_max_mb < self.max_mb:
            raise ValueError(
                f"buffer.hard_max_mb ({self.hard_max_mb:g}) must not be below "
                f"buffer.max_mb ({self.max_mb:g})"
            )
        return self

    def caps(self) -> Caps:
        from agent.buffer.trim import Caps

        mb = 1024 * 1024
        return Caps(
            soft_bytes=int(self.max_mb * mb),
            hard_bytes=int(self.hard_max_mb * mb),
            max_age_s=None if self.max_age_h is None else self.max_age_h * 3600,
            keep_every=self.thin_keep_every,
            reserve_bytes=int(self.reserve_mb * mb),
        )


class TlsConfig(_Section):
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = Field(False, description="skip hostname check (test benches only)")

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("mqtt.tls.cert and mqtt.tls.key go together")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"mqtt.tls.{name}: no readable file at {path}")
        if self.key is not None:
            check_private_file(self.key, "mqtt.tls.key")
        return self


def check_private_file(path: Path, key: str) -> None:
    """A secret's file must be readable by its owner only: say which key and how to fix it."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(
            f"{key}: {path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
        )


def is_loopback(host: str) -> bool:
    """Whether the broker is on this machine (then plain TCP is fine)."""
    if host.lower() in ("localhost", "ip6-localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MqttConfig(_Section):
    host: str = "localhost"
    port: Port = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")] = "fleet"
    client_id: str | None = Field(None, description="defaults to the device id")
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = Field(
        60, description="MQTT keepalive: pings only when nothing else was sent this long"
    )
    inflight: Annotated[int, Field(ge=1, le=1000)] = Field(
        10, description="publishes awaiting PUBACK at once"
    )
    batch_max: Annotated[int, Field(ge=1, le=500)] = 50
    encoding: Literal["c1", "json"] = Field(
        "c1", description="telemetry and events payloads: c1 = columnar + zlib, json = plain"
    )
    telemetry_hold_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        30.0,
        description="hold routine telemetry until this old (or batch_max waiting) to send it "
        "in one batch; events, requested positions and impacts go at once",
    )
    live_lane_after: Annotated[int, Field(ge=0)] = Field(
        500, description="backlog size above which new records get every other publish"
    )
    status_interval_s: PositiveFloat = Field(
        900.0,
        description="how often the retained online status (with health, ~2 kB) is refreshed",
    )
    backoff_min_s: PositiveFloat = 1.0
    backoff_max_s: PositiveFloat = 60.0
    password_file: Path | None = Field(
        None, description="file holding the password (mode 600); instead of password"
    )
    session_expiry_s: Annotated[int, Field(ge=0, le=30 * 86400)] = Field(
        86400,
        description="MQTT 5: how long the broker keeps commands for this device while it is "
        "offline; 0 = a clean session each connect",
    )
    plaintext: bool = Field(
        False, description="allow plain TCP to a broker that is not on loopback (private APN/VPN)"
    )

    @model_validator(mode="before")
    @classmethod
    def _tls_by_default(cls, data: Any) -> Any:
        """A broker off this machine gets TLS with server verification unless told otherwise."""
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        host = str(out.get("host", "localhost"))
        if "tls" not in out and not out.get("plaintext") and not is_loopback(host):
            out["tls"] = {}
        if out.get("tls") is not None and "port" not in out:
            out["port"] = 8883
        return out

    @model_validator(mode="after")
    def _password_file(self) -> MqttConfig:
        if self.password_file is None:
            return self
        if self.password is not None:
            raise ValueError("mqtt.password and mqtt.password_file: give one, not both")
        path = self.password_file
        if not path.is_file():
            raise ValueError(f"mqtt.password_file: no readable file at {path}")
        check_private_file(path, "mqtt.password_file")
        self.password = SecretStr(path.read_text(encoding="utf-8").strip())
        return self

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttConfig:
        if self.backoff_min_s > self.backoff_max_s:
            raise ValueError(
                f"mqtt.backoff_min_s ({self.backoff_min_s}) must not exceed "
                f"mqtt.backoff_max_s ({self.backoff_max_s})"
            )
        return self


class GeofenceConfig(_Section):
    zones_file: Path | None = Field(
        None, description="GeoJSON FeatureCollection or zone-set JSON; a pushed config replaces it"
    )
    default_dwell_s: PositiveFloat = 30.0
    uere_m: PositiveFloat = 5.0
    min_margin_m: Annotated[float, Field(ge=0)] = 5.0
    min_side_s: Annotated[float, Field(ge=0)] = 3.0
    max_hdop: PositiveFloat = 5.0
    approach: bool = Field(
        False, description="geofence_approach events; off by default: noisy with dense zone sets"
    )
    approach_m: PositiveFloat = 1000.0
    approach_s: PositiveFloat = 300.0


class TripsConfig(_Section):
    stop_speed_kmh: Annotated[float, Field(gt=0)] = 5.0
    move_speed_kmh: Annotated[float, Field(gt=0)] = 10.0
    stop_radius_m: PositiveFloat = 25.0
    min_stop_s: Annotated[float, Field(ge=0)] = 30.0
    trip_start_distance_m: PositiveFloat = 200.0
    trip_end_stop_s: PositiveFloat = 300.0
    idle_threshold_s: PositiveFloat = 60.0
    excessive_idle_s: PositiveFloat = 300.0
    overspeed_kmh: PositiveFloat | None = Field(
        None, description="speed limit for overspeed events; zones' own limits apply inside them"
    )
    overspeed_min_s: Annotated[float, Field(ge=0)] = 10.0
    overspeed_hysteresis_kmh: Annotated[float, Field(ge=0)] = 3.0


_POLL_JOBS = ("voltage", "dtc", "mil")


class ObdConfig(_Section):
    source: Literal["none", "elm327", "can"] = Field(
        "none",
        description="none on phones; elm327 for USB/Bluetooth/Wi-Fi adapters; can for a CAN HAT",
    )
    port: str = Field(
        "/dev/obd0",
        description="ELM327 port: /dev/ttyUSB0, /dev/rfcomm0, or socket://192.168.0.10:35000",
    )
    baud: Literal[9600, 19200, 38400, 57600, 115200, 230400, 500000] = Field(
        38400, description="always explicit: python-OBD's baud probe hangs on sockets"
    )
    protocol: Literal["auto", "1", "2", "3", "4", "5", "6", "7", "8", "9", "A", "B", "C"] = "auto"
    read_timeout_s: Annotated[float, Field(gt=0, le=30)] = 2.0
    can_interface: str = Field("socketcan", description="python-can interface (source = can)")
    can_channel: str = Field("can0", description="python-can channel (source = can)")
    can_bitrate: Literal[250000, 500000] = 500000
    can_extended_ids: bool = Field(False, description="29-bit ISO 15765-4 addressing")
    snapshot_interval_s: PositiveFloat = Field(10.0, description="period of OBD telemetry records")
    poll: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description='poll period overrides: {"0C" = 1.0, "voltage" = 10, "dtc" = 120}',
    )
    reconnect_max_s: Annotated[float, Field(gt=0, le=300)] = 2.0
    vehicle_retry_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    record: Path | None = Field(None, description="append every OBD exchange to this log file")

    @model_validator(mode="after")
    def _poll_items(self) -> ObdConfig:
        from agent.obd.pids import SIGNALS

        for item in self.poll:
            if item in _POLL_JOBS:
                continue
            try:
                pid = int(item, 16)
            except ValueError:
                pid = -1
            if len(item) != 2 or pid not in SIGNALS:
                known = ", ".join([f"{p:02X}" for p in sorted(SIGNALS)] + list(_POLL_JOBS))
                raise ValueError(f"poll: {item!r} is not a PID we poll or a job; known: {known}")
        return self


class HarshClassConfig(_Section):
    """Overrides of one harsh class's preset values (absent keys keep the preset's)."""

    threshold_mps2: PositiveFloat | None = None
    end_mps2: PositiveFloat | None = Field(None, description="hysteresis: the event ends below")
    min_duration_s: Annotated[float, Field(ge=0, le=10)] | None = None
    min_speed_kmh: Annotated[float, Field(ge=0, le=200)] | None = None

    @model_validator(mode="after")
    def _hysteresis(self) -> HarshClassConfig:
        if (
            self.end_mps2 is not None
            and self.threshold_mps2 is not None
            and self.end_mps2 > self.threshold_mps2
        ):
            raise ValueError("end_mps2 must not exceed threshold_mps2 (it is where the event ends)")
        return self


class ImuConfig(_Section):
    source: Literal["none", "i2c", "termux"] = Field(
        "none", description="i2c: a chip on the Pi's I2C bus; termux: a phone's sensors"
    )
    chip: Literal[
        "auto",
        "mpu6050",
        "mpu6500",
        "mpu9250",
        "mpu9255",
        "icm20948",
        "lsm6ds3",
        "lsm6dsl",
        "lsm6dso",
    ] = "auto"
    i2c_bus: Annotated[int, Field(ge=0, le=255)] = 1
    i2c_address: Annotated[int, Field(ge=0x03, le=0x77)] | None = None
    rate_hz: Annotated[int, Field(ge=50, le=200)] = 100
    accel_range_g: Literal[2, 4, 8, 16] = Field(16, description="16 g keeps impacts unclipped")
    gyro_range_dps: Literal[250, 500, 1000, 2000] = 500
    preset: Literal["car", "van", "truck"] = "van"
    acceleration: HarshClassConfig = HarshClassConfig()
    braking: HarshClassConfig = HarshClassConfig()
    cornering: HarshClassConfig = HarshClassConfig()
    impact_g: Annotated[float, Field(gt=0.5, le=50)] = 2.5

    def harsh(self) -> HarshConfig:
        """The preset with this section's per-class overrides."""
        from dataclasses import replace

        from agent.imu.harsh import preset

        base = preset(self.preset)
        out = {}
        for name in ("acceleration", "braking", "cornering"):
            cls = getattr(base, name)
            over: HarshClassConfig = getattr(self, name)
            threshold = over.threshold_mps2 or cls.threshold
            end = over.end_mps2 or (
                round(threshold * 0.75, 2) if over.threshold_mps2 else cls.end_threshold
            )
            if end > threshold:
                raise ValueError(f"imu.{name}.end_mps2 ({end}) must not exceed its threshold")
            out[name] = replace(
                cls,
                threshold=threshold,
                end_threshold=end,
                min_duration_s=cls.min_duration_s
                if over.min_duration_s is None
                else over.min_duration_s,
                min_speed_kmh=cls.min_speed_kmh
                if over.min_speed_kmh is None
                else over.min_speed_kmh,
            )
        return replace(base, **out)

    def processor(self, *, earth_frame: bool = False) -> ImuProcessor:
        from agent.imu.processor import ImuProcessor

        return ImuProcessor(self.harsh(), impact_g=self.impact_g, earth_frame=earth_frame)


class ClockConfig(_Section):
    source: Literal["auto", "system", "gnss"] = Field(
        "auto",
        description="auto: system clock when the kernel says it is synchronised, else GNSS",
    )


class LogConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class AgentConfig(_Section):
    device: DeviceConfig
    gps: GpsConfig = GpsConfig()
    sampler: SamplerConfig = SamplerConfig()
    buffer: BufferConfig = BufferConfig()
    mqtt: MqttConfig = MqttConfig()
    geofence: GeofenceConfig = GeofenceConfig()
    trips: TripsConfig = TripsConfig()
    obd: ObdConfig = ObdConfig()
    imu: ImuConfig = ImuConfig()
    clock: ClockConfig = ClockConfig()
    log: LogConfig = LogConfig()

    def digest(self) -> str:
        """Short hash of the effective config (secrets excluded) for the status topic."""
        data = self.model_dump(mode="json", exclude={"mqtt": {"password"}})
        raw = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:12]


class ConfigError(Exception):
    """A configuration mistake, phrased as the one line an installer reads."""


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, overlay environment, validate; raise ConfigError naming the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} unreadable: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_config(raw, os.environ if environ is None else environ, origin=str(path))


def parse_config(
    raw: dict[str, Any], environ: Mapping[str, str] | None = None, origin: str = "config"
) -> AgentConfig:
    data, from_env = _overlay_env(raw, environ or {})
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data, origin, from_env)) from None


def _overlay_env(
    raw: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Apply TELEMATICS_A__B=value over the file's dict (values stay strings).

    Pydantic then converts and checks them exactly like file values, so
    ``TELEMATICS_MQTT__PORT=abc`` fails with the key named.
    """
    data: dict[str, Any] = json.loads(json.dumps(raw, default=str))
    from_env: dict[tuple[str, ...], str] = {}
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment {name}: {part} is not a section")
            node = child
        node[parts[-1]] = environ[name]
        from_env[tuple(parts)] = name
    return data, from_env


def _describe(
    exc: ValidationError, data: dict[str, Any], origin: str, from_env: dict[tuple[str, ...], str]
) -> str:
    """First error as 'key = value: what is allowed' (more errors are counted)."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-after")]
    # A cross-key rule (value_error) names its keys itself; its "value" would be
    # the whole section, secrets included.
    given_section = err["type"] == "value_error"
    if tuple(loc) in from_env:
        origin = f"environment {from_env[tuple(loc)]}"
    key = ".".join(loc) or "(top level)"
    given = _lookup(data, err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        what = f"unknown key; allowed here: {', '.join(allowed)}"
    elif err["type"] == "missing":
        what = "required key is missing"
    else:
        what = err["msg"].removeprefix("Value error, ")
    if given is _MISSING or err["type"] == "extra_forbidden" or given_section:
        value = ""  # an unknown key may be a misspelt secret: never echo it
    elif any(word in key.lower() for word in _SECRET_WORDS):
        value = " = (hidden)"
    else:
        value = f" = {given!r}"
    more = len(exc.errors()) - 1
    tail = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{origin}: {key}{value}: {what}{tail}"


_MISSING = object()
_SECRET_WORDS = ("pass", "secret", "token")


def _lookup(data: Any, loc: tuple[int | str, ...]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:  # noqa: SIM114 - separate for mypy
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return _MISSING
    return data


def _allowed_keys(section: list[str]) -> list[str]:
    model: type[BaseModel] = AgentConfig
    for part in section:
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)
