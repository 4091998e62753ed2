"""ELM327-emulator (PyPI, by Ircama): an adapter emulator nobody here wrote.

Its licence is CC BY-NC-SA: it is installed at test time only, into a cache
directory outside the repository, and run as a separate process; none of its
code is copied or imported by ours.  Where it cannot be installed (no
package index), tests using it skip with the reason, except under CI,
where its absence fails the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

VERSION = "4.0.0"


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "telematics-tests" / f"elm327-emulator-{VERSION}"


def install() -> Path:
    """Install ELM327-emulator into the cache once; returns the directory for PYTHONPATH."""
    target = _cache_dir()
    if (target / "elm" / "__main__.py").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-script-location",
         "--target", str(partial), f"ELM327-emulator=={VERSION}"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    if proc.returncode != 0:
        reason = f"cannot install ELM327-emulator {VERSION}: {proc.stderr.strip()[-300:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    partial.rename(target)
    return target


@contextmanager
def emulator(tmp_path: Path, scenario: str = "car") -> Iterator[str]:
    """Run the emulator in batch mode on a pty; yields the pty path."""
    where = install()
    out = tmp_path / f"elm-{time.monotonic_ns()}.out"
    env = {**os.environ, "PYTHONPATH": str(where)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "elm", "-s", scenario, "-b", str(out)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and out.read_text().strip().startswith("/dev/")):
            if proc.poll() is not None:
                raise AssertionError(f"ELM327-emulator exited: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise AssertionError("ELM327-emulator did not report its pty within 30 s")
            time.sleep(0.02)
        yield out.read_text().splitlines()[0].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
