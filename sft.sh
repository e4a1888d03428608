#!/usr/bin/env bash
# Supervised fine-tuning (LoRA) of the embedded model on the LastFM data: the SFT stage of
# `bash reproduce.sh`, sized by PROFILE (cpu unless set: a seeded sample of 256 training records with
# collaborative hints, about 7 minutes on 2 CPU cores; the profiles are in reproduce.sh --help).
# Settings are variables, each overridable from the environment; extra flags go to sft.py:
#   MAX_TRAIN_SAMPLES= bash sft.sh                  # every training record
#   PROFILE=paper bash sft.sh                       # the S-DPO authors' settings
#   bash sft.sh --load_in_4bit True                 # QLoRA
# Defaults in parentheses: the profile's setting of that name, then the cpu profile's value.
#
#   PROFILE            cpu, gpu or paper (cpu)
#   NUM_PROCESSES      processes: one per GPU, or processes sharing the CPUs where there is no GPU (1)
#   ACCELERATE_CONFIG  an accelerate configuration: ddp, zero2, zero3, fsdp, multinode (configs/accelerate/)
#                      or a file; unset: plain data parallelism over NUM_PROCESSES
#   MODEL_NAME         base model: embedded-smollm2, a model folder or a hub id (embedded-smollm2)
#   NEGATIVE_DRAW      LastFM candidates: independent of the true item, or llara (the S-DPO authors',
#                      which give the true item away; DATA_DIR then defaults to data/lastfm-llara) (independent)
#   DATA_DIR           folder with train.json and valid.json; prepared from data/lastfm-source if missing (data/lastfm)
#   OUTPUT_DIR         where the adapter, tokenizer and logs go (output/sft)
#   MAX_TRAIN_SAMPLES  training records, a seeded sample; empty for all (SFT_SAMPLES: 256)
#   MAX_VALID_SAMPLES  validation records for the validation loss; 0 for none (SFT_VALID_SAMPLES: 100)
#   EPOCHS             passes over the training sample (SFT_EPOCHS: 1)
#   EFFECTIVE_BATCH_SIZE  examples per optimizer step, all processes together (SFT_EFFECTIVE_BATCH: 4)
#   BATCH_SIZE         most examples per forward pass of one process; passes are accumulated to
#                      EFFECTIVE_BATCH_SIZE / NUM_PROCESSES (SFT_BATCH_SIZE: 4)
#   LEARNING_RATE      peak learning rate, cosine schedule (SFT_LEARNING_RATE: 3e-4)
#   MAX_TRAIN_SECONDS  end training after the first optimizer step past this many seconds; 0 for no limit
#                      (SFT_MAX_SECONDS: 0)
#   LORA_DROPOUT       dropout on the LoRA input; off on a CPU, as one pass over unseen prompts has
#                      little to overfit and dropout costs a third of a CPU step (SFT_LORA_DROPOUT: 0)
#   LORA_ALPHA         LoRA scaling numerator: the update is scaled by alpha / r (r 8); 64 learned
#                      more per prompt than the paper's 32 on the validation split (SFT_LORA_ALPHA: 64)
#   HINTS              True: every prompt names the candidates that most often followed its history
#                      in DATA_DIR/train.json (trainer/collaborative.py); evaluate with HINTS=True too (True)
#   HINT_RECENCY       weight of a history title in the hint by recency: one last seen i items before
#                      the newest counts HINT_RECENCY**i; 1 counts all alike (HINT_RECENCY: 0.5)
#   SEED               seeds sampling, templates, initialisation and data order (42)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

set_shared_settings
OUTPUT_DIR=${OUTPUT_DIR:-output/sft}
set_training_stage_settings SFT
LORA_DROPOUT=${LORA_DROPOUT:-$SFT_LORA_DROPOUT}
LORA_ALPHA=${LORA_ALPHA:-$SFT_LORA_ALPHA}

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
    show_help "$(basename "$0")" sft.py
    exit 0
fi

launch_training_stage sft.py --lora_dropout "$LORA_DROPOUT" --lora_alpha "$LORA_ALPHA" "$@"
