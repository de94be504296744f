#!/usr/bin/env bash
# benchmarks/gpu_stream.py on a lent GPU machine, from the checkout's root, with the packages of
# .device-kit (benchmarks/device/make_kit.py). What it writes goes to $OUT, its log too, so a
# run stopped at its time limit still brings back what it measured. See benchmarks/device/README.md.
#
#   bash benchmarks/device/gpu_stream.sh [gpu_stream.py's options]     (BUDGET_S=300 by default)
set -euo pipefail
: "${OUT:?OUT must name the folder whose files come back}"
kit=.device-kit
[ -f "$kit/site.tar.xz" ] || { echo "no $kit/site.tar.xz: run benchmarks/device/make_kit.py and carry $kit" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
rm -rf /tmp/site && tar -xJf "$kit/site.tar.xz" -C /tmp  # the kit holds one folder, site/
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
# The kit was built for one Python; a mismatch fails here, in a second, not mid-benchmark.
python3 -c 'import sys, torch, triton, ray, pydantic, duckdb, open_clip; print(sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "ray", ray.__version__, "cuda", torch.cuda.is_available())'
baseline=()
[ -d "$kit/baseline" ] && baseline=(--baseline "$PWD/$kit/baseline")
python3 benchmarks/gpu_stream.py --out "$OUT" --budget-s "${BUDGET_S:-300}" "${baseline[@]}" "$@" 2>&1 | tee "$OUT/gpu_stream.log"
