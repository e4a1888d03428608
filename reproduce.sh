#!/usr/bin/env bash
# The S-DPO paper's comparison on LastFM in one command: the base model, SFT, then DPO, S-DPO and
# DMPO from the same SFT adapter, each evaluated on the same test prompts; RUN_DIR/results.md,
# results.json and results.png collect them. A rerun skips every stage whose outputs are complete
# and were made with the same settings (and says so); a stage made with other settings is made
# again, with the stages built on it, naming the setting that changed; --force redoes them all.
# First the data is audited for leaks (data/audit.py: rules without a model that read the candidate
# lists, the true item's position, records and sequences shared between splits); the audit's table
# is part of results.md. Two rules without a model, the most popular candidate and the candidate
# that most often followed the history in training, ItemKNN, and two sequential recommenders trained
# from scratch on the training split, SASRec and GRU4Rec (trainer/baselines.py), are scored on the
# same prompts as reference points. The LastFM split is the clean one by default: the authors'
# histories and true items, with negatives drawn independently of the true item
# (NEGATIVE_DRAW=llara: the authors' own lists, which give the true item away; docs/leak.md).
#   bash reproduce.sh                    # PROFILE=cpu: subsets and a 500-prompt test sample, 2-core CPU, about an hour
#   PROFILE=gpu bash reproduce.sh        # the cpu recipe on all training (SFT) and test prompts, one GPU, large batches
#   PROFILE=paper bash reproduce.sh      # all 47,872 training and 2,495 test prompts, the authors' settings (GPU)
#   bash reproduce.sh --force            # redo every stage
#
# Settings are variables, each overridable from the environment; the profile sets their defaults
# (scripts/common.sh, set_profile_defaults; the stage scripts take theirs from the same table):
#                        cpu     gpu     paper
#   SFT_SAMPLES          256     all     all    SFT training prompts, a seeded sample (empty: all)
#   SFT_EPOCHS           1       1       5
#   SFT_LEARNING_RATE    3e-4    3e-4    1e-5
#   SFT_EFFECTIVE_BATCH  4       64      128    prompts per optimizer step, all NUM_PROCESSES processes together
#   SFT_BATCH_SIZE       4       64      4      most prompts per forward pass of one process (passes accumulate)
#   SFT_VALID_SAMPLES    100     500     500    validation prompts for the SFT validation loss
#   SFT_LORA_DROPOUT     0       0       0.1    dropout on the LoRA input (a third of a CPU step; one pass has little to overfit)
#   SFT_LORA_ALPHA       64      64      32     LoRA scaling numerator at rank 8 (64: validation split, docs/levers.md)
#   PREF_SAMPLES         128     4096    all    training prompts of DPO, S-DPO and DMPO (the same for the three)
#   PREF_EPOCHS          1       1       3
#   PREF_LEARNING_RATE   3e-4    3e-4    1e-5
#   PREF_EFFECTIVE_BATCH 8       32      128
#   PREF_BATCH_SIZE      2       32      4
#   PREF_VALID_SAMPLES   32      500     500    validation prompts for the preference loss and reward accuracy
#   EVAL_SAMPLES         500     all     all    test prompts, a fixed sample drawn with SAMPLE_SEED (0)
#   EVAL_BATCH_SIZE      16      64      16     test prompts generated (and scored) together
#   SCORE_CANDIDATES     False   True    True   also rank the candidates by log-probability (ranking metrics;
#                                               about 1.7x the evaluation time on a CPU, bench/README.md)
#   HINTS                True    True    False  every prompt names the candidates that most often followed its
#                                               history in the training split (trainer/collaborative.py); False
#                                               keeps the paper's text-only prompts
#   SELECT_BEST          False   False   True   keep each stage's adapter with the lowest validation loss, the
#                                               authors' cadence: 5 evaluations in SFT, 10 in each preference stage
#   HINT_RECENCY         0.5     0.5     1      weight of a history title in the hint (and the transitions rule) by
#                                               recency: one last seen i items before the newest counts HINT_RECENCY**i
#   SFT_MAX_SECONDS      0       120     0      end SFT after the first optimizer step past this many seconds (0: no
#                                               limit), then validate and save as usual; the schedule keeps its length
#   PREF_MAX_SECONDS     0       30      0      the same for each preference stage
#   BASELINE_MAX_EPOCHS (50: SASRec and GRU4Rec stop earlier, when validation HR@1 stops improving),
#   BETA (1.0), NEG_NUM (3: S-DPO and DMPO; DPO uses 1), SEED (42), NUM_PROCESSES (1),
#   ACCELERATE_CONFIG (unset; see sft.sh), MODEL_NAME (embedded-smollm2), NEGATIVE_DRAW (independent; llara
#   for the authors' lists), DATA_DIR (data/lastfm; data/lastfm-llara with NEGATIVE_DRAW=llara),
#   RUN_DIR (output/reproduce-PROFILE; output/reproduce-PROFILE-llara with NEGATIVE_DRAW=llara)
# The gpu profile is the cpu profile's recipe (chosen on the validation split, docs/levers.md) on all
# 47,872 SFT prompts, 4,096 per preference stage and all 2,495 test prompts, in large batches, sized
# for the device script (scripts/device.sh) to run within one 10-minute call; its sizes are not yet
# measured on a GPU, so its training stages also stop at a time budget (SFT_MAX_SECONDS,
# PREF_MAX_SECONDS) and each stage's train_results.json says how many prompts it trained on.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

