#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create (or reuse) the slice, copy this
# checkout to every worker, install with the [tpu] extra, and run `vlgen train`
# on all workers at once. jax.distributed finds the other workers by itself on
# TPU VMs, so no coordinator settings are needed.
#
# Usage:
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a ACCELERATOR_TYPE=v5p-64 \
#   WORKDIR=gs://my-bucket/runs/parti350m TFDS_DATA_DIR=gs://my-bucket/tfds \
#   launch/tpu_pod.sh --config configs/parti.py:350m [--config.key=value ...]
#
# Environment:
#   TPU_NAME, ZONE            required: the slice and its zone
#   ACCELERATOR_TYPE          e.g. v4-32, v5litepod-64, v5p-128 (needed to create)
#   RUNTIME_VERSION           TPU VM image (default: tpu-ubuntu2204-base)
#   PROJECT                   gcloud project (default: gcloud's configured one)
#   WORKDIR                   run directory; gs:// recommended (Orbax writes there)
#   TFDS_DATA_DIR             tfds data dir; gs:// recommended
#   SPOT=1                    create the slice as a Spot (preemptible) VM
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
: "${WORKDIR:?set WORKDIR (e.g. gs://bucket/runs/name)}"
runtime="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
project_flag=()
if [ -n "${PROJECT:-}" ]; then project_flag=(--project "$PROJECT"); fi
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

tpu() { gcloud compute tpus tpu-vm "$@" --zone "$ZONE" "${project_flag[@]}"; }

# 1. Create the slice unless it exists.
if ! tpu describe "$TPU_NAME" >/dev/null 2>&1; then
  : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE to create $TPU_NAME}"
  spot_flag=()
  if [ "${SPOT:-0}" = "1" ]; then spot_flag=(--spot); fi
  echo "[tpu_pod] creating $TPU_NAME ($ACCELERATOR_TYPE, $runtime)"
  tpu create "$TPU_NAME" --accelerator-type "$ACCELERATOR_TYPE" --version "$runtime" "${spot_flag[@]}"
fi

# 2. Copy the code (tracked files only) to every worker.
archive="$(mktemp -t vlgen-XXXXXX.tar.gz)"
trap 'rm -f "$archive"' EXIT
git -C "$repo_root" archive --format=tar.gz -o "$archive" HEAD
tpu scp "$archive" "$TPU_NAME":/tmp/vlgen.tar.gz --worker=all
tpu ssh "$TPU_NAME" --worker=all --command \
  "rm -rf ~/vlgen_jax && mkdir -p ~/vlgen_jax && tar -xzf /tmp/vlgen.tar.gz -C ~/vlgen_jax"

# 3. Install with the [tpu] extra on every worker.
tpu ssh "$TPU_NAME" --worker=all --command \
  "cd ~/vlgen_jax && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[tpu]'"

# 4. Train on all workers at once (the same command everywhere).
args=""
for a in "$@"; do args+=" $(printf '%q' "$a")"; done
tpu ssh "$TPU_NAME" --worker=all --command \
  "cd ~/vlgen_jax && TFDS_DATA_DIR=$(printf '%q' "${TFDS_DATA_DIR:-}") .venv/bin/vlgen train --workdir $(printf '%q' "$WORKDIR")$args"
