#!/usr/bin/env bash
# Fill ./wheels with hodei and every dependency, for an offline `docker build`.
#
# Run from the repository root, on Linux x86_64/arm64 with the same CPython minor version as
# the image's BASE_IMAGE (3.11 for python:3.11-slim): the compiled dependencies (asyncpg,
# msgspec, ...) are picked for the interpreter that runs this script.
#   PYTHON=python3.11 deploy/build-wheels.sh
set -euo pipefail

PYTHON=${PYTHON:-python3}
WANT=${PYTHON_VERSION:-3.11}
HAVE=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ "$HAVE" != "$WANT" ]]; then
    echo "error: $PYTHON is Python $HAVE but the image needs $WANT wheels" \
         "(set PYTHON=python$WANT, or PYTHON_VERSION to match BASE_IMAGE)" >&2
    exit 1
fi
if [[ "$(uname -s)" != Linux ]]; then
    echo "error: build the wheels on Linux: the image needs Linux wheels" >&2
    exit 1
fi

rm -rf wheels
mkdir -p wheels
# Never committed: the folder is a build artifact.
printf '*\n' > wheels/.gitignore
"$PYTHON" -m pip wheel --wheel-dir wheels .
ls wheels
