#!/usr/bin/env bash
# Issue 11's GPU figures in one run, for a session lent the device machine (one H200; see the device tool's README).
# Run from the repository root there, where python3 already has torch with CUDA, scipy, scikit-learn and tqdm:
#
#     bash benchmarks/device_check.sh            (the device tool's run, timeout_s about 480)
#
# Each step has its own time limit, so one slow step cannot eat the others; the logs go to $OUT (the device tool
# brings them back) or to ./device-logs. About 7 minutes in all, leaving room in the session's 15 device-minutes
# for the machine's start and one rerun. Paste the tables into docs/benchmarks.md's GPU columns.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
logs=${OUT:-device-logs}
mkdir -p "$logs"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee "$logs/$name.log"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$logs/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$logs/$name.log"
}

step environment 30 bash -c \
    'nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"'
# The compiled Triton kernel (kernels/triton_flat.py) against float64 on every architecture family it covers.
step gpu_correctness 60 python3 benchmarks/gpu_correctness.py --device cuda
# Default vs eager at N = 4,000 and 20,000 with the compiled pass and the fresh-process first calls (goals:
# default >= 2x eager; first call <= 2 s; the fused first call sets COMPILE_SECONDS["cuda"]), then N = 50,000
# (10 GB of output per kernel) without compiling. The default on CUDA is the Triton pass.
step analytic 150 python3 benchmarks/analytic_kernel.py --device cuda --sizes 4000 20000 --repeats 5
step analytic_50k 60 python3 benchmarks/analytic_kernel.py --device cuda --sizes 50000 --repeats 3 \
    --skip-fused --skip-first-call
# The erf MLP, whose default on CUDA is the Triton kernel's erf variant.
step analytic_erf 60 python3 benchmarks/analytic_kernel.py --device cuda --activation erf --sizes 4000 20000 \
    --repeats 5 --skip-fused --skip-first-call
# The GELU MLP: eager tiles on CUDA (no Triton variant), against its closed form on the full grid.
step analytic_gelu 45 python3 benchmarks/analytic_kernel.py --device cuda --activation gelu --sizes 4000 20000 \
    --repeats 3 --skip-fused --skip-first-call
# Empirical NTK against the tutorial: MLPs (goal >= 10x at N >= 1,024), the tutorial CNN and ResNet-18 (>= 3x).
step empirical 150 python3 benchmarks/empirical_ntk.py --device cuda --large --skip-slow --repeats 5 \
    --competitor-repeats 3
step quadrature 45 python3 benchmarks/quadrature_kernels.py --device cuda
step spatial 60 python3 benchmarks/spatial_kernels.py --device cuda --repeats 3
