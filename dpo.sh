#!/usr/bin/env bash
# Pairwise DPO from the SFT adapter: softmax_dpo.sh with DPO's presets, through dpo.py. Each
# prompt's true title against one other candidate (NEG_NUM=1, LOSS_TYPE=dpo), into output/dpo;
# every other setting, and what --help lists, is softmax_dpo.sh's.
set -euo pipefail
cd "$(dirname "$0")"
if [[ ${1:-} == --help || ${1:-} == -h ]]; then
    source scripts/common.sh
    print_header "$(basename "$0")"
fi
LOSS_TYPE=${LOSS_TYPE:-dpo} NEG_NUM=${NEG_NUM:-1} OUTPUT_DIR=${OUTPUT_DIR:-output/dpo} PREFERENCE_SCRIPT=dpo.py \
    exec bash softmax_dpo.sh "$@"
