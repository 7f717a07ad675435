#!/usr/bin/env bash
# The quickstart: on the embedded digits, train a VQ tokenizer and a class-conditional next-token
# generator, then sample a grid (one row per class) and score it with the embedded digits metrics.
# Outputs: runs/quickstart/samples/{grid.png,samples.npz,metrics.json}.
# Training logs (losses, learning rate, sample pictures): tensorboard --logdir runs/quickstart
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
source scripts/setup_env.sh
echo "== environment ready after $(( $(date +%s) - start )) s"
mmar fit --config configs/quickstart/digits_vq.yaml
mmar fit --config configs/quickstart/digits_ar.yaml
python scripts/sample.py --ckpt runs/quickstart/ar/checkpoints/last.ckpt --out runs/quickstart/samples \
  --per-class 50 --cfg-scale 3.0 --embedded-metrics
echo "== quickstart done in $(( $(date +%s) - start )) s: runs/quickstart/samples/grid.png and metrics.json"
