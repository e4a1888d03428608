# Shared by the stage scripts (sft.sh, inference.sh, ...): sourced, not run.
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
launch() {
    accelerate launch --num_processes "$NUM_PROCESSES" --num_machines 1 --dynamo_backend no \
        --mixed_precision no "$@"
}
