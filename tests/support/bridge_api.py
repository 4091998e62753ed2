"""Talking to a running ``telematics-bridge``: a token from its CLI, its API when it is up."""

from __future__ import annotations

import subprocess

import httpx

from simulators.stack import command


def create_token(db_url: str, name: str) -> str:
    """A token made the way an operator makes one (the CLI prints it once)."""
    return subprocess.run(
        [command("telematics-bridge"), "token", "create", name, "--db", db_url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def api_up(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False
