#!/usr/bin/env bash
# The GPU check, in two parts, for a GPU machine that need not reach the network or the data.
#
#   bash benchmarks/gpu_check.sh prepare    on a machine with the data and the network: downloads the
#                                           Python 3.12 wheels the GPU machine lacks into .whl/, copies
#                                           the real FER2013 image tarball into .gpu_data/ (both
#                                           git-ignored), checks that the working tree with both stays
#                                           under GPU_CHECK_MAX_MIB and prints the command to run there.
#   bash benchmarks/gpu_check.sh run        on the GPU machine, in a copy of the working tree with .whl/
#                                           and .gpu_data/, within 570 s (each phase has a time limit):
#     1. the device and library versions;
#     2. training images/s of every model family's default variant in float32 and bfloat16 at a
#        batch that fills the GPU (python -m benchmarks.train_throughput);
#        with each step's TFLOP/s and model FLOP utilisation (benchmarks.device_peaks);
#     3. the input pipeline's images/s on the real training set (Grain + copy to the device);
#     4. fer_flax against PyTorch on the GPU (python -m benchmarks.compare_torch: the small CNN, BeefyModel
#        and ResNet-18 in bfloat16 at batch GPU_CHECK_COMPARE_BATCH, PyTorch eager with cudnn.benchmark,
#        and with GPU_CHECK_TORCH_COMPILE=on also under torch.compile);
#     5. one strong recipe (configs/beefy.py, bf16) trained on the real data for as long as fits,
#        printing validation accuracy against wall time;
#   and ends with a short table. Everything is logged to $OUT/gpu_check.log, with the JSON results.
#
# Knobs (environment): GPU_CHECK_BATCH (throughput batch, default 2048), GPU_CHECK_STEPS (20),
# GPU_CHECK_FAMILIES (comma-separated, default every family in fer_flax.models.FAMILIES),
# GPU_CHECK_COMPARE_BATCH (1024), GPU_CHECK_TORCH_COMPILE (off: torch.compile's compilation of three
# models needs more than phase 4's time; with on, give the phase GPU_CHECK_COMPARE_SECONDS=300 and skip
# phase 5), GPU_CHECK_COMPARE_SECONDS (120), GPU_CHECK_CONFIG (configs/beefy.py), GPU_CHECK_EPOCHS (30),
# GPU_CHECK_TRAIN_SECONDS (120; 0 skips phase 5), GPU_CHECK_DATA_SRC (the tarball `prepare` copies),
# GPU_CHECK_MAX_MIB (60: the most the copy to the GPU machine may hold). Results go to $OUT
# (default /tmp/gpu_check_out).
# wandb is never needed: every run here has it disabled, and fer_flax imports it lazily.
set -uo pipefail
cd "$(dirname "$0")/.."

DATA_SRC=${GPU_CHECK_DATA_SRC:-../shared/data/fer2013/fer2013_images.tar.gz}
DATA=.gpu_data/fer2013_images.tar.gz
# Wheels for the packages a GPU image with jax, flax, optax, orbax-checkpoint and PyTorch lacks, at the
# versions of the CPU figures; grain needs array-record and portpicker, ml-collections needs absl-py
# and PyYAML (both in such an image).
WHEELS=(grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 portpicker==1.6.0)
INSTALL='python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;'

ignore_locally() { # $1: a folder at the repository root that must not travel as a tracked file
  if ! git check-ignore -q "$1/probe"; then
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    echo "/$1/" >>"$exclude"
    echo "added /$1/ to $exclude"
  fi
}

