#!/usr/bin/env bash
# The GPU time-to-accuracy suite: the strongest config of each family (cnn, beefy, resnet, googlenet,
# vit) trained on the real FER2013 in bfloat16 with the device input pipeline and many steps per call,
# printing per family training images/s, MFU and PublicTest accuracy against wall time
# (python -m benchmarks.time_to_accuracy does the work; its docstring has the details).
#
#   bash benchmarks/gpu_suite.sh prepare    on a machine with the data and the network: gpu_check.sh's
#                                           preparation (the Python 3.12 wheels into .whl/, the real
#                                           data into .gpu_data/, the size check), then the command
#                                           that runs the suite on the GPU machine.
#   bash benchmarks/gpu_suite.sh run        on the GPU machine, in a copy of the working tree with .whl/
#                                           and .gpu_data/, within 570 s: device and versions, then
#                                           the suite; everything is logged to $OUT/gpu_suite.log, the
#                                           results to $OUT/gpu_suite.json (OUT: /tmp/gpu_suite_out).
#   bash benchmarks/gpu_suite.sh dry_run    on a CPU: the same path with each family's smoke config for
#                                           a few steps (minutes), to check the suite.
#
# Knobs (environment): GPU_SUITE_TRAIN_SECONDS (470: the families' shares of it are their time limits),
# GPU_SUITE_FAMILIES (all), GPU_SUITE_STEPS_PER_CALL (25), GPU_SUITE_EPOCHS ("family=epochs,...").
set -uo pipefail
cd "$(dirname "$0")/.."

DATA=.gpu_data/fer2013_images.tar.gz

suite_args() {
  echo --total_seconds "${GPU_SUITE_TRAIN_SECONDS:-470}" --steps_per_call "${GPU_SUITE_STEPS_PER_CALL:-25}" \
    ${GPU_SUITE_FAMILIES:+--families "$GPU_SUITE_FAMILIES"} ${GPU_SUITE_EPOCHS:+--epochs "$GPU_SUITE_EPOCHS"}
}

run_suite() {
  export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TF_CPP_MIN_LOG_LEVEL=1
  local work=/tmp/gpu_suite_work
  rm -rf "$work" && mkdir -p "$work/cache"
  echo "=== device"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  echo "=== suite"
  # 530 s: the families' 470 s, the data parse, five FLOP counts and the last checkpoints, inside the
  # run's 570 s.
  # shellcheck disable=SC2046
  timeout -k 10 530 python3 -m benchmarks.time_to_accuracy --data "$DATA" --cache_dir "$work/cache" \
    --workdir_root "$work/runs" --json "$OUT/gpu_suite.json" $(suite_args) ||
    echo "gpu_suite: stopped (exit $?; 124 = the suite's time limit)"
}

case "${1:-}" in
  prepare)
    GPU_CHECK_SCRIPT=benchmarks/gpu_suite.sh bash benchmarks/gpu_check.sh prepare
    ;;
  run)
    OUT=${OUT:-/tmp/gpu_suite_out} # the log and the results
    mkdir -p "$OUT"
    run_suite 2>&1 | tee "$OUT/gpu_suite.log"
    ;;
  dry_run)
    data=$DATA
    [[ -f $data ]] || data=../shared/data/fer2013/fer2013_images.tar.gz
    python3 -m benchmarks.time_to_accuracy --dry_run --data "$data" \
      ${GPU_SUITE_FAMILIES:+--families "$GPU_SUITE_FAMILIES"} "${@:2}"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_suite.sh prepare|run|dry_run  (prepare and dry_run here, run on the GPU machine)" >&2
    exit 2
    ;;
esac
