"""The prepared GPU check never rots: ``bash benchmarks/gpu/run.sh --dry-run --quick`` runs the
GPU tests and every GPU benchmark row on the CPU with tiny models (the same code paths as on a
GPU) and writes the one Markdown file and the one JSON of every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform == "win32", reason="run.sh is a bash script")
def test_gpu_check_dry_run_writes_every_section(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
    env.pop("DIFFCAM_GPU_FIGURES", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--dry-run", "--quick", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["dry_run"] is True and results["meta"]["tests_rc"] == 0
    outcomes = {t["test"]: t["outcome"] for t in results["tests"]}
    assert outcomes and all(o in ("passed", "skipped") for o in outcomes.values()), outcomes
    assert outcomes["test_no_host_device_sync_in_the_engines_gradient_path"] == "passed"
    assert {f["test"] for f in results["test_figures"]} >= {
        "maps_device_vs_cpu",
        "memory_engine_calls",
        "no_sync_gradient_path",
    }
    sections = {r["section"] for r in results["bench"]["rows"]}
    assert sections == {"cams", "scorecam", "training", "audit", "explain"}, results["bench"]["rows"]
    cams = [r for r in results["bench"]["rows"] if r["section"] == "cams"]
    assert all("ours_28_over_forward" in r for r in cams)  # ours ran in fp32 and bf16 on both models
    markdown = (tmp_path / "results.md").read_text()
    for heading in (
        "## GPU tests",
        "## CAMs",
        "## ScoreCAM",
        "## Training step",
        "## Audit share",
        "## diffcam explain",
    ):
        assert heading in markdown
