#!/usr/bin/env bash
# Shared by the launch scripts: make ./.venv (if missing) and install the
# package into it with the extras given as "$1" (e.g. "" or "[test]").
# Environment: VLGEN_VENV (virtualenv, default ./.venv), VLGEN_SKIP_INSTALL=1.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VLGEN_VENV:-$repo_root/.venv}"
extras="${1:-}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[vlgen] creating virtualenv $venv"
  python3 -m venv "$venv"
fi
# Reinstall only when pyproject.toml changed since the last install;
# VLGEN_SKIP_INSTALL=1 uses the venv as it is (tests, offline machines).
stamp="$venv/.vlgen-installed${extras}"
if [ "${VLGEN_SKIP_INSTALL:-0}" != "1" ] &&
  { [ ! -f "$stamp" ] || [ "$repo_root/pyproject.toml" -nt "$stamp" ]; }; then
  echo "[vlgen] installing vlgen-jax${extras} into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$repo_root${extras}"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
# TensorFlow is only used by tfds to build datasets: keep it off accelerators
# and quiet.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
