#!/usr/bin/env bash
# The one-call GPU comparison: the five model families (cnn, resnet, beefy, googlenet, vit) trained to
# their `:gpu` schedules on the real FER2013, compared, ensembled and packed, in ONE run of at most 540 s
# on one GPU, everything included (python -m benchmarks.model_comparison does the work; its docstring
# has the phases and the budget).
#
#   bash benchmarks/gpu_comparison.sh prepare   on a machine with the data and the network: gpu_check.sh's
#                                               preparation (the Python 3.12 wheels into .whl/, the real
#                                               data into .gpu_data/, the size check), then the command
#                                               that runs the comparison on the GPU machine.
#   bash benchmarks/gpu_comparison.sh run       on the GPU machine, in a copy of the working tree with .whl/
#                                               and .gpu_data/, within 540 s. $OUT (default
#                                               /tmp/gpu_comparison_out) receives report.html, report.md,
#                                               report.json (python -m fer_flax.compare's report of the
#                                               runs), summary.json, summary.md (per family: PublicTest
#                                               accuracy, time to 0.70 and 0.73, images/s, compile and
#                                               wall seconds; the ensemble; the budget), weights.npz
#                                               (every family's best weights, bfloat16 or int8) and
#                                               gpu_comparison.log: 7 files, at most 64 MiB.
#   bash benchmarks/gpu_comparison.sh dry_run [FLAGS]   on a CPU: the same path with tiny models for two
#                                               steps each on the synthetic faces (about a minute);
#                                               FLAGS go to the module (e.g. --data fer2013.csv --out DIR).
#
# Knobs (environment): GPU_COMPARISON_SECONDS (540: the whole run's limit, the wheels' installation
# included when GPU_COMPARISON_T0 holds its start, as in the command `prepare` prints),
# GPU_COMPARISON_FAMILIES (all), GPU_COMPARISON_EPOCHS ("family=epochs,...": whole epochs instead of
# the configs'), GPU_COMPARISON_COMPILE_WORKERS (2: families compiled at once; 1 compiles one by one).
set -uo pipefail
cd "$(dirname "$0")/.."

DATA=.gpu_data/fer2013_images.tar.gz
WORK=/tmp/gpu_comparison_work
# Seconds kept after the Python part: the listing below and the copy back of $OUT.
AFTER_S=10
# Assumed for the wheels' installation when GPU_COMPARISON_T0 is not set.
INSTALL_S=10

run_comparison() {
  export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TF_CPP_MIN_LOG_LEVEL=1
  local limit=${GPU_COMPARISON_SECONDS:-540} t0=${GPU_COMPARISON_T0:-$(($(date +%s) - INSTALL_S))}
  echo "=== device"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  local seconds=$((limit - ($(date +%s) - t0) - AFTER_S))
  echo "=== comparison: ${seconds} s for the Python part of the run's ${limit} s"
  # The module keeps to its budget; the hard limit 5 s later (then SIGKILL) is the last resort.
  timeout -k 5 $((seconds + 5)) python3 -m benchmarks.model_comparison --data "$DATA" --out "$OUT" \
    --workdir_root "$WORK" --total_seconds "$seconds" \
    --compile_workers "${GPU_COMPARISON_COMPILE_WORKERS:-2}" \
    ${GPU_COMPARISON_FAMILIES:+--families "$GPU_COMPARISON_FAMILIES"} \
    ${GPU_COMPARISON_EPOCHS:+--epochs "$GPU_COMPARISON_EPOCHS"} ||
    echo "gpu_comparison: stopped (exit $?; 124 or 137 = the hard time limit)"
  echo "=== $OUT after $(($(date +%s) - t0)) s"
  ls -l "$OUT"
  local files bytes
  files=$(find "$OUT" -maxdepth 1 -type f | wc -l)
  bytes=$(find "$OUT" -maxdepth 1 -type f -exec stat -c %s {} + | awk '{s += $1} END {print s + 0}')
  echo "$files files, $((bytes / 1024)) KiB (limits: 8 files, 65536 KiB)"
}

case "${1:-}" in
  prepare)
    # The command it prints starts with the time it starts, so the wheels' installation counts in the 540 s.
    # shellcheck disable=SC2016
    GPU_CHECK_SCRIPT=benchmarks/gpu_comparison.sh GPU_CHECK_RUN_SECONDS=540 \
      GPU_CHECK_RUN_PREFIX='export GPU_COMPARISON_T0=$(date +%s); ' bash benchmarks/gpu_check.sh prepare
    ;;
  run)
    OUT=${OUT:-/tmp/gpu_comparison_out}
    mkdir -p "$OUT"
    run_comparison 2>&1 | tee "$OUT/gpu_comparison.log"
    ;;
  dry_run)
    # The synthetic faces unless --data is given: on a CPU, evaluating the 3,435 PublicTest faces
    # seven times per family takes minutes even for tiny models.
    python3 -m benchmarks.model_comparison --dry_run --data "" --out /tmp/gpu_comparison_dry_run \
      --workdir_root /tmp/gpu_comparison_dry_run_work "${@:2}"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_comparison.sh prepare|run|dry_run  (prepare and dry_run here, run on the GPU machine)" >&2
    exit 2
    ;;
esac
