#!/usr/bin/env bash
# Reconstruct undersampled k-space with a trained model (or run the bundled demo).
#
#   bash test_fastMRI.sh hfssde|vp|ve [config name] [extra main.py flags]
#       config name: a file of configs/<method>/ (default ddpm_continuous), e.g. phantom_demo
#       flags, e.g.: --config.sampling.folder=<run> --config.sampling.ckpt=190 --config.sampling.acc=4
#   bash test_fastMRI.sh demo [--fast] [--sets brain phantom] [--slices 0]
#       the bundled demo (runners/demo.py): HFS-SDE, VP-SDE and the baselines on a held-out brain slice at 4x, 8x, 10x
set -euo pipefail
cd "$(dirname "$0")"
source utils/config_path.sh

usage() {
  echo "usage: bash test_fastMRI.sh hfssde|vp|ve [config name] [--config.<group>.<key>=<value> ...]" >&2
  echo "       bash test_fastMRI.sh demo [--fast] [--sets brain phantom] [--slices 0]" >&2
  exit 2
}

[ $# -ge 1 ] || usage
method=$1
shift
[ "$method" = demo ] && exec python -m runners.demo "$@"
name=
if [ $# -ge 1 ] && [ "${1#--}" = "$1" ]; then
  name=$1
  shift
fi
config=$(config_path "$method" "$name") || usage

exec python main.py --mode sample --config "$config" --workdir results "$@"
