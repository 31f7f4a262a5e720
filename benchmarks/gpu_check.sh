#!/usr/bin/env bash
# medddpm's GPU speed and memory checks in one script, for one H100 / H200, in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh                    # on the GPU machine, from the repository root
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh    # dry run on CPU: tiny sizes, 1 step each
#
# The GPU machine has torch, einops, safetensors, scipy, pyyaml, typer and rich, but not monai,
# nibabel, SimpleITK or pydantic: their wheels come in .whl/ at the repository root (see
# benchmarks/README.md) and are installed into /tmp/site. Everything printed also goes to files
# in $OUT (default ./gpu_check_out): gpu_check.log (all of it), one log and one JSON per stage.
#
# Stages, most important first (each under its own time limit; a stage that would pass the overall
# deadline is skipped and says so):
#   1. bench_train 64³ and 128³: the MONAI tutorial loop (fp16 autocast, as the notebook runs it)
#      against medddpm bf16 + torch.compile, with FLOPs and achieved TFLOP/s vs 989 (H100 bf16 dense);
#      a side that runs out of GPU memory is a row that says so
#   2. bench_memory.py --cuda --sizes 128: real peak memory and step time at 128³ with each lever
#   3. bench_train 128³ with gradient checkpointing
#   4. bench_train 64³ against an fp32 tutorial loop
#   5. bench_data 128³: steps fed from the NIfTI cache vs from memory vs from the GPU (the data path)
#   6. bench_sampling.py, reduced
#   7. bench_train 64³ with medddpm in both layouts, NCDHW and channels-last 3D (two compiles)
# At the end $OUT/gpu_check.tgz holds every log and JSON: one file to bring back.
set -uo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"
OUT="${OUT:-$REPO/gpu_check_out}"
mkdir -p "$OUT"
DRY="${GPU_CHECK_DRY:-0}"
PY="${PYTHON:-python3}"
if [[ "$DRY" == "1" && -z "${PYTHON:-}" && -x .venv/bin/python ]]; then
    PY=.venv/bin/python
fi
# The dry run proves the plumbing on a CPU, where every stage is slower: its limits are scaled.
SCALE="${GPU_CHECK_LIMIT_SCALE:-$([[ "$DRY" == "1" ]] && echo 4 || echo 1)}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-$((450 * SCALE))}"
START_S=$(date +%s)
LOG="$OUT/gpu_check.log"
: >"$LOG"

say() { echo "$*" | tee -a "$LOG"; }

# stage NAME SECONDS CMD...: run CMD with its output on the terminal, in $OUT/NAME.log and in the
# main log; limited to SECONDS and to what is left of the overall budget.
stage() {
    local name="$1" limit=$(($2 * SCALE))
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - START_S)))
    if ((left < 20)); then
        say "== $name: skipped, ${left}s left of the ${BUDGET_S}s budget"
        return 0
    fi
    ((limit > left)) && limit=$left
    say "== $name (limit ${limit}s): $*"
    local t0
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log" >>"$LOG"
    local rc=${PIPESTATUS[0]}
    tail -n 25 "$OUT/$name.log"
    say "== $name: exit $rc after $(($(date +%s) - t0))s"
}

say "gpu_check $(date -Is) dry=$DRY repo=$REPO"
say "host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load: $(cut -d' ' -f1-3 /proc/loadavg)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
fi
git -C "$REPO" log --oneline -1 2>/dev/null | sed 's/^/commit: /' | tee -a "$LOG"

