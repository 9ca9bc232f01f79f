#!/usr/bin/env bash
# Your own captioned images, end to end: installs vlgen-jax into ./.venv (if
# needed) and runs tokenizer -> VQ -> encode -> text-to-image -> sample -> eval
# on DIR with a recipe derived from the data (docs/own_data.md).
# Usage: launch/own_data.sh DIR [WORKDIR [vlgen demo options...]]
#   DIR: train/ (and optionally validation/), each captions.tsv + images or *.tar shards
#   (default WORKDIR: ./workdirs/own_data; e.g. --resolution 64 --budget quick|full)
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 DIR [WORKDIR [vlgen demo options...]]" >&2
  exit 2
fi
data="$(cd "$1" 2>/dev/null && pwd)" || { echo "error: --data $1 is not a folder" >&2; exit 2; }
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/_env.sh
source "$here/_env.sh" ""
workdir="${1:-$here/../workdirs/own_data}"
shift || true
cd "$here/.."
exec vlgen demo --workdir "$workdir" --data "$data" "$@"
