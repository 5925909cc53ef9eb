"""Process interfaces: flags, env vars, and one clear line for settings that cannot work."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from services.stack import ROOT


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_cuda_and_float16_on_a_cpu_machine_fail_with_one_line() -> None:
    for flags, expected in [
        (["--device", "cuda"], "CUDA is not available"),
        (["--device", "cpu", "--dtype", "float16"], "float16 needs a CUDA device"),
    ]:
        done = run("services.transcriber", *flags)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_a_model_that_cannot_load_says_so_without_a_traceback(tmp_path: object) -> None:
    done = run("services.transcriber", "--device", "cpu", "--model-id", "/nonexistent/model-dir")
    assert done.returncode == 1
    assert "cannot load model '/nonexistent/model-dir'" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_flag_has_an_env_var_in_help() -> None:
    for module in ("services.ingest", "services.transcriber"):
        done = run(module, "--help")
        assert done.returncode == 0
        options = done.stdout.split("\noptions:\n", 1)[1]
        # Each option's text runs from its line (indented by two) to the next option's line.
        blocks = [" ".join(block.split()) for block in re.split(r"\n(?=  -)", options)]
        flags = [block for block in blocks if not block.startswith("-h, --help")]
        assert len(flags) > 10, (module, flags)
        for block in flags:
            assert re.search(r"\[env [A-Z_]+; default: ", block), (module, block)


def test_bad_values_from_flags_or_env_stop_the_ingest_at_start() -> None:
    done = run("services.ingest", env={"PORT": "eighty"})
    assert done.returncode == 2 and "PORT='eighty'" in done.stderr
    done = run("services.ingest", "--silence-ms", "5")
    assert done.returncode == 2 and "silence_ms must be at least one VAD frame" in done.stderr
    done = run("services.ingest", env={"FILE_PACK_S": "30"})
    assert done.returncode == 2 and "--file-pack-s must be between 0 and 29, not 30" in done.stderr
    done = run("services.transcriber", env={"DEVICE": "tpu"})
    assert done.returncode == 2 and "DEVICE='tpu'" in done.stderr
