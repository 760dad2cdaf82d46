#!/usr/bin/env bash
# Trains the shipped demo model on a 2-core CPU (the recipe of backend/lazyedit/weights/demo/README.md), then
# writes it to runs/demo/model. Resumable: rerun it after an interruption and every stage continues from its
# last checkpoint; a phase that reached its step count is skipped.
#
#   nohup setsid scripts/train_demo.sh > runs/demo/train.log 2>&1 &
#
# The lazy and sketch stages learn at 128 px (cheap steps; --position-grid 32 trains the positions of a 512 px
# canvas by placing each crop at a random offset; --large-objects 0.4 draws 40% of the scenes with objects as
# large in tokens as on a 512 px canvas). Drawing the procedural scenes cost a quarter of a step until stop
# 26 made the mask fill 3x faster: one data-loader worker draws the next batch meanwhile. The asymmetric decoder and the backbone only need the
# VAE, so they train at the same time, one thread each: on two cores that is faster than one stage on two
# OpenMP threads. MAX_MIN bounds each phase's wall clock in one run (a rerun continues where it stopped).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo}
T=".venv/bin/python -m lazyedit.training.cli"
# fp32: bf16 autocast is only faster on CPUs with avx512_bf16
C="--config demo --output $OUT --save-every 100 --sample-every 100 --no-progress --mixed-precision no ${MAX_MIN:+--max-minutes $MAX_MIN}"
G="--resolution 128 --batch-size 8 --position-grid 32 --num-workers 1"

OMP_NUM_THREADS=2 $T vae $C --resolution 64 --batch-size 12 --steps 1500

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
(
  $T asym-decoder $C --resolution 64 --batch-size 8 --steps 1600
  $T asym-decoder $C --resolution 128 --batch-size 4 --num-workers 1 --steps 3600
  $T asym-decoder $C --resolution 128 --batch-size 4 --num-workers 1 --lr 2e-4 --steps 5748
) & decoder=$!
(
  # the learning rate steps down: 4e-4, 2e-4, 1e-4 (a resumed phase takes its own --lr)
  $T lazy $C $G --lr 4e-4 --steps 7874
  $T lazy $C $G --lr 4e-4 --large-objects 0.4 --steps 11400
  $T lazy $C $G --lr 2e-4 --large-objects 0.4 --steps 14763
  $T lazy $C $G --lr 1e-4 --large-objects 0.4 --steps 17071
) & backbone=$!
wait $backbone
wait $decoder
# v5: both cores on the backbone, as two data-parallel processes of batch 8 (16 samples a step; 1.45x the
# samples per second of one process on this VM). torchrun, not `accelerate launch --cpu`, which starts one.
D=".venv/bin/torchrun --standalone --nproc_per_node 2 -m lazyedit.training.cli"
$D lazy $C $G --lr 1e-4 --large-objects 0.4 --steps 20200
$D lazy $C $G --lr 5e-5 --large-objects 0.4 --steps 21780
$T sketch $C $G --large-objects 0.4 --steps 4001   # needs the finished backbone
$D sketch $C $G --large-objects 0.4 --steps 5000
# v6, one thread each side by side: the decoder learns to decode the generator's latents (half of its batches
# are training edits whose hole tokens the finished backbone sampled); the sketch tuner moves to 256 px crops,
# where objects are as large in tokens as on the editor's 512 px canvas
$T asym-decoder $C --resolution 128 --batch-size 4 --num-workers 1 --lr 1e-4 --generated-latents 0.5 --steps 7300 & decoder=$!
$T sketch $C --resolution 256 --batch-size 8 --position-grid 32 --large-objects 0.5 --num-workers 1 --lr 1e-4 --steps 6235   # v6 stopped here after 70 minutes
wait $decoder
# v7: the decoder again, on the v6 sketch tuner too: half of the scenes with large objects (as on a 512 px
# canvas), and half of the generated edits that have an outline sampled with it (the latents sketches steer)
$T asym-decoder $C --resolution 128 --batch-size 4 --num-workers 1 --lr 1e-4 --generated-latents 0.5 --generated-sketches 0.5 --large-objects 0.5 --steps 8947   # v7 stopped here after 100 minutes
# v8, v9 (stops 15, 16): the backbone on longer sequences. 256 px crops (256 context tokens; a 512 px canvas has
# 1024) drew 512 px objects better but cost colour, so the next phase takes 128 and 256 px crops in turn at
# half the rate; then the sketch tuner learns to steer the moved backbone
L="--position-grid 32 --large-objects 0.5 --num-workers 1 --batch-size 4"
$D lazy $C $L --resolution 256 --lr 1e-4 --steps 23740       # v8 stopped here after 85 minutes
$D lazy $C $L --resolution 128,256 --lr 5e-5 --steps 26000
$D sketch $C $L --resolution 128,256 --lr 1e-4 --steps 7416  # v9 stopped here after 27 minutes
# v13 (stop 18): the null prompt. Captions dropped for guidance used to be "", which is also the prompt of a
# removal, so an empty prompt over an object-shaped hole had meant an object about 3 times in 10 (phantom
# objects in removals), and guidance could not steer removals (its two rows were the same). The demo config
# now drops captions to "<null>" (a fresh run of this script does so from its first step); this phase taught
# it to the v9 backbone (v13 itself ran these flags as
# `--init-from` the shipped fp16 v9 for 1696 steps in 80 minutes, fresh optimizer and EMA, --seed 13)
$D lazy $C $L --resolution 128,256 --lr 7e-5 --text-dropout 0.2 --steps 27696
# v15, v16 (stops 20, 21): guidance distillation. The transformer learns v13's guided velocity for w in 1..8 in
# one forward row instead of two (the frozen teacher is kept in $OUT/distill/teacher). v15 ran these flags as
# `--init-from` the shipped fp16 v13 with --seed 15; from step 1097 (v16) 128 px crops came twice as often as
# 256 px ones, where v15's 128 px colour had lagged. v16 shipped with 6 steps; from stop 24 the default is 5.
$D distill $C $L --resolution 128,256 --lr 1e-4 --steps 1097      # v15 stopped here after 70 minutes
$D distill $C $L --resolution 128,128,256 --lr 1e-4 --steps 2651  # v16 stopped here after 75 minutes
echo "trained; model in $OUT/model"
