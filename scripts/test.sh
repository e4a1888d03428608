#!/usr/bin/env bash
# Installs everything and runs the whole test suite. Tests that read the LastFM data find it
# through SHARED_DATA_DIR (default: ../shared/data beside the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
SHARED_DATA_DIR=${SHARED_DATA_DIR:-$(cd .. && pwd)/shared/data}
export SHARED_DATA_DIR
python -m pytest -q "$@"
