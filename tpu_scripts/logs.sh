#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Follows a run's log on one worker (default 0, which writes the metrics).
#   tpu_scripts/logs.sh RUN_NAME [WORKER]
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

if [[ $# -lt 1 ]]; then
  die "usage: $0 RUN_NAME [WORKER]"
fi
WORKER="${2:-0}" on_workers "tail -n 200 -F $REMOTE_DIR/$REMOTE_LOGS/$1.log"
