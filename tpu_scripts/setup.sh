#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Copies this checkout (its committed HEAD) to every worker and installs toxjax[tpu]
# into toxjax/.venv there with the repository's own `make install`.
#   tpu_scripts/setup.sh
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

# A fresh private directory (mktemp -d, mode 0700): a predictable name in a shared /tmp
# could be swapped for another archive (or a symlink) between writing and copying it.
tmp_dir="$(mktemp -d "${TMPDIR:-/tmp}/toxjax-src.XXXXXXXX")"
trap 'rm -rf "$tmp_dir"' EXIT
archive="$tmp_dir/toxjax-src.tar.gz"
run git -C "$REPO_DIR" archive --format=tar.gz -o "$archive" HEAD
run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:toxjax-src.tar.gz" \
  --project="$PROJECT" --zone="$ZONE" --worker=all

torch=(.venv/bin/pip install -q torch==2.13.0)
if [[ -n "$TORCH_INDEX_URL" ]]; then
  torch+=(--index-url "$TORCH_INDEX_URL")
fi
on_workers "set -e
command -v python3.11 >/dev/null || { sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv make; }
mkdir -p $REMOTE_DIR && tar -xzf toxjax-src.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR
test -x .venv/bin/python || python3.11 -m venv .venv
$(quote "${torch[@]}")
make install PY=python3.11
.venv/bin/pip install -q -e '.[tpu]'
.venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
