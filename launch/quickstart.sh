#!/usr/bin/env bash
# The main job on a fresh machine: installs vlgen-jax into ./.venv (if needed)
# and runs the pipeline end to end on the embedded `shapes` dataset.
# Usage: launch/quickstart.sh [WORKDIR [vlgen demo options...]]
#   (default WORKDIR: ./workdirs/quickstart; recipe: configs/demo_quickstart.py)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/_env.sh
source "$here/_env.sh" ""
workdir="${1:-$here/../workdirs/quickstart}"
shift || true
cd "$here/.."
exec vlgen demo --workdir "$workdir" "$@"
