#!/usr/bin/env bash
# Trains the shipped demo model on a 2-core CPU in about two hours (the recipe of
# backend/lazyedit/weights/demo/README.md), then writes it to runs/demo/model. Resumable: rerun it after
# an interruption and every stage continues from its last checkpoint (finished stages are skipped).
#
#   nohup setsid scripts/train_demo.sh > runs/demo/train.log 2>&1 &
#
# The lazy and sketch stages learn at 128 px (cheap steps; --position-grid 32 trains the positions of a 512 px
# canvas by placing each crop at a random offset). Drawing the procedural scenes costs a quarter of a step:
# one data-loader worker draws the next batch meanwhile. --max-minutes bounds each stage; a rerun after an
# interruption gets the full budget again.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${OMP_NUM_THREADS:-2}
OUT=${OUT:-runs/demo}
T=".venv/bin/python -m lazyedit.training.cli"
# fp32: bf16 autocast is only faster on CPUs with avx512_bf16
C="--config demo --output $OUT --save-every 100 --sample-every 100 --no-progress --mixed-precision no"
LAZY_MIN=${LAZY_MIN:-62} SKETCH_MIN=${SKETCH_MIN:-10}

step_of() {  # the step a stage has reached (0 if none)
  .venv/bin/python - "$OUT/$1" <<'PY'
import json, pathlib, sys
c = sorted(pathlib.Path(sys.argv[1]).glob("checkpoints/step_*/trainer_state.json"), key=lambda p: int(p.parent.name[5:]))
print(json.loads(c[-1].read_text())["step"] if c else 0)
PY
}
mark() { [ -f "$OUT/$1.done" ]; }

$T vae          $C --resolution 64 --batch-size 12 --steps 1500
$T asym-decoder $C --resolution 64 --batch-size 8 --steps 400
if ! mark lazy; then
  $T lazy $C --resolution 128 --batch-size 8 --steps 100000 --lr 4e-4 --position-grid 32 --max-minutes "$LAZY_MIN" --num-workers 1
  touch "$OUT/lazy.done"
fi
if ! mark sketch; then
  $T sketch $C --resolution 128 --batch-size 8 --steps 100000 --position-grid 32 --max-minutes "$SKETCH_MIN" --num-workers 1
  touch "$OUT/sketch.done"
fi
echo "trained: lazy step $(step_of lazy), sketch step $(step_of sketch); model in $OUT/model"
