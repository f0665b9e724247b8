#!/usr/bin/env bash
# The GPU check, in one command, from the repository root of the GPU machine:
#   bash benchmarks/gpu/run.sh [OUTDIR]            # default OUTDIR: $OUT, else benchmarks/gpu/results
#   bash benchmarks/gpu/run.sh --dry-run [OUTDIR]  # CPU, tiny models: the same code paths
#   bash benchmarks/gpu/run.sh --dry-run --quick    # CI: leaves out the two tests that start subprocesses
#                                                   # (their CPU twins: test_audit's ddp_spawn, test_cli's fits)
# Installs the wheels that benchmarks/gpu/prepare.sh put in .whl/ (no index, no network), runs the
# GPU tests (`pytest -m gpu`, tests/test_gpu.py) and the GPU benchmark rows
# (benchmarks/gpu/bench_gpu.py), and writes OUTDIR/results.md and OUTDIR/results.json (every figure),
# beside the raw logs (8 files: the most a device call brings back).
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=0
QUICK=0
OUTDIR=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --quick) QUICK=1 ;;
    -*) echo "unknown option $arg (valid: --dry-run, --quick, OUTDIR)" >&2; exit 2 ;;
    *) OUTDIR="$arg" ;;
  esac
done
OUTDIR=${OUTDIR:-${OUT:-benchmarks/gpu/results}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
PY=${PYTHON:-python3}
START=$(date +%s)

if [ "$DRY" = 0 ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site
  else
    echo "no .whl/*.whl: run benchmarks/gpu/prepare.sh here first and carry .whl (using what is installed)" >&2
  fi
  TEST_LIMIT=240; BENCH_BUDGET=270; BENCH_LIMIT=320  # worst case ~9.7 min, typical ~7
else
  export DIFFCAM_GPU_DRY_RUN=1
  TEST_LIMIT=600; BENCH_BUDGET=600; BENCH_LIMIT=900
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DIFFCAM_GPU_FIGURES="$OUTDIR/test_figures.jsonl"
rm -f "$DIFFCAM_GPU_FIGURES"

SELECT=()
[ "$QUICK" = 1 ] && SELECT=(-k "not strategy and not diffcam_fit")
echo "== GPU tests (pytest -m gpu)"
timeout "$TEST_LIMIT" "$PY" -m pytest -m gpu tests/test_gpu.py "${SELECT[@]}" -q -rs -p no:cacheprovider \
  --junitxml="$OUTDIR/tests.xml" 2>&1 | tee "$OUTDIR/tests.log"
TESTS_RC=${PIPESTATUS[0]}

echo "== GPU benchmark rows"
BENCH_ARGS=(--out "$OUTDIR" --budget-s "$BENCH_BUDGET")
[ "$DRY" = 1 ] && BENCH_ARGS+=(--dry-run)
timeout "$BENCH_LIMIT" "$PY" benchmarks/gpu/bench_gpu.py "${BENCH_ARGS[@]}" 2>&1 | tee "$OUTDIR/bench.log"
BENCH_RC=${PIPESTATUS[0]}

"$PY" benchmarks/gpu/collect.py "$OUTDIR" --tests-rc "$TESTS_RC" --bench-rc "$BENCH_RC" \
  --wall-s $(( $(date +%s) - START )) $([ "$DRY" = 1 ] && echo --dry-run)
COLLECT_RC=$?
echo "== results: $OUTDIR/results.md, $OUTDIR/results.json ($(( $(date +%s) - START )) s)"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ] && [ "$COLLECT_RC" = 0 ]
