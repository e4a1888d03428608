#!/usr/bin/env bash
# Evaluates a model, with or without a LoRA adapter, on the LastFM test split: HitRatio@1 and
# ValidRatio, written to OUTPUT_DIR/metrics.json with predictions.jsonl; an evaluation of
# `bash reproduce.sh`, sized by PROFILE (cpu unless set; the profiles are in reproduce.sh --help).
# Settings are variables, each overridable from the environment; extra flags go to inference.py:
#   ADAPTER= bash inference.sh                      # the base model alone
#   EVAL_MAX_SAMPLES= bash inference.sh             # the whole test split
#
#   PROFILE        cpu, gpu, paper (configs/profiles/) or a profile file of your own (cpu)
#   EVAL_<FLAG>    inference.py's --<flag>; the profile sets EVAL_MAX_SAMPLES (test records, a fixed
#                  seeded sample; empty for all), EVAL_SAMPLE_SEED (its seed), EVAL_BATCH_SIZE (prompts
#                  generated, and their candidates scored, together by one process) and
#                  EVAL_SCORE_CANDIDATES (also rank the candidates by log-probability: ranking metrics)
#   ADAPTER        LoRA adapter folder; empty for the base model (output/sft, what sft.sh writes)
#   HINTS, HINT_RECENCY  True: every prompt names the candidates that most often followed its history
#                  in DATA_DIR/train.json, as for a model trained with the same hints
#   NUM_PROCESSES  processes, each evaluating its share of the prompts: one per GPU, or processes
#                  sharing the CPUs where there is no GPU (1)
#   ACCELERATE_CONFIG  an accelerate configuration (configs/accelerate/) or a file; unset: plain processes
#   MODEL_NAME     base model: embedded-smollm2, a model folder or a hub id (embedded-smollm2)
#   NEGATIVE_DRAW  LastFM candidates: independent of the true item, or llara (the S-DPO authors',
#                  which give the true item away; DATA_DIR then defaults to data/lastfm-llara) (independent)
#   DATA_DIR       folder holding test.json; prepared from data/lastfm-source if missing (data/lastfm)
#   DOMAIN         the prompts' wording, as the model was trained (what DATA_DIR's converter recorded, else music)
#   OUTPUT_DIR     where metrics.json and predictions.jsonl go (output/eval)
# The profiles' values: `bash reproduce.sh --help`.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

set_shared_settings
ADAPTER=${ADAPTER-output/sft}
OUTPUT_DIR=${OUTPUT_DIR:-output/eval}

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
    show_help "$(basename "$0")" inference.py
    exit 0
fi

ensure_lastfm_data "$DATA_DIR"
set_domain
set_hint_flags
stage_flags EVAL
adapter_flag=()
if [[ -n $ADAPTER ]]; then
    adapter_flag=(--adapter "$ADAPTER")
fi
launch inference.py \
    --model_name "$MODEL_NAME" \
    --domain "$DOMAIN" \
    "${adapter_flag[@]}" \
    --test_file "$DATA_DIR/test.json" \
    --output_dir "$OUTPUT_DIR" \
    "${hint_flags[@]}" \
    "${stage_flag_list[@]}" \
    "$@"
