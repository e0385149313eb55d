#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Deletes the slice (and its queued resource). Run directories in the bucket stay.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

if [[ "$QUEUED" == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$TPU_NAME" --project="$PROJECT" \
    --zone="$ZONE" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet
fi
