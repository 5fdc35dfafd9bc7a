"""The benchmark suite's smoke mode runs and reports every field, so the suite never rots."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parity
def test_benchmark_smoke_reports_both_frameworks_and_their_ratio():
    pytest.importorskip("torch")
    env = {**os.environ, "XLA_FLAGS": ""}
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    machine = records[0]
    assert machine["matmul_gflops"]["peak"] > 0 and machine["malloc"]["MALLOC_MMAP_MAX_"] == "0"
    by_framework = {r["framework"]: r for r in records if "framework" in r}
    assert set(by_framework) == {"oversight", "pytorch"}
    for r in by_framework.values():
        assert r["tokens_per_s"] > 0 and 0 < r["fraction_of_peak"] and r["params"] > 0
    # Same architecture on both sides: the parameter counts agree (GPT-2, tied embeddings).
    assert by_framework["oversight"]["params"] == by_framework["pytorch"]["params"]
    assert records[-1]["ratio_oversight_over_pytorch"] > 0
