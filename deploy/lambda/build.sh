#!/usr/bin/env bash
# Build the Lambda code package (template.yaml's CodeUri) into deploy/lambda/package:
#
#   deploy/lambda/build.sh [path/to/rotations.yaml]
#
# The rotator and its dependencies are installed from wheels for Lambda's platform
# (CPython 3.11, manylinux x86_64), whatever machine builds it. A rotation file given here
# is packaged at the function's root, where the handler looks when neither
# ROTATOR_FILE_S3 nor ROTATOR_FILE_CONTENT is set. Then: sam deploy --guided
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/package"
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT

python3 -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "$root"
wheel="$(ls "$wheels"/rotator-*.whl)"
rm -rf "$out"
python3 -m pip install --quiet --target "$out" \
  --platform manylinux2014_x86_64 --implementation cp --python-version 3.11 \
  --only-binary=:all: --no-warn-conflicts "${wheel}[all]"
if [ "$#" -gt 0 ]; then
  cp "$1" "$out/rotations.yaml"
fi
echo "built $out ($(du -sh "$out" | cut -f1))"
