# shellcheck shell=bash
# Shared by tpu_scripts/*.sh (sourced, not run): configuration and command runner.
#
# Settings come from an env file: $TOXJAX_TPU_ENV, else tpu_scripts/tpu.env (see
# config.env.example). DRY_RUN=1 prints every command (shell-quoted, one per line)
# instead of running it.
set -euo pipefail

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPTS_DIR")"
ENV_FILE="${TOXJAX_TPU_ENV:-$SCRIPTS_DIR/tpu.env}"
# On every worker, relative to the home directory (where `gcloud ... ssh` starts):
# shellcheck disable=SC2034  # used by the scripts that source this file
REMOTE_DIR=toxjax        # the checkout
# shellcheck disable=SC2034
REMOTE_LOGS=logs         # per-run logs, inside the checkout

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

if [[ ! -f "$ENV_FILE" ]]; then
  die "no config file $ENV_FILE: copy tpu_scripts/config.env.example there (or set TOXJAX_TPU_ENV)"
fi
set -a
# shellcheck source=/dev/null
source "$ENV_FILE"
set +a

for var in PROJECT ZONE ACCELERATOR_TYPE RUNTIME_VERSION TPU_NAME BUCKET; do
  if [[ -z "${!var:-}" ]]; then
    die "$var is not set in $ENV_FILE (see tpu_scripts/config.env.example)"
  fi
done
QUEUED="${QUEUED:-0}"
SPOT="${SPOT:-0}"
CORPUS_FILES="${CORPUS_FILES:-}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"

# Quotes words for a shell, readably: safe words as they are, others in single quotes.
quote() {
  local out="" word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=" $word"
    else
      out+=" '${word//\'/\'\\\'\'}'"
    fi
  done
  echo "${out# }"
}

# Runs a command, or prints it (copy-pasteable) when DRY_RUN=1.
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    quote "$@"
  else
    "$@"
  fi
}

# Runs a shell command on every worker of the slice (or on worker $WORKER).
on_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --worker="${WORKER:-all}" --command="$1"
}

# The training command of one run, as a remote shell string: every worker runs the same
# `python -m toxjax.train --multihost`; MODEL_DIR on the bucket, so a re-launch resumes.
train_command() {
  local gin_file="$1" run_name="$2"
  shift 2
  local args=(.venv/bin/python -m toxjax.train --multihost "--gin_file=$gin_file"
    "--gin.MODEL_DIR=$BUCKET/runs/$run_name")
  if [[ -n "$CORPUS_FILES" ]]; then
    args+=("--gin.CORPUS_FILES=$CORPUS_FILES")
  fi
  quote "${args[@]}" "$@"
}

# A remote shell snippet that stops (exit 2) when a trainer of this run already runs on
# the worker. Put before the launch: a double launch would otherwise truncate the running
# run's log (the launch redirects it) before toxjax.train itself refused the second
# writer (MODEL_DIR/LOCK). The pattern is anchored on a python command line, so it does
# not match the remote shell that carries the snippet.
refuse_if_running() {
  local model_dir="$BUCKET/runs/$1"
  local pattern="^[^ ]*python[^ ]* (.* )?-m toxjax[.]train .*--gin[.]MODEL_DIR=$model_dir( |\$)"
  local say
  say="$(basename "$0"): a trainer of $model_dir is already running on \$(hostname)"
  say+=" (pid \$pids): wait for it or stop it, or choose another run name"
  echo "if pids=\$(pgrep -d ' ' -f $(quote "$pattern")); then echo \"$say\" >&2; exit 2; fi"
}

# Stops (exit 2) unless NAME is a safe word: it is put unquoted into remote commands and
# file names (MODEL_DIR, logs/NAME.log), so a `;` or a space would run on every worker.
#   check_name NAME WHAT USE   e.g. check_name "$run_name" "run name" "MODEL_DIR and the log"
check_name() {
  if [[ ! "$1" =~ ^[A-Za-z0-9._-]+$ ]]; then
    die "$2 '$1': use letters, digits, '.', '_' and '-' (it names $3)"
  fi
}

# experiments/inst_1_3b.gin, [.../]gin_configs/experiments/inst_1_3b.gin or inst_1_3b
# -> the path toxjax.train searches (relative to gin_configs/).
experiment_path() {
  local path="${1##*gin_configs/}"
  [[ "$path" == *.gin ]] || path="experiments/$path.gin"
  if [[ ! -f "$REPO_DIR/gin_configs/$path" ]]; then
    die "no experiment gin_configs/$path (see gin_configs/experiments/)"
  fi
  echo "$path"
}
