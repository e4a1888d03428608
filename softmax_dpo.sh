#!/usr/bin/env bash
# S-DPO from the SFT adapter on the LastFM data, sized for a 2-core CPU: a seeded sample of
# MAX_TRAIN_SAMPLES training prompts, each with NEG_NUM rejected titles.
# Settings are variables, each overridable from the environment; extra flags go to softmax_dpo.py
# (dpo.py when run through dpo.sh, which is this script with DPO's presets):
#   LOSS_TYPE=dmpo OUTPUT_DIR=output/dmpo bash softmax_dpo.sh     # DMPO on the same examples
#   MAX_TRAIN_SAMPLES= EPOCHS=3 bash softmax_dpo.sh               # every training prompt
#
#   NUM_PROCESSES      processes: one per GPU, or processes sharing the CPUs where there is no GPU (1)
#   ACCELERATE_CONFIG  an accelerate configuration: ddp, zero2, zero3, fsdp, multinode (configs/accelerate/)
#                      or a file; unset: plain data parallelism over NUM_PROCESSES
#   MODEL_NAME         base model: embedded-smollm2, a model folder or a hub id (embedded-smollm2)
#   SFT_ADAPTER        LoRA adapter to start from, also the frozen reference (output/sft, what sft.sh writes)
#   DATA_DIR           folder with train.json and valid.json; prepared from SHARED_DATA_DIR if missing (data/lastfm)
#   OUTPUT_DIR         where the adapter, tokenizer and logs go (output/softmax_dpo)
#   LOSS_TYPE          sdpo, dpo or dmpo (sdpo)
#   NEG_NUM            rejected titles per prompt (3)
#   NEGATIVES          random (the paper's); popular: drawn in proportion to 1 + each candidate's count
#                      as a training true item; hinted: the other candidates the training counts rank
#                      highest, needs HINTS=True; hard: the other candidates the SFT adapter scores
#                      highest (random)
#   BETA               inverse temperature of the implicit reward (1.0)
#   MAX_TRAIN_SAMPLES  training prompts, a seeded sample; empty for all (480)
#   MAX_VALID_SAMPLES  validation prompts for the preference loss and reward accuracy; 0 for none (50)
#   EPOCHS             passes over the training sample (1)
#   EFFECTIVE_BATCH_SIZE  prompts per optimizer step, all processes together (8)
#   BATCH_SIZE         most prompts per forward pass of one process; passes are accumulated to
#                      EFFECTIVE_BATCH_SIZE / NUM_PROCESSES (2)
#   LEARNING_RATE      peak learning rate, cosine schedule (1e-4)
#   HINTS              True: every prompt names the candidates that most often followed its history
#                      in DATA_DIR/train.json (trainer/collaborative.py); evaluate with HINTS=True too (False)
#   SEED               seeds sampling, negatives, templates and data order (42)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

NUM_PROCESSES=${NUM_PROCESSES:-1}
MODEL_NAME=${MODEL_NAME:-embedded-smollm2}
SFT_ADAPTER=${SFT_ADAPTER:-output/sft}
DATA_DIR=${DATA_DIR:-data/lastfm}
OUTPUT_DIR=${OUTPUT_DIR:-output/softmax_dpo}
LOSS_TYPE=${LOSS_TYPE:-sdpo}
NEG_NUM=${NEG_NUM:-3}
BETA=${BETA:-1.0}
NEGATIVES=${NEGATIVES:-random}
MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES-480}
MAX_VALID_SAMPLES=${MAX_VALID_SAMPLES:-50}
EPOCHS=${EPOCHS:-1}
EFFECTIVE_BATCH_SIZE=${EFFECTIVE_BATCH_SIZE:-8}
BATCH_SIZE=${BATCH_SIZE:-2}
LEARNING_RATE=${LEARNING_RATE:-1e-4}
SEED=${SEED:-42}
HINTS=${HINTS:-False}

# dpo.sh runs this script with PREFERENCE_SCRIPT=dpo.py.
PREFERENCE_SCRIPT=${PREFERENCE_SCRIPT:-softmax_dpo.py}

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
    show_help "$(basename "$0")" "$PREFERENCE_SCRIPT"
    exit 0
fi

launch_training_stage "$PREFERENCE_SCRIPT" \
    --sft_adapter "$SFT_ADAPTER" \
    --loss_type "$LOSS_TYPE" \
    --neg_num "$NEG_NUM" \
    --negatives "$NEGATIVES" \
    --beta "$BETA" \
    "$@"
