# Shared by the stage scripts (sft.sh, dpo.sh, softmax_dpo.sh, inference.sh): sourced, not run.
# Expects the caller to have cd'ed to the repository root and set NUM_PROCESSES.

# Prints the calling script's header comment, then the Python script's own --help.
show_help() {
    local stage_script=$1 python_script=$2
    print_header "$stage_script"
    python "$python_script" --help
}

# Prints a script's header comment (from line 2 to its `set` line), then a blank line.
print_header() {
    sed -n '2,/^set /p' "$1" | sed '$d' | sed 's/^# \{0,1\}//'
    echo
}

# Sets every profile setting the environment leaves unset to the value of profile $1 (cpu, gpu or
# paper; `bash reproduce.sh --help` shows the table). reproduce.sh reads them all; sft.sh,
# softmax_dpo.sh and inference.sh take their defaults from their own stage's settings (PROFILE=cpu
# unless set), so a stage script run alone runs that stage of `bash reproduce.sh`. The one place
# these sizes are written.
set_profile_defaults() {
    local defaults
    case $1 in
        cpu) defaults=(256 1 3e-4 4 4 100 0 64 128 1 3e-4 8 2 32 500 16 False True False 0.5 0 0) ;;
        gpu) defaults=("" 1 3e-4 64 64 500 0 64 4096 1 3e-4 32 32 500 "" 64 True True False 0.5 120 30) ;;
        paper) defaults=("" 5 1e-5 128 4 500 0.1 32 "" 3 1e-5 128 4 500 "" 16 True False True 1 0 0) ;;
        *) echo "error: PROFILE must be cpu, gpu or paper, got '$1'" >&2; exit 2 ;;
    esac
    # `-` keeps a setting set to empty (all records); `:-` fills an empty one.
    SFT_SAMPLES=${SFT_SAMPLES-${defaults[0]}}
    SFT_EPOCHS=${SFT_EPOCHS:-${defaults[1]}}
    SFT_LEARNING_RATE=${SFT_LEARNING_RATE:-${defaults[2]}}
    SFT_EFFECTIVE_BATCH=${SFT_EFFECTIVE_BATCH:-${defaults[3]}}
    SFT_BATCH_SIZE=${SFT_BATCH_SIZE:-${defaults[4]}}
    SFT_VALID_SAMPLES=${SFT_VALID_SAMPLES:-${defaults[5]}}
    SFT_LORA_DROPOUT=${SFT_LORA_DROPOUT:-${defaults[6]}}
    SFT_LORA_ALPHA=${SFT_LORA_ALPHA:-${defaults[7]}}
    PREF_SAMPLES=${PREF_SAMPLES-${defaults[8]}}
    PREF_EPOCHS=${PREF_EPOCHS:-${defaults[9]}}
    PREF_LEARNING_RATE=${PREF_LEARNING_RATE:-${defaults[10]}}
    PREF_EFFECTIVE_BATCH=${PREF_EFFECTIVE_BATCH:-${defaults[11]}}
    PREF_BATCH_SIZE=${PREF_BATCH_SIZE:-${defaults[12]}}
    PREF_VALID_SAMPLES=${PREF_VALID_SAMPLES:-${defaults[13]}}
    EVAL_SAMPLES=${EVAL_SAMPLES-${defaults[14]}}
    EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-${defaults[15]}}
    SCORE_CANDIDATES=${SCORE_CANDIDATES:-${defaults[16]}}
    HINTS=${HINTS:-${defaults[17]}}
    SELECT_BEST=${SELECT_BEST:-${defaults[18]}}
    HINT_RECENCY=${HINT_RECENCY:-${defaults[19]}}
    SFT_MAX_SECONDS=${SFT_MAX_SECONDS:-${defaults[20]}}
    PREF_MAX_SECONDS=${PREF_MAX_SECONDS:-${defaults[21]}}
    local setting
    for setting in SCORE_CANDIDATES HINTS SELECT_BEST; do
        if [[ ${!setting} != True && ${!setting} != False ]]; then
            echo "error: $setting must be True or False, got '${!setting}'" >&2
            exit 2
        fi
    done
}

# Sets the settings every stage script and reproduce.sh share, each kept where the environment sets
# it: PROFILE (cpu) and its defaults, NUM_PROCESSES (1), MODEL_NAME (embedded-smollm2), NEGATIVE_DRAW
# (independent), DATA_DIR (data/lastfm; data/lastfm-llara for NEGATIVE_DRAW=llara) and SEED (42).
set_shared_settings() {
    PROFILE=${PROFILE:-cpu}
    set_profile_defaults "$PROFILE"
    NUM_PROCESSES=${NUM_PROCESSES:-1}
    MODEL_NAME=${MODEL_NAME:-embedded-smollm2}
    NEGATIVE_DRAW=${NEGATIVE_DRAW:-independent}
    case $NEGATIVE_DRAW in
        independent) LASTFM_DIR=data/lastfm ;;
        llara) LASTFM_DIR=data/lastfm-llara ;;
        *) echo "error: NEGATIVE_DRAW must be independent or llara, got '$NEGATIVE_DRAW'" >&2; exit 2 ;;
    esac
    DATA_DIR=${DATA_DIR:-$LASTFM_DIR}
    SEED=${SEED:-42}
}