prepare() {
  set -e
  ignore_locally .whl
  ignore_locally .gpu_data
  mkdir -p .whl .gpu_data
  rm -f .whl/*.whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}"
  ls -l .whl
  [[ -f $DATA_SRC ]] || { echo "gpu_check: real data not found at $DATA_SRC" >&2; exit 1; }
  cmp -s "$DATA_SRC" "$DATA" || cp "$DATA_SRC" "$DATA"
  local tree_bytes
  # What travels: tracked and untracked-not-ignored files, plus .whl/ and .gpu_data/
  tree_bytes=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null
    find .whl .gpu_data -type f -exec stat -c %s {} +) | awk '{s += $1} END {print s}')
  local max_mib=${GPU_CHECK_MAX_MIB:-60}
  echo "working tree + .whl + .gpu_data: $((tree_bytes / 1024 / 1024)) MiB (limit $max_mib MiB)"
  ((tree_bytes < max_mib * 1024 * 1024)) || { echo "gpu_check: too large to send" >&2; exit 1; }
  # benchmarks/gpu_suite.sh and gpu_comparison.sh prepare through this function and set
  # GPU_CHECK_SCRIPT to themselves (gpu_comparison.sh also GPU_CHECK_RUN_SECONDS and a command prefix,
  # GPU_CHECK_RUN_PREFIX).
  local script=${GPU_CHECK_SCRIPT:-benchmarks/gpu_check.sh}
  cat <<EOF

Ready. Copy the working tree with .whl/ and .gpu_data/ to the GPU machine and run this there, from
the repository root (at most ${GPU_CHECK_RUN_SECONDS:-570} s; the log and results go to \$OUT, default /tmp/$(basename "$script" .sh)_out):

  ${GPU_CHECK_RUN_PREFIX:-}$INSTALL bash $script run
EOF
}

phase() { echo; echo "=== [$(($(date +%s) - T0)) s] $*"; }

run_checks() {
  T0=$(date +%s)
  export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TF_CPP_MIN_LOG_LEVEL=1
  local batch=${GPU_CHECK_BATCH:-2048} steps=${GPU_CHECK_STEPS:-20}
  local config=${GPU_CHECK_CONFIG:-configs/beefy.py} epochs=${GPU_CHECK_EPOCHS:-30}
  local train_seconds=${GPU_CHECK_TRAIN_SECONDS:-120} compare_batch=${GPU_CHECK_COMPARE_BATCH:-1024}
  local work=/tmp/gpu_check_work
  rm -rf "$work" && mkdir -p "$work/cache"

  phase "1/5 device"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  timeout -k 5 45 python3 -c "
import jax, flax, optax, orbax.checkpoint as ocp, grain, ml_collections
print('python', __import__('sys').version.split()[0], '| jax', jax.__version__, '| flax', flax.__version__,
      '| optax', optax.__version__, '| orbax', ocp.__version__, '| grain', getattr(grain, '__version__', '?'))
print(jax.devices())
" || echo "gpu_check: library check failed (were the wheels installed? see the run command)"

  phase "2/5 training images/s and MFU per family (batch $batch, $steps timed steps)"
  timeout -k 10 150 python3 -m benchmarks.train_throughput --batch "$batch" --steps "$steps" \
    ${GPU_CHECK_FAMILIES:+--families "$GPU_CHECK_FAMILIES"} \
    --loader_seconds 0 --json "$OUT/throughput.json" || echo "gpu_check: throughput stopped (exit $?)"

  phase "3/5 input pipeline images/s on the real training set"
  timeout -k 10 60 python3 -m benchmarks.train_throughput --families "" --batch "$batch" --loader_seconds 5 \
    --data "$DATA" --cache_dir "$work/cache" --json "$OUT/loader.json" ||
    echo "gpu_check: loader stopped (exit $?)"

  phase "4/5 fer_flax against PyTorch on the GPU, bfloat16, batch $compare_batch"
  # 120 s at most by default, so that every phase at its limit (45 + 150 + 60 + 120 + 120 s) leaves the
  # summary inside the check's 570 s.
  timeout -k 10 "${GPU_CHECK_COMPARE_SECONDS:-120}" python3 -m benchmarks.compare_torch \
    --models cnn,beefy,resnet18 --dtype bfloat16 --batch "$compare_batch" --windows 3 --steps 5 \
    --torch_compile "${GPU_CHECK_TORCH_COMPILE:-off}" --json "$OUT/compare_torch.json" ||
    echo "gpu_check: compare_torch stopped (exit $?)"

  local start
  start=$(date +%s.%N)
  if ((train_seconds > 0)); then
    phase "5/5 $config, bfloat16, real data, $epochs epochs or ${train_seconds} s, whichever first"
    timeout --signal=KILL "$train_seconds" python3 -m fer_flax.main --config "$config" \
      --workdir "$work/run" --config.data.path="$DATA" --config.data.cache_dir="$work/cache" \
      --config.dtype=bfloat16 --config.num_epochs="$epochs" --config.wandb.mode=disabled \
      --config.wandb.histogram_every_steps=0 ||
      echo "gpu_check: training stopped (exit $?; 137 = the time limit)"
    cp "$work/run/metrics.jsonl" "$OUT/train_metrics.jsonl" 2>/dev/null
  else
    phase "5/5 skipped (GPU_CHECK_TRAIN_SECONDS=0: the time-to-accuracy suite trains instead)"
  fi

  phase "summary"
  python3 - "$OUT" "$start" "$config" "$work/run/config.json" <<'PY' | tee "$OUT/summary.txt"
import json, os, sys
out, start, config, resolved = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
per_epoch = json.load(open(resolved))["derived"]["steps_per_epoch"] if os.path.exists(resolved) else None
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
tp, loader = load("throughput.json"), load("loader.json")
print("GPU check summary")
if tp:
    print(tp["devices"])
    rows = {}
    for r in tp["train"]:
        rows.setdefault((r["family"], r["variant"]), {})[r["dtype"]] = r
    print(f"{'family':<10} {'variant':<24} {'batch':>6} {'f32 img/s':>10} {'bf16 img/s':>11} {'bf16/f32':>8}"
          f" {'f32 MFU':>8} {'bf16 MFU':>8}")
    for (family, variant), by in rows.items():
        cell = lambda d: f"{by[d]['images_per_s']:,.0f}" if "images_per_s" in by.get(d, {}) else "-"
        ratio = "-"
        if all("images_per_s" in by.get(d, {}) for d in ("float32", "bfloat16")):
            ratio = f"{by['bfloat16']['images_per_s'] / by['float32']['images_per_s']:.2f}x"
        batch = next(iter(by.values()))["batch"]
        mfu = lambda d: f"{by[d]['mfu']:.1%}" if by.get(d, {}).get("mfu") is not None else "-"
        print(f"{family:<10} {variant:<24} {batch:>6} {cell('float32'):>10} {cell('bfloat16'):>11} {ratio:>8}"
              f" {mfu('float32'):>8} {mfu('bfloat16'):>8}")
else:
    print("no throughput results")
if loader and loader.get("loader"):
    l = loader["loader"]
    print(f"input pipeline: {l['images_per_s']:,.0f} images/s (batch {l['batch']}, {l['num_workers']} workers, "
          f"{l['num_train']} real training images, incl. copy to the device)")
compare = load("compare_torch.json")
if compare and compare.get("rows"):
    print("fer_flax against PyTorch on the same device (images/s):")
    for r in compare["rows"]:
        compiled = (f", PyTorch torch.compile {r['torch_compile_images_per_s']:,.0f} (ratio "
                    f"{r['ratio_flax_over_torch_compile']:.2f}x)") if "torch_compile_images_per_s" in r else ""
        print(f"  {r['model']}/{r['variant']} {r['dtype']}: PyTorch {r['torch_images_per_s']:,.0f}, "
              f"fer_flax {r['flax_images_per_s']:,.0f}, ratio {r['ratio_flax_over_torch']:.2f}x{compiled}")
else:
    print("no fer_flax/PyTorch comparison")
metrics = os.path.join(out, "train_metrics.jsonl")
records = [json.loads(x) for x in open(metrics)] if os.path.exists(metrics) else []
vals = [r for r in records if "val/accuracy" in r]
speeds = sorted(r["train/images_per_sec"] for r in records if "train/images_per_sec" in r)
if speeds:
    print(f"real-data training speed: median {speeds[len(speeds) // 2]:,.0f} images/s over {len(speeds)} "
          "log windows (whole loop: input pipeline, step, logging; evaluation excluded)")
if vals:
    print(f"{config} (bf16) on real FER2013, validation (PublicTest) accuracy against wall time:")
    print(f"{'step':>6} {'epoch':>6} {'wall s':>7} {'val acc':>8}")
    for r in vals:
        epoch = f"{r['step'] / per_epoch:.1f}" if per_epoch else "?"
        print(f"{r['step']:>6} {epoch:>6} {r['time'] - start:>7.0f} {r['val/accuracy']:>8.4f}")
    best = max(vals, key=lambda r: r["val/accuracy"])
    print(f"best {best['val/accuracy']:.4f} at step {best['step']} ({best['time'] - start:.0f} s)")
else:
    print("no validation results from the real-data run")
PY
  phase "done"
}

case "${1:-}" in
  prepare) prepare ;;
  run)
    OUT=${OUT:-/tmp/gpu_check_out} # the log and the results
    mkdir -p "$OUT"
    run_checks 2>&1 | tee "$OUT/gpu_check.log"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_check.sh prepare|run  (prepare here, run on the GPU machine)" >&2
    exit 2
    ;;
esac
