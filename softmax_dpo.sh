#!/usr/bin/env bash
# S-DPO from the SFT adapter on the LastFM data: the S-DPO stage of `bash reproduce.sh`, sized by
# PROFILE (cpu unless set: a seeded sample of 128 training prompts with collaborative hints, each
# with NEG_NUM rejected titles, about 6 minutes on 2 CPU cores; the profiles are in reproduce.sh --help).
# Settings are variables, each overridable from the environment; extra flags go to softmax_dpo.py
# (dpo.py when run through dpo.sh, which is this script with DPO's presets):
#   LOSS_TYPE=dmpo OUTPUT_DIR=output/dmpo bash softmax_dpo.sh     # DMPO on the same examples
#   MAX_TRAIN_SAMPLES= EPOCHS=3 bash softmax_dpo.sh               # every training prompt
# Defaults in parentheses: the profile's setting of that name, then the cpu profile's value.
#
#   PROFILE            cpu, gpu or paper (cpu)
#   NUM_PROCESSES      processes: one per GPU, or processes sharing the CPUs where there is no GPU (1)
#   ACCELERATE_CONFIG  an accelerate configuration: ddp, zero2, zero3, fsdp, multinode (configs/accelerate/)
#                      or a file; unset: plain data parallelism over NUM_PROCESSES
#   MODEL_NAME         base model: embedded-smollm2, a model folder or a hub id (embedded-smollm2)
#   ADAPTER            LoRA adapter to start from, also the frozen reference (output/sft, what sft.sh writes)
#   NEGATIVE_DRAW      LastFM candidates: independent of the true item, or llara (the S-DPO authors',
#                      which give the true item away; DATA_DIR then defaults to data/lastfm-llara) (independent)
#   DATA_DIR           folder with train.json and valid.json; prepared from data/lastfm-source if missing (data/lastfm)
#   OUTPUT_DIR         where the adapter, tokenizer and logs go (output/softmax_dpo)
#   LOSS_TYPE          sdpo, dpo or dmpo (sdpo)
#   NEG_NUM            rejected titles per prompt (3)
#   NEGATIVES          random (the paper's); popular: drawn in proportion to 1 + each candidate's count
#                      as a training true item; hinted: the other candidates the training counts rank
#                      highest, needs HINTS=True; hard: the other candidates the SFT adapter scores
#                      highest (random)
#   BETA               inverse temperature of the implicit reward (1.0)
#   MAX_TRAIN_SAMPLES  training prompts, a seeded sample; empty for all (PREF_SAMPLES: 128)
#   MAX_VALID_SAMPLES  validation prompts for the preference loss and reward accuracy; 0 for none
#                      (PREF_VALID_SAMPLES: 32)
#   EPOCHS             passes over the training sample (PREF_EPOCHS: 1)
#   EFFECTIVE_BATCH_SIZE  prompts per optimizer step, all processes together (PREF_EFFECTIVE_BATCH: 8)
#   BATCH_SIZE         most prompts per forward pass of one process; passes are accumulated to
#                      EFFECTIVE_BATCH_SIZE / NUM_PROCESSES (PREF_BATCH_SIZE: 2)
#   LEARNING_RATE      peak learning rate, cosine schedule (PREF_LEARNING_RATE: 3e-4)
#   MAX_TRAIN_SECONDS  end training after the first optimizer step past this many seconds; 0 for no limit
#                      (PREF_MAX_SECONDS: 0)
#   HINTS              True: every prompt names the candidates that most often followed its history
#                      in DATA_DIR/train.json (trainer/collaborative.py); evaluate with HINTS=True too (True)
#   HINT_RECENCY       weight of a history title in the hint by recency: one last seen i items before
#                      the newest counts HINT_RECENCY**i; 1 counts all alike (HINT_RECENCY: 0.5)
#   SEED               seeds sampling, negatives, templates and data order (42)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

set_shared_settings
ADAPTER=${ADAPTER:-output/sft}
OUTPUT_DIR=${OUTPUT_DIR:-output/softmax_dpo}
LOSS_TYPE=${LOSS_TYPE:-sdpo}
NEG_NUM=${NEG_NUM:-3}
BETA=${BETA:-1.0}
NEGATIVES=${NEGATIVES:-random}
set_training_stage_settings PREF

# dpo.sh runs this script with PREFERENCE_SCRIPT=dpo.py.
PREFERENCE_SCRIPT=${PREFERENCE_SCRIPT:-softmax_dpo.py}

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
    show_help "$(basename "$0")" "$PREFERENCE_SCRIPT"
    exit 0
fi

launch_training_stage "$PREFERENCE_SCRIPT" \
    --adapter "$ADAPTER" \
    --loss_type "$LOSS_TYPE" \
    --neg_num "$NEG_NUM" \
    --negatives "$NEGATIVES" \
    --beta "$BETA" \
    "$@"
