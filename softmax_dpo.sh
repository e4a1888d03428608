#!/usr/bin/env bash
# S-DPO from the SFT adapter on the LastFM data: the S-DPO stage of `bash reproduce.sh`, sized by
# PROFILE (cpu unless set: a seeded sample of 128 training prompts with collaborative hints, each
# with PREF_NEG_NUM rejected titles, about 6 minutes on 2 CPU cores).
# Settings are variables, each overridable from the environment; extra flags go to softmax_dpo.py:
#   PREF_LOSS_TYPE=dmpo OUTPUT_DIR=output/dmpo bash softmax_dpo.sh     # DMPO on the same examples
#   PREF_MAX_TRAIN_SAMPLES= PREF_NUM_TRAIN_EPOCHS=3 bash softmax_dpo.sh # every training prompt
#
#   PROFILE            cpu, gpu, paper (configs/profiles/) or a profile file of your own (cpu)
#   PREF_<FLAG>        softmax_dpo.py's --<flag>, e.g. PREF_LEARNING_RATE; the profile sets
#                      PREF_MAX_TRAIN_SAMPLES, PREF_NUM_TRAIN_EPOCHS, PREF_LEARNING_RATE, PREF_MAX_VALID_SAMPLES,
#                      PREF_BETA, PREF_MAX_TRAIN_SECONDS, PREF_SELECT_BEST, PREF_EVAL_STEPS (empty: the flag's
#                      default), and the two that decide the batches:
#   PREF_EFFECTIVE_BATCH_SIZE  prompts per optimizer step, all processes together
#   PREF_BATCH_SIZE    most prompts per forward pass of one process; passes accumulate to the
#                      effective batch, shared equally by the processes
#   PREF_LOSS_TYPE     the loss: sdpo (default), dpo, dmpo, or one of the others `python softmax_dpo.py --help` lists
#   PREF_NEG_NUM       rejected titles per prompt (3)
#   PREF_NEGATIVES     random (the paper's); popular: drawn in proportion to 1 + each candidate's count
#                      as a training true item; hinted: the other candidates the training counts rank
#                      highest, needs HINTS=True; hard: the other candidates the SFT adapter scores
#                      highest (random)
#   ADAPTER            LoRA adapter to start from, also the frozen reference (output/sft, what sft.sh writes)
#   HINTS, HINT_RECENCY  True: every prompt names the candidates that most often followed its history
#                      in DATA_DIR/train.json (trainer/collaborative.py), a title seen i items before
#                      the newest weighted HINT_RECENCY**i; as the SFT adapter was trained
#   SEED               seeds sampling, negatives, templates and data order
#   NUM_PROCESSES      processes: one per GPU, or processes sharing the CPUs where there is no GPU (1)
#   ACCELERATE_CONFIG  an accelerate configuration: ddp, zero2, zero3, fsdp, multinode (configs/accelerate/)
#                      or a file; unset: plain data parallelism over NUM_PROCESSES
#   MODEL_NAME         base model: embedded-smollm2, a model folder or a hub id (embedded-smollm2)
#   NEGATIVE_DRAW      LastFM candidates: independent of the true item, or llara (the S-DPO authors',
#                      which give the true item away; DATA_DIR then defaults to data/lastfm-llara) (independent)
#   DATA_DIR           folder with train.json and valid.json; prepared from data/lastfm-source if missing (data/lastfm)
#   DOMAIN             the prompts' wording: music, movie, book or game (the one DATA_DIR's converter
#                      recorded in its run_config.json, else music)
#   OUTPUT_DIR         where the adapter, tokenizer and logs go (output/softmax_dpo)
# The profiles' values: `bash reproduce.sh --help`.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh
run_training_script softmax_dpo.py PREF output/softmax_dpo "$@"
