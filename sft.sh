#!/usr/bin/env bash
# Supervised fine-tuning (LoRA) of the embedded model on the LastFM data, sized for a 2-core CPU:
# a seeded sample of MAX_TRAIN_SAMPLES training records, about 13 minutes here (2 CPU cores).
# Settings are variables, each overridable from the environment; extra flags go to sft.py:
#   MAX_TRAIN_SAMPLES= bash sft.sh                  # every training record
#   bash sft.sh --load_in_4bit True                 # QLoRA
#
#   NUM_PROCESSES      processes: one per GPU, or processes sharing the CPUs where there is no GPU (1)
#   ACCELERATE_CONFIG  an accelerate configuration: ddp, zero2, zero3, fsdp, multinode (configs/accelerate/)
#                      or a file; unset: plain data parallelism over NUM_PROCESSES
#   MODEL_NAME         base model: embedded-smollm2, a model folder or a hub id (embedded-smollm2)
#   DATA_DIR           folder with train.json and valid.json; prepared from SHARED_DATA_DIR if missing (data/lastfm)
#   OUTPUT_DIR         where the adapter, tokenizer and logs go (output/sft)
#   MAX_TRAIN_SAMPLES  training records, a seeded sample; empty for all (720)
#   MAX_VALID_SAMPLES  validation records for the validation loss; 0 for none (200)
#   EPOCHS             passes over the training sample (1)
#   EFFECTIVE_BATCH_SIZE  examples per optimizer step, all processes together (4)
#   BATCH_SIZE         most examples per forward pass of one process; passes are accumulated to
#                      EFFECTIVE_BATCH_SIZE / NUM_PROCESSES (4)
#   LEARNING_RATE      peak learning rate, cosine schedule (3e-4)
#   LORA_DROPOUT       dropout on the LoRA input; off, as one pass over unseen prompts has little to
#                      overfit and dropout costs a third of a CPU step (0; the paper's 0.1 is sft.py's default)
#   HINTS              True: every prompt names the candidates that most often followed its history
#                      in DATA_DIR/train.json (trainer/collaborative.py); evaluate with HINTS=True too (False)
#   SEED               seeds sampling, templates, initialisation and data order (42)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

NUM_PROCESSES=${NUM_PROCESSES:-1}
MODEL_NAME=${MODEL_NAME:-embedded-smollm2}
DATA_DIR=${DATA_DIR:-data/lastfm}
OUTPUT_DIR=${OUTPUT_DIR:-output/sft}
MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES-720}
MAX_VALID_SAMPLES=${MAX_VALID_SAMPLES:-200}
EPOCHS=${EPOCHS:-1}
EFFECTIVE_BATCH_SIZE=${EFFECTIVE_BATCH_SIZE:-4}
BATCH_SIZE=${BATCH_SIZE:-4}
LEARNING_RATE=${LEARNING_RATE:-3e-4}
LORA_DROPOUT=${LORA_DROPOUT:-0}
SEED=${SEED:-42}
HINTS=${HINTS:-False}

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
    show_help "$(basename "$0")" sft.py
    exit 0
fi

launch_training_stage sft.py --lora_dropout "$LORA_DROPOUT" "$@"
