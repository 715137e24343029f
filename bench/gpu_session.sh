#!/usr/bin/env bash
# The GPU measurements the README's "Scaling up" table waits for, in order of value, as one script
# so that a GPU machine's few minutes go to measuring. Run from the repository root, with the venv
# installed (installation is not timed). Every line it prints belongs in the README.
#
#   bash bench/gpu_session.sh            # tests, 1-seed reproduction (auto, fp32), 5 seeds, torchrun
#   SKIP_TESTS=1 bash bench/gpu_session.sh
set -uo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
GPUS=$($PY -c 'import torch; print(torch.cuda.device_count())')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'

timed() {  # timed LABEL COMMAND...: wall seconds and exit status of one whole command
    local label=$1 start end status
    shift
    start=$(date +%s%N)
    "$@" > "$OUT/${label// /_}.log" 2>&1
    status=$?
    end=$(date +%s%N)
    printf '%-44s %6d.%d s  exit %d\n' "$label" $(((end - start) / 1000000000)) $(((end - start) / 100000000 % 10)) "$status"
}

$PY data_split.py > /dev/null 2>&1  # the demo split and its decoded images, outside the timings
[ -n "${SKIP_TESTS:-}" ] || timed "pytest (CUDA visible)" $PY -m pytest -q -x tests
timed "reproduce 1 seed, auto" $PY reproduce.py --out "$OUT/auto1" --seeds 1 --device cuda
timed "reproduce 1 seed, auto, again (warm)" $PY reproduce.py --out "$OUT/auto1b" --seeds 1 --device cuda
timed "reproduce 1 seed, fp32" $PY reproduce.py --out "$OUT/fp32" --seeds 1 --device cuda --precision fp32
timed "reproduce 5 seeds, auto, --jobs $GPUS" $PY reproduce.py --out "$OUT/auto5" --seeds 5 --device cuda --jobs "$GPUS"
timed "task2, 1 GPU" $PY task2_shallow.py --out "$OUT/t2_1" --device cuda
[ "$GPUS" -gt 1 ] && timed "task2, torchrun $GPUS GPUs" $PY -m torch.distributed.run --standalone \
    --nproc_per_node "$GPUS" task2_shallow.py --out "$OUT/t2_ddp" --device cuda
grep -h "Testing" "$OUT"/t2_*/metrics.md 2>/dev/null
grep -h -A8 "## Summary" "$OUT/auto1/REPORT.md"
