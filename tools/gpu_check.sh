#!/usr/bin/env bash
# The GPU checks of issue 13 as one command, for a lent GPU machine (one short run; BENCHMARKS.md,
# "GPU smoke test"): the smoke test, then the planner on what it measured. Results go to $OUT
# (the device tool's folder that comes back), else ./gpu-check. Runs with the machine's own
# python3 and torch (no install: such machines reach no package registry); any arguments go to
# the smoke test, so `tools/gpu_check.sh --device cpu --quick` checks this script on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
"$py" -c 'import sys, torch, timm, h5py; print("python", sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__,
           "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())' 2>&1 | tee "$out/versions.txt"
# 480 s: the smoke test's own budget is <= 8 minutes; it saves its JSON after every check, so a
# cut-off run still brings back what it measured
timeout 480 "$py" -m sslseg.bench.gpu_smoke --json "$out/gpu_smoke.json" "$@" 2>&1 | tee "$out/gpu_smoke.log"
smoke=${PIPESTATUS[0]}
if [ -s "$out/gpu_smoke.json" ]; then
  "$py" -m sslseg plan --bench "$out/gpu_smoke.json" 2>&1 | tee "$out/plan.txt"
fi
echo "gpu_check: smoke test exit status $smoke; results in $out"
exit "$smoke"
