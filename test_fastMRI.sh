#!/usr/bin/env bash
# Reconstruct undersampled k-space with a trained model (or run the bundled demo).
#
#   bash test_fastMRI.sh hfssde|vp|ve [extra main.py flags]   e.g. --config.sampling.folder=<run> --config.sampling.ckpt=190
#   bash test_fastMRI.sh demo [--fast]                         bundled phantom demo: HFS-SDE, VP-SDE and baselines
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  echo "usage: bash test_fastMRI.sh hfssde|vp|ve [--config.<group>.<key>=<value> ...]" >&2
  echo "       bash test_fastMRI.sh demo [--fast]" >&2
  exit 2
}

[ $# -ge 1 ] || usage
method=$1
shift
case "$method" in
  hfssde) config=configs/hfssde/ddpm_continuous.py ;;
  vp|vpsde) config=configs/vp/ddpm_continuous.py ;;
  ve|vesde) config=configs/ve/ddpm_continuous.py ;;
  demo) exec python -m utils.demo "$@" ;;
  *) echo "unknown method '$method'" >&2; usage ;;
esac

exec python main.py --mode sample --config "$config" --workdir results "$@"