set_shared_settings
split_suffix=""
if [[ $NEGATIVE_DRAW == llara ]]; then
    split_suffix=-llara  # a run on the authors' split never shares a folder with one on the clean split
fi
RUN_DIR=${RUN_DIR:-output/reproduce-$PROFILE$split_suffix}
SAMPLE_SEED=${SAMPLE_SEED:-0}
BETA=${BETA:-1.0}
NEG_NUM=${NEG_NUM:-3}
BASELINE_MAX_EPOCHS=${BASELINE_MAX_EPOCHS:-50}

force=false
case ${1:-} in
    --help|-h) sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --force) force=true ;;
    "") ;;
    *) echo "error: unknown argument '$1' (use --force or --help)" >&2; exit 2 ;;
esac

export PROFILE NUM_PROCESSES MODEL_NAME NEGATIVE_DRAW DATA_DIR SEED HINTS HINT_RECENCY
ensure_lastfm_data "$DATA_DIR"
mkdir -p "$RUN_DIR"
echo "profile $PROFILE: SFT on ${SFT_SAMPLES:-all} prompts, preferences on ${PREF_SAMPLES:-all}," \
    "evaluation on ${EVAL_SAMPLES:-all} test prompts (seed $SAMPLE_SEED, candidate scoring $SCORE_CANDIDATES," \
    "hints $HINTS); outputs in $RUN_DIR"

# What the results' title says of the data: LastFM's split by its negative draw, or the folder.
data_description() {
    if [[ $DATA_DIR != "$LASTFM_DIR" ]]; then
        echo "$DATA_DIR"
    elif [[ $NEGATIVE_DRAW == llara ]]; then
        echo "LastFM, the S-DPO authors' split (candidate lists drawn from the true item: they give it away)"
    else
        echo "LastFM, clean split (the authors' histories and true items, negatives drawn independently of the true item)"
    fi
}

# Each stage records the settings it was made with (SETTINGS_FILE in its folder): the variables that
# decide what it computes, its own and those of the stages it is built on (how it is computed, as
# batch sizes and processes, is left out). Prints them, one NAME=value a line, for variables $@.
SETTINGS_FILE=reproduce_settings.txt
settings_of() {
    local name
    for name in "$@"; do
        printf '%s=%s\n' "$name" "${!name}"
    done
}
DATA_SETTINGS=$(settings_of MODEL_NAME DATA_DIR NEGATIVE_DRAW HINTS HINT_RECENCY)
EVAL_SETTINGS=$(settings_of EVAL_SAMPLES SAMPLE_SEED SCORE_CANDIDATES)
SFT_SETTINGS=$DATA_SETTINGS$'\n'$(settings_of SEED SELECT_BEST SFT_SAMPLES SFT_EPOCHS SFT_LEARNING_RATE \
    SFT_EFFECTIVE_BATCH SFT_VALID_SAMPLES SFT_LORA_DROPOUT SFT_LORA_ALPHA SFT_MAX_SECONDS)
