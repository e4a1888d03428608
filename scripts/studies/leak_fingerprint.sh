#!/usr/bin/env bash
# Gives the authors' candidate-list leak its best chance at CPU scale (docs/leak.md): text-only SFT for
# EPOCHS epochs at a high learning rate on the authors' records of the most frequent true items, a
# checkpoint every half epoch, each checkpoint (and the untrained model as step 0) scored on the
# fingerprint probes of scripts/studies/leak_fingerprint.py. Validation records only.
#   bash scripts/studies/leak_fingerprint.sh
#
#   AUTHORS_DIR  the authors' split (data/lastfm-llara)
#   CLEAN_DIR    the clean split (data/lastfm)
#   OUT          the study's folder (output/leak-fingerprint)
#   EPOCHS       passes over the training records (3)
#   LEARNING_RATE  SFT's peak learning rate (1e-3: on validation it learned more per prompt than 3e-4)
set -euo pipefail
cd "$(dirname "$0")/../.."
AUTHORS_DIR=${AUTHORS_DIR:-data/lastfm-llara}
CLEAN_DIR=${CLEAN_DIR:-data/lastfm}
OUT=${OUT:-output/leak-fingerprint}
EPOCHS=${EPOCHS:-3}
LEARNING_RATE=${LEARNING_RATE:-1e-3}
EFFECTIVE_BATCH_SIZE=4

python scripts/studies/leak_fingerprint.py build --authors_dir "$AUTHORS_DIR" --clean_dir "$CLEAN_DIR" \
    --output_dir "$OUT"
records=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["training_records"])' "$OUT/build.json")
half_epoch=$(( records / EFFECTIVE_BATCH_SIZE / 2 ))
if [[ ! -f $OUT/sft/train_results.json ]]; then
    # The cpu profile's SFT (LoRA alpha 64, no dropout, batches of 4), text-only prompts.
    python sft.py --train_file "$OUT/data/train.json" --valid_file "$OUT/data/valid.json" --output_dir "$OUT/sft" \
        --max_valid_samples 64 --num_train_epochs "$EPOCHS" --learning_rate "$LEARNING_RATE" \
        --batch_size "$EFFECTIVE_BATCH_SIZE" --lora_alpha 64 --lora_dropout 0 --save_steps "$half_epoch"
fi
for checkpoint in "" "$OUT"/sft/checkpoint-*; do
    name=$(basename "${checkpoint:-checkpoint-0}")
    for probe in authors clean; do
        eval_dir=$OUT/eval/$name/$probe
        [[ -f $eval_dir/metrics.json ]] && continue
        python inference.py ${checkpoint:+--adapter "$checkpoint"} --output_dir "$eval_dir" \
            --test_file "$OUT/probes/$probe.json" --score_candidates True
    done
done
python scripts/studies/leak_fingerprint.py analyse --output_dir "$OUT" --authors_dir "$AUTHORS_DIR"
