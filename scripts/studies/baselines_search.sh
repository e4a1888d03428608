#!/usr/bin/env bash
# The validation search behind the defaults of the trained baselines (docs/baselines.md): SASRec and
# GRU4Rec at each setting below, trained on DATA_DIR/train.json and early-stopped on valid.json; the
# best epoch's validation HR@1 of each run is what the search compares. No test record is read: the
# scored file is the validation file itself (10 records, only so that the command has one).
#   bash scripts/studies/baselines_search.sh
#   python scripts/studies/baselines_search.py --output_dir output/baselines-search
#
#   DATA_DIR  the data folder (data/lastfm)
#   OUT       one folder per run: OUT/<model>-h<hidden>-d<dropout>-lr<rate>-s<seed> (output/baselines-search)
#   SEEDS     training seeds of every setting (42 7)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA_DIR=${DATA_DIR:-data/lastfm}
OUT=${OUT:-output/baselines-search}
SEEDS=${SEEDS:-42 7}
# hidden size, dropout, learning rate
SETTINGS=("64 0.2 0.001" "128 0.2 0.001" "64 0.5 0.001" "64 0.2 0.003" "32 0.2 0.001" "128 0.2 0.003" "64 0.5 0.003")
for model in sasrec gru4rec; do
    for setting in "${SETTINGS[@]}"; do
        read -r hidden dropout rate <<< "$setting"
        for seed in $SEEDS; do
            run=$OUT/$model-h$hidden-d$dropout-lr$rate-s$seed
            [[ -f $run/metrics.json ]] && continue
            python -m trainer.baselines --rule "$model" --train_file "$DATA_DIR/train.json" \
                --valid_file "$DATA_DIR/valid.json" --test_file "$DATA_DIR/valid.json" --max_samples 10 \
                --hidden_size "$hidden" --dropout "$dropout" --learning_rate "$rate" --seed "$seed" \
                --max_epochs 30 --patience 3 --output_dir "$run"
        done
    done
done