# Dependencies: the carried wheels, when there are any (the dry run uses the local environment).
if [[ "$DRY" != "1" ]] && compgen -G ".whl/*.whl" >/dev/null; then
    say "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -n 5 | tee -a "$LOG"
    export PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for name in ("monai", "nibabel", "SimpleITK", "pydantic", "medddpm"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:
        print(name, "MISSING:", e)
EOF

BT="$PY benchmarks/bench_train.py"
if [[ "$DRY" == "1" ]]; then
    # Same stages and flags on CPU at 16³ with the tiny model, 1 step each; no compile (minutes on CPU).
    COMMON=(--device cpu --config tiny --steps 1 --repeats 1 --warmup 1 --ref-workers 0 --num-scans 2 --flops --threads 1)
    BIG=(--sizes 16)
    SMALL=(--sizes 16)
    LARGE=(--sizes 16)
    COMPILE=()
else
    COMMON=(--device cuda --steps 5 --repeats 3 --flops)
    BIG=(--sizes 64 128)
    SMALL=(--sizes 64)
    LARGE=(--sizes 128)
    COMPILE=(--compile)
fi

stage train_bf16_compile 200 $BT "${COMMON[@]}" "${BIG[@]}" --precision bf16 "${COMPILE[@]}" --json "$OUT/train_bf16_compile.json"

if [[ "$DRY" == "1" ]]; then
    stage memory 60 "$PY" benchmarks/bench_memory.py --cuda --reduced --no-cpu
else
    stage memory 120 "$PY" benchmarks/bench_memory.py --cuda --no-cpu --sizes 128
fi

stage train_bf16_compile_checkpointing 100 $BT "${COMMON[@]}" "${LARGE[@]}" --precision bf16 "${COMPILE[@]}" --checkpointing --json "$OUT/train_bf16_compile_checkpointing.json"
stage train_vs_fp32_tutorial 60 $BT "${COMMON[@]}" "${SMALL[@]}" --precision bf16 "${COMPILE[@]}" --ref-precision fp32 --json "$OUT/train_vs_fp32_tutorial.json"

if [[ "$DRY" == "1" ]]; then
    stage data 60 "$PY" benchmarks/bench_data.py --device cpu --config tiny --size 16 --steps 1 --repeats 1 --num-scans 2 --assembly-iterations 3 --threads 1 --json "$OUT/data.json"
else
    stage data 60 "$PY" benchmarks/bench_data.py --device cuda --config default --size 128 --steps 3 --repeats 3 --assembly-iterations 30 --json "$OUT/data.json"
fi

if [[ "$DRY" == "1" ]]; then
    stage sampling 60 "$PY" benchmarks/bench_sampling.py --out "${TMPDIR:-/tmp}/gpu_check_sampling_dry" --train-steps 2 --n-train 4 --num 4 --batch-size 4 --only dpm++-10 --threads 1
else
    stage sampling 90 "$PY" benchmarks/bench_sampling.py --out /tmp/gpu_check_sampling --train-steps 300 --n-train 64 --num 16 --batch-size 16 --only ddpm-1000 ddim-50 dpm++-25
fi

stage train_layouts 120 $BT "${COMMON[@]}" "${SMALL[@]}" --precision bf16 "${COMPILE[@]}" --compare-layouts --json "$OUT/train_layouts.json"

# Summary: the result tables of the training stages, one after the other.
{
    echo "gpu_check summary $(date -Is), $(($(date +%s) - START_S))s in all"
    for f in "$OUT"/train_*.log; do
        [[ -f "$f" ]] || continue
        echo
        echo "## $(basename "$f" .log)"
        grep -E '^(#|  *[0-9]+³|\(%)| size ' "$f" || echo "(no result table: see $(basename "$f"))"
    done
} >"$OUT/summary.txt"
cat "$OUT/summary.txt" | tee -a "$LOG"
# Packed beside $OUT first: tar reading a folder it is writing into can fail with "file changed".
PACK="$(mktemp "${TMPDIR:-/tmp}/gpu_check.XXXXXX.tgz")"
if tar -czf "$PACK" -C "$OUT" --exclude gpu_check.tgz . 2>/dev/null && mv "$PACK" "$OUT/gpu_check.tgz"; then
    say "all logs and JSON: $OUT/gpu_check.tgz"
else
    rm -f "$PACK"
    say "could not pack $OUT into gpu_check.tgz; the files are there one by one"
fi
