#!/usr/bin/env bash
# The comparison on a CPU budget: the five model families (cnn, resnet, beefy, googlenet, vit), each
# with the `:cpu` recipe sized to train in at most 30 minutes on 2 CPU cores, trained one after the
# other on the real FER2013 Training split and compared on PublicTest by python -m fer_flax.compare.
#
#   bash benchmarks/cpu_comparison.sh DATA WORKDIR [FAMILIES]
#
# DATA: FER2013 (the challenge CSV, or the image folders); WORKDIR receives one run per family
# (WORKDIR/cnn, WORKDIR/resnet, ...; a finished run is not trained again, an interrupted one resumes)
# and the report in WORKDIR/report (report.html, report.md, report.json). FAMILIES: comma-separated,
# default all five. About 2 hours 10 minutes on 2 cores for all five.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: bash benchmarks/cpu_comparison.sh DATA WORKDIR [cnn,resnet,beefy,googlenet,vit]" >&2
  exit 2
fi
DATA=$1
WORK=$2
FAMILIES=${3:-cnn,resnet,beefy,googlenet,vit}

declare -A CONFIG=(
  [cnn]=configs/cpu_recipe.py
  [resnet]=configs/resnet18.py:cpu
  [beefy]=configs/beefy.py:cpu
  [googlenet]=configs/googlenet_aux.py:cpu
  [vit]=configs/vit_small.py:cpu
)

runs=()
for family in ${FAMILIES//,/ }; do
  if [[ -z "${CONFIG[$family]:-}" ]]; then
    echo "error: unknown family '$family' (valid: ${!CONFIG[*]})" >&2
    exit 2
  fi
  echo "== $family: ${CONFIG[$family]} -> $WORK/$family ($(date -u +%H:%M:%S) UTC)"
  start=$(date +%s)
  python -m fer_flax.main --config "${CONFIG[$family]}" --workdir "$WORK/$family" \
    --config.data.path="$DATA" --config.progress_bar=False
  echo "== $family: $(($(date +%s) - start)) s for the whole command"
  runs+=("$WORK/$family")
done

python -m fer_flax.compare "${runs[@]}" --out "$WORK/report"
