#!/usr/bin/env bash
# Evaluates a model, with or without a LoRA adapter, on the LastFM test split: HitRatio@1 and
# ValidRatio, written to OUTPUT_DIR/metrics.json with predictions.jsonl; an evaluation of
# `bash reproduce.sh`, sized by PROFILE (cpu unless set; the profiles are in reproduce.sh --help).
# Settings are variables, each overridable from the environment; extra flags go to inference.py:
#   ADAPTER= bash inference.sh                      # the base model alone
#   MAX_SAMPLES= bash inference.sh                  # the whole test split
# Defaults in parentheses: the profile's setting of that name, then the cpu profile's value.
#
#   PROFILE        cpu, gpu or paper (cpu)
#   NUM_PROCESSES  processes, each evaluating its share of the prompts: one per GPU, or processes
#                  sharing the CPUs where there is no GPU (1)
#   ACCELERATE_CONFIG  an accelerate configuration (configs/accelerate/) or a file; unset: plain processes
#   MODEL_NAME     base model: embedded-smollm2, a model folder or a hub id (embedded-smollm2)
#   ADAPTER        LoRA adapter folder; empty for the base model (output/sft, what sft.sh writes)
#   NEGATIVE_DRAW  LastFM candidates: independent of the true item, or llara (the S-DPO authors',
#                  which give the true item away; DATA_DIR then defaults to data/lastfm-llara) (independent)
#   DATA_DIR       folder holding test.json; prepared from data/lastfm-source if missing (data/lastfm)
#   OUTPUT_DIR     where metrics.json and predictions.jsonl go (output/eval)
#   MAX_SAMPLES    test records evaluated, a fixed seeded sample; empty for all (EVAL_SAMPLES: 500,
#                  about 4.5 minutes on 2 CPU cores)
#   SAMPLE_SEED    seed of that sample (0)
#   BATCH_SIZE     prompts generated (and their candidates scored) together by one process
#                  (EVAL_BATCH_SIZE: 16)
#   SCORE_CANDIDATES  also rank the candidates by log-probability, True or False (SCORE_CANDIDATES:
#                  False; about 1.7x the evaluation time of a trained model on a CPU, bench/README.md)
#   HINTS          True: every prompt names the candidates that most often followed its history in
#                  DATA_DIR/train.json, as for a model trained with HINTS=True (True)
#   HINT_RECENCY   weight of a history title in the hint by recency, as the model was trained
#                  (HINT_RECENCY: 0.5)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

set_shared_settings
ADAPTER=${ADAPTER-output/sft}
OUTPUT_DIR=${OUTPUT_DIR:-output/eval}
MAX_SAMPLES=${MAX_SAMPLES-$EVAL_SAMPLES}
SAMPLE_SEED=${SAMPLE_SEED:-0}
BATCH_SIZE=${BATCH_SIZE:-$EVAL_BATCH_SIZE}

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
    show_help "$(basename "$0")" inference.py
    exit 0
fi

ensure_lastfm_data "$DATA_DIR"
set_hint_flags
adapter_flag=()
if [[ -n $ADAPTER ]]; then
    adapter_flag=(--adapter "$ADAPTER")
fi
sample_flag=()
if [[ -n $MAX_SAMPLES ]]; then
    sample_flag=(--max_samples "$MAX_SAMPLES")
fi
launch inference.py \
    --model_name "$MODEL_NAME" \
    "${adapter_flag[@]}" \
    --test_file "$DATA_DIR/test.json" \
    --output_dir "$OUTPUT_DIR" \
    "${sample_flag[@]}" \
    --seed "$SAMPLE_SEED" \
    --batch_size "$BATCH_SIZE" \
    --score_candidates "$SCORE_CANDIDATES" \
    "${hint_flags[@]}" \
    "$@"
