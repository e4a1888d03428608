#!/usr/bin/env bash
# Do the models learn the candidate-list leak of the authors' LastFM split? (docs/leak.md)
# SFT, then DPO and S-DPO from it, at the cpu profile's budget (PROFILE=cpu), trained on the
# authors' split and on the clean split (the same histories and true items, negatives drawn
# independently of the true item), with hints and without; every adapter is evaluated on the same
# seeded validation prompts of both splits, with candidate scoring. Validation only: nothing here
# reads a test file. Two lanes (one per training split) run side by side, one thread each.
#   bash scripts/studies/leak_2x2.sh      # converts the splits that are missing, then trains and evaluates
#   python scripts/studies/leak_2x2.py --output_dir output/leak-2x2 --authors_dir data/lastfm-llara
#
#   AUTHORS_DIR    the authors' split (data/lastfm-llara)
#   CLEAN_DIR      the clean split (data/lastfm)
#   OUT            where every run goes: OUT/<training split>-hints<True|False>/<sft|dpo|sdpo>/eval-<split>/
#   VALID_SAMPLES  validation prompts, a sample seeded by 0 (200)
#   LASTFM_SOURCE  the LLaRA-layout LastFM folder the splits are converted from (data/lastfm-source)
set -euo pipefail
cd "$(dirname "$0")/../.."
AUTHORS_DIR=${AUTHORS_DIR:-data/lastfm-llara}
CLEAN_DIR=${CLEAN_DIR:-data/lastfm}
OUT=${OUT:-output/leak-2x2}
VALID_SAMPLES=${VALID_SAMPLES:-200}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PROFILE=cpu
HINT_RECENCY=0.5  # the cpu profile's
declare -A SPLIT_DIRS=([authors]=$AUTHORS_DIR [clean]=$CLEAN_DIR)

# Trains and evaluates every model of one training split ($1) with hints $2.
lane() {
    local split=$1 hints=$2
    local data_dir=${SPLIT_DIRS[$split]} run=$OUT/$1-hints$2
    if [[ ! -f $run/sft/train_results.json ]]; then
        DATA_DIR=$data_dir HINTS=$hints OUTPUT_DIR=$run/sft bash sft.sh
    fi
    local pref loss negatives
    for pref in dpo:dpo:1 sdpo:sdpo:3; do
        IFS=: read -r name loss negatives <<< "$pref"
        if [[ ! -f $run/$name/train_results.json ]]; then
            DATA_DIR=$data_dir HINTS=$hints OUTPUT_DIR=$run/$name ADAPTER=$run/sft PREF_LOSS_TYPE=$loss \
                PREF_NEG_NUM=$negatives bash softmax_dpo.sh
        fi
    done
    local model eval_split hint_flags
    for model in sft dpo sdpo; do
        for eval_split in authors clean; do
            local eval_dir=$run/$model/eval-$eval_split eval_data=${SPLIT_DIRS[$eval_split]}
            [[ -f $eval_dir/metrics.json ]] && continue
            hint_flags=()
            if [[ $hints == True ]]; then
                hint_flags=(--hint_file "$eval_data/train.json" --hint_recency "$HINT_RECENCY")
            fi
            python inference.py --adapter "$run/$model" --output_dir "$eval_dir" \
                --test_file "$eval_data/valid.json" --max_samples "$VALID_SAMPLES" --sample_seed 0 \
                --score_candidates True "${hint_flags[@]}"
        done
    done
}

for split in authors clean; do
    if [[ ! -f ${SPLIT_DIRS[$split]}/valid.json ]]; then
        draw=independent
        [[ $split == authors ]] && draw=llara
        python data/prepare.py --source "${LASTFM_SOURCE:-data/lastfm-source}" \
            --output_dir "${SPLIT_DIRS[$split]}" --negative_draw "$draw"
    fi
done
mkdir -p "$OUT"
(lane authors True && lane authors False) > "$OUT/lane-authors.log" 2>&1 &
authors_lane=$!
(lane clean True && lane clean False) > "$OUT/lane-clean.log" 2>&1 &
clean_lane=$!
wait "$authors_lane" && wait "$clean_lane"
echo "done: $OUT"
