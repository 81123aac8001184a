#!/usr/bin/env bash
# Issue 12's GPU checks in one run, for the short time a GPU machine is lent (device tool).
#
#   bash benchmarks/gpu_checks.sh                                  # on the GPU machine
#   VAELAB_CHECK_DEVICE=cpu QUICK=1 bash benchmarks/gpu_checks.sh  # the same steps, tiny, on a CPU
#
# Writes at most 9 files to $OUT (default logs/gpu), none deeper than $OUT itself (what the device
# tool brings back): env.txt, precision.txt (the CUDA autocast tests of
# tests/unit/test_precision.py and the CUDA-graph tests of tests/integration/test_cuda_graph.py,
# whose real capture runs only on a GPU), epoch_speed.json/.log (every arm at batch 20 and 100,
# K = 20, K = 20 compiled, K = 20 captured in a CUDA graph, eager and compiled; the full-schedule
# extrapolation is in the JSON), interleaved.json/.log (the
# same arms taking turns every 100 steps inside one fit), iwae_<acc>.log for both devices
# and iwae_compare.json (a few real epochs of experiment=iwae_vae_1layer on the device and on the
# CPU, same seed: val/nll per epoch side by side). Needs vaelab importable (PYTHONPATH=src, and
# hydra-core, omegaconf and antlr4-python3-runtime, carried as wheels where they are missing) and
# MNIST in torchvision's layout under $VAELAB_DATA_DIR (default ../shared/data).
set -uo pipefail
out=${OUT:-logs/gpu}
mkdir -p "$out"
dev=${VAELAB_CHECK_DEVICE:-cuda}
data=${VAELAB_DATA_DIR:-../shared/data}
py=${PYTHON:-python3}
runs=$(mktemp -d)
if [ "${QUICK:-0}" = 1 ]; then
    imgs=2000 reps=1 epochs=1 extra=(+trainer.limit_train_batches=20 +trainer.limit_val_batches=2)
    il=(--slot 60 --batch-sizes 20)
else
    imgs=55000 reps=3 epochs=${IWAE_EPOCHS:-3} extra=() il=()
fi
acc=cpu
[ "$dev" = cuda ] && acc=gpu
export VAELAB_DATA_DIR=$data PYTHONUNBUFFERED=1

{ nvidia-smi || true; "$py" -c "import sys, torch, lightning; print(sys.version); print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"; } >"$out/env.txt" 2>&1

"$py" -m pytest -q -s -p no:cacheprovider tests/unit/test_precision.py \
    tests/integration/test_cuda_graph.py >"$out/precision.txt" 2>&1
echo "precision and CUDA-graph tests: rc $?"
graphs=()
[ "$dev" = cuda ] && graphs=(
    --variant k20g=module.steps_per_batch=20,module.cuda_graph=true
    --variant k20cg=module.steps_per_batch=20,module.compile=true,module.cuda_graph=true
)

"$py" benchmarks/epoch_speed.py --device "$dev" --reps "$reps" --train-images "$imgs" \
    --data-dir "$data" --out "$runs/speed" \
    --variant k20=module.steps_per_batch=20 \
    --variant k20c=module.steps_per_batch=20,module.compile=true "${graphs[@]}" \
    --json "$out/epoch_speed.json" >"$out/epoch_speed.log" 2>&1
echo "epoch_speed: rc $?"

"$py" benchmarks/interleaved_speed.py --device "$dev" --train-images "$imgs" --data-dir "$data" \
    --out "$runs/interleaved" "${il[@]}" \
    --variant k20=module.steps_per_batch=20 \
    --variant k20c=module.steps_per_batch=20,module.compile=true "${graphs[@]}" \
    --json "$out/interleaved.json" >"$out/interleaved.log" 2>&1
echo "interleaved_speed: rc $?"

for a in "$acc" cpu; do
    "$py" -m vaelab.train experiment=iwae_vae_1layer "trainer.accelerator=$a" \
        "trainer.max_epochs=$epochs" logger=csv test=false "paths.output_dir=$runs/iwae_$a" \
        +trainer.enable_progress_bar=false ~callbacks.rich_progress_bar "${extra[@]}" \
        >"$out/iwae_$a.log" 2>&1
    echo "iwae_vae_1layer on $a: rc $?"
    [ "$acc" = cpu ] && break  # a CPU-only smoke run has one device to compare
done

"$py" - "$runs" "$out/iwae_compare.json" "$acc" <<'PY'
import csv, json, sys
from pathlib import Path

runs, dest, acc = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
table = {}
for a in dict.fromkeys([acc, "cpu"]):
    files = list((runs / f"iwae_{a}").rglob("metrics.csv"))
    rows = list(csv.DictReader(files[0].open())) if files else []
    table[a] = {r["epoch"]: float(r["val/nll"]) for r in rows if r.get("val/nll")}
dest.write_text(json.dumps({"val_nll_by_epoch": table}, indent=1) + "\n")
print(json.dumps(table))
PY
rm -rf "$runs"
