#!/usr/bin/env bash
# The fair comparison of the preference losses (issue 29): one SFT adapter per hint setting, then every
# loss variant from that same adapter at the same budget (the profile's PREF_ settings: prompts, epochs,
# k, beta, learning rate), once per preference seed; every adapter, and the SFT one, evaluated on the same
# seeded validation prompts with candidate scoring. Validation only: nothing here reads a test file. The
# two hint settings run side by side, one thread each, logging to OUT/lane-hints<setting>-seeds-<seeds>.log.
#   bash scripts/studies/loss_comparison.sh
#   python scripts/studies/loss_comparison.py --output_dir output/loss-comparison --train_file data/lastfm/train.json
# Runs already finished are kept, so the study can be spread over sessions, and one hint setting can use
# two cores as two calls with other SEEDS once its SFT adapter is evaluated (both would train it otherwise):
#   HINT_SETTINGS=False SEEDS=42 bash scripts/studies/loss_comparison.sh   # then, beside it:
#   HINT_SETTINGS=False SEEDS=7 bash scripts/studies/loss_comparison.sh
#
#   OUT            where every run goes: OUT/hints<True|False>/<sft|variant-s<seed>>/eval/ (output/loss-comparison)
#   VARIANTS       loss variants: a name of trainer/losses.py's LOSSES, or NAME+dynamic for DynamicPO's boundary
#                  negatives and per-negative beta on it (every loss, then sdpo+dynamic, dmpo+dynamic, mppo+dynamic)
#   SEEDS          preference seeds (42 7 1234); the SFT adapter keeps the profile's SEED
#   HINT_SETTINGS  (True False)
#   VALID_SAMPLES  validation prompts, a sample seeded by 0 (200)
#   PROFILE, DATA_DIR and every PREF_ setting as for softmax_dpo.sh (cpu profile, the clean split)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-output/loss-comparison}
VARIANTS=${VARIANTS:-"$(python -c 'from trainer.losses import LOSS_TYPES; print(*LOSS_TYPES)') sdpo+dynamic dmpo+dynamic mppo+dynamic"}
SEEDS=${SEEDS:-"42 7 1234"}
HINT_SETTINGS=${HINT_SETTINGS:-"True False"}
VALID_SAMPLES=${VALID_SAMPLES:-200}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PROFILE=${PROFILE:-cpu}
source scripts/common.sh
HINTS=True set_shared_settings
ensure_lastfm_data "$DATA_DIR"  # once, before the lanes start

# Evaluates adapter folder $1 on the validation sample, with hints $2, into $1/eval.
evaluate() {
    local adapter=$1 hints=$2 hint_flags=()
    [[ -f $adapter/eval/metrics.json ]] && return
    if [[ $hints == True ]]; then
        hint_flags=(--hint_file "$DATA_DIR/train.json" --hint_recency "$HINT_RECENCY")
    fi
    python inference.py --adapter "$adapter" --output_dir "$adapter/eval" --test_file "$DATA_DIR/valid.json" \
        --max_samples "$VALID_SAMPLES" --sample_seed 0 --score_candidates True "${hint_flags[@]}"
}

# SFT with hints $1, then every variant and seed from it, each evaluated.
lane() {
    local hints=$1 run=$OUT/hints$1 variant seed loss dynamic
    if [[ ! -f $run/sft/train_results.json ]]; then
        DATA_DIR=$DATA_DIR HINTS=$hints OUTPUT_DIR=$run/sft bash sft.sh
    fi
    evaluate "$run/sft" "$hints"
    for variant in $VARIANTS; do
        loss=${variant%+dynamic}
        dynamic=False
        [[ $variant == *+dynamic ]] && dynamic=True
        for seed in $SEEDS; do
            local folder=$run/$variant-s$seed
            if [[ ! -f $folder/train_results.json ]]; then
                DATA_DIR=$DATA_DIR HINTS=$hints SEED=$seed OUTPUT_DIR=$folder ADAPTER=$run/sft \
                    PREF_LOSS_TYPE=$loss PREF_BOUNDARY_NEGATIVES=$dynamic PREF_DYNAMIC_BETA=$dynamic \
                    bash softmax_dpo.sh
            fi
            evaluate "$folder" "$hints"
        done
    done
}

mkdir -p "$OUT"
lanes=()
for hints in $HINT_SETTINGS; do
    lane "$hints" > "$OUT/lane-hints$hints-seeds-${SEEDS// /-}.log" 2>&1 &
    lanes+=($!)
done
for lane_pid in "${lanes[@]}"; do
    wait "$lane_pid"
done
python scripts/studies/loss_comparison.py --output_dir "$OUT" --train_file "$DATA_DIR/train.json"
