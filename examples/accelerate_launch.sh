#!/usr/bin/env bash
# The main example (examples/text_classification.py) under `accelerate launch`: one Optuna search, every trial trained
# by N processes with DDP (NCCL on GPUs, gloo on CPUs). Every argument is passed through to the example.
#
#   examples/accelerate_launch.sh                                # 2 processes, the example's defaults
#   NUM_PROCESSES=4 examples/accelerate_launch.sh --n_trials 8   # 4 GPUs, the example's own options
#
# On a machine without a GPU it adds --use_cpu true (unless given), so that the processes form a gloo group on the
# CPU. See docs/distributed.md for what is collective and what each process keeps.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"
num_processes="${NUM_PROCESSES:-2}"
port="${MAIN_PROCESS_PORT:-29500}"

args=("$@")
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  case " ${args[*]-} " in
    *" --use_cpu"*) ;;
    *) args+=(--use_cpu true) ;;
  esac
  # The processes share the CPU cores: one thread each by default.
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi

exec "$python" -m accelerate.commands.launch --multi_gpu --num_machines 1 --num_processes "$num_processes" \
  --mixed_precision no --dynamo_backend no --main_process_port "$port" \
  "$here/text_classification.py" ${args[@]+"${args[@]}"}
