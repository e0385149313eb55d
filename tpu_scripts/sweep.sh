#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Runs several experiments one after another on the slice, as one detached job on every
# worker; each run logs to toxjax/logs/<run>.log. The sweep stops at the first failed
# run; re-launching it skips finished runs (they resume at their last step) and resumes
# the interrupted one.
#   tpu_scripts/sweep.sh EXPERIMENT... [-- toxjax.train flags for every run]
#   tpu_scripts/sweep.sh gin_configs/experiments/*_1_3b.gin
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

experiments=()
while [[ $# -gt 0 && "$1" != -- ]]; do
  experiments+=("$(experiment_path "$1")")
  # The run name goes unquoted into the remote script: checked before anything is built.
  check_name "$(basename "${experiments[-1]}" .gin)" "run name" "MODEL_DIR and the log"
  shift
done
[[ "${1:-}" == -- ]] && shift
if [[ ${#experiments[@]} -eq 0 ]]; then
  die "usage: $0 EXPERIMENT... [-- toxjax.train flags for every run]"
fi

sweep_name="${SWEEP_NAME:-$(date +%Y%m%d-%H%M%S)}"
check_name "$sweep_name" "SWEEP_NAME" "the sweep script and its log"

# The runs go into a script on every worker (a here-document, so no extra quoting),
# which runs detached from the ssh session.
script="$REMOTE_LOGS/sweep-$sweep_name.sh"
lines=""
for gin_file in "${experiments[@]}"; do
  run_name="$(basename "$gin_file" .gin)"
  lines+="$(refuse_if_running "$run_name")"$'\n'
  lines+="$(train_command "$gin_file" "$run_name" "$@") > $REMOTE_LOGS/$run_name.log 2>&1 || exit 1"$'\n'
done
on_workers "cd $REMOTE_DIR && mkdir -p $REMOTE_LOGS && cat > $script <<\EOF
${lines}EOF
nohup bash $script > ${script%.sh}.log 2>&1 < /dev/null &"
echo "started a sweep of ${#experiments[@]} runs ($script); follow each with tpu_scripts/logs.sh RUN" >&2
