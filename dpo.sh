#!/usr/bin/env bash
# Pairwise DPO from the SFT adapter on the LastFM data: the DPO stage of `bash reproduce.sh`, each
# prompt's true title against one other candidate (dpo.py: --loss_type dpo, --neg_num 1), sized by
# PROFILE (cpu unless set: the seeded sample of 128 training prompts with collaborative hints that
# S-DPO and DMPO train on).
# Settings are variables, each overridable from the environment; extra flags go to dpo.py:
#   PREF_LEARNING_RATE=1e-4 bash dpo.sh
#
#   PROFILE            cpu, gpu, paper (configs/profiles/) or a profile file of your own (cpu)
#   PREF_<FLAG>        dpo.py's --<flag>, e.g. PREF_LEARNING_RATE; the profile's PREF_ settings are
#                      those of softmax_dpo.sh (`bash softmax_dpo.sh --help`), the batches included
#   ADAPTER            LoRA adapter to start from, also the frozen reference (output/sft, what sft.sh writes)
#   HINTS, HINT_RECENCY, SEED, NUM_PROCESSES, ACCELERATE_CONFIG, MODEL_NAME, NEGATIVE_DRAW, DATA_DIR,
#                      DOMAIN as for softmax_dpo.sh
#   OUTPUT_DIR         where the adapter, tokenizer and logs go (output/dpo)
# The profiles' values: `bash reproduce.sh --help`.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh
run_training_script dpo.py PREF output/dpo "$@"