# Sets the training settings sft.sh and softmax_dpo.sh share, each kept where the environment sets
# it, from the profile settings of stage $1 (SFT or PREF): MAX_TRAIN_SAMPLES ($1_SAMPLES),
# MAX_VALID_SAMPLES, EPOCHS, EFFECTIVE_BATCH_SIZE, BATCH_SIZE, LEARNING_RATE, MAX_TRAIN_SECONDS.
set_training_stage_settings() {
    local samples=$1_SAMPLES valid=$1_VALID_SAMPLES epochs=$1_EPOCHS effective=$1_EFFECTIVE_BATCH
    local batch=$1_BATCH_SIZE rate=$1_LEARNING_RATE seconds=$1_MAX_SECONDS
    MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES-${!samples}}
    MAX_VALID_SAMPLES=${MAX_VALID_SAMPLES:-${!valid}}
    EPOCHS=${EPOCHS:-${!epochs}}
    EFFECTIVE_BATCH_SIZE=${EFFECTIVE_BATCH_SIZE:-${!effective}}
    BATCH_SIZE=${BATCH_SIZE:-${!batch}}
    LEARNING_RATE=${LEARNING_RATE:-${!rate}}
    MAX_TRAIN_SECONDS=${MAX_TRAIN_SECONDS:-${!seconds}}
}

# Converts the LastFM data (LLaRA layout) into DATA_DIR once, the candidates drawn by NEGATIVE_DRAW
# (independent: whatever the true item; llara: the S-DPO authors' lists, which give it away); a later
# run reuses the JSON files. The source is LASTFM_SOURCE, by default data/lastfm-source (the split
# the S-DPO paper used, shipped as text). The default folder (data/lastfm or data/lastfm-llara) is
# converted again when its run_config.json records another draw or none (an older conversion, made
# with the authors' draw). A folder of your own holding any of the three files is used as it is.
ensure_lastfm_data() {
    local data_dir=$1
    if [[ $data_dir != "$LASTFM_DIR" ]]; then
        if [[ -e $data_dir/train.json || -e $data_dir/valid.json || -e $data_dir/test.json ]]; then
            return
        fi
    elif [[ -f $data_dir/train.json && -f $data_dir/valid.json && -f $data_dir/test.json ]]; then
        local recorded
        recorded=$(recorded_negative_draw "$data_dir")
        if [[ $recorded == "$NEGATIVE_DRAW" ]]; then
            return
        fi
        local earlier="NEGATIVE_DRAW=$recorded"
        if [[ -z $recorded ]]; then
            earlier="an older conversion, the authors' draw"
        fi
        echo "$data_dir holds candidates drawn by $earlier; converting it again with NEGATIVE_DRAW=$NEGATIVE_DRAW"
    fi
    local source=${LASTFM_SOURCE:-data/lastfm-source}
    echo "Preparing $data_dir from $source (NEGATIVE_DRAW=$NEGATIVE_DRAW)"
    python data/prepare.py --source "$source" --output_dir "$data_dir" --negative_draw "$NEGATIVE_DRAW"
}

# The --negative_draw a data folder's run_config.json records (data/prepare.py writes it), or nothing.
recorded_negative_draw() {
    local config=$1/run_config.json
    if [[ -f $config ]]; then
        python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("negative_draw", ""))' "$config"
    fi
}

# Starts a Python stage through accelerate launch with NUM_PROCESSES processes: one per GPU, or
# on a machine without one, processes sharing its CPUs and talking through gloo (trainer/cli.py
# tells accelerate so; on a CPU `accelerate launch` without --multi_gpu would start one process).
# ACCELERATE_CONFIG picks an accelerate configuration: a name from configs/accelerate/ (ddp, zero2,
# zero3, fsdp, multinode) or a file of your own; NUM_PROCESSES overrides its process count (all
# machines together), MACHINE_RANK its machine_rank.
# Precision is each script's own --dtype, so accelerate's mixed precision stays off here.
# accelerate gives each process one CPU thread unless told (it counts physical cores, 1 on this
# 2-vCPU machine), which runs a CPU stage at about half speed; the processes share the CPUs
# instead, or take OMP_NUM_THREADS threads each where that is set.
launch() {
    local threads=${OMP_NUM_THREADS:-$(( $(nproc) / NUM_PROCESSES ))}
    local layout=(--num_machines 1)
    if [[ -n ${ACCELERATE_CONFIG:-} ]]; then
        local config_file
        config_file=$(accelerate_config_file "$ACCELERATE_CONFIG")
        layout=(--config_file "$config_file")
        if [[ -n ${MACHINE_RANK:-} ]]; then
            layout+=(--machine_rank "$MACHINE_RANK")
        fi
    elif (( NUM_PROCESSES > 1 )); then
        layout+=(--multi_gpu)
    fi
    accelerate launch "${layout[@]}" --num_processes "$NUM_PROCESSES" --dynamo_backend no \
        --mixed_precision no --num_cpu_threads_per_process "$(( threads > 0 ? threads : 1 ))" "$@"
}

