#!/usr/bin/env bash
# The CUDA check of the engine (benchmarks/gpu_check.py), ready for a lent GPU machine that has PyTorch but
# neither this project's other packages nor the default model, and no network.
#
#   scripts/gpu-check.sh prepare      # here, in the project's venv: .gpu-check/ gets the gguf wheel and a
#                                     # vocabulary-only GGUF (the default model's tokenizer, ~2 MB)
#   scripts/gpu-check.sh run [OUT]    # there (device tool: carry .gpu-check): < 8 minutes on one GPU;
#                                     # prints the figures and writes OUT/gpu-check.json (OUT: $OUT or gpu-out)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.gpu-check
case "${1:-}" in
  prepare)
    PY=${PYTHON:-.venv/bin/python}
    mkdir -p "$DIR/wheels"
    grep -qx "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >> .git/info/exclude
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DIR/wheels" "gguf==$("$PY" -c 'import importlib.metadata as m; print(m.version("gguf"))')"
    "$PY" benchmarks/gpu_check.py --write-vocab "$DIR/vocab.gguf"
    ls -la "$DIR" "$DIR/wheels"
    ;;
  run)
    out=${2:-${OUT:-gpu-out}}
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-check-site "$DIR"/wheels/*.whl
    export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv || true
    timeout 470 python3 benchmarks/gpu_check.py --vocab "$DIR/vocab.gguf" --out /tmp/gpu-check-probes
    cp /tmp/gpu-check-probes/gpu-check.json "$out/" 2>/dev/null || { mkdir -p "$out"; cp /tmp/gpu-check-probes/gpu-check.json "$out/"; }
    ;;
  *)
    echo "usage: scripts/gpu-check.sh prepare | run [OUT]" >&2
    exit 2
    ;;
esac
