"""A local mosquitto on a free port, for the demo and the tests; can be killed and restarted."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], object], timeout: float, what: str, poll: float = 0.05) -> None:
    """Wait until ``cond()`` is truthy, failing with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (hashed by ``mosquitto_passwd``) for ``users``."""
    for n, (user, password) in enumerate(users.items()):
        args = ["-c"] if n == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *args, "-b", str(path), user, password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return path


class Mosquitto:
    """mosquitto with persistence in ``workdir`` so sessions survive a restart."""

    def __init__(self, workdir: Path, port: int | None = None, listener_extra: str = "") -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto not installed: run scripts/ensure-deps.sh")
        self.exe = exe
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            # Run as root, mosquitto drops to user "mosquitto", which cannot
            # write persistence or logs into a test's private directory.
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\n"
            f"{listener_extra}"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "autosave_on_changes true\n"
            "max_queued_messages 100000\n"
            f"log_dest file {workdir}/mosquitto.log\n"
        )

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: _accepts(self.port), 10, f"mosquitto on port {self.port}")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
