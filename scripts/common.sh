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

# The profiles: configs/profiles/NAME.env, one `NAME=value  # why` a line (configs/profiles/README.md).
# A stage's settings are named after its flags: SFT_<FLAG> for sft.py, PREF_<FLAG> for dpo.py and
# softmax_dpo.py, EVAL_<FLAG> for inference.py, BASELINE_<FLAG> for trainer.baselines (stage_flags).
PROFILES_DIR=configs/profiles

# Sets each setting of profile $1 (a name in configs/profiles, or a file) that the environment leaves
# unset; one the environment sets, even to empty, is kept. The one reader of the profile files.
load_profile() {
    local file=$1
    if [[ ! -f $file ]]; then
        file=$PROFILES_DIR/$1.env
    fi
    if [[ ! -f $file ]]; then
        echo "error: PROFILE must name a file or one of: $(profile_names) ($PROFILES_DIR), got '$1'" >&2
        exit 2
    fi
    local line number=0 name
    while IFS= read -r line || [[ -n $line ]]; do
        number=$(( number + 1 ))
        line=${line%%#*}
        line=${line%"${line##*[![:space:]]}"}
        if [[ -z $line ]]; then
            continue
        fi
        if [[ ! $line =~ ^([A-Z][A-Z0-9_]*)=([^[:space:]]*)$ ]]; then
            echo "error: $file: line $number: expected NAME=value (no spaces in the value), got '$line'" >&2
            exit 2
        fi
        name=${BASH_REMATCH[1]}
        if [[ -z ${!name+set} ]]; then
            printf -v "$name" '%s' "${BASH_REMATCH[2]}"
        fi
    done < "$file"
}

# The profiles' names, from the files in configs/profiles.
profile_names() {
    local file names=()
    for file in "$PROFILES_DIR"/*.env; do
        names+=("$(basename "$file" .env)")
    done
    echo "${names[*]}"
}

# Prints the profiles side by side, a setting a line, in the order of the first profile's file.
profile_table() {
    local files=("$PROFILES_DIR"/cpu.env "$PROFILES_DIR"/gpu.env "$PROFILES_DIR"/paper.env)
    awk -F'=' '
        FNR == 1 { column++; header[column] = FILENAME; sub(/.*\//, "", header[column]); sub(/\.env$/, "", header[column]) }
        { sub(/#.*/, ""); gsub(/[ \t]+$/, "") }
        /^[A-Z][A-Z0-9_]*=/ { if (!($1 in seen)) { seen[$1] = 1; order[++names] = $1 } value[$1, column] = ($2 == "" ? "-" : $2) }
        END {
            printf "  %-27s", "setting"; for (c = 1; c <= column; c++) printf " %-12s", header[c]; print ""
            for (n = 1; n <= names; n++) {
                printf "  %-27s", order[n]; for (c = 1; c <= column; c++) printf " %-12s", value[order[n], c]; print ""
            }
        }' "${files[@]}"
}

# Old names of settings, each refused with its new one. A setting is named after its stage's flag
# (configs/profiles/README.md).
RENAMED_SETTINGS=(
    SFT_SAMPLES=SFT_MAX_TRAIN_SAMPLES SFT_EPOCHS=SFT_NUM_TRAIN_EPOCHS SFT_EFFECTIVE_BATCH=SFT_EFFECTIVE_BATCH_SIZE
    SFT_VALID_SAMPLES=SFT_MAX_VALID_SAMPLES SFT_MAX_SECONDS=SFT_MAX_TRAIN_SECONDS
    PREF_SAMPLES=PREF_MAX_TRAIN_SAMPLES PREF_EPOCHS=PREF_NUM_TRAIN_EPOCHS PREF_EFFECTIVE_BATCH=PREF_EFFECTIVE_BATCH_SIZE
    PREF_VALID_SAMPLES=PREF_MAX_VALID_SAMPLES PREF_MAX_SECONDS=PREF_MAX_TRAIN_SECONDS
    EVAL_SAMPLES=EVAL_MAX_SAMPLES SAMPLE_SEED=EVAL_SAMPLE_SEED SCORE_CANDIDATES=EVAL_SCORE_CANDIDATES
    SELECT_BEST="SFT_SELECT_BEST and PREF_SELECT_BEST" BETA=PREF_BETA NEG_NUM=PREF_NEG_NUM LOSS_TYPE=PREF_LOSS_TYPE
    NEGATIVES=PREF_NEGATIVES
    MAX_TRAIN_SAMPLES="SFT_MAX_TRAIN_SAMPLES or PREF_MAX_TRAIN_SAMPLES"
    MAX_VALID_SAMPLES="SFT_MAX_VALID_SAMPLES or PREF_MAX_VALID_SAMPLES"
    EPOCHS="SFT_NUM_TRAIN_EPOCHS or PREF_NUM_TRAIN_EPOCHS"
    EFFECTIVE_BATCH_SIZE="SFT_EFFECTIVE_BATCH_SIZE or PREF_EFFECTIVE_BATCH_SIZE"
    BATCH_SIZE="SFT_BATCH_SIZE, PREF_BATCH_SIZE or EVAL_BATCH_SIZE"
    LEARNING_RATE="SFT_LEARNING_RATE or PREF_LEARNING_RATE"
    MAX_TRAIN_SECONDS="SFT_MAX_TRAIN_SECONDS or PREF_MAX_TRAIN_SECONDS"
    LORA_DROPOUT=SFT_LORA_DROPOUT LORA_ALPHA=SFT_LORA_ALPHA MAX_SAMPLES=EVAL_MAX_SAMPLES
    GRAD_ACCUM="SFT_EFFECTIVE_BATCH_SIZE or PREF_EFFECTIVE_BATCH_SIZE (the accumulation follows from it)"
)

