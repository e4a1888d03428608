"""configs/profiles and the shell side that reads them (scripts/common.sh): the format, the names and their flags."""

import glob
import inspect
import os
import re
import subprocess

import pytest
from conftest import REPO_ROOT

from dpo import dpo
from inference import inference
from sft import sft
from softmax_dpo import softmax_dpo
from trainer.baselines import rules

PROFILE_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "profiles", "*.env")))
STAGE_COMMANDS = {"SFT": (sft,), "PREF": (dpo, softmax_dpo), "EVAL": (inference,), "BASELINE": (rules,)}
BATCH_SETTINGS = ("EFFECTIVE_BATCH_SIZE", "BATCH_SIZE")  # the training stages' two that are not flags
SHARED_SETTINGS = {"HINTS", "HINT_RECENCY", "SEED"}
LINE = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>\S*)\s*(#.*)?$")


def profile_settings(path: str) -> dict[str, str]:
    """A profile file read by the format's rules, independently of scripts/common.sh."""
    settings = {}
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line and not line.startswith("#"):
            match = LINE.match(line)
            assert match, f"{path}: {line!r}"
            settings[match["name"]] = match["value"]
    return settings


def common(script: str, *arguments: str, **environment: str) -> subprocess.CompletedProcess:
    """Runs bash `script` after sourcing scripts/common.sh, in the repository, with only `environment` added."""
    keep = {name: os.environ[name] for name in ("PATH", "HOME", "PYTHONPATH") if name in os.environ}
    return subprocess.run(["bash", "-c", "source scripts/common.sh; " + script, "common", *arguments], cwd=REPO_ROOT,
                          env=keep | environment, capture_output=True, text=True)


def test_the_three_profiles_set_the_same_settings():
    names = {os.path.basename(path): list(profile_settings(path)) for path in PROFILE_FILES}
    assert set(names) == {"cpu.env", "gpu.env", "paper.env"}
    assert names["cpu.env"] == names["gpu.env"] == names["paper.env"]


@pytest.mark.parametrize("path", PROFILE_FILES, ids=os.path.basename)
def test_every_stage_setting_of_a_profile_is_a_flag_of_its_stage(path):
    """A profile line that names no flag (a typo, a flag renamed) would reach the stage as an unknown flag."""
    for name in profile_settings(path):
        if name in SHARED_SETTINGS:
            continue
        prefix, _, setting = name.partition("_")
        assert prefix in STAGE_COMMANDS, f"{name}: no stage has the prefix {prefix}_"
        if prefix in ("SFT", "PREF") and setting in BATCH_SETTINGS:
            continue
        for command in STAGE_COMMANDS[prefix]:
            assert setting.lower() in inspect.signature(command).parameters, f"{name}: {command.__name__} has no flag"


def test_the_shell_reads_a_profile_as_the_format_says(tmp_path):
    profile = tmp_path / "mine.env"
    profile.write_text("# a profile of one's own\n\nSFT_LEARNING_RATE=1e-3   # why\nEVAL_MAX_SAMPLES=\n"
                       "SFT_NUM_TRAIN_EPOCHS=2\nSEED=7\n")
    shown = 'load_profile "$1"; echo "$SFT_LEARNING_RATE|$EVAL_MAX_SAMPLES|$SFT_NUM_TRAIN_EPOCHS|$SEED"'
    assert common(shown, str(profile)).stdout == "1e-3||2|7\n"
    # The environment wins, setting by setting, and a setting it empties stays empty.
    overridden = common(shown, str(profile), SFT_LEARNING_RATE="5e-5", SFT_NUM_TRAIN_EPOCHS="")
    assert overridden.stdout == "5e-5|||7\n"
    assert common('load_profile cpu; echo "$SFT_MAX_TRAIN_SAMPLES"').stdout == "256\n"


@pytest.mark.parametrize("line", ["SFT_LEARNING_RATE = 1e-3", "sft_learning_rate=1e-3", "SFT_LEARNING_RATE=1e-3 2e-3",
                                  "just words"])
def test_a_profile_line_out_of_format_names_the_file_and_line(tmp_path, line):
    profile = tmp_path / "bad.env"
    profile.write_text(f"SEED=1\n# a comment\n{line}\n")
    completed = common('load_profile "$1"; echo loaded', str(profile))
    assert completed.returncode == 2 and "loaded" not in completed.stdout
    assert f"{profile}: line 3: expected NAME=value" in completed.stderr


def test_an_unknown_profile_lists_the_known_ones():
    completed = common("load_profile laptop")
    assert completed.returncode == 2
    assert "PROFILE must name a file or one of: cpu gpu paper" in completed.stderr


def test_stage_settings_become_flags_and_the_batches_a_layout():
    script = ('SFT_LEARNING_RATE=3e-4 SFT_MAX_TRAIN_SAMPLES= SFT_EFFECTIVE_BATCH_SIZE=8 SFT_BATCH_SIZE=4 '
              'SFT_SELECT_BEST=True NUM_PROCESSES=1; stage_flags SFT training; echo "${stage_flag_list[*]}"')
    assert common(script).stdout.split() == ["--batch_size", "4", "--gradient_accumulation_steps", "2",
                                             "--learning_rate", "3e-4", "--select_best", "True"]
    evaluation = 'EVAL_BATCH_SIZE=16 EVAL_MAX_SAMPLES=500; stage_flags EVAL; echo "${stage_flag_list[*]}"'
    assert common(evaluation).stdout.split() == ["--batch_size", "16", "--max_samples", "500"]


@pytest.mark.parametrize("old, new", [("SFT_SAMPLES", "SFT_MAX_TRAIN_SAMPLES"), ("SAMPLE_SEED", "EVAL_SAMPLE_SEED"),
                                      ("LEARNING_RATE", "SFT_LEARNING_RATE or PREF_LEARNING_RATE"),
                                      ("GRAD_ACCUM", "SFT_EFFECTIVE_BATCH_SIZE or PREF_EFFECTIVE_BATCH_SIZE")])
def test_an_old_setting_name_is_refused_with_its_new_one(old, new):
    completed = common("set_shared_settings; echo set", **{old: "1"})
    assert completed.returncode == 2 and "set" not in completed.stdout
    assert f"error: {old} is now called {new}" in completed.stderr


def test_the_settings_record_leaves_out_what_only_decides_how():
    script = 'SFT_BATCH_SIZE=4 SFT_LEARNING_RATE=3e-4 SFT_EFFECTIVE_BATCH_SIZE=8; stage_settings SFT BATCH_SIZE'
    assert common(script).stdout.splitlines() == ["SFT_EFFECTIVE_BATCH_SIZE=8", "SFT_LEARNING_RATE=3e-4"]


def test_the_domain_is_the_one_the_data_records_unless_set(tmp_path):
    (tmp_path / "movies").mkdir()
    (tmp_path / "movies" / "run_config.json").write_text('{"domain": "movie", "negative_draw": "independent"}')
    shown = 'DATA_DIR="$1"; set_domain; echo "$DOMAIN"'
    assert common(shown, str(tmp_path / "movies")).stdout == "movie\n"
    assert common(shown, str(tmp_path / "movies"), DOMAIN="book").stdout == "book\n"
    assert common(shown, str(tmp_path / "nothing recorded")).stdout == "music\n"
