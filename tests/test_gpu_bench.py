"""bench/gpu.py, the GPU capacity bench, run here on the CPU at toy size: the same code a device
run executes (random weights of a given shape behind our WhisperModel, forced decode lengths),
so that the one device run it gets is not its first. No GPU exists here, so nothing CUDA-specific
(fp16, GPU memory) is exercised."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from services.stack import ROOT


def toy_run(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """``bench.gpu`` on the CPU at toy size: (what it printed, its JSON report)."""
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--device", "cpu", "--sizes", "toy", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(out.read_text())


def test_toy_run_measures_every_cell_with_forced_lengths(tmp_path: Path) -> None:
    stdout, report = toy_run(tmp_path, "--batches", "1,2", "--seconds", "2,3", "--min-time", "0")
    rows = report["rows"]
    assert len(rows) == 2 * 2 * 2 and not report["not_measured"]  # windows x lengths x batches
    for row in rows:
        assert row["tokens"] == round(row["seconds"] * 6)  # forced: 12 tokens for 2 s, 18 for 3 s
        assert row["p50_s"] > 0 and row["segments_per_s"] > 0 and row["calls"] >= 3
    assert {c["window"] for c in report["capacity"]} == {"30 s window", "context windows"}
    assert "| toy | context windows | 2 s | 2 |" in stdout
    assert "callers per GPU" in stdout


def test_a_spent_budget_reports_what_was_not_measured(tmp_path: Path) -> None:
    stdout, report = toy_run(tmp_path, "--batches", "1,2", "--seconds", "2", "--budget-s", "0")
    assert report["rows"] == [] and len(report["not_measured"]) == 4
    assert "4 cells not measured" in stdout
