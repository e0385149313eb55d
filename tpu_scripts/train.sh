#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts one experiment on every worker, detached; logs to toxjax/logs/<run>.log there.
# Re-running the same command resumes the run from its last checkpoint in the bucket.
#   tpu_scripts/train.sh EXPERIMENT [RUN_NAME] [-- toxjax.train flags...]
#   tpu_scripts/train.sh inst_1_3b
#   tpu_scripts/train.sh experiments/inst_1_3b.gin inst_1_3b_lr1e-4 -- --gin.LEARNING_RATE=1e-4
# FOREGROUND=1 waits for the run and streams worker output instead of detaching.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

if [[ $# -lt 1 || "$1" == -* ]]; then
  die "usage: $0 EXPERIMENT [RUN_NAME] [-- toxjax.train flags...]"
fi
gin_file="$(experiment_path "$1")"
shift
run_name="$(basename "$gin_file" .gin)"
if [[ $# -gt 0 && "$1" != -- ]]; then
  run_name="$1"
  shift
fi
[[ "${1:-}" == -- ]] && shift
check_name "$run_name" "run name" "MODEL_DIR and the log"

command="$(train_command "$gin_file" "$run_name" "$@")"
log="$REMOTE_LOGS/$run_name.log"
# A second launch of a running run is refused before it touches the log.
start="cd $REMOTE_DIR && mkdir -p $REMOTE_LOGS || exit 1; $(refuse_if_running "$run_name")"
if [[ "${FOREGROUND:-0}" == 1 ]]; then
  on_workers "$start; $command 2>&1 | tee $log"
else
  # nohup + redirected streams: the run outlives the ssh session.
  on_workers "$start; nohup $command > $log 2>&1 < /dev/null &"
  echo "started $run_name: MODEL_DIR=$BUCKET/runs/$run_name; follow with tpu_scripts/logs.sh $run_name" >&2
fi
