#!/usr/bin/env bash
# SPRec's self-play rounds (Gao et al. 2025, "SPRec: Self-Play to Debias LLM-based Recommendation") as a
# recipe over the existing stages: from an SFT adapter, each round is a DPO run (dpo.sh, one rejected title
# per prompt) whose rejected title is the answer of the adapter it starts from, where that answer names a
# wrong candidate (--negatives self; a random other candidate where it is right or names none), and whose
# reference is that same adapter; the next round starts from its result. Each round draws its prompts with
# its own seed (SEED + round - 1) and is evaluated on the same seeded validation prompts with candidate
# scoring, so the rounds' curve is read without the test split. SPRec also repeats SFT in every round; this
# recipe keeps to the DPO half (run sft.sh between rounds for the rest).
#   ADAPTER=output/sft bash scripts/self_play.sh
#
#   ADAPTER        the adapter round 1 starts from (output/sft)
#   ROUNDS         how many rounds (3)
#   OUT            OUT/round-<r>/ holds each round's adapter, its logs and eval/ (output/self-play)
#   VALID_SAMPLES  validation prompts evaluated after each round, a sample seeded by 0 (200)
#   PROFILE, DATA_DIR, HINTS, SEED and the PREF_ and EVAL_ settings as for dpo.sh and inference.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
ADAPTER=${ADAPTER:-output/sft}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-output/self-play}
VALID_SAMPLES=${VALID_SAMPLES:-200}
set_shared_settings
if [[ ! -d $ADAPTER ]]; then
    echo "error: ADAPTER=$ADAPTER: no such folder; round 1 starts from an SFT adapter (bash sft.sh writes output/sft)" >&2
    exit 2
fi
start=$ADAPTER
for round in $(seq 1 "$ROUNDS"); do
    folder=$OUT/round-$round
    if [[ ! -f $folder/train_results.json ]]; then
        SEED=$(( SEED + round - 1 )) OUTPUT_DIR=$folder ADAPTER=$start PREF_NEGATIVES=self PREF_NEG_NUM=1 \
            PREF_LOSS_TYPE=dpo bash dpo.sh
    fi
    if [[ ! -f $folder/eval/metrics.json ]]; then
        ADAPTER=$folder OUTPUT_DIR=$folder/eval EVAL_MAX_SAMPLES=$VALID_SAMPLES EVAL_SAMPLE_SEED=0 \
            EVAL_SCORE_CANDIDATES=True bash inference.sh --test_file "$DATA_DIR/valid.json"
    fi
    start=$folder
done
echo "done: $OUT (each round's validation figures in round-<r>/eval/metrics.json)"
