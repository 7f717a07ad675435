#!/usr/bin/env bash
# Text-to-image on the embedded shapes captions: train the VQ tokenizer, cache tokens and caption
# embeddings (packaged MiniLM encoder, offline), train the next-token generator, then sample the
# compositional benchmark's held-out prompts and score them.
# Outputs: runs/t2i/samples/{grid.png,images/,samples.npz,metrics.json}.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
source scripts/setup_env.sh
mmar fit --config configs/t2i/shapes_vq.yaml
python scripts/cache_tokens.py --tokenizer runs/t2i/vq/tokenizer --data shapes --num-items 20000 \
  --text-encoder all-MiniLM-L6-v2 --max-length 32 --out runs/t2i/tokens
mmar fit --config configs/t2i/shapes_next_token.yaml
python scripts/sample_t2i.py --ckpt runs/t2i/next_token/checkpoints/last.ckpt --benchmark held_out \
  --per-prompt 8 --cfg-scale 2.0 --temperature 0.7 --score --out runs/t2i/samples
echo "== text-to-image done in $(( $(date +%s) - start )) s: runs/t2i/samples/grid.png and metrics.json"
