#!/usr/bin/env bash
# The GPU checks of issue 13 as one command, for a lent GPU machine (one short run; BENCHMARKS.md,
# "GPU smoke test"): the smoke test, then the planner on what it measured. Results go to $OUT
# (the device tool's folder that comes back), else ./gpu-check. Runs with the machine's own
# python3 and torch (such machines reach no package registry), plus the wheels tools/gpu_wheels.sh
# fetched into .whl/ (carry it); any arguments go to the smoke test, so
# `tools/gpu_check.sh --device cpu --quick` checks this script on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out" || exit 3
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
wheels=${SSLSEG_WHEELS:-.whl}  # from tools/gpu_wheels.sh, carried along: what the machine's image lacks
if [ -d "$wheels" ]; then
  site=$(mktemp -d) || exit 3  # a fresh folder: it goes first on PYTHONPATH
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl \
    || { echo "gpu_check: installing $wheels/*.whl failed" >&2; exit 3; }
  export PYTHONPATH="$site:$PYTHONPATH"
fi
# before any GPU time goes to the smoke test: the versions, and that sslseg's config loads here
"$py" -c 'import sys, torch, timm, h5py, jsonschema; from importlib.metadata import version
print("python", sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__,
      "jsonschema", version("jsonschema"), "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())
import sslseg.bench.gpu_smoke, sslseg.plan  # every module the smoke test and the planner import up front
from sslseg.config import load_config; load_config("config.yaml"); print("config.yaml loads")' 2>&1 | tee "$out/versions.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "gpu_check: the preflight failed (above); run tools/gpu_wheels.sh here and carry .whl" >&2; exit 3; }
# 480 s: the smoke test's own budget is <= 8 minutes; it saves its JSON after every check, so a
# cut-off run still brings back what it measured
timeout -k 15 480 "$py" -m sslseg.bench.gpu_smoke --json "$out/gpu_smoke.json" "$@" 2>&1 | tee "$out/gpu_smoke.log"
smoke=${PIPESTATUS[0]}
planned=1
if [ -s "$out/gpu_smoke.json" ]; then
  "$py" -m sslseg plan --bench "$out/gpu_smoke.json" 2>&1 | tee "$out/plan.txt"
  planned=${PIPESTATUS[0]}
fi
echo "gpu_check: smoke test exit status $smoke, planner $planned; results in $out"
[ "$smoke" = 0 ] && [ "$planned" != 0 ] && exit 4
exit "$smoke"
