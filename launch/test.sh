#!/usr/bin/env bash
# Installs vlgen-jax with its test extras into ./.venv (if needed) and runs the
# test suite on CPU. Extra arguments go to pytest, e.g. `launch/test.sh -k data`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/_env.sh
source "$here/_env.sh" "[test]"
cd "$here/.."
export JAX_PLATFORMS=cpu
exec python -m pytest "$@"
