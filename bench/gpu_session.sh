#!/usr/bin/env bash
# The GPU measurements the table "The GPU path" in docs/scaling-up.md holds, in order of value, as one script so
# that a GPU machine's few minutes go to measuring. Run from the repository root with the packages
# installed (installation is not timed). Every line it prints belongs in that table.
#
#   bash bench/gpu_session.sh                 # everything below
#   SKIP_TESTS=1 SKIP_SEEDS=1 bash bench/gpu_session.sh
#   TASKS="task1_efficientnet task2_shallow task3_netvlad" bash bench/gpu_session.sh
#
# PY: the Python (default: .venv/bin/python, else python3). RUNS: where run folders and logs go.
# TASKS: reproduce.py --tasks (default: all; offline, the three torchvision backbones wait for their
# download's time-out before being skipped). LIMIT: seconds any one command may take (default 600).
set -uo pipefail
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
RUNS=${RUNS:-/tmp/gpu_session}
LIMIT=${LIMIT:-600}
mkdir -p "$RUNS"
GPUS=$($PY -c 'import torch; print(torch.cuda.device_count())')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torch, torchvision, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
"torchvision", torchvision.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
echo "CPU: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

log_of() {  # log_of LABEL: the file holding that command's output
    echo "$RUNS/${1//[^A-Za-z0-9.-]/_}.log"
}
timed() {  # timed LABEL COMMAND...: wall seconds and exit status of one whole command, its output in a log
    local label=$1 start end status
    shift
    start=$(date +%s%N)
    timeout "$LIMIT" "$@" > "$(log_of "$label")" 2>&1
    status=$?
    end=$(date +%s%N)
    printf '%-46s %6d.%d s  exit %d\n' "$label" $(((end - start) / 1000000000)) $(((end - start) / 100000000 % 10)) "$status"
}
reproduce() {  # reproduce LABEL OUT ARGS...
    local label=$1 out=$2
    shift 2
    timed "$label" $PY reproduce.py --out "$RUNS/$out" --device cuda ${TASKS:+--tasks $TASKS} "$@"
}

$PY data_split.py > /dev/null 2>&1  # the demo split and its decoded images, outside the timings
reproduce "reproduce 1 seed, auto (compiles)" auto1 --seeds 1
TESTS="pytest (CUDA visible)"
[ -n "${SKIP_TESTS:-}" ] || timed "$TESTS" $PY -m pytest -q -x -p no:cacheprovider tests
timed "step, task 2 bf16, against plain layers" $PY bench/profile_step.py task2_shallow --device cuda \
    --precision bf16 --against-plain --steps 20 --rows 8
reproduce "reproduce 1 seed, fp32" fp32 --seeds 1 --precision fp32
reproduce "reproduce 1 seed, auto, again (compiled)" auto1b --seeds 1
for first in "$RUNS"/auto1/*/seed0/metrics.json; do  # determinism: the same seed twice on the GPU
    task=$(basename "$(dirname "$(dirname "$first")")")
    cmp -s "$first" "$RUNS/auto1b/$task/seed0/metrics.json" && echo "$task, seed 0 twice: identical metrics" \
        || echo "$task, seed 0 twice: metrics DIFFER"
done
timed "step, task 2 fp32, against plain layers" $PY bench/profile_step.py task2_shallow --device cuda \
    --precision fp32 --against-plain --steps 20 --rows 8
timed "step, task 3 bf16, against plain layers" $PY bench/profile_step.py task3_netvlad --device cuda \
    --precision bf16 --against-plain --steps 20 --rows 8
grep -h "per step\|^task" "$RUNS"/step*.log
grep -h -A12 "## Summary" "$RUNS/auto1/REPORT.md" 2>/dev/null
[ -n "${SKIP_SEEDS:-}" ] || reproduce "reproduce 5 seeds, auto, --jobs $GPUS" auto5 --seeds 5 --jobs "$GPUS"
[ "$GPUS" -gt 1 ] && timed "task2, 1 GPU" $PY task2_shallow.py --out "$RUNS/t2_1" --device cuda
[ "$GPUS" -gt 1 ] && timed "task2, torchrun $GPUS GPUs" $PY -m torch.distributed.run --standalone \
    --nproc_per_node "$GPUS" task2_shallow.py --out "$RUNS/t2_ddp" --device cuda
grep -h "Testing" "$RUNS"/t2_*/metrics.md 2>/dev/null
tail -3 "$(log_of "$TESTS")" 2>/dev/null
exit 0
