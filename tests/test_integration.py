"""The stage scripts as a user runs them: sft.sh then inference.sh on the embedded model and LastFM."""

import json
import os
import subprocess
import tarfile

import pandas as pd
import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def run_script(script, env_overrides, *args):
    env = os.environ | env_overrides
    return subprocess.run(["bash", script, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def test_sft_then_softmax_dpo_then_inference_scripts_on_the_embedded_model(tmp_path):
    data_dir, sft_dir, sdpo_dir, eval_dir = (tmp_path / name for name in ("lastfm", "sft", "sdpo", "eval"))
    sft = run_script("sft.sh", {"DATA_DIR": str(data_dir), "OUTPUT_DIR": str(sft_dir), "SFT_MAX_TRAIN_SAMPLES": "8",
                                "SFT_MAX_VALID_SAMPLES": "4", "SFT_LORA_R": "4"}, "--max_steps", "2", "--logging_steps", "1")
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert {"train.json", "valid.json", "test.json"} <= set(os.listdir(data_dir)), "sft.sh prepares the data"
    assert os.path.isfile(sft_dir / "adapter_model.safetensors")
    state = json.loads((sft_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and any("loss" in entry for entry in state["log_history"])
    sft_config = json.loads((sft_dir / "run_config.json").read_text())
    assert (sft_config["lora_alpha"], sft_config["hint_recency"]) == (64, 0.5), "the cpu profile's settings"
    assert sft_config["lora_r"] == 4, "the environment overrides the profile's SFT_LORA_R=8"

    sdpo = run_script("softmax_dpo.sh", {"DATA_DIR": str(data_dir), "ADAPTER": str(sft_dir),
                                         "OUTPUT_DIR": str(sdpo_dir), "PREF_MAX_TRAIN_SAMPLES": "4",
                                         "PREF_MAX_VALID_SAMPLES": "2", "PREF_EFFECTIVE_BATCH_SIZE": "2",
                                         "PREF_BATCH_SIZE": "2"},
                      "--max_steps", "1")
    assert sdpo.returncode == 0, sdpo.stderr[-3000:]
    state = json.loads((sdpo_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and "logps/chosen" in state["log_history"][0]

    evaluation = run_script("inference.sh", {"DATA_DIR": str(data_dir), "ADAPTER": str(sdpo_dir),
                                             "OUTPUT_DIR": str(eval_dir), "EVAL_MAX_SAMPLES": "4"})
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["n"] == 4 and 0 <= metrics["hit_ratio_at_1"] <= metrics["valid_ratio"] <= 1
    assert json.loads((eval_dir / "run_config.json").read_text())["adapter"] == str(sdpo_dir)
    lines = (eval_dir / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4


@pytest.mark.parametrize("script, flag", [("sft.sh", "--learning_rate"), ("dpo.sh", "--neg_num"),
                                          ("softmax_dpo.sh", "--loss_type"), ("inference.sh", "--max_new_tokens"),
                                          ("reproduce.sh", "PREF_LEARNING_RATE")])
def test_stage_scripts_answer_help(script, flag):
    result = run_script(script, {}, "--help")
    assert result.returncode == 0
    assert "NUM_PROCESSES" in result.stdout and flag in result.stdout
    if script == "dpo.sh":
        assert result.stdout.startswith("Pairwise DPO"), "dpo.sh's own header comes first"


# The gpu profile through the device script (scripts/device.sh run), with two processes (gloo on this
# CPU) and the tiny model: the whole pipeline as a multi-GPU run takes it, each stage's prompts shared by
# the processes, then packed for the trip back from a GPU machine; the embedded model's stages are tested
# above.
SHORT_REPRODUCTION = {"PROFILE": "gpu", "NUM_PROCESSES": "2", "SFT_MAX_TRAIN_SAMPLES": "4",
                      "SFT_EFFECTIVE_BATCH_SIZE": "2", "SFT_BATCH_SIZE": "2", "SFT_MAX_VALID_SAMPLES": "2",
                      "PREF_MAX_TRAIN_SAMPLES": "2", "PREF_EFFECTIVE_BATCH_SIZE": "2", "PREF_BATCH_SIZE": "2",
                      "PREF_MAX_VALID_SAMPLES": "2", "EVAL_MAX_SAMPLES": "3", "EVAL_SCORE_CANDIDATES": "True",
                      "SFT_SELECT_BEST": "True", "SFT_EVAL_STEPS": "0.2", "PREF_SELECT_BEST": "True",
                      "PREF_EVAL_STEPS": "0.1",
                      # SFT's time budget ends it after the first of its two steps, on both processes alike.
                      "SFT_MAX_TRAIN_SECONDS": "0.001", "BASELINE_MAX_EPOCHS": "1"}
STAGES = ("base", "sft", "dpo", "softmax_dpo", "dmpo")
RULES = ("popularity", "transitions", "itemknn", "sasrec", "gru4rec")
PAIRS = ("sft - base", "dpo - sft", "softmax_dpo - dpo", "dmpo - dpo", "softmax_dpo - dmpo", "softmax_dpo - popularity",
         "softmax_dpo - transitions", "softmax_dpo - itemknn", "softmax_dpo - sasrec", "softmax_dpo - gru4rec",
         "sft - transitions", "dpo - transitions", "dmpo - transitions", "sft - sasrec", "dpo - sasrec", "dmpo - sasrec")


def test_device_run_reproduces_every_stage_with_two_processes_packs_them_then_skips_them(tiny_model_dir, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    env = SHORT_REPRODUCTION | {"RUN_DIR": str(run_dir), "DATA_DIR": str(tmp_path / "lastfm"),
                                "MODEL_NAME": tiny_model_dir, "OUT": str(out), "DEVICE_DIR": str(tmp_path / "device"),
                                "DEADLINE_SECONDS": "1800"}
    first = run_script("scripts/device.sh", env, "run")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "reproduce.sh ended with status 0" in (out / "run.log").read_text()
    assert (out / "results.md").read_text() == (run_dir / "results.md").read_text()
    with tarfile.open(out / "stages.tar.gz") as packed:
        names = set(packed.getnames())
    assert {f"./{stage}/eval/metrics.json" for stage in (*RULES, *STAGES)} <= names
    assert {f"./{stage}/train_results.json" for stage in STAGES[1:]} <= names
    assert not any(name.endswith(".safetensors") or "/checkpoint-" in name for name in names)
    with tarfile.open(out / "adapters.tar") as packed:
        assert set(packed.getnames()) == {f"{stage}/adapter_{kind}" for stage in ("sft", "softmax_dpo")
                                          for kind in ("model.safetensors", "config.json")}
    results = json.loads((run_dir / "results.json").read_text())
    assert [row["stage"] for row in results["stages"]] == [*RULES, *STAGES]
    assert all(row["evaluated_prompts"] == 3 for row in results["stages"])
    assert all(("ranking_mrr" in row) == (row["stage"] not in ("popularity", "transitions")) for row in results["stages"])
    assert "profile gpu, hints True (recency 0.5)" in results["title"]
    assert [" - ".join(pair["stages"]) for pair in results["paired_differences"]] == list(PAIRS)
    for stage in (*RULES, *STAGES):
        assert len((run_dir / stage / "eval" / "predictions.jsonl").read_text().splitlines()) == 3
    for stage in STAGES[1:]:
        assert (run_dir / stage / "adapter_model.safetensors").is_file()
        config = json.loads((run_dir / stage / "run_config.json").read_text())
        assert config["hint_file"].endswith("train.json") and config["select_best"] is True
        assert config["num_processes"] == 2 and config["effective_batch_size"] == 2
        assert "best_checkpoint_step" in json.loads((run_dir / stage / "train_results.json").read_text())
    assert json.loads((run_dir / "sft" / "run_config.json").read_text())["lora_alpha"] == 64, "the gpu profile's"
    sft_results = json.loads((run_dir / "sft" / "train_results.json").read_text())
    assert (sft_results["stopped_after_step"], sft_results["examples_trained"]) == (1, 2)
    assert json.loads((run_dir / "sft" / "trainer_state.json").read_text())["global_step"] == 1
    # Each preference stage trains its own loss and k (swapping two would pass every figure check above).
    for stage, loss, negatives in (("dpo", "dpo", 1), ("softmax_dpo", "sdpo", 3), ("dmpo", "dmpo", 3)):
        config = json.loads((run_dir / stage / "run_config.json").read_text())
        assert (config["loss_type"], config["neg_num"], config["adapter"]) == (loss, negatives, str(run_dir / "sft"))
        assert json.loads((run_dir / stage / "eval" / "run_config.json").read_text())["adapter"] == str(run_dir / stage)
    for stage in ("dpo", "softmax_dpo", "dmpo"):
        assert json.loads((run_dir / stage / "run_config.json").read_text())["max_train_seconds"] == 30
        assert "stopped_by_time_budget" not in json.loads((run_dir / stage / "train_results.json").read_text())
    assert json.loads((run_dir / "transitions" / "eval" / "run_config.json").read_text())["hint_recency"] == 0.5
    assert {json.loads((run_dir / stage / name / "run_config.json").read_text())["hint_recency"]
            for stage, name in (("sft", ""), ("softmax_dpo", ""), ("dmpo", "eval"))} == {0.5}
    table = (run_dir / "results.md").read_text()
    assert all(f"\n| {stage} | " in table for stage in (*RULES, *STAGES))
    assert all(f"\n| {pair} | " in table for pair in PAIRS)
    assert (run_dir / "results.png").read_bytes().startswith(b"\x89PNG")

    assert "Leak audit of" in table and "ok   candidate_list" in table
    assert results["audit"]["leaks"] == [], "the default LastFM split is the clean one"
    assert json.loads((tmp_path / "lastfm" / "run_config.json").read_text())["negative_draw"] == "independent"

    second = run_script("reproduce.sh", env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("complete, skipped") == 1 + 5 + 9, second.stdout
    assert "done in" not in second.stdout

    # Each evaluation records its adapter's settings and its own, each preference stage SFT's and its own: a
    # changed setting remakes the stages built on it.
    records = {stage: (run_dir / stage / "reproduce_settings.txt").read_text().splitlines()
               for stage in ("sft", "dpo", "dpo/eval", "sasrec")}
    assert records["dpo"][:len(records["sft"])] == records["sft"]
    assert records["dpo/eval"] == records["dpo"] + ["EVAL_MAX_SAMPLES=3", "EVAL_SAMPLE_SEED=0", "EVAL_SCORE_CANDIDATES=True"]
    assert {"PREF_LOSS_TYPE=dpo", "PREF_NEG_NUM=1", "SFT_LORA_ALPHA=64"} <= set(records["dpo"])
    assert not any(line.startswith(("SFT_BATCH_SIZE", "PREF_BATCH_SIZE")) for line in records["dpo"]), "how, not what"
    assert "BASELINE_MAX_EPOCHS=1" in records["sasrec"] and "EVAL_MAX_SAMPLES=3" in records["sasrec"]

    # Another baseline setting: the three baselines are made again (ItemKNN shares their record), the rest kept.
    third = run_script("reproduce.sh", env | {"BASELINE_MAX_EPOCHS": "2"})
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.count("made with other settings (BASELINE_MAX_EPOCHS: 1 then, 2 now); made again") == 3
    assert third.stdout.count("complete, skipped") == 1 + 2 + 1 + 4 + 4, third.stdout
    assert "BASELINE_MAX_EPOCHS=2" in (run_dir / "sasrec" / "reproduce_settings.txt").read_text()


def ensure_lastfm_data(data_dir, default_dir, negative_draw, source):
    """scripts/common.sh's ensure_lastfm_data on `data_dir`, with `default_dir` standing for data/lastfm."""
    command = (f'source scripts/common.sh; NEGATIVE_DRAW={negative_draw}; LASTFM_DIR="{default_dir}"; '
               f'LASTFM_SOURCE="{source}" ensure_lastfm_data "{data_dir}"')
    return subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_lastfm_data_is_converted_for_the_default_folder_never_over_a_folder_of_ones_own(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "id2name.txt").write_text("".join(f"{i}::Artist {i}\n" for i in range(30)))
    rows = [([i % 30, (i + 1) % 30, (i + 2) % 30, 30], 3, (i + 3) % 30) for i in range(40)]
    for name in ("train_data.df", "val_data.df", "test_data.df"):
        pd.DataFrame(rows, columns=["seq", "len_seq", "next"]).to_pickle(source / name)
    own = tmp_path / "own"
    own.mkdir()
    (own / "train.json").write_text("[]")  # a folder of one's own, without valid.json or test.json
    result = ensure_lastfm_data(own, tmp_path / "lastfm", "independent", source)
    assert result.returncode == 0 and result.stdout == "" and os.listdir(own) == ["train.json"]

    default = tmp_path / "lastfm"
    first = ensure_lastfm_data(default, default, "llara", source)
    assert first.returncode == 0, first.stderr
    assert json.loads((default / "run_config.json").read_text())["negative_draw"] == "llara"
    again = ensure_lastfm_data(default, default, "llara", source)
    assert again.stdout == "", "a folder holding the draw asked for is kept"
    switched = ensure_lastfm_data(default, default, "independent", source)
    assert "holds candidates drawn by NEGATIVE_DRAW=llara; converting it again" in switched.stdout
    assert json.loads((default / "run_config.json").read_text())["negative_draw"] == "independent"
    (default / "run_config.json").unlink()  # as an older conversion left it
    older = ensure_lastfm_data(default, default, "independent", source)
    assert "an older conversion, the authors' draw" in older.stdout
