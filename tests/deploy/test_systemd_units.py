"""The systemd units and udev rules in systemd/, checked as systemd and udev read them.

``systemd-analyze verify`` loads a unit the way PID 1 would (unknown keys,
bad values, missing executables) without needing systemd to be running, so
it works in a container.  It insists that ExecStart's binary exists, and
/opt/telematics/venv is not installed on a build machine, so each unit is
copied into a temporary directory with ExecStart's directory rewritten to
one holding stub executables of the same names: everything else is verified
byte for byte as shipped.  (``--root=`` was tried instead: it then needs the
whole of /usr/lib/systemd/system inside that root, and symlinking it in makes
verify trip over the distribution's own alias links.)  verify exits 0 even
on an unknown key, so the test fails on any line of output about our unit.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.tools import need_tool

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
AGENT = UNITS / "telematics-agent.service"
BRIDGE = UNITS / "telematics-bridge.service"
RULES = UNITS / "99-telematics.rules"
INSTALLED_BIN = "/opt/telematics/venv/bin/"


# -- reading units -------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values in order (a unit may repeat a key)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: no continuation lines, please"
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}:{number}: key outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not key=value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set once, is {values}"
    return values[0]


def words(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> set[str]:
    return {w for v in unit.get(section, {}).get(key, []) for w in v.split()}


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"unexpected time span {value!r}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


@pytest.fixture(scope="module")
def agent() -> dict[str, dict[str, list[str]]]:
    return parse_unit(AGENT)


@pytest.fixture(scope="module")
def bridge() -> dict[str, dict[str, list[str]]]:
    return parse_unit(BRIDGE)


# -- systemd-analyze -----------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    return need_tool("systemd-analyze", "systemd")


def staged_copy(unit: Path, tmp: Path, extra: str = "") -> Path:
    """The unit, byte for byte, except ExecStart's directory (stubs of the same names)."""
    text = unit.read_text(encoding="utf-8")
    assert f"ExecStart={INSTALLED_BIN}" in text, f"{unit.name}: ExecStart moved; update the test"
    stubs = tmp / "bin"
    stubs.mkdir(exist_ok=True)
    for name in re.findall(rf"^Exec\w+={re.escape(INSTALLED_BIN)}(\S+)", text, re.M):
        stub = stubs / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    staged = tmp / unit.name
    staged.write_text(text.replace(INSTALLED_BIN, f"{stubs}/") + extra, encoding="utf-8")
    return staged