PREF_SETTINGS=$SFT_SETTINGS$'\n'$(settings_of BETA PREF_SAMPLES PREF_EPOCHS PREF_LEARNING_RATE PREF_EFFECTIVE_BATCH \
    PREF_VALID_SAMPLES PREF_MAX_SECONDS)

# Runs a stage into RUN_DIR/name unless it is complete (its marker exists) and was made with the same
# settings; a stage made with other settings is removed and made again, and so are the stages built on
# it, whose settings include its own. --force redoes every stage. run_stage name marker settings command...
run_stage() {
    local name=$1 marker=$2 settings=$3
    shift 3
    local record=$RUN_DIR/$name/$SETTINGS_FILE
    if [[ $force == true ]]; then
        rm -rf "${RUN_DIR:?}/$name"
    elif [[ -f $marker && -f $record && $(< "$record") == "$settings" ]]; then
        echo "== $name: complete, skipped ($marker exists, same settings; --force redoes it)"
        return
    elif [[ -f $marker ]]; then
        echo "== $name: made with other settings ($(changed_setting "$record" "$settings")); made again"
        rm -rf "${RUN_DIR:?}/$name"
    fi
    echo "== $name"
    local started=$SECONDS
    "$@"
    printf '%s\n' "$settings" > "$record"
    echo "== $name: done in $((SECONDS - started)) s"
}

# The first setting whose value differs between a stage's record ($1) and the settings now ($2).
changed_setting() {
    local record=$1 settings=$2 line name
    if [[ ! -f $record ]]; then
        echo "no record of them"
        return
    fi
    while IFS= read -r line; do
        name=${line%%=*}
        if ! grep -qxF -- "$line" "$record"; then
            echo "$name: $(grep -m1 "^$name=" "$record" | cut -d= -f2- || true) then, ${line#*=} now"
            return
        fi
    done <<< "$settings"
    echo "a setting no longer used"
}

# Sets best_flags: with SELECT_BEST=True, an evaluation every $1 of the run and the best one kept.
set_best_flags() {
    best_flags=()
    if [[ $SELECT_BEST == True ]]; then
        best_flags=(--eval_steps "$1" --select_best True)
    fi
}

# Trains a preference stage from the SFT adapter: name, script, loss type, negatives.
train_preference() {
    set_best_flags 0.1
    OUTPUT_DIR=$RUN_DIR/$1 ADAPTER=$RUN_DIR/sft LOSS_TYPE=$3 NEG_NUM=$4 BETA=$BETA \
        MAX_TRAIN_SAMPLES=$PREF_SAMPLES MAX_VALID_SAMPLES=$PREF_VALID_SAMPLES EPOCHS=$PREF_EPOCHS \
        EFFECTIVE_BATCH_SIZE=$PREF_EFFECTIVE_BATCH BATCH_SIZE=$PREF_BATCH_SIZE LEARNING_RATE=$PREF_LEARNING_RATE \
        MAX_TRAIN_SECONDS=$PREF_MAX_SECONDS bash "$2" "${best_flags[@]}"
}

# Evaluates a stage (an adapter folder, or none for the base model) into RUN_DIR/stage/eval.
evaluate() {
    ADAPTER=$2 OUTPUT_DIR=$RUN_DIR/$1/eval MAX_SAMPLES=$EVAL_SAMPLES SAMPLE_SEED=$SAMPLE_SEED \
        SCORE_CANDIDATES=$SCORE_CANDIDATES BATCH_SIZE=$EVAL_BATCH_SIZE bash inference.sh
}

# Scores a baseline (a rule without a model, or a sequential model trained on the training split and
# early-stopped on the validation split: trainer/baselines.py) on the same test prompts into RUN_DIR/name/eval.
score_baseline() {
    local sample_flag=()
    if [[ -n $EVAL_SAMPLES ]]; then
        sample_flag=(--max_samples "$EVAL_SAMPLES")
    fi
    python -m trainer.baselines --rule "$1" --train_file "$DATA_DIR/train.json" --valid_file "$DATA_DIR/valid.json" \
        --test_file "$DATA_DIR/test.json" --output_dir "$RUN_DIR/$1/eval" "${sample_flag[@]}" --seed "$SAMPLE_SEED" \
        --recency "$HINT_RECENCY" --training_seed "$SEED" --max_epochs "$BASELINE_MAX_EPOCHS"
}

