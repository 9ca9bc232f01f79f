#!/usr/bin/env bash
# Installs vlgen-jax with its test extras into ./.venv (if needed) and runs the
# test suite on CPU, one pytest-xdist worker per core, at most 4 (most tests
# compile and run on one thread; whole files go to one worker, so module
# fixtures are built once). Extra arguments go to pytest, e.g. `launch/test.sh -k data`;
# VLGEN_TEST_WORKERS=0 runs in one process.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/_env.sh
source "$here/_env.sh" "[test]"
cd "$here/.."
export JAX_PLATFORMS=cpu
workers="${VLGEN_TEST_WORKERS:-$(python -c 'import os; print(min(4, os.cpu_count() or 1))')}"
exec python -m pytest -n "$workers" --dist loadfile "$@"
