#!/usr/bin/env bash
# N CPU processes on this machine, joined by jax.distributed on 127.0.0.1:
# the same multi-host code path a TPU pod or a SLURM job takes, runnable on a
# laptop. Each process sees VLGEN_LOCAL_DEVICES forced CPU devices (default 4).
#
# Usage:
#   launch/multiprocess_local.sh N [train|sample|encode|eval] [arguments ...]
# The subcommand defaults to `train`. Without arguments it runs a tiny
# training (configs/toy.py, 20 steps) into ./workdirs/multiprocess_local.
# Logs: <--workdir>/process_<i>.log, or <--outdir>.logs/process_<i>.log.
# Environment: VLGEN_PORT (coordinator port, default: a free one),
#   VLGEN_LOCAL_DEVICES (devices per process), VLGEN_VENV (virtualenv to use);
#   XLA_FLAGS is kept (its device count is replaced).
set -euo pipefail

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES [train|sample|encode|eval] [arguments ...]" >&2
  exit 2
fi
num_processes="$1"
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/.." && pwd)"
# shellcheck source=launch/_env.sh
source "$here/_env.sh" ""

command="train"
case "${1:-}" in
  train | sample | encode | eval) command="$1"; shift ;;
esac
if [ $# -eq 0 ] && [ "$command" = "train" ]; then
  set -- --config "$repo_root/configs/toy.py" --workdir "$repo_root/workdirs/multiprocess_local" \
    --config.total_steps=20 --config.log_every=5 --config.checkpoint_every=10
fi
# Per-process logs go to --workdir, or for commands that write an --outdir
# (which must not exist before they finish) to <outdir>.logs/.
workdir=""
outdir=""
prev=""
for a in "$@"; do
  if [ "$prev" = "--workdir" ]; then workdir="$a"; fi
  if [ "$prev" = "--outdir" ]; then outdir="$a"; fi
  case "$a" in
    --workdir=*) workdir="${a#--workdir=}" ;;
    --outdir=*) outdir="${a#--outdir=}" ;;
  esac
  prev="$a"
done
if [ -n "$outdir" ]; then workdir="${outdir%/}.logs"; fi
: "${workdir:?pass --workdir}"
mkdir -p "$workdir"

port="${VLGEN_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
devices="${VLGEN_LOCAL_DEVICES:-4}"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
# Forward SIGTERM/SIGINT to every process (each saves a checkpoint and exits).
trap cleanup TERM INT

for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" \
  VLGEN_COORDINATOR_ADDRESS="127.0.0.1:$port" \
  VLGEN_NUM_PROCESSES="$num_processes" \
  VLGEN_PROCESS_ID="$i" \
    vlgen "$command" "$@" >"$workdir/process_$i.log" 2>&1 &
  pids+=("$!")
done
echo "[multiprocess_local] $num_processes processes x $devices CPU devices, coordinator 127.0.0.1:$port, logs in $workdir/process_*.log"

status=0
for i in "${!pids[@]}"; do
  # A trapped signal interrupts `wait` (status > 128) while the process still
  # runs (saving its checkpoint): wait again for its own exit status.
  while true; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "${pids[$i]}" 2>/dev/null; then continue; fi
    break
  done
  if [ "$rc" -ne 0 ]; then
    echo "[multiprocess_local] process $i failed; see $workdir/process_$i.log" >&2
    tail -n 20 "$workdir/process_$i.log" >&2 || true
    status=1
    cleanup
  fi
done
if [ "$status" -eq 0 ]; then
  tail -n 3 "$workdir/process_0.log"
fi
exit "$status"
