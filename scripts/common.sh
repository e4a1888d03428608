# Shared by the stage scripts (sft.sh, dpo.sh, softmax_dpo.sh, inference.sh): sourced, not run.
# Expects the caller to have cd'ed to the repository root and set NUM_PROCESSES.

# Prints the calling script's header comment, then the Python script's own --help.
show_help() {
    local stage_script=$1 python_script=$2
    sed -n '2,/^set /p' "$stage_script" | sed '$d' | sed 's/^# \{0,1\}//'
    echo
    python "$python_script" --help
}

# Converts the LastFM data (LLaRA layout) into DATA_DIR once; a later run reuses the JSON files.
# The source is LASTFM_SOURCE, by default $SHARED_DATA_DIR/lastfm (SHARED_DATA_DIR: ../shared/data).
ensure_lastfm_data() {
    local data_dir=$1
    if [[ -f $data_dir/train.json && -f $data_dir/valid.json && -f $data_dir/test.json ]]; then
        return
    fi
    local source=${LASTFM_SOURCE:-${SHARED_DATA_DIR:-../shared/data}/lastfm}
    echo "Preparing $data_dir from $source"
    python data/prepare.py --source "$source" --output_dir "$data_dir"
}

# Starts a Python stage through accelerate, NUM_PROCESSES processes (one per GPU; 1 on a CPU).
# Precision is each script's own --dtype, so accelerate's mixed precision stays off here.
# accelerate gives each process one CPU thread unless told (it counts physical cores, 1 on this
# 2-vCPU machine), which runs a CPU stage at about half speed; the processes share the CPUs
# instead, or take OMP_NUM_THREADS threads each where that is set.
launch() {
    local threads=${OMP_NUM_THREADS:-$(( $(nproc) / NUM_PROCESSES ))}
    accelerate launch --num_processes "$NUM_PROCESSES" --num_machines 1 --dynamo_backend no \
        --mixed_precision no --num_cpu_threads_per_process "$(( threads > 0 ? threads : 1 ))" "$@"
}

# Sets hint_flags from HINTS: with True, every prompt also names the candidates that other users
# with the same history titles chose next most often in DATA_DIR/train.json (trainer/collaborative.py).
# A model trained with hints is evaluated with hints.
set_hint_flags() {
    case ${HINTS:-False} in
        True) hint_flags=(--hint_file "$DATA_DIR/train.json") ;;
        False) hint_flags=() ;;
        *) echo "error: HINTS must be True or False, got '$HINTS'" >&2; exit 2 ;;
    esac
}

# Runs a preference stage (dpo.py or softmax_dpo.py) with the settings its .sh script defined above
# (MODEL_NAME, SFT_ADAPTER, DATA_DIR, OUTPUT_DIR, LOSS_TYPE, NEG_NUM, NEGATIVES, BETA, MAX_TRAIN_SAMPLES, ...).
launch_preference_stage() {
    local python_script=$1
    shift
    ensure_lastfm_data "$DATA_DIR"
    set_hint_flags
    local sample_flag=()
    if [[ -n $MAX_TRAIN_SAMPLES ]]; then
        sample_flag=(--max_train_samples "$MAX_TRAIN_SAMPLES")
    fi
    launch "$python_script" \
        --model_name "$MODEL_NAME" \
        --sft_adapter "$SFT_ADAPTER" \
        --train_file "$DATA_DIR/train.json" \
        --valid_file "$DATA_DIR/valid.json" \
        --output_dir "$OUTPUT_DIR" \
        --loss_type "$LOSS_TYPE" \
        --neg_num "$NEG_NUM" \
        --negatives "$NEGATIVES" \
        --beta "$BETA" \
        "${sample_flag[@]}" \
        --max_valid_samples "$MAX_VALID_SAMPLES" \
        --num_train_epochs "$EPOCHS" \
        --batch_size "$BATCH_SIZE" \
        --gradient_accumulation_steps "$GRAD_ACCUM" \
        --learning_rate "$LEARNING_RATE" \
        --seed "$SEED" \
        "${hint_flags[@]}" \
        "$@"
}
