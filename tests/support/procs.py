"""Run the project's commands as real processes in tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def command(name: str) -> str:
    """Path of an installed console script (telematics-agent, -bridge, -sim)."""
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"{name} not installed next to {sys.executable}: pip install -e .")
    return str(path)


def spawn(args: list[str], log: Path, **kw: object) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env, **kw
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode
