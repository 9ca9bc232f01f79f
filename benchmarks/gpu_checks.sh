#!/usr/bin/env bash
# The accelerator checks that issues 18 and 19 left open, as one run that fits
# a 15-minute device lease (each step has its own timeout; one failing step
# does not stop the others). Results go to $OUT (the device tool's folder
# that comes back), else ./gpu_checks_out: a log, a JSON line per benchmark.
#
#   1. Parti-750M, batch 8, guidance, 1024 tokens, bf16, AR: seconds per
#      batch (issue 18's goal: <= 1.5 s).
#   2. The model families at batch 8: masked vs AR (issue 19's goal: the
#      masked sampler >= 5x faster than the enc-dec AR one).
#   3. The 7.7M benchmark model: per-step time vs batch, AR vs Jacobi, cfg
#      cost, tokens/s against the HBM floor (issue 18).
#   4. With a trained t2i run (`bash benchmarks/gpu_checks.sh RUN PROMPTS`,
#      PROMPTS a text file of captions): AR vs Jacobi wall time on it
#      (benchmarks/sample_run.py; issue 18's Jacobi >= 1.5x goal).
#   5. Parti-350M training steps at batch 32 / 64, bf16, dots_no_batch remat: MFU.
#   6. Parti-750M again with the cache in 8 chunks (`--cache-chunks`).
#
# The device machine runs its own image's python3 (jax, flax, optax, orbax,
# sentencepiece are there) and cannot download: carry what it lacks
# (ml-collections, grain and grain's array-record and portpicker) as wheels
# in .whl/ (git-ignored). Prepare them here, once:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#     -d .whl ml-collections grain array-record portpicker
# then call the device tool's `run` with carry [".whl"] (and the run's
# folder, for step 4) and the command
#   bash benchmarks/gpu_checks.sh [RUN PROMPTS]
# Record what it prints in benchmarks/RESULTS.md with the date and device.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
out="${OUT:-$PWD/gpu_checks_out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
if ! "$py" -c "import ml_collections, grain" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: ml_collections or grain is not installed and .whl/ holds no wheels (see this script's header)" >&2
    exit 2
  fi
  "$py" -m pip install -q --no-index --no-deps --target "$PWD/.whl/site" .whl/*.whl || exit 2
  export PYTHONPATH="$PWD/.whl/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

log="$out/gpu_checks.log"
step() {  # step NAME SECONDS COMMAND...: run it, log it, go on whatever it returns
  local name="$1" seconds="$2"
  shift 2
  echo "=== $name ($(date -u +%FT%TZ), limit ${seconds} s): $*" | tee -a "$log"
  timeout "$seconds" "$@" 2>&1 | tee -a "$log"
  echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}

step device 40 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  $py -c 'import jax, flax; print(\"jax\", jax.__version__, \"flax\", flax.__version__, jax.devices())'"
# Most important first: the device tool stops a command at 10 minutes.
parti=("$py" benchmarks/sample.py --config configs/parti.py:750m --no-small
       --config.model.image_grid='(32,32)' --config.dtype=bfloat16 --batch-sizes 8 --cfg 3
       --decoding ar --repeats 3 --torch no)
step parti750m 170 "${parti[@]}" --json-out "$out/parti750m.json"
step families 80 "$py" benchmarks/families.py --batch 8 --rounds 5 --steps 12 \
  --json-out "$out/families.json"
if [[ $# -ge 2 ]]; then
  step sample_run 70 "$py" benchmarks/sample_run.py --workdir "$1" --prompts "$2" --batch 8 \
    --draft-lens 4,8,16 --repeats 5 --json-out "$out/sample_run.json"
fi
step sample_small 90 "$py" benchmarks/sample.py --batch-sizes 1,8,64 --cfg 1,3 \
  --decoding ar,jacobi --repeats 3 --torch no --json-out "$out/sample_small.json"
step train_step 100 "$py" benchmarks/train_step.py --config configs/parti.py:350m --mesh data=1 \
  --remat dots_no_batch --batch-size 32,64 --steps 10 --repeats 2 --config.dtype=bfloat16 \
  --json-out "$out/train_step.json"
step parti750m_chunks 40 "${parti[@]}" --cache-chunks 8 --json-out "$out/parti750m_chunks.json"
