"""`make run`'s launcher: the whole stack from one command, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

from services.stack import ROOT, default_transcribers, free_port, port_open, serving, wait_until
from tests.helpers import finals, run_client
from tools.speech import Speech


def test_stack_starts_everything_serves_and_stops_on_ctrl_c(speech: Speech) -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port)}  # everything else: `make run`'s defaults
    for name in ("REDIS_URL", "MODEL_ID", "BACKEND", "TRANSCRIBERS", "DEVICE"):
        env.pop(name, None)
    stack = subprocess.Popen(
        [sys.executable, "-m", "services.stack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(stack.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        banner = wait_until(
            lambda: next((line for line in lines if "Streaming speech-to-text at" in line), None),
            180,  # a transcriber loads the model first
            "the stack's banner",
        )
        assert f"ws://localhost:{port}" in banner
        assert "whisper-base-ct2 on ctranslate2" in banner  # the fastest backend measured on a CPU
        redis_port = int(re.search(r"redis://127\.0\.0\.1:(\d+)", banner).group(1))  # type: ignore[union-attr]
        wait_until(
            # Its defaults on this CPU: one finals transcriber per core, one for partials.
            lambda: (
                serving(f"redis://127.0.0.1:{redis_port}/0", "whisper-base-ct2")
                == default_transcribers(False) + 1
            ),
            120,
            "the transcribers",
        )
        stream = speech.stream(16000, (1,))
        code, events, stderr = run_client(f"ws://localhost:{port}", stream.path, "--fast")
        assert code == 0, stderr
        assert "breakfast" in " ".join(f["text"] for f in finals(events)).lower()
    finally:
        stack.send_signal(signal.SIGINT)
        assert stack.wait(30) == 0, "".join(lines)
    reader.join(5)
    assert not port_open(port) and not port_open(redis_port)
    assert "Traceback" not in "".join(lines)
