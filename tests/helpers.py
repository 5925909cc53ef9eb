"""Test support: the real file client, run as a user would. Speech is in tools.speech, processes in
services.stack. No mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

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


def ws_exchange(uri: str, frames: list[bytes | str]) -> tuple[list[dict[str, Any]], int | None, str]:
    """Send ``frames`` on a raw WebSocket; return the events received, close code and reason."""
    events = []
    with connect(uri, open_timeout=10) as ws:
        try:
            for frame in frames:
                ws.send(frame)
            while True:
                message = ws.recv(timeout=60)
                events.append(json.loads(message))
        except ConnectionClosed:
            pass
        return events, ws.close_code, ws.close_reason or ""
