#!/usr/bin/env bash
# The offline demo: synthetic scenes -> train on the CPU -> evaluate -> segment.
# Everything is written under data/synthetic and ckpt/synthetic-demo.
set -euo pipefail
cd "$(dirname "$0")"
CFG=config/synthetic-demo.yaml
OUT=ckpt/synthetic-demo

echo "== 1/4 synthetic dataset (data/synthetic)"
python -m mit_semseg synthetic --root data/synthetic

echo "== 2/4 training ($CFG, CPU)"
python train.py --gpus cpu --cfg "$CFG"

echo "== 3/4 evaluation on the validation set"
python eval.py --gpu cpu --cfg "$CFG"

echo "== 4/4 segmenting a few photos"
rm -rf "$OUT/photos"
mkdir -p "$OUT/photos"
find data/synthetic/images/validation -type f | sort | head -n 4 | xargs -I{} cp {} "$OUT/photos/"
python test.py --gpu cpu --cfg "$CFG" --imgs "$OUT/photos" TEST.result "$OUT/test_results"

echo
echo "Done. Results:"
echo "  checkpoints, config.yaml, log.txt:  $OUT/"
echo "  evaluation (per-class IoU, JSON):   $OUT/eval_*.json"
echo "  segmented photos (image | labels):  $OUT/test_results/"
echo "  training curves:                    python -m mit_semseg curves $OUT"