refuse_renamed_settings() {
    local renamed old
    for renamed in "${RENAMED_SETTINGS[@]}"; do
        old=${renamed%%=*}
        if [[ -n ${!old+set} ]]; then
            echo "error: $old is now called ${renamed#*=} (configs/profiles/README.md)" >&2
            exit 2
        fi
    done
}

# Sets the settings every stage script and reproduce.sh share, each kept where the environment sets
# it: PROFILE (cpu) and its settings, NUM_PROCESSES (1), MODEL_NAME (embedded-smollm2), NEGATIVE_DRAW
# (independent), DATA_DIR (data/lastfm; data/lastfm-llara for NEGATIVE_DRAW=llara).
set_shared_settings() {
    refuse_renamed_settings
    PROFILE=${PROFILE:-cpu}
    load_profile "$PROFILE"
    if [[ $HINTS != True && $HINTS != False ]]; then
        echo "error: HINTS must be True or False, got '$HINTS'" >&2
        exit 2
    fi
    NUM_PROCESSES=${NUM_PROCESSES:-1}
    MODEL_NAME=${MODEL_NAME:-embedded-smollm2}
    NEGATIVE_DRAW=${NEGATIVE_DRAW:-independent}
    case $NEGATIVE_DRAW in
        independent) LASTFM_DIR=data/lastfm ;;
        llara) LASTFM_DIR=data/lastfm-llara ;;
        *) echo "error: NEGATIVE_DRAW must be independent or llara, got '$NEGATIVE_DRAW'" >&2; exit 2 ;;
    esac
    DATA_DIR=${DATA_DIR:-$LASTFM_DIR}
}