run_stage audit "$RUN_DIR/audit/audit.json" "$DATA_SETTINGS" \
    python data/audit.py --data_dir "$DATA_DIR" --output_dir "$RUN_DIR/audit" --recency "$HINT_RECENCY"
for rule in popularity transitions; do
    run_stage "$rule" "$RUN_DIR/$rule/eval/metrics.json" "$DATA_SETTINGS"$'\n'"$EVAL_SETTINGS" score_baseline "$rule"
done
for baseline in itemknn sasrec gru4rec; do
    run_stage "$baseline" "$RUN_DIR/$baseline/eval/metrics.json" \
        "$DATA_SETTINGS"$'\n'"$EVAL_SETTINGS"$'\n'"$(settings_of SEED BASELINE_MAX_EPOCHS)" score_baseline "$baseline"
done
run_stage base "$RUN_DIR/base/eval/metrics.json" "$DATA_SETTINGS"$'\n'"$EVAL_SETTINGS" evaluate base ""
set_best_flags 0.2
run_stage sft "$RUN_DIR/sft/train_results.json" "$SFT_SETTINGS" env OUTPUT_DIR="$RUN_DIR/sft" \
    MAX_TRAIN_SAMPLES="$SFT_SAMPLES" MAX_VALID_SAMPLES="$SFT_VALID_SAMPLES" EPOCHS="$SFT_EPOCHS" \
    EFFECTIVE_BATCH_SIZE="$SFT_EFFECTIVE_BATCH" BATCH_SIZE="$SFT_BATCH_SIZE" LEARNING_RATE="$SFT_LEARNING_RATE" \
    LORA_DROPOUT="$SFT_LORA_DROPOUT" LORA_ALPHA="$SFT_LORA_ALPHA" MAX_TRAIN_SECONDS="$SFT_MAX_SECONDS" \
    bash sft.sh "${best_flags[@]}"
for stage in dpo:dpo.sh:dpo:1 softmax_dpo:softmax_dpo.sh:sdpo:$NEG_NUM dmpo:softmax_dpo.sh:dmpo:$NEG_NUM; do
    IFS=: read -r name script loss negatives <<< "$stage"
    run_stage "$name" "$RUN_DIR/$name/train_results.json" "$PREF_SETTINGS"$'\n'"LOSS_TYPE=$loss"$'\n'"NEG_NUM=$negatives" \
        train_preference "$name" "$script" "$loss" "$negatives"
done
for name in sft dpo softmax_dpo dmpo; do
    # An evaluation is made with its adapter's settings, as that stage recorded them, and its own.
    run_stage "$name/eval" "$RUN_DIR/$name/eval/metrics.json" "$(< "$RUN_DIR/$name/$SETTINGS_FILE")"$'\n'"$EVAL_SETTINGS" \
        evaluate "$name" "$RUN_DIR/$name"
done
# The table's sizes (prompts, training examples, steps) are read from what each stage folder records. Pairs: the
# stages in order, S-DPO against every reference, and every trained stage against the rule its hints name
# and against SASRec, the strongest trained baseline (docs/baselines.md).
python -m trainer.results --run_dir "$RUN_DIR" \
    --stages popularity,transitions,itemknn,sasrec,gru4rec,base,sft,dpo,softmax_dpo,dmpo \
    --pairs sft:base,dpo:sft,softmax_dpo:dpo,dmpo:dpo,softmax_dpo:dmpo,softmax_dpo:popularity,softmax_dpo:transitions,softmax_dpo:itemknn,softmax_dpo:sasrec,softmax_dpo:gru4rec,sft:transitions,dpo:transitions,dmpo:transitions,sft:sasrec,dpo:sasrec,dmpo:sasrec \
    --train_file "$DATA_DIR/train.json" --audit_file "$RUN_DIR/audit/audit.json" \
    --title "$(data_description), profile $PROFILE, hints $HINTS (recency $HINT_RECENCY)"
