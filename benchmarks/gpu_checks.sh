#!/usr/bin/env bash
# Issue 12's GPU checks in one run, for the short time a GPU machine is lent (device tool).
#
#   bash benchmarks/gpu_prepare.sh       # here, first: packs the missing wheels and MNIST into .gpu/
#   run(command="bash benchmarks/gpu_checks.sh", carry=[".gpu"], timeout_s=600)   # device tool
#   VAELAB_CHECK_DEVICE=cpu QUICK=1 PYTHON=.venv/bin/python bash benchmarks/gpu_checks.sh  # smoke, CPU
#
# The steps, in this order (each bounded by `timeout`; all of them by BUDGET_S, default 540 s, so
# the whole run ends inside the device tool's 600 s a command; what a step measured before its
# limit is kept, since the benchmarks write their JSON after each arm or batch size):
#   1. the CUDA autocast tests of tests/unit/test_precision.py, while
#      experiment=iwae_vae_1layer trains a few real epochs on the CPU, seeds 0 and 1, beside them;
#   2. the same experiment on the GPU, seeds 0 and 1; val/nll per epoch of all four runs side by
#      side (the two seeds on one device say what "within noise" is);
#   3. interleaved_speed.py (the arms taking turns every 100 steps inside one fit) at batch 20 and
#      100: hand, bare, vaelab (K = 1), K = 20 and K = 20 compiled;
#   4. epoch_speed.py, the same arms as whole alternating epochs, with the full IWAE schedule
#      extrapolated, in what time is left.
# The benchmarks run alone: nothing else is running beside them.
#
# Writes 8 files to $OUT (default logs/gpu), none deeper than $OUT itself (the device tool brings
# back at most 8): summary.txt (the machine, versions, each step's rc and seconds), precision.txt,
# iwae.log, iwae_compare.json, interleaved.json/.log, epoch_speed.json/.log.
# Needs torch, lightning, torchvision and rich (the GPU machine has them), and hydra-core,
# omegaconf and antlr4-python3-runtime, which it installs from .gpu/wheels where present; MNIST
# from $VAELAB_DATA_DIR (default ../shared/data), else from .gpu/mnist.
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
out=${OUT:-logs/gpu}
mkdir -p "$out"
dev=${VAELAB_CHECK_DEVICE:-cuda}
data=${VAELAB_DATA_DIR:-../shared/data}
py=${PYTHON:-python3}
budget=${BUDGET_S:-540}
runs=$(mktemp -d)
summary="$out/summary.txt"
: >"$summary"
exec 3>&1  # the terminal, for log lines inside a step whose output goes to a file
log() { echo "$*" | tee -a "$summary" >&3; }

if [ -d .gpu/wheels ] && ! "$py" -c "import hydra, omegaconf" 2>/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$runs/site" .gpu/wheels/*.whl || { log "installing .gpu/wheels failed"; exit 1; }
    export PYTHONPATH="$runs/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # vaelab from this checkout
