#!/usr/bin/env bash
# One GPU check of lipcert on a machine with one CUDA GPU: install .[gpu,test], run the GPU-marked
# tests, benchmark the Triton kernels against torch.cdist at (512, 3072, 5120) for p = inf / 8 / 20.5,
# time one CIFAR-10 6 x 5120 training iteration at batch 512 (p = inf / 8 / 20.5, next to the
# authors' 80 / 113 / 187 ms on an RTX 3090) and one epoch of cifar10-linf-boost-8 on synthetic
# CIFAR-shaped data; one table at the end, all within 8 minutes (per-step timeouts).
#
# Assumption: a CUDA build of torch (>= 2.4) is ALREADY installed in the active Python; this script
# never installs torch (pip keeps the installed build: lipcert only asks for torch>=2.4) -- do not
# pin the CPU wheel (torch==2.13.0 of the README's CPU quick start) on a GPU machine.
#
# Usage: benchmarks/gpu_check.sh [--no-install] [options of benchmarks/gpu_check.py]
#   --no-install       skip `pip install -e '.[gpu,test]'` (e.g. already installed)
#   --device cpu --tiny  toy sizes on a CPU in seconds (tests/test_gpu_check.py runs this way)
#   --dry-run          print the commands and timeouts, run nothing
#   -h / --help        all options (benchmarks/gpu_check.py --help)
set -uo pipefail
cd "$(dirname "$0")/.."
install=1
args=()
for a in "$@"; do
    case "$a" in
        --no-install) install=0 ;;
        --dry-run | -h | --help) install=0; args+=("$a") ;;
        *) args+=("$a") ;;
    esac
done
py="${PYTHON:-python}"
if [ "$install" = 1 ]; then
    if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "gpu_check.sh: the active Python has no CUDA-enabled torch (or no GPU is visible)." >&2
        echo "  Install a CUDA build of torch first (https://pytorch.org), or run with --no-install --device cpu --tiny." >&2
        exit 2
    fi
    echo "gpu_check.sh: pip install -e '.[gpu,test]' (keeps the installed CUDA torch)"
    t0=$SECONDS
    if ! timeout 150 "$py" -m pip install -q -e '.[gpu,test]'; then
        echo "gpu_check.sh: the install failed or took over 150 s" >&2
        exit 2
    fi
    echo "gpu_check.sh: installed in $((SECONDS - t0)) s"
    # the install counts against the 8 minutes: the Python steps get what is left
    args=(--budget "$((480 - (SECONDS - t0)))" "${args[@]}")
fi
exec "$py" benchmarks/gpu_check.py "${args[@]}"
