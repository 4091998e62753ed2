"""Config: TOML + environment, one-line errors naming the key, exit status 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, parse_config
from simulators.stack import command

REPO = Path(__file__).resolve().parent.parent


def test_example_config_is_valid(tmp_path: Path) -> None:
    example = REPO / "config" / "agent.example.toml"
    with pytest.raises(
        ConfigError, match=r"mqtt.tls.ca: no readable file at /etc/telematics/ca.crt"
    ):
        load_config(example, environ={})
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = load_config(example, environ={"TELEMATICS_MQTT__TLS__CA": str(ca)})
    assert cfg.device.id == "van-042"
    assert cfg.mqtt.port == 8883
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.ca == ca


def test_environment_overrides_file() -> None:
    cfg = parse_config(
        {"device": {"id": "v1"}, "mqtt": {"host": "a"}},
        {"TELEMATICS_MQTT__HOST": "b", "TELEMATICS_MQTT__PORT": "8884", "OTHER": "x"},
    )
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("b", 8884)


def test_password_from_environment_is_secret() -> None:
    cfg = parse_config({"device": {"id": "v1"}}, {"TELEMATICS_MQTT__PASSWORD": "hunter2"})
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())


@pytest.mark.parametrize(
    ("raw", "env", "expected"),
    [
        ({"mqtt": {"port": "abc"}}, {}, "mqtt.port = 'abc': Input should be a valid integer"),
        ({"mqtt": {"hots": "x"}}, {}, "mqtt.hots: unknown key; allowed here: "),
        ({"gps": {"source": "usb"}}, {}, "gps.source = 'usb': Input should be 'serial'"),
        ({"gps": {"baud": 1234}}, {}, "gps.baud = 1234: Input should be 4800"),
        (
            {"sampler": {"period_s": -1}},
            {},
            "sampler.period_s = -1: Input should be greater than 0",
        ),
        ({}, {"TELEMATICS_MQTT__PORT": "70000"}, "environment TELEMATICS_MQTT__PORT: mqtt.port"),
        ({"gps": {"source": "file"}}, {}, "gps.path is required when gps.source = 'file'"),
    ],
)
def test_bad_value_names_key_and_value(raw: dict, env: dict, expected: str) -> None:
    raw = {"device": {"id": "v1"}, **raw}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env, origin="agent.toml")
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("raw", "env"),
    [
        ({"mqtt": {"pasword": "hunter2"}}, {}),
        ({"mqtt": {"password": 123456789}}, {}),
        ({"mqtt": {"password": "hunter2", "backoff_min_s": 120}}, {}),
        ({}, {"TELEMATICS_MQTT__PASSWD": "hunter2"}),
    ],
)
def test_errors_never_echo_secrets(raw: dict, env: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as err:
        parse_config({"device": {"id": "v1"}, **raw}, env)
    assert "hunter2" not in str(err.value) and "123456789" not in str(err.value)
    assert "mqtt." in str(err.value)


def test_backoff_order_and_tls_files_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"backoff_min_s \(120.0\) must not exceed"):
        parse_config({"device": {"id": "v1"}, "mqtt": {"backoff_min_s": 120}}, {})
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.key: no readable file"):
        parse_config(
            {"device": {"id": "v1"}, "mqtt": {"tls": {"cert": "/etc/hostname", "key": "/nope"}}}, {}
        )


def test_missing_device_id() -> None:
    with pytest.raises(ConfigError, match=r"device = .*|device: required key is missing"):
        parse_config({"gps": {}}, {})


def test_cli_exit_status_2_names_key(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('[device]\nid = "v1"\n[buffer]\ncommit_interval_s = "soon"\n')
    proc = subprocess.run(
        [command("telematics-agent"), "config", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "buffer.commit_interval_s = 'soon'" in lines[0]


def test_cli_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text("[device\n")
    for path in (bad, tmp_path / "nope.toml"):
        proc = subprocess.run(
            [command("telematics-agent"), "config", "check", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert str(path) in proc.stderr


def test_cli_check_ok(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    proc = subprocess.run(
        [command("telematics-agent"), "config", "check", str(REPO / "config/agent.example.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "TELEMATICS_MQTT__TLS__CA": str(ca)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "device van-042" in proc.stdout


def _keys(model: type, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    out = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        ann = field.annotation
        nested = [
            a
            for a in (ann, *getattr(ann, "__args__", ()))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if nested:
            out += _keys(nested[0], f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_key_is_documented() -> None:
    from agent.config import AgentConfig

    doc = (REPO / "docs" / "CONFIG.md").read_text()
    sections = {}
    current = None
    for line in doc.splitlines():
        if line.startswith("#") and "[" in line:
            current = line[line.index("[") + 1 : line.index("]")]
        elif line.startswith("| `") and current:
            sections.setdefault(current, set()).add(line.split("`")[1])
    missing = []
    for key in _keys(AgentConfig):
        section, _, name = key.rpartition(".")
        if name not in sections.get(section, set()):
            missing.append(key)
    assert missing == [], f"keys missing from docs/CONFIG.md: {missing}"


def test_a_broker_off_this_machine_gets_verified_tls_by_default() -> None:
    remote = parse_config({"device": {"id": "v1"}, "mqtt": {"host": "mqtt.example.com"}}, {})
    assert remote.mqtt.tls is not None and remote.mqtt.tls.ca is None  # the system's CAs
    assert remote.mqtt.tls.insecure is False and remote.mqtt.port == 8883
    for host in ("localhost", "127.0.0.1", "::1"):
        local = parse_config({"device": {"id": "v1"}, "mqtt": {"host": host}}, {})
        assert local.mqtt.tls is None and local.mqtt.port == 1883, host
    apn = parse_config(
        {"device": {"id": "v1"}, "mqtt": {"host": "10.8.0.1", "plaintext": True}}, {}
    )
    assert apn.mqtt.tls is None and apn.mqtt.port == 1883
    pinned = parse_config(
        {"device": {"id": "v1"}, "mqtt": {"host": "mqtt.example.com", "port": 443}}, {}
    )
    assert pinned.mqtt.tls is not None and pinned.mqtt.port == 443


def test_secrets_come_from_files_only_their_owner_can_read(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cret-pass\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: .*\(mode 644\); run: chmod 600"):
        parse_config({"device": {"id": "v1"}, "mqtt": {"password_file": str(secret)}}, {})
    secret.chmod(0o600)
    cfg = parse_config({"device": {"id": "v1"}, "mqtt": {"password_file": str(secret)}}, {})
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == "s3cret-pass"
    assert "s3cret-pass" not in repr(cfg) and "s3cret-pass" not in str(cfg.model_dump())
    key = tmp_path / "device.key"
    key.write_text("not really a key")
    key.chmod(0o640)
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.key: .* chmod 600"):
        parse_config(
            {"device": {"id": "v1"}, "mqtt": {"tls": {"cert": "/etc/hostname", "key": str(key)}}},
            {},
        )
