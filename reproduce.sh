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
# Settings are variables, each overridable from the environment. A profile (configs/profiles/NAME.env,
# or PROFILE=path/to/your.env) sets them, one NAME=value a line; a stage's settings are named after its
# flags (SFT_<FLAG> for sft.py, PREF_<FLAG> for the preference stages, EVAL_<FLAG> for inference.py,
# BASELINE_<FLAG> for trainer.baselines; configs/profiles/README.md), and `--help` ends with the three
# profiles side by side. The others:
#   PREF_NEG_NUM (3: S-DPO and DMPO; DPO uses 1), NUM_PROCESSES (1), ACCELERATE_CONFIG (unset; see sft.sh),
#   MODEL_NAME (embedded-smollm2), NEGATIVE_DRAW (independent; llara for the authors' lists), DATA_DIR
#   (data/lastfm; data/lastfm-llara with NEGATIVE_DRAW=llara), DOMAIN (the prompts' wording: music,
#   movie, book or game; unset, the one DATA_DIR's converter recorded, else music), RUN_DIR
#   (output/reproduce-PROFILE; output/reproduce-PROFILE-llara with NEGATIVE_DRAW=llara)
#   DATA_DIR=data/movielens DOMAIN=movie bash reproduce.sh   # another dataset, its own wording
# The gpu profile is the cpu profile's recipe (chosen on the validation split, docs/levers.md) on all
# 47,872 SFT prompts, 4,096 per preference stage and all 2,495 test prompts, in large batches, sized
# for the device script (scripts/device.sh) to run within one 10-minute call; its sizes are not yet
# measured on a GPU, so its training stages also stop at a time budget (SFT_MAX_TRAIN_SECONDS,
# PREF_MAX_TRAIN_SECONDS) and each stage's train_results.json says how many prompts it trained on.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

set_shared_settings
split_suffix=""
if [[ $NEGATIVE_DRAW == llara ]]; then
    split_suffix=-llara  # a run on the authors' split never shares a folder with one on the clean split
fi
RUN_DIR=${RUN_DIR:-output/reproduce-$(basename "$PROFILE" .env)$split_suffix}
negatives=${PREF_NEG_NUM:-3}

force=false
case ${1:-} in
    --help|-h) print_header "$0"; echo "The profiles (configs/profiles/; -: empty, the flag's default, e.g. every record):"; profile_table; exit 0 ;;
    --force) force=true ;;
    "") ;;
    *) echo "error: unknown argument '$1' (use --force or --help)" >&2; exit 2 ;;
esac

ensure_lastfm_data "$DATA_DIR"
set_domain
export PROFILE NUM_PROCESSES MODEL_NAME NEGATIVE_DRAW DATA_DIR DOMAIN
mkdir -p "$RUN_DIR"
echo "profile $PROFILE: SFT on ${SFT_MAX_TRAIN_SAMPLES:-all} prompts, preferences on ${PREF_MAX_TRAIN_SAMPLES:-all}," \
    "evaluation on ${EVAL_MAX_SAMPLES:-all} test prompts (seed $EVAL_SAMPLE_SEED, candidate scoring" \
    "$EVAL_SCORE_CANDIDATES, hints $HINTS); outputs in $RUN_DIR"

# What the results' title says of the data: LastFM's split by its negative draw, or the folder.
data_description() {
    if [[ $DATA_DIR != "$LASTFM_DIR" ]]; then
        echo "$DATA_DIR ($DOMAIN)"
    elif [[ $NEGATIVE_DRAW == llara ]]; then
        echo "LastFM, the S-DPO authors' split (candidate lists drawn from the true item: they give it away)"
    else
        echo "LastFM, clean split (the authors' histories and true items, negatives drawn independently of the true item)"
    fi
}

