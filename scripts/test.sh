#!/usr/bin/env bash
# Installs everything and runs the whole test suite. The tests that compare against files only the
# shared data holds (the LLaRA pickles, the authors' golden file, the HetRec log) read SHARED_DATA_DIR,
# else ../shared/data beside the repository, and are skipped, saying so, where neither exists;
# .ci/run sets SHARED_DATA_DIR, so in CI they run or fail.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m pytest -q "$@"
