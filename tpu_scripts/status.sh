#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Shows the slice's state (and the queued resource's, when QUEUED=1).
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

if [[ "$QUEUED" == 1 ]]; then
  run gcloud compute tpus queued-resources describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE"
else
  run gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE"
fi