# Each stage records the settings it was made with (SETTINGS_FILE in its folder): the variables that
# decide what it computes, its own and those of the stages it is built on (how it is computed, as
# the size of a forward pass and the processes, is left out). Prints them, one NAME=value a line, for
# variables $@.
SETTINGS_FILE=reproduce_settings.txt
settings_of() {
    local name
    for name in "$@"; do
        printf '%s=%s\n' "$name" "${!name}"
    done
}
data_settings=$(settings_of MODEL_NAME DATA_DIR NEGATIVE_DRAW DOMAIN HINTS HINT_RECENCY)
# The size of a forward pass decides how a stage computes, not what (the effective batch does); each
# preference stage's loss and k are its own (below), whatever PREF_LOSS_TYPE and PREF_NEG_NUM say.
eval_settings=$(stage_settings EVAL BATCH_SIZE)
sft_settings=$data_settings$'\n'$(settings_of SEED)$'\n'$(stage_settings SFT BATCH_SIZE)
pref_settings=$sft_settings$'\n'$(stage_settings PREF BATCH_SIZE LOSS_TYPE NEG_NUM)
baseline_settings=$data_settings$'\n'$eval_settings$'\n'$(settings_of SEED)$'\n'$(stage_settings BASELINE)

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

# Trains a preference stage from the SFT adapter: name, script, loss type, rejected titles per prompt.
train_preference() {
    OUTPUT_DIR=$RUN_DIR/$1 ADAPTER=$RUN_DIR/sft PREF_LOSS_TYPE=$3 PREF_NEG_NUM=$4 bash "$2"
}

# Evaluates a stage (an adapter folder, or none for the base model) into RUN_DIR/stage/eval.
evaluate() {
    ADAPTER=$2 OUTPUT_DIR=$RUN_DIR/$1/eval bash inference.sh
}

# Scores a baseline (a rule without a model, or a sequential model trained on the training split and
# early-stopped on the validation split: trainer/baselines.py) on the test prompts the stages are
# evaluated on (EVAL_MAX_SAMPLES, EVAL_SAMPLE_SEED) into RUN_DIR/name/eval.
score_baseline() {
    local sample_flags=(--sample_seed "$EVAL_SAMPLE_SEED")
    if [[ -n $EVAL_MAX_SAMPLES ]]; then
        sample_flags+=(--max_samples "$EVAL_MAX_SAMPLES")
    fi
    stage_flags BASELINE
    python -m trainer.baselines --rule "$1" --train_file "$DATA_DIR/train.json" --valid_file "$DATA_DIR/valid.json" \
        --test_file "$DATA_DIR/test.json" --output_dir "$RUN_DIR/$1/eval" "${sample_flags[@]}" \
        --hint_recency "$HINT_RECENCY" --seed "$SEED" "${stage_flag_list[@]}"
}

run_stage audit "$RUN_DIR/audit/audit.json" "$data_settings" \
    python data/audit.py --data_dir "$DATA_DIR" --output_dir "$RUN_DIR/audit" --hint_recency "$HINT_RECENCY"
for rule in popularity transitions; do
    run_stage "$rule" "$RUN_DIR/$rule/eval/metrics.json" "$data_settings"$'\n'"$eval_settings" score_baseline "$rule"
done
for baseline in itemknn sasrec gru4rec; do
    run_stage "$baseline" "$RUN_DIR/$baseline/eval/metrics.json" "$baseline_settings" score_baseline "$baseline"
done
run_stage base "$RUN_DIR/base/eval/metrics.json" "$data_settings"$'\n'"$eval_settings" evaluate base ""
run_stage sft "$RUN_DIR/sft/train_results.json" "$sft_settings" env OUTPUT_DIR="$RUN_DIR/sft" bash sft.sh
for stage in dpo:dpo.sh:dpo:1 softmax_dpo:softmax_dpo.sh:sdpo:$negatives dmpo:softmax_dpo.sh:dmpo:$negatives; do
    IFS=: read -r name script loss k <<< "$stage"
    run_stage "$name" "$RUN_DIR/$name/train_results.json" "$pref_settings"$'\n'"PREF_LOSS_TYPE=$loss"$'\n'"PREF_NEG_NUM=$k" \
        train_preference "$name" "$script" "$loss" "$k"
done
for name in sft dpo softmax_dpo dmpo; do
    # An evaluation is made with its adapter's settings, as that stage recorded them, and its own.
    run_stage "$name/eval" "$RUN_DIR/$name/eval/metrics.json" "$(< "$RUN_DIR/$name/$SETTINGS_FILE")"$'\n'"$eval_settings" \
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
