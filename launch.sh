#!/usr/bin/env bash
# Launches fer_flax training on one machine (any number of GPUs) or on a SLURM cluster.
#
#   ./launch.sh configs/X.py[:arg] [--workdir W] [--config.key=value ...]        one machine
#   ./launch.sh --nodes N [--gpus-per-node G] configs/X.py [...]                 SLURM, via srun
#   sbatch --nodes N --gpus-per-node G --wrap "./launch.sh configs/X.py ..."     inside an allocation
#
# Run ./launch.sh --help for every option.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./launch.sh CONFIG[:ARG] [options] [--config.key=value ...] [other fer_flax.main flags]

One machine (default): a single process drives every visible GPU (jax.jit over one device mesh).
Several nodes (--nodes N > 1, or inside an sbatch allocation of more than one node): srun starts one
process per GPU (N x G processes); each joins the job through jax.distributed, which reads the
coordinator, process count and process id from SLURM.

Options:
  --workdir W          where checkpoints, metrics and logs go (default: workdirs/<config name>[_ARG])
  --nodes N            number of nodes; N > 1 launches with srun (default: SLURM_NNODES inside an
                       allocation, else 1)
  --gpus-per-node G    GPUs per node. One node: use only GPUs 0..G-1 (default: all visible).
                       Several nodes: G processes per node (default: SLURM_GPUS_ON_NODE, else the
                       count from nvidia-smi -L on this machine)
  --srun-args "ARGS"   extra srun arguments, e.g. "--partition=gpu --time=04:00:00 --account=me"
  --dry-run            print the environment and command that would run, run nothing
  -h, --help           this help

Environment: PYTHON (default python3). XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.90 here, JAX's own
default is 0.75) and TF_CPP_MIN_LOG_LEVEL (default 1) are set only when unset. XLA_FLAGS passes through.

Examples:
  ./launch.sh configs/simple_cnn.py --workdir workdirs/cnn --config.optim.lr=0.05
  ./launch.sh configs/resnet18.py --gpus-per-node 4 --config.data.path=data/fer2013.csv.gz
  ./launch.sh --nodes 2 --gpus-per-node 8 --srun-args "--partition=gpu" configs/beefy.py \
      --workdir /shared/runs/beefy --config.batch_size=1024 --config.dtype=bfloat16
  ./launch.sh --dry-run --nodes 2 --gpus-per-node 8 configs/beefy.py
EOF
}

die() {
  echo "launch.sh: $*" >&2
  exit 2
}

config="" workdir="" nodes="" gpus="" srun_args="" dry_run=0
passthrough=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --workdir | --nodes | --gpus-per-node | --srun-args)
      (($# >= 2)) || die "$1 needs a value"
      case "$1" in
        --workdir) workdir=$2 ;;
        --nodes) nodes=$2 ;;
        --gpus-per-node) gpus=$2 ;;
        --srun-args) srun_args=$2 ;;
      esac
      shift ;;
    --workdir=*) workdir=${1#*=} ;;
    --nodes=*) nodes=${1#*=} ;;
    --gpus-per-node=*) gpus=${1#*=} ;;
    --srun-args=*) srun_args=${1#*=} ;;
    -*) passthrough+=("$1") ;;
    *)
      if [[ -z $config ]]; then config=$1; else passthrough+=("$1"); fi ;;
  esac
  shift
done

[[ -n $config ]] || { usage >&2; die "no config file given (e.g. ./launch.sh configs/simple_cnn.py)"; }
config_file=${config%%:*}
[[ -f $config_file ]] || die "config file '$config_file' not found (paths are relative to $(pwd); \
run from the repository root or give a full path)"
for name in nodes gpus; do
  value=${!name}
  [[ -z $value || $value =~ ^[1-9][0-9]*$ ]] || die "--${name/gpus/gpus-per-node} must be a positive integer, got '$value'"
done

if [[ -z $workdir ]]; then
  workdir="workdirs/$(basename "$config_file" .py)"
  [[ $config == *:* ]] && workdir+="_${config#*:}"
fi
# Inside an sbatch allocation the allocation decides the node count unless --nodes says otherwise.
if [[ -z $nodes ]]; then
  if [[ -n ${SLURM_JOB_ID:-} && ${SLURM_NNODES:-1} -gt 1 ]]; then
    nodes=$SLURM_NNODES
  else
    nodes=1
  fi
fi

python=${PYTHON:-python3}
train_cmd=("$python" -m fer_flax.main --config "$config" --workdir "$workdir" ${passthrough[@]+"${passthrough[@]}"})
env_vars=(
  "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
  "TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}"
)

if ((nodes == 1)); then
  # One process for all local GPUs; FER_FLAX_NUM_PROCESSES=1 keeps it single-process even when this
  # runs inside a SLURM allocation that has several tasks.
  env_vars+=("FER_FLAX_NUM_PROCESSES=1")
  if [[ -n $gpus ]]; then
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
      echo "launch.sh: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES is set already; ignoring --gpus-per-node" >&2
    else
      env_vars+=("CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpus - 1)))")
    fi
  fi
  cmd=("${train_cmd[@]}")
  summary="1 node, one process driving ${gpus:-all visible} GPU(s)"
else
  command -v srun >/dev/null 2>&1 || ((dry_run)) || die "--nodes $nodes needs SLURM's srun, which is not on PATH"
  if [[ -z $gpus ]]; then
    if [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then
      gpus=$SLURM_GPUS_ON_NODE
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      gpus=$(nvidia-smi -L | grep -c '^GPU')
    fi
    [[ -n $gpus && $gpus -gt 0 ]] || die "cannot tell how many GPUs each node has: give --gpus-per-node G"
  fi
  # One task per GPU: JAX's SLURM detection gives each task the GPU numbered by SLURM_LOCALID.
  # --kill-on-bad-exit: a task that fails ends the others instead of leaving them in a collective.
  read -r -a extra <<<"$srun_args"
  cmd=(srun "--nodes=$nodes" "--ntasks-per-node=$gpus" "--gpus-per-node=$gpus" --kill-on-bad-exit=1
    ${extra[@]+"${extra[@]}"} "${train_cmd[@]}")
  summary="$nodes nodes x $gpus GPUs = $((nodes * gpus)) processes (one per GPU) via srun"
fi

# Shell-quotes a word only when it needs it, so the dry run reads like what one would type.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:,=+@%-]+$ ]]; then printf '%s' "$1"; else printf '%q' "$1"; fi
}

if ((dry_run)); then
  echo "# launch.sh dry run: $summary"
  for kv in "${env_vars[@]}"; do echo "export ${kv%%=*}=$(quote "${kv#*=}")"; done
  line=""
  for word in "${cmd[@]}"; do line+="${line:+ }$(quote "$word")"; done
  echo "$line"
  exit 0
fi

echo "launch.sh: $summary; workdir $workdir" >&2
for kv in "${env_vars[@]}"; do export "${kv?}"; done
exec "${cmd[@]}"
