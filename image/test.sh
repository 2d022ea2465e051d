#!/usr/bin/env bash
# `make image-test`: image/prove.py, run by the project's venv python ($1), against the image `make image` built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"
exec "${1:-python3}" "$here/prove.py"
