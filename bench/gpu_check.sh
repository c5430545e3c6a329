#!/usr/bin/env bash
# The one GPU check of fastalign's kernels, for an H100/H200 box with torch and triton
# preinstalled (about 20 minutes). From the repository root:
#
#     bash bench/gpu_check.sh
#
# 1. the op's GPU tests: bf16/fp16 against the float64 oracle with the tolerance rule, both
#    backward modes, several chunks, strided hidden, deterministic mode bit for bit, and the
#    whole op/kernel suite running natively (no interpreter);
# 2. the core grid N in {4k, 16k, 32k}, H=4096, V=128256, bf16, against naive, torch.compile,
#    Liger and Cut Cross-Entropy, with the cost model's prediction beside each fastalign row;
# 3. the DPO-layer benchmark;
# 4. the long-row memory features on the GPU (offloaded checkpoints: pinned, asynchronous) and
#    the long-context DPO step against TRL, L in {4k ... 64k} (about 10-15 minutes).
# Results go to bench/results/<gpu>/ (and are copied to $OUT when that is set), each JSON with
# the GPU name, driver, CUDA, package versions, git commit and date.
#
# Peers missing on the box (liger-kernel, cut-cross-entropy) can travel as wheels in .whl/
# (see bench/README.md); they are installed into /tmp/site first. Each step has its own time
# limit so that one slow step cannot eat the others; a failed step is reported and the
# script goes on, exiting non-zero at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

failed=()
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    local start=$SECONDS
    if ! timeout "$limit" "$@"; then
        failed+=("$name")
        echo "=== $name FAILED"
    fi
    echo "=== $name took $((SECONDS - start)) s"
}

step "op tests (bf16 oracle, both backwards, deterministic)" 240 \
    python3 -m pytest -q -x tests/ops tests/kernels/test_cost_model.py
step "linear log-probs grid vs peers (+ cost model)" 240 \
    python3 bench/bench_linear_logprobs.py --preset gpu-grid --repeats 5
step "DPO layer" 120 \
    python3 bench/bench_dpo_layer.py --preset gpu-core
step "offloaded checkpoints (pinned, asynchronous)" 120 \
    python3 -m pytest -q -x tests/models/test_offload_gpu.py
step "long-context DPO step vs TRL (Llama-3.2-1B shape, L 4k-64k)" 900 \
    python3 bench/bench_long_context.py --preset gpu-1b --timeout 240 \
        --providers trl fastalign fastalign-no-offload fastalign-none

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/results" && cp -r bench/results/. "$OUT/results/"
fi
if [ ${#failed[@]} -gt 0 ]; then
    printf 'failed step: %s\n' "${failed[@]}"
    exit 1
fi
echo "all GPU checks passed"