if [ ! -f "$data/MNIST/raw/train-images-idx3-ubyte" ] && [ -d .gpu/mnist ]; then
    data="$runs/data"
    mkdir -p "$data/MNIST/raw"
    for f in .gpu/mnist/*.gz; do gunzip -c "$f" >"$data/MNIST/raw/$(basename "$f" .gz)"; done
fi
export VAELAB_DATA_DIR=$data PYTHONUNBUFFERED=1

if [ "${QUICK:-0}" = 1 ]; then
    imgs=2000 reps=1 epochs=1 extra=(+trainer.limit_train_batches=20 +trainer.limit_val_batches=2)
    il=(--slot 60 --batch-sizes 20) cpu_threads=1
else
    imgs=55000 reps=${REPS:-2} epochs=${IWAE_EPOCHS:-3} extra=() il=() cpu_threads=6
fi
acc=cpu
[ "$dev" = cuda ] && acc=gpu

# Seconds a step may take: its own cap, and never past the budget.
left() {
    local rest=$((budget - (SECONDS - t0)))
    [ "$1" -lt "$rest" ] && rest=$1
    [ "$rest" -lt 1 ] && rest=1
    echo "$rest"
}
stopped() { case $1 in 124 | 137) echo " (stopped at its time limit)" ;; esac; }
step() {  # step NAME CAP_S COMMAND...: run it under timeout, log rc and seconds
    local name=$1 cap=$2 s=$SECONDS rc
    shift 2
    timeout --kill-after=15 "$(left "$cap")" "$@"
    rc=$?
    log "$name: rc $rc in $((SECONDS - s)) s$(stopped $rc)"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    echo "cpus: $(nproc)"
    "$py" -c "import sys, torch, lightning, hydra; print(sys.version.split()[0], 'torch', torch.__version__, 'lightning', lightning.__version__, 'hydra', hydra.__version__, 'cuda', torch.cuda.is_available())"
} >>"$summary" 2>&1
log "data: $data; budget $budget s"

iwae() {  # iwae ACCELERATOR SEED THREADS CAP_S: a few real epochs of experiment=iwae_vae_1layer
    local s=$SECONDS rc
    OMP_NUM_THREADS=$3 timeout --kill-after=15 "$4" "$py" -m vaelab.train \
        experiment=iwae_vae_1layer "trainer.accelerator=$1" "trainer.max_epochs=$epochs" \
        "seed=$2" logger=csv test=false "paths.output_dir=$runs/iwae_$1_$2" \
        ~callbacks.rich_progress_bar +trainer.enable_progress_bar=false "${extra[@]}" \
        >"$runs/iwae_$1_$2.log" 2>&1
    rc=$?
    echo "iwae_vae_1layer on $1, seed $2, $3 threads: rc $rc in $((SECONDS - s)) s$(stopped $rc)" \
        >>"$runs/iwae_rc.txt"
}
# 1. The tests, with the CPU runs beside them (the tests time nothing).
cpu_seeds=(0)
[ "$acc" = gpu ] && cpu_seeds=(0 1)
pids=()
for seed in "${cpu_seeds[@]}"; do
    iwae cpu "$seed" "$cpu_threads" "$(left 200)" &
    pids+=($!)
done
step "precision tests" 150 "$py" -m pytest -q -s -p no:cacheprovider \
    tests/unit/test_precision.py >"$out/precision.txt" 2>&1
tail -n 3 "$out/precision.txt" >>"$summary"

# 2. The GPU runs, then every run's val/nll per epoch.
if [ "$acc" = gpu ]; then
    iwae gpu 0 2 "$(left 75)"
    iwae gpu 1 2 "$(left 75)"
fi
wait "${pids[@]}"
log "iwae_vae_1layer runs done at $((SECONDS - t0)) s:"
cat "$runs/iwae_rc.txt" >>"$summary" 2>/dev/null
for f in "$runs"/iwae_*_*.log; do echo "==> $(basename "$f")"; tail -n 25 "$f"; done >"$out/iwae.log" 2>&1
"$py" - "$runs" "$out/iwae_compare.json" <<'PY' >>"$summary" 2>&1
import csv, json, sys
from pathlib import Path

runs, dest = Path(sys.argv[1]), Path(sys.argv[2])
table = {}
for d in sorted(runs.glob("iwae_*_*")):
    if not d.is_dir():
        continue
    rows = [r for f in d.rglob("metrics.csv") for r in csv.DictReader(f.open())]
    table[d.name.removeprefix("iwae_")] = {
        int(r["epoch"]): float(r["val/nll"]) for r in rows if r.get("val/nll")
    }
dest.write_text(json.dumps({"val_nll_by_epoch": table}, indent=1) + "\n")
print("val/nll by epoch, per device_seed:", json.dumps(table))
PY

# 3-4. The benchmarks, alone on the machine.
step "interleaved_speed" 200 "$py" benchmarks/interleaved_speed.py --device "$dev" \
    --train-images "$imgs" --data-dir "$data" --out "$runs/interleaved" "${il[@]}" \
    --variant k1=module.steps_per_batch=1 \
    --variant k20c=module.steps_per_batch=20,module.compile=true \
    --json "$out/interleaved.json" >"$out/interleaved.log" 2>&1
step "epoch_speed" "$budget" "$py" benchmarks/epoch_speed.py --device "$dev" --reps "$reps" \
    --train-images "$imgs" --data-dir "$data" --out "$runs/speed" \
    --variant k1=module.steps_per_batch=1 \
    --variant k20c=module.steps_per_batch=20,module.compile=true \
    --json "$out/epoch_speed.json" >"$out/epoch_speed.log" 2>&1
log "total: $((SECONDS - t0)) s"
rm -rf "$runs"
