"""Measuring helpers the benches share, with no dependencies (bench/gpu.py runs where only torch
and transformers are installed): nearest-rank percentiles, their
summary and a process's CPU seconds."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path


def nearest_rank(n: int, q: float) -> int:
    """The index of the ``q``-th percentile (0..100) among ``n`` sorted values, by nearest rank."""
    return max(0, min(n - 1, math.ceil(q / 100 * n) - 1))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` (not empty), by nearest rank."""
    ordered = sorted(values)
    return ordered[nearest_rank(len(ordered), q)]


def spread(
    values: Sequence[float], qs: Sequence[int] = (50, 95, 99), digits: int = 4
) -> dict[str, float | None]:
    """``p50``, ``p95``, ... (nearest rank) and ``mean`` of ``values``; each None when it is empty."""
    ordered = sorted(values)
    out: dict[str, float | None] = {
        f"p{q}": round(ordered[nearest_rank(len(ordered), q)], digits) if ordered else None for q in qs
    }
    out["mean"] = round(math.fsum(ordered) / len(ordered), digits) if ordered else None
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
