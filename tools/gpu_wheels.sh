#!/usr/bin/env bash
# Fetch, here, the wheels tools/gpu_check.sh installs on a lent GPU machine, into .whl/ (ignored
# by git; name it in the device tool's `carry`). That machine reaches no package registry and its
# image may lack what sslseg's config validation needs (jsonschema and its four dependencies) and
# holds another timm; the versions are requirements.lock's, built for its CPython 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="jsonschema jsonschema-specifications referencing rpds-py attrs timm"
PYVER=${GPU_PYTHON_VERSION:-3.12}
rm -rf .whl && mkdir -p .whl
for name in $PACKAGES; do
  pin=$(grep -i -E "^${name}==" requirements.lock) || { echo "gpu_wheels: $name is not in requirements.lock" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$pin"
done
ls -l .whl
du -sh .whl
