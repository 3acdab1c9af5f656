#!/usr/bin/env bash
# Build the embedded default model from scratch: tokenizer, data, training, float16 export.
#   bash scripts/build_default_model.sh [KEY=VALUE ...]     (training overrides, e.g. max_time=600)
# The recipe and its settings: configs/default-model.yaml. Steps already done are skipped, and an
# interrupted training run resumes, so running it again continues where it stopped.
# Result: runs/default-model/fp16, an HF CodeGen directory like src/opencodegen/assets/default-model.
set -euo pipefail
ocg() { python3 -m opencodegen "$@"; }
if [ ! -f runs/default-init/tokenizer.json ]; then
  ocg init --preset demo --out runs/default-init --train-tokenizer-on stdlib:train installed:permissive
fi
if [ ! -f runs/default-data/manifest.json ]; then
  ocg data build --input stdlib:train installed:permissive --val-input stdlib:heldout --languages python \
    --tokenizer runs/default-init --out runs/default-data --seq-len 1024
fi
ocg train --config configs/default-model.yaml --resume auto "$@"
ocg convert checkpoint runs/default-model --out runs/default-model/fp16 --dtype float16
cp runs/default-data/train-token-counts.npy runs/default-model/fp16/