# Sets stage_flag_list to the flags of stage prefix $1's settings: each shell variable $1_NAME (from
# the profile or the environment) becomes --name value, an empty one left out (the flag's default).
# With $2 = training, $1_BATCH_SIZE and $1_EFFECTIVE_BATCH_SIZE become --batch_size and
# --gradient_accumulation_steps (set_batch_layout).
stage_flags() {
    local prefix=$1 kind=${2:-} name setting
    stage_flag_list=()
    if [[ $kind == training ]]; then
        set_batch_layout "$prefix"
        stage_flag_list=(--batch_size "$layout_batch_size" --gradient_accumulation_steps "$layout_accumulation")
    fi
    for name in $(compgen -v "${prefix}_"); do
        setting=${name#"${prefix}_"}
        if [[ $kind == training && ( $setting == BATCH_SIZE || $setting == EFFECTIVE_BATCH_SIZE ) ]]; then
            continue
        fi
        if [[ -n ${!name} ]]; then
            stage_flag_list+=("--${setting,,}" "${!name}")
        fi
    done
}

# Prints NAME=value a line for the settings of stage prefix $1 but those named $2... (without the
# prefix): reproduce.sh's record of what decides a stage's outputs.
stage_settings() {
    local prefix=$1 name
    shift
    for name in $(compgen -v "${prefix}_"); do
        if [[ " $* " != *" ${name#"${prefix}_"} "* ]]; then
            printf '%s=%s\n' "$name" "${!name}"
        fi
    done
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
        recorded=$(recorded_setting "$data_dir" negative_draw)
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

# The flag $2 a data folder's run_config.json records (data/prepare.py writes it), or nothing.
recorded_setting() {
    local config=$1/run_config.json
    if [[ -f $config ]]; then
        python -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$config" "$2"
    fi
}

# Sets DOMAIN, the prompts' wording (music, movie, book or game), where the environment leaves it
# unset: the --domain DATA_DIR's converter recorded (data/prepare.py, data/prepare_log.py), else music.
set_domain() {
    if [[ -z ${DOMAIN:-} ]]; then
        DOMAIN=$(recorded_setting "$DATA_DIR" domain)
        DOMAIN=${DOMAIN:-music}
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

# Sets layout_batch_size and layout_accumulation so that one optimizer step of stage prefix $1 sees
# $1_EFFECTIVE_BATCH_SIZE prompts whatever NUM_PROCESSES is: each process takes its equal share, in
# forward passes of the largest size up to $1_BATCH_SIZE that divides the share, accumulated.
set_batch_layout() {
    local effective_name=$1_EFFECTIVE_BATCH_SIZE batch_name=$1_BATCH_SIZE
    local effective=${!effective_name} batch=${!batch_name}
    if [[ -n $(compgen -v "$1_GRADIENT_ACCUMULATION_STEPS") ]]; then
        echo "error: $1_GRADIENT_ACCUMULATION_STEPS follows from $effective_name, $batch_name and NUM_PROCESSES;" \
            "set $effective_name (prompts per optimizer step, all processes together) instead" >&2
        exit 2
    fi
    if [[ ! $effective =~ ^[0-9]+$ || ! $batch =~ ^[0-9]+$ ]] || (( effective < 1 || batch < 1 )); then
        echo "error: $effective_name and $batch_name must be whole numbers of prompts, at least 1; got" \
            "'$effective' and '$batch'" >&2
        exit 2
    fi
    if (( effective % NUM_PROCESSES != 0 )); then
        echo "error: $effective_name=$effective prompts per optimizer step cannot be shared" \
            "equally by NUM_PROCESSES=$NUM_PROCESSES processes: make it a multiple of $NUM_PROCESSES" >&2
        exit 2
    fi
    local share=$(( effective / NUM_PROCESSES ))
    local size=$(( batch < share ? batch : share ))
    while (( share % size != 0 )); do
        size=$(( size - 1 ))
    done
    layout_batch_size=$size
    layout_accumulation=$(( share / size ))
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

# Runs a training stage (sft.py, dpo.py or softmax_dpo.py): the settings every stage script shares
# (MODEL_NAME, DOMAIN, DATA_DIR, OUTPUT_DIR, SEED, the hints), then its settings (stage prefix $2: SFT or
# PREF), then the script's own flags and the user's, which come last and so override:
# launch_training_stage script prefix [flag ...]
launch_training_stage() {
    local python_script=$1 prefix=$2
    shift 2
    ensure_lastfm_data "$DATA_DIR"
    set_domain
    set_hint_flags
    stage_flags "$prefix" training
    launch "$python_script" \
        --model_name "$MODEL_NAME" \
        --domain "$DOMAIN" \
        --train_file "$DATA_DIR/train.json" \
        --valid_file "$DATA_DIR/valid.json" \
        --output_dir "$OUTPUT_DIR" \
        --seed "$SEED" \
        "${hint_flags[@]}" \
        "${stage_flag_list[@]}" \
        "$@"
}

# The body of a training stage script: with --help, its header and the Python script's flags; else
# the stage, into OUTPUT_DIR (default $3), a preference stage (prefix PREF) starting from ADAPTER
# (output/sft). run_training_script python_script prefix default_output_dir [flag ...]
run_training_script() {
    local python_script=$1 prefix=$2 default_output_dir=$3
    shift 3
    set_shared_settings
    OUTPUT_DIR=${OUTPUT_DIR:-$default_output_dir}
    if [[ ${1:-} == --help || ${1:-} == -h ]]; then
        show_help "$(basename "$0")" "$python_script"
        exit 0
    fi
    local adapter_flag=()
    if [[ $prefix == PREF ]]; then
        adapter_flag=(--adapter "${ADAPTER:-output/sft}")
    fi
    launch_training_stage "$python_script" "$prefix" "${adapter_flag[@]}" "$@"
}
