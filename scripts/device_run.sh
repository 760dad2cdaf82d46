#!/usr/bin/env bash
# One prepared visit to a lent GPU machine. The device tool's `run` copies this working tree there, runs a
# command and brings back what it wrote under $OUT (at most 8 files of 16 MiB). A task gets 15 minutes of
# device time in all, the machine's start included, so everything that needs the GPU is in this one command,
# each step logged and none stopping the next:
#   1. the GPU tests (tests/gpu: CUDA against CPU, xformers against SDPA where installed, bf16)
#   2. the base-size speed benchmark (JSON and plot)
#   3. TRAIN_MINUTES of one training stage, fine-tuning the shipped demo model (default: the asymmetric decoder
#      at 256 px, batch 32, bf16, with --generated-latents as it was trained), shipped as fp16 and evaluated
#      beside the shipped model on the same cases. FROM="--components-from backend/lazyedit/weights/demo" trains
#      the stage from scratch on the shipped model's other components instead, FROM="" everything from scratch.
#      PLAN trains several stages in turn, one a line, "STAGE MINUTES ARGS...", each on what the last one left
#      (docs/training.md, "On a lent GPU machine")
#   4. the fp16 model, the evaluations and the training samples packed as tar.gz parts of 15 MiB
# A call is cut off at 600 s and then nothing of the pack comes back, so the steps are fitted into BUDGET
# (560 s): the tests, the benchmark and the evaluations are cut off or skipped when it runs out, each stage of
# the plan gets at most what is left less EVAL_SECONDS, and RESERVE is kept for shipping and packing.
#
# Here:   scripts/device_wheels.sh                      (diffusers is not installed there)
# Device: run(command="bash scripts/device_run.sh", carry=[".whl"], timeout_s=580)
# Here:   mkdir -p runs/device && cat <files_at>/results.tar.gz.part-* | tar xz -C runs/device
#         (runs/device/model-fp16 is a pipeline folder: lazyedit eval --model runs/device/model-fp16 ...)
#
# Every setting is an environment variable, so tests/test_device_script.py runs this same script on a CPU
# with a few steps.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder whose files come back (the device tool sets it)}"
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
STAGE=${STAGE:-asym-decoder}
TRAIN_MINUTES=${TRAIN_MINUTES:-3}
FROM=${FROM---init-from backend/lazyedit/weights/demo}  # set but empty: no folder, every stage from scratch
TRAIN_ARGS=${TRAIN_ARGS:---resolution 256 --batch-size 32 --num-workers 14 --mixed-precision bf16 --lr 1e-4 --steps 100000 --generated-latents 0.5 --generated-sketches 0.5 --large-objects 0.5 --save-every 500 --sample-every 500}
PLAN=${PLAN:-"$STAGE $TRAIN_MINUTES $TRAIN_ARGS"}
BENCH_ARGS=${BENCH_ARGS:---config base --size 1024}
EVAL_ARGS=${EVAL_ARGS:---cases 240 --size 512}
RUN=${RUN:-/tmp/lazyedit-device-run}
BUDGET=${BUDGET:-560}  # seconds this command may run (a device call is cut off at 600): the steps are fitted into it
RESERVE=${RESERVE:-45}  # seconds kept back for shipping and packing what was trained, so it always comes back
EVAL_SECONDS=${EVAL_SECONDS:-120}  # seconds the plan leaves for the evaluations after it

mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
failed=()
step() {  # step NAME COMMAND...: runs it, logs its time and status, and carries on whatever it returns
  local name=$1 t0=$SECONDS
  shift
  printf '\n==> [%s] %s  (%s)\n' "$(date -u +%T)" "$name" "$*"
  "$@"
  local rc=$?
  printf '<== %s: exit %s after %ss\n' "$name" "$rc" $((SECONDS - t0))
  [ "$rc" = 0 ] || failed+=("$name")
}
skipped=()
time_left() {  # seconds a step may take now: what is left of BUDGET less RESERVE, at least 0
  local t=$((BUDGET - SECONDS - RESERVE))
  echo $((t > 0 ? t : 0))
}
bounded() {  # bounded NAME COMMAND...: a step cut off when the budget runs out, skipped when it has
  local name=$1 t
  shift
  t=$(time_left)
  if [ "$t" -lt 10 ]; then
    printf '\n--- %s: skipped, %ss of the budget left\n' "$name" "$t"
    skipped+=("$name")
    return
  fi
  step "$name" timeout "$t" "$@"
}

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  step wheels "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:backend
else
  export PYTHONPATH=backend
fi
export PYTHONUNBUFFERED=1
L=("$PY" -m lazyedit.cli)

step environment "$PY" -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', '| diffusers', diffusers.__version__, '| accelerate', accelerate.__version__)"
bounded gpu-tests "$PY" -m pytest -q -p no:cacheprovider tests/gpu
# shellcheck disable=SC2086  # the *_ARGS are word lists
bounded bench "${L[@]}" bench $BENCH_ARGS --device "$DEVICE" --json "$OUT/bench.json" --plot "$OUT/bench.png"

rm -rf "$RUN" && mkdir -p "$RUN"
# the plan's lines come in on descriptor 3: a training process could otherwise read the rest of them from stdin
while read -r stage minutes args <&3; do
  [ -n "$stage" ] || continue
  # a stage saves and exports when its --max-minutes run out, so it is given what the budget has left (less
  # half a minute to load it and EVAL_SECONDS for the evaluations), not cut off
  minutes=$(awk -v m="$minutes" -v t="$(time_left)" -v e="$EVAL_SECONDS" \
    'BEGIN { c = (t - e - 30) / 60; printf "%.2f", (c < m ? c : m) }')
  if awk -v m="$minutes" 'BEGIN { exit !(m < 0.2) }'; then
    printf '\n--- train-%s: skipped, %ss of the budget left\n' "$stage" "$(time_left)"
    skipped+=("train-$stage")
    continue
  fi
  # shellcheck disable=SC2086
  step "train-$stage" "${L[@]}" train "$stage" --config demo $FROM --output "$RUN/run" \
    --max-minutes "$minutes" --no-progress $args
  mkdir -p "$RUN/pack"
  [ -f "$RUN/run/$stage/samples/latest.png" ] && cp "$RUN/run/$stage/samples/latest.png" "$RUN/pack/samples-$stage.png"
done 3<<< "$PLAN"
step ship "${L[@]}" train ship --output "$RUN/run" --dest "$RUN/pack/model-fp16"
# shellcheck disable=SC2086
bounded eval-trained "${L[@]}" eval --model "$RUN/pack/model-fp16" $EVAL_ARGS --device "$DEVICE" --no-progress \
  --json "$RUN/pack/eval-trained.json"
# shellcheck disable=SC2086
bounded eval-shipped "${L[@]}" eval --model demo $EVAL_ARGS --device "$DEVICE" --no-progress --json "$RUN/pack/eval-shipped.json"
# shellcheck disable=SC2086
bounded roundtrip-trained "${L[@]}" eval --model "$RUN/pack/model-fp16" --autoencoder $EVAL_ARGS --device "$DEVICE" \
  --no-progress --json "$RUN/pack/roundtrip-trained.json"
step pack bash -c "tar czf - -C '$RUN/pack' . | split -b 15M - '$OUT/results.tar.gz.part-'"

ls -l "$OUT"
[ ${#skipped[@]} -eq 0 ] || echo "skipped for time: ${skipped[*]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
