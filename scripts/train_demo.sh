#!/usr/bin/env bash
# Trains the shipped demo model on a 2-core CPU (the recipe of backend/lazyedit/weights/demo/README.md), then
# writes it to runs/demo/model. Resumable: rerun it after an interruption and every stage continues from its
# last checkpoint; a stage that reached its step count is skipped.
#
#   nohup setsid scripts/train_demo.sh > runs/demo/train.log 2>&1 &
#
# The lazy and sketch stages learn at 128 px (cheap steps; --position-grid 32 trains the positions of a 512 px
# canvas by placing each crop at a random offset). Drawing the procedural scenes costs a quarter of a step:
# one data-loader worker draws the next batch meanwhile. MAX_MIN bounds each stage's wall clock in one run
# (a rerun continues where it stopped).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${OMP_NUM_THREADS:-2}
OUT=${OUT:-runs/demo}
T=".venv/bin/python -m lazyedit.training.cli"
# fp32: bf16 autocast is only faster on CPUs with avx512_bf16
C="--config demo --output $OUT --save-every 100 --sample-every 100 --no-progress --mixed-precision no ${MAX_MIN:+--max-minutes $MAX_MIN}"
G="--resolution 128 --batch-size 8 --position-grid 32 --num-workers 1"

$T vae          $C --resolution 64 --batch-size 12 --steps 1500
$T asym-decoder $C --resolution 64 --batch-size 8 --steps 1200
$T lazy         $C $G --lr 4e-4 --steps 7874
$T sketch       $C $G --steps 1550
echo "trained; model in $OUT/model"
