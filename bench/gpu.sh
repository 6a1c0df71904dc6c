#!/usr/bin/env bash
# The GPU checks and benchmarks docs/performance.md records, in one go (about 8 minutes on an
# H100/H200): the CUDA tests; the compiled step against the eager one (bench/compile.py); the
# stacked step replayed as a CUDA graph (bench/train_step.py); and thesis.yaml with 10 seeds per
# arm for 2 of its 30 epochs, compiled, end to end, projected to 30 epochs from its epochs'
# measured seconds. Everything it prints also lands in OUT (default results/bench-<device>).
#
# Usage: bash bench/gpu.sh [cuda|cpu] [OUT]
#        (the project installed first: pip install torch==2.14.1 -e ".[test]")
# `cpu` runs the same path on a CPU at a size a CPU finishes (3,000 images, 3 seeds), to check
# the script itself where no GPU is at hand.
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-cuda}
out=${2:-results/bench-$device}
mkdir -p "$out"
exec > >(tee "$out/summary.txt") 2>&1

if [ "$device" = cuda ]; then
    python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here'"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    seeds=(1 10); threads=4; sets=(); tests="cuda or graph or compiled"
else
    seeds=(1 3); threads=1; sets=(--set data.n_images=3000 --set search.seeds=3); tests="compiled"
fi
python -c "import torch, platform; print('torch', torch.__version__, platform.processor() or platform.machine())"

echo "== tests on $device"
timeout 300 python -m pytest -q -p no:cacheprovider tests/test_train.py -k "$tests"

echo "== compiled against eager step (bench/compile.py)"
timeout 240 python bench/compile.py --device "$device" --threads "$threads" --seeds "${seeds[@]}" \
    --models LeNet-5 "AttConv@conv1 T=4" --steps 20

echo "== stacked step per seed against one network (bench/train_step.py)"
timeout 120 python bench/train_step.py --device "$device" --seeds "${seeds[@]}" --steps 20

echo "== thesis.yaml, 2 of 30 epochs, compiled, end to end"
runs=$(mktemp -d)
start=$(date +%s)
timeout 300 study run searchspaces/thesis.yaml --results "$runs" --name thesis-2-epochs \
    --set train.epochs=2 --set train.compile=true "${sets[@]}"
echo "wall: $(( $(date +%s) - start )) s"
python - "$runs/thesis-2-epochs" <<'EOF'
import sys
import pandas as pd

study = sys.argv[1]
epochs = pd.read_parquet(f"{study}/epochs.parquet").groupby(["trial_id", "epoch"])["seconds"].first()
trials = pd.read_parquet(f"{study}/trials.parquet").groupby("trial_id")["wall_s"].first()
for trial_id, wall in trials.items():
    first, second = epochs[trial_id].iloc[0], epochs[trial_id].iloc[1]
    projected = wall - first - second + first + 29 * second  # the warm-up once, then 29 steady epochs
    print(f"trial {trial_id}: epoch 0 {first:.1f} s (with the compile), epoch 1 {second:.1f} s; "
          f"30 epochs projected {projected / 60:.1f} min")
EOF
rm -rf "$runs"
