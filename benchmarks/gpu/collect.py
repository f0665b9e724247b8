"""Merge one GPU check's outputs (run.sh) into ``results.md`` and ``results.json``.

    python benchmarks/gpu/collect.py OUTDIR --tests-rc 0 --bench-rc 0 --wall-s 412 [--dry-run]

Reads ``tests.xml`` (pytest's JUnit report), ``test_figures.jsonl`` (what each GPU test measured)
and ``bench_gpu.json`` / ``bench_gpu.md`` (the benchmark rows) from OUTDIR.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path


def tests_from_junit(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (
                    (node.get("message") or node.text or "").strip().splitlines()[0][:300]
                    if (node.get("message") or node.text)
                    else ""
                )
        rows.append(
            {"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message}
        )
    return rows


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        return out.stdout.strip() or "no GPU"
    except (OSError, subprocess.SubprocessError):
        return "no nvidia-smi"


def headline(figure: dict) -> str:
    """The one or two numbers of each check that the docs' goals speak of."""
    keys = ("model", "precision", "strategy", "max_abs_diff", "max_pointing_diff", "tolerance", "calls", "epochs",
            "allocated_start_mb", "allocated_end_mb", "peak_first_half_mb", "peak_second_half_mb", "growth_mb",
            "peak_growth_mb", "bound_mb", "syncing_ops", "returncode", "steps")  # fmt: skip
    return ", ".join(f"{k}={figure[k]}" for k in keys if k in figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir")
    parser.add_argument("--tests-rc", type=int, required=True)
    parser.add_argument("--bench-rc", type=int, required=True)
    parser.add_argument("--wall-s", type=int, required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    out = Path(args.outdir)
    import torch

    tests = tests_from_junit(out / "tests.xml")
    figures_file = out / "test_figures.jsonl"
    figures = (
        [json.loads(line) for line in figures_file.read_text().splitlines() if line.strip()]
        if figures_file.exists()
        else []
    )
    bench_file = out / "bench_gpu.json"
    bench = json.loads(bench_file.read_text()) if bench_file.exists() else {"meta": {}, "rows": []}
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": args.dry_run, "gpu": gpu_name(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "tests_rc": args.tests_rc, "bench_rc": args.bench_rc, "wall_s": args.wall_s,
    }  # fmt: skip
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "tests": tests, "test_figures": figures, "bench": bench}, indent=1)
    )

    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    lines = [f"# GPU check: {meta['gpu']}", "",
             f"{meta['date']}, torch {meta['torch']} (CUDA {meta['cuda']}), Python {meta['python']}, "
             f"`bash benchmarks/gpu/run.sh{' --dry-run' if args.dry_run else ''}` in {args.wall_s} s; "
             f"tests exit {args.tests_rc}, benchmark exit {args.bench_rc}.", ""]  # fmt: skip
    if args.dry_run:
        lines += ["**Dry run on CPU**: the tests compare CPU with CPU and read no CUDA memory; the figures only show "
                  "that every check runs.", ""]  # fmt: skip
    lines += [f"## GPU tests: {counts['passed']} passed, {counts['failed'] + counts['error']} failed, {counts['skipped']} skipped", "",
              "| test | outcome | s | message |", "|---|---|---:|---|"]  # fmt: skip
    lines += [
        f"| {t['test']} | {t['outcome']} | {t['seconds']:.1f} | {t['message'].replace('|', '/')} |" for t in tests
    ]
    lines += ["", "## What the tests measured", "", "| check | figures |", "|---|---|"]
    lines += [f"| {f['test']} | {headline(f)} |" for f in figures]
    bench_md = out / "bench_gpu.md"
    lines += ["", bench_md.read_text().replace("# GPU benchmark rows", "## GPU benchmark rows", 1) if bench_md.exists()
              else "## GPU benchmark rows\n\nnot produced (see bench.log)"]  # fmt: skip
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"collected {len(tests)} tests, {len(figures)} figure records, {len(bench['rows'])} benchmark rows")


if __name__ == "__main__":
    main()
