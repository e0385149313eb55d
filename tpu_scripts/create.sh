#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Creates the TPU VM slice (QUEUED=1: as a queued resource, which waits for capacity).
#   tpu_scripts/create.sh            DRY_RUN=1 tpu_scripts/create.sh
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

extra=()
if [[ "$SPOT" == 1 ]]; then
  extra+=(--spot)
fi
if [[ "$QUEUED" == 1 ]]; then
  run gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
    --project="$PROJECT" --zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE" \
    --runtime-version="$RUNTIME_VERSION" "${extra[@]}"
else
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]}"
fi
