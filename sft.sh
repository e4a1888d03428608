#!/usr/bin/env bash
# Supervised fine-tuning (LoRA) of the embedded model on the LastFM data: the SFT stage of
# `bash reproduce.sh`, sized by PROFILE (cpu unless set: a seeded sample of 256 training records with
# collaborative hints, about 7 minutes on 2 CPU cores; the profiles are in reproduce.sh --help).
# Settings are variables, each overridable from the environment; extra flags go to sft.py:
#   SFT_MAX_TRAIN_SAMPLES= bash sft.sh              # every training record
#   PROFILE=paper bash sft.sh                       # the S-DPO authors' settings
#   bash sft.sh --load_in_4bit True                 # QLoRA
#
#   PROFILE            cpu, gpu, paper (configs/profiles/) or a profile file of your own (cpu)
#   SFT_<FLAG>         sft.py's --<flag>, e.g. SFT_LEARNING_RATE; the profile sets SFT_MAX_TRAIN_SAMPLES,
#                      SFT_NUM_TRAIN_EPOCHS, SFT_LEARNING_RATE, SFT_MAX_VALID_SAMPLES, SFT_LORA_DROPOUT,
#                      SFT_LORA_ALPHA, SFT_MAX_TRAIN_SECONDS, SFT_SELECT_BEST, SFT_EVAL_STEPS (empty: the
#                      flag's default), and the two that decide the batches:
#   SFT_EFFECTIVE_BATCH_SIZE  prompts per optimizer step, all processes together
#   SFT_BATCH_SIZE     most prompts per forward pass of one process; passes accumulate to the
#                      effective batch, shared equally by the processes
#   HINTS, HINT_RECENCY  True: every prompt names the candidates that most often followed its history
#                      in DATA_DIR/train.json (trainer/collaborative.py), a title seen i items before
#                      the newest weighted HINT_RECENCY**i; evaluate with the same hints
#   SEED               seeds sampling, templates, initialisation and data order
#   NUM_PROCESSES      processes: one per GPU, or processes sharing the CPUs where there is no GPU (1)
#   ACCELERATE_CONFIG  an accelerate configuration: ddp, zero2, zero3, fsdp, multinode (configs/accelerate/)
#                      or a file; unset: plain data parallelism over NUM_PROCESSES
#   MODEL_NAME         base model: embedded-smollm2, a model folder or a hub id (embedded-smollm2)
#   NEGATIVE_DRAW      LastFM candidates: independent of the true item, or llara (the S-DPO authors',
#                      which give the true item away; DATA_DIR then defaults to data/lastfm-llara) (independent)
#   DATA_DIR           folder with train.json and valid.json; prepared from data/lastfm-source if missing (data/lastfm)
#   DOMAIN             the prompts' wording: music, movie, book or game (the one DATA_DIR's converter
#                      recorded in its run_config.json, else music)
#   OUTPUT_DIR         where the adapter, tokenizer and logs go (output/sft)
# The profiles' values: `bash reproduce.sh --help`.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh
run_training_script sft.py SFT output/sft "$@"
