"""The benchmarks still run: each on the smallest inputs it takes, in a subprocess (slow).

They are not run by the suite otherwise, so an API change can break one silently (the
large-zoo benchmark once did); this checks that they start, measure and print their table.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


def run_benchmark(script: str, *args: str) -> str:
    """``benchmarks/<script>`` with ``args``; its stdout (the run must succeed)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["mlp", "graph"])
def test_large_zoo_benchmark_streams_an_epoch(encoder, tmp_path):
    stdout = run_benchmark(
        "bench_large_zoo.py",
        *("--sizes", "300", "--root", str(tmp_path), "--encoder", encoder),
        *("--batch-size", "64"),
    )
    row = next(line for line in stdout.splitlines() if line.startswith("| 300 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "600" and float(cells[4]) > 0  # checkpoints, epoch seconds


@pytest.mark.slow
def test_encoder_benchmark_prints_a_row_per_kind_and_variant():
    stdout = run_benchmark(
        "bench_encoders.py",
        *("--widths", "8", "6", "6", "3", "--batch", "4", "--repeats", "1"),
        *("--kinds", "mlp", "nfn", "--variant", "nfn:gram=4"),
    )
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    kinds = [row.strip("|").split("|")[0].strip() for row in rows[1:]]
    assert kinds == ["mlp", "nfn", "nfn gram=4"]
    # The angle readout adds parameters (its pointwise map) to the nfn encoder's.
    params = {k: int(row.split("|")[2].replace(",", "")) for k, row in zip(kinds, rows[1:])}
    assert params["nfn gram=4"] > params["nfn"]