# The path of an accelerate configuration: a file, or a name from configs/accelerate/.
accelerate_config_file() {
    local config=$1
    if [[ -f $config ]]; then
        echo "$config"
    elif [[ -f configs/accelerate/$config.yaml ]]; then
        echo "configs/accelerate/$config.yaml"
    else
        echo "error: ACCELERATE_CONFIG=$config is neither a file nor one of:" \
            "$(cd configs/accelerate && ls -- *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
        exit 2
    fi
}

# Sets BATCH_SIZE and GRAD_ACCUM so that one optimizer step sees EFFECTIVE_BATCH_SIZE prompts
# whatever NUM_PROCESSES is: each process takes EFFECTIVE_BATCH_SIZE / NUM_PROCESSES of them, in
# forward passes of the largest size up to BATCH_SIZE that divides its share, accumulated.
set_batch_layout() {
    if [[ -n ${GRAD_ACCUM:-} ]]; then
        echo "error: GRAD_ACCUM follows from EFFECTIVE_BATCH_SIZE, BATCH_SIZE and NUM_PROCESSES;" \
            "set EFFECTIVE_BATCH_SIZE (prompts per optimizer step, all processes together) instead" >&2
        exit 2
    fi
    if (( EFFECTIVE_BATCH_SIZE < 1 || BATCH_SIZE < 1 || EFFECTIVE_BATCH_SIZE % NUM_PROCESSES != 0 )); then
        echo "error: EFFECTIVE_BATCH_SIZE=$EFFECTIVE_BATCH_SIZE prompts per optimizer step cannot be shared" \
            "equally by NUM_PROCESSES=$NUM_PROCESSES processes: make it a multiple of $NUM_PROCESSES" >&2
        exit 2
    fi
    local share=$(( EFFECTIVE_BATCH_SIZE / NUM_PROCESSES ))
    local size=$(( BATCH_SIZE < share ? BATCH_SIZE : share ))
    while (( share % size != 0 )); do
        size=$(( size - 1 ))
    done
    BATCH_SIZE=$size
    GRAD_ACCUM=$(( share / size ))
}

# Sets hint_flags from HINTS: with True, every prompt also names the candidates that other users
# with the same history titles chose next most often in DATA_DIR/train.json (trainer/collaborative.py),
# the history's titles weighted by HINT_RECENCY. A model trained with hints is evaluated with hints.
set_hint_flags() {
    hint_flags=()
    if [[ $HINTS == True ]]; then
        hint_flags=(--hint_file "$DATA_DIR/train.json" --hint_recency "$HINT_RECENCY")
    fi
}

# Runs a training stage (sft.py, dpo.py or softmax_dpo.py) with the settings every stage script
# defines (MODEL_NAME, DATA_DIR, OUTPUT_DIR, MAX_TRAIN_SAMPLES, MAX_VALID_SAMPLES, EPOCHS,
# EFFECTIVE_BATCH_SIZE, BATCH_SIZE, LEARNING_RATE, MAX_TRAIN_SECONDS, SEED, HINTS), then the stage's
# own flags and the user's, which come last and so override: launch_training_stage script [flag ...]
launch_training_stage() {
    local python_script=$1
    shift
    ensure_lastfm_data "$DATA_DIR"
    set_hint_flags
    set_batch_layout
    local sample_flag=()
    if [[ -n $MAX_TRAIN_SAMPLES ]]; then
        sample_flag=(--max_train_samples "$MAX_TRAIN_SAMPLES")
    fi
    launch "$python_script" \
        --model_name "$MODEL_NAME" \
        --train_file "$DATA_DIR/train.json" \
        --valid_file "$DATA_DIR/valid.json" \
        --output_dir "$OUTPUT_DIR" \
        "${sample_flag[@]}" \
        --max_valid_samples "$MAX_VALID_SAMPLES" \
        --num_train_epochs "$EPOCHS" \
        --batch_size "$BATCH_SIZE" \
        --gradient_accumulation_steps "$GRAD_ACCUM" \
        --learning_rate "$LEARNING_RATE" \
        --max_train_seconds "$MAX_TRAIN_SECONDS" \
        --seed "$SEED" \
        "${hint_flags[@]}" \
        "$@"
}
