"""Test support: the real file client, run as a user would. Speech is in tools.speech, processes in
services.stack. No mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from services.stack import ROOT


def run_client(
    uri: str, wav: Path, *extra: str, timeout: float = 240
) -> tuple[int, list[dict[str, Any]], str]:
    """Run the real file client with --json; return (exit code, events, stderr)."""
    args = [sys.executable, str(ROOT / "clients" / "client_file.py"), "--uri", uri, "--wav-path", str(wav)]
    done = subprocess.run([*args, "--json", *extra], capture_output=True, text=True, timeout=timeout)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, events, done.stderr


def finals(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "final"]