def verify(exe: str, unit: Path) -> tuple[int, list[str]]:
    """verify's exit status and its lines about this unit (other units' noise is not ours)."""
    done = subprocess.run(
        [exe, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = (done.stdout + done.stderr).splitlines()
    ours = [line for line in lines if unit.name in line or str(unit.parent) in line]
    return done.returncode, ours


@pytest.mark.parametrize("unit", [AGENT, BRIDGE], ids=lambda p: p.name)
def test_systemd_analyze_verify_is_clean(systemd_analyze: str, unit: Path, tmp_path: Path) -> None:
    rc, ours = verify(systemd_analyze, staged_copy(unit, tmp_path))
    assert rc == 0 and ours == [], "\n".join(ours)


def test_verify_catches_a_bad_key(systemd_analyze: str, tmp_path: Path) -> None:
    """The check above has teeth: an unknown key is reported (though verify exits 0)."""
    _rc, ours = verify(systemd_analyze, staged_copy(AGENT, tmp_path, "ProtectSystm=strict\n"))
    assert any("ProtectSystm" in line for line in ours), ours


@pytest.mark.parametrize(("unit", "max_exposure"), [(AGENT, 3.0), (BRIDGE, 2.0)])
def test_hardening_score(
    systemd_analyze: str, unit: Path, max_exposure: float, tmp_path: Path
) -> None:
    """systemd's own exposure score (0 best .. 10): agent 2.6, bridge 1.7 on systemd 252.

    A guard against hardening lines being dropped; a newer systemd that
    scores new checks may need the limits looked at again.
    """
    done = subprocess.run(
        [
            systemd_analyze,
            "security",
            "--offline=true",
            f"--threshold={round(max_exposure * 10)}",
            str(staged_copy(unit, tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    overall = [line for line in done.stdout.splitlines() if "Overall exposure" in line]
    assert done.returncode == 0, "\n".join(overall) or done.stderr


# -- what the units must say ---------------------------------------------------------


def test_agent_is_a_watched_notify_service(agent: dict[str, dict[str, list[str]]]) -> None:
    assert one(agent, "Service", "Type") == "notify"
    assert one(agent, "Service", "NotifyAccess") == "main"
    watchdog = seconds(one(agent, "Service", "WatchdogSec"))
    assert 10 <= watchdog <= 120
    # The agent has to be able to notice a stop before systemd gives up on it.
    assert seconds(one(agent, "Service", "TimeoutStopSec")) >= 15
    assert one(agent, "Service", "KillSignal") == "SIGTERM"


def test_agent_restarts_always_and_exit_75_is_a_requested_restart(
    agent: dict[str, dict[str, list[str]]],
) -> None:
    from agent.cli import EXIT_RESTART

    assert one(agent, "Service", "Restart") == "always"
    assert seconds(one(agent, "Service", "RestartSec")) >= 1
    assert one(agent, "Unit", "StartLimitIntervalSec") == "0"  # never give up on a van
    assert str(EXIT_RESTART) in words(agent, "Service", "SuccessExitStatus")
    assert str(EXIT_RESTART) in words(agent, "Service", "RestartForceExitStatus")


def test_agent_runs_the_installed_console_script_with_real_flags(
    agent: dict[str, dict[str, list[str]]],
) -> None:
    from agent.cli import _parser

    argv = shlex.split(one(agent, "Service", "ExecStart"))
    assert argv[0] == INSTALLED_BIN + "telematics-agent"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "telematics-agent" in scripts
    args = _parser().parse_args(argv[1:])  # SystemExit on a flag the CLI lacks
    assert args.cmd == "run"
    assert args.config == Path("/etc/telematics/agent.toml")
    assert args.config.parent.name == one(agent, "Service", "ConfigurationDirectory")


def test_agent_state_directory_holds_the_default_outbox(
    agent: dict[str, dict[str, list[str]]],
) -> None:
    from agent.config import BufferConfig

    state = one(agent, "Service", "StateDirectory")
    assert state == "telematics"
    assert BufferConfig().path.parent == Path("/var/lib") / state
    assert one(agent, "Service", "StateDirectoryMode") == "0700"


def test_agent_hardening_leaves_the_devices_it_needs(
    agent: dict[str, dict[str, list[str]]],
) -> None:
    svc = agent["Service"]
    assert one(agent, "Service", "User") == "telematics"
    assert "DynamicUser" not in svc
    assert one(agent, "Service", "ProtectSystem") == "strict"
    assert one(agent, "Service", "ProtectHome") == "yes"
    assert one(agent, "Service", "PrivateTmp") == "yes"
    assert one(agent, "Service", "NoNewPrivileges") == "yes"
    assert {"dialout", "i2c"} <= words(agent, "Service", "SupplementaryGroups")
    # Serial ports, I2C and rfcomm live in /dev; hotplugged USB adapters too.
    for closes_dev in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"):
        assert closes_dev not in svc, f"{closes_dev}= would shut the agent out of /dev"
    families = words(agent, "Service", "RestrictAddressFamilies")
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_CAN"} <= families
    # agent/clock.py asks adjtimex() whether NTP has synchronised the clock.
    assert "adjtimex" in words(agent, "Service", "SystemCallFilter")
    assert one(agent, "Service", "SystemCallErrorNumber") == "EPERM"


def test_bridge_unit(bridge: dict[str, dict[str, list[str]]]) -> None:
    from cloud_bridge.cli import _parser

    assert one(bridge, "Service", "Type") == "simple"  # it sends no READY=1
    assert one(bridge, "Service", "Restart") == "always"
    assert one(bridge, "Service", "PrivateDevices") == "yes"
    assert one(bridge, "Service", "ProtectSystem") == "strict"
    assert one(bridge, "Service", "NoNewPrivileges") == "yes"
    assert one(bridge, "Service", "StateDirectory") == "telematics-bridge"
    argv = shlex.split(one(bridge, "Service", "ExecStart"))
    assert argv == [INSTALLED_BIN + "telematics-bridge", "run", "$TELEMATICS_BRIDGE_ARGS"]
    # The example settings in the unit's header are flags the CLI has.
    header = BRIDGE.read_text(encoding="utf-8")
    example = re.search(r"^#\s+TELEMATICS_BRIDGE_ARGS=(.*)$", header, re.M)
    assert example is not None
    args = _parser().parse_args(["run", *shlex.split(example[1])])
    assert args.http == "127.0.0.1:8080"
    env = dict(v.split("=", 1) for v in bridge["Service"]["Environment"] if "TELEMATICS" in v)
    assert env["TELEMATICS_BRIDGE_DB"].startswith("/var/lib/telematics-bridge/")


# -- udev rules ----------------------------------------------------------------------

MATCH_OPS = ("==", "!=")
ASSIGN_OPS = ("=", "+=", "-=", ":=")
MATCH_KEYS = {"ACTION", "SUBSYSTEM", "KERNEL", "ENV", "ATTRS", "SUBSYSTEMS", "KERNELS"}
ASSIGN_KEYS = {"ENV", "SYMLINK", "GROUP", "MODE", "OWNER", "TAG", "GOTO", "LABEL"}
TOKEN = re.compile(
    r'(?P<key>[A-Z]+)(?:\{(?P<attr>[A-Za-z0-9_]+)\})?(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>[^"]*)"'
)


@dataclass(frozen=True)
class Token:
    key: str
    attr: str | None
    op: str
    value: str


def parse_rule(line: str) -> list[Token]:
    """One udev rule line as tokens; asserts the syntax udev accepts."""
    tokens: list[Token] = []
    rest = line
    while True:
        m = TOKEN.match(rest)
        assert m, f"cannot parse {rest!r} in {line!r}"
        tok = Token(m["key"], m["attr"], m["op"], m["value"])
        if tok.op in MATCH_OPS:
            assert tok.key in MATCH_KEYS, f"{tok.key} is not a match key: {line!r}"
        else:
            assert tok.key in ASSIGN_KEYS, f"{tok.key} cannot be assigned: {line!r}"
            assert tok.op in ("=", "+=") or tok.key in ("ENV", "SYMLINK", "TAG"), line
        assert (tok.key in ("ENV", "ATTRS")) == (tok.attr is not None), line
        tokens.append(tok)
        rest = rest[m.end() :]
        if not rest:
            return tokens
        assert rest.startswith(", "), f"tokens are separated by ', ': {line!r}"
        rest = rest[2:]


def rule_lines(text: str) -> list[str]:
    return [s for s in (raw.strip() for raw in text.splitlines()) if s and not s.startswith("#")]


@dataclass
class Device:
    """What udev knows about one tty when our rules run (after 60-serial.rules)."""

    kernel: str
    env: dict[str, str]
    action: str = "add"
    subsystem: str = "tty"
    symlinks: list[str] = field(default_factory=list)
    group: str | None = None
    mode: str | None = None


def _glob(value: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(value, alt) for alt in pattern.split("|"))


def apply_rules(text: str, dev: Device) -> Device:
    """Run the subset of udev that the rules use (match, assign, GOTO/LABEL) on ``dev``."""
    rules = [parse_rule(line) for line in rule_lines(text)]
    labels = {r[0].value: i for i, r in enumerate(rules) if r[0].key == "LABEL"}
    i = 0
    while i < len(rules):
        rule, i = rules[i], i + 1
        actual = {"ACTION": dev.action, "SUBSYSTEM": dev.subsystem, "KERNEL": dev.kernel}
        matched = all(
            _glob(dev.env.get(t.attr or "", "") if t.key == "ENV" else actual[t.key], t.value)
            == (t.op == "==")
            for t in rule
            if t.op in MATCH_OPS
        )
        if not matched:
            continue
        for t in rule:
            if t.key == "ENV" and t.op == "=":
                dev.env[t.attr or ""] = t.value
            elif t.key == "SYMLINK":
                dev.symlinks.append(t.value)
            elif t.key == "GROUP":
                dev.group = t.value
            elif t.key == "MODE":
                dev.mode = t.value
            elif t.key == "GOTO":
                i = labels[t.value]
    return dev


def usb_tty(kernel: str, vid: str, pid: str, serial: str = "", path: str = "") -> Device:
    env = {"ID_BUS": "usb", "ID_VENDOR_ID": vid, "ID_MODEL_ID": pid}
    if serial:
        env["ID_SERIAL_SHORT"] = serial
    if path:
        env["ID_PATH"] = path
    return Device(kernel, env)


def test_udev_rules_syntax() -> None:
    text = RULES.read_text(encoding="utf-8")
    lines = rule_lines(text)
    assert lines, "no rules"
    gotos = set()
    labels = set()
    for line in lines:
        for tok in parse_rule(line):
            if tok.key == "GOTO":
                gotos.add(tok.value)
            if tok.key == "LABEL":
                labels.add(tok.value)
    assert gotos <= labels, "GOTO without its LABEL"
    assert lines[-1] == 'LABEL="telematics_end"'


@pytest.mark.parametrize(
    ("vid", "pid", "kernel", "name"),
    [
        ("1546", "01a7", "ttyACM0", "gps0"),  # u-blox 7
        ("1546", "01a8", "ttyACM0", "gps0"),  # u-blox 8
        ("1546", "01a9", "ttyACM1", "gps0"),  # u-blox 9
        ("0403", "6001", "ttyUSB0", "obd0"),  # FTDI ELM327
        ("1a86", "7523", "ttyUSB0", "obd0"),  # CH340 ELM327
        ("10c4", "ea60", "ttyUSB1", "obd0"),  # CP210x ELM327
        ("067b", "2303", "ttyUSB0", "obd0"),  # PL2303 ELM327
    ],
)
def test_udev_names(vid: str, pid: str, kernel: str, name: str) -> None:
    dev = apply_rules(RULES.read_text(encoding="utf-8"), usb_tty(kernel, vid, pid))
    assert dev.symlinks == [name]
    assert (dev.group, dev.mode) == ("dialout", "0660")
    assert dev.env["ID_MM_DEVICE_IGNORE"] == "1"  # ModemManager keeps its AT commands away


def test_udev_leaves_other_devices_alone() -> None:
    text = RULES.read_text(encoding="utf-8")
    modem = apply_rules(text, usb_tty("ttyUSB2", "2c7c", "0125"))  # a Quectel 4G modem
    assert modem.symlinks == [] and modem.group is None and "ID_MM_DEVICE_IGNORE" not in modem.env
    gone = usb_tty("ttyUSB0", "1a86", "7523")
    gone.action = "remove"
    assert apply_rules(text, gone).symlinks == []
    block = usb_tty("sda", "0403", "6001")
    block.subsystem = "block"
    assert apply_rules(text, block).symlinks == []


def test_udev_pinning_examples_work_as_documented() -> None:
    """Uncomment the documented pin examples: the pinned chip is the GPS, its twin the OBD."""
    text = RULES.read_text(encoding="utf-8")
    examples = re.findall(r'^# (ENV\{ID_VENDOR_ID\}.*TELEMATICS_ROLE\}="gps")$', text, re.M)
    assert len(examples) == 2
    pinned = text
    for example in examples:
        pinned = pinned.replace(f"# {example}", example)

    serial = re.search(r'ID_SERIAL_SHORT\}=="([^"]+)"', examples[0])
    assert serial is not None
    gps = apply_rules(pinned, usb_tty("ttyUSB1", "067b", "2303", serial=serial[1]))
    elm = apply_rules(pinned, usb_tty("ttyUSB0", "067b", "2303", serial="OTHER1"))
    assert (gps.symlinks, elm.symlinks) == (["gps0"], ["obd0"])

    port = re.search(r'ID_PATH\}=="([^"]+)"', examples[1])
    assert port is not None
    gps = apply_rules(pinned, usb_tty("ttyUSB0", "1a86", "7523", path=port[1]))
    elm = apply_rules(
        pinned, usb_tty("ttyUSB1", "1a86", "7523", path=port[1].replace("1.3:1.0", "1.2:1.0"))
    )
    assert (gps.symlinks, elm.symlinks) == (["gps0"], ["obd0"])
    # Without the pins, both twins would claim /dev/obd0: that is why they exist.
    assert apply_rules(text, usb_tty("ttyUSB1", "067b", "2303", serial=serial[1])).symlinks == [
        "obd0"
    ]


def test_udev_gives_the_i2c_bus_to_group_i2c() -> None:
    bus = Device("i2c-1", {}, subsystem="i2c-dev")
    dev = apply_rules(RULES.read_text(encoding="utf-8"), bus)
    assert (dev.symlinks, dev.group, dev.mode) == ([], "i2c", "0660")


def test_udev_rfcomm_example() -> None:
    text = RULES.read_text(encoding="utf-8")
    example = re.search(r'^# (KERNEL=="rfcomm0".*)$', text, re.M)
    assert example is not None
    dev = apply_rules(text + example[1] + "\n", Device("rfcomm0", {}))
    assert (dev.symlinks, dev.group, dev.mode) == (["obd0"], "dialout", "0660")
