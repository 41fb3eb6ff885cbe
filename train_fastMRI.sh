#!/usr/bin/env bash
# Train a score model on the training set of the config (data.root; the phantom set by default, generated on first
# use; a missing folder of another set stops with the command that makes it).
#
#   bash train_fastMRI.sh hfssde|vp|ve [config name] [extra main.py flags]
#       config name: a file of configs/<method>/ (default ddpm_continuous), e.g. phantom_demo
#       flags, e.g. --config.training.batch_size=4
#
# Runs from the repository folder; a new run goes to results/<timestamp>_<model>_<sde>_..., and the same command
# resumes an unfinished run of the same config (or pass --workdir results/<run> to resume that run).
# With several visible GPUs (or NPROC=K set) it starts K processes with torchrun (DistributedDataParallel);
# choose the GPUs with CUDA_VISIBLE_DEVICES. Multi-node: call torchrun yourself (see README.md).
set -euo pipefail
cd "$(dirname "$0")"
source utils/config_path.sh

usage() {
  echo "usage: bash train_fastMRI.sh hfssde|vp|ve [config name] [--workdir <folder>] [--config.<group>.<key>=<value> ...]" >&2
  echo "       (vpsde and vesde are accepted for vp and ve; NPROC=K trains with K processes via torchrun)" >&2
  exit 2
}

[ $# -ge 1 ] || usage
method=$1
shift
name=
if [ $# -ge 1 ] && [ "${1#--}" = "$1" ]; then
  name=$1
  shift
fi
config=$(config_path "$method" "$name") || usage

nproc=${NPROC:-$(python -c "import torch; print(torch.cuda.device_count())")}
if [ "$nproc" -gt 1 ]; then
  exec torchrun --standalone --nproc_per_node="$nproc" main.py --mode train --config "$config" --workdir results "$@"
fi
exec python main.py --mode train --config "$config" --workdir results "$@"
