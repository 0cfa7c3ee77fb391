#!/usr/bin/env bash
# Issue 17's device call: `pytest -m gpu` on the engine's device path, then benchmarks/gpu_check.py.
# Everything goes under $OUT (default ./out). Usage on the GPU machine: bash benchmarks/gpu_check.sh [gpu_check.py args]
# Carry `.whl` (open_clip and its two missing needs, see gpu_check.py's docstring) for the X-Pool section.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_engine_cuda_path.py 2>&1 | tee "$OUT/pytest_gpu.log"
pytest_rc=${PIPESTATUS[0]}
timeout 480 "$PY" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check_console.txt"
check_rc=${PIPESTATUS[0]}
echo "pytest -m gpu: exit $pytest_rc; gpu_check.py: exit $check_rc"
exit $(( pytest_rc != 0 || check_rc != 0 ))
