"""Learning curves on a tiny random LLaMA: SFT with hints and checkpoints, each evaluated, then collected."""

import json
import os

import pytest

from inference import inference
from sft import sft
from trainer.curves import curves
from trainer.errors import InputError


def test_checkpoints_of_a_hinted_sft_run_become_a_learning_curve(tiny_model_dir, small_data_dir, tmp_path):
    train, valid = f"{small_data_dir}/train.json", f"{small_data_dir}/valid.json"
    run_dir = tmp_path / "sft"
    sft(model_name=tiny_model_dir, train_file=train, valid_file=valid, output_dir=str(run_dir), hint_file=train,
        max_steps=3, save_steps=1, batch_size=2, gradient_accumulation_steps=2, logging_steps=1)
    state = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())
    timed = [entry for entry in state["log_history"] if "elapsed_seconds" in entry]
    assert [entry["examples_seen"] for entry in timed] == [4, 8], "2 prompts x 2 accumulation per step"
    assert timed[0]["elapsed_seconds"] <= timed[1]["elapsed_seconds"]
    assert json.loads((run_dir / "run_config.json").read_text())["hint_file"] == train

    for folder in (run_dir / "checkpoint-1", run_dir / "checkpoint-2", run_dir):
        inference(model_name=tiny_model_dir, adapter=str(folder), test_file=valid, hint_file=train,
                  output_dir=str(folder / "eval_valid"), max_new_tokens=2)
    inference(model_name=tiny_model_dir, test_file=valid, hint_file=train, max_new_tokens=2,
              output_dir=str(tmp_path / "base" / "eval_valid"))
    curves(runs=f"hinted={run_dir}", starts=f"hinted={tmp_path / 'base'}", references=f"base={tmp_path / 'base'}",
           output_dir=str(tmp_path / "curves"))
    collected = json.loads((tmp_path / "curves" / "curves.json").read_text())
    points = collected["runs"]["hinted"]
    assert collected["references"] == {"base": points[0]["hit_ratio_at_1"]}
    # The base model at 0, checkpoints 1 and 2, then the final adapter (checkpoint-3 is not evaluated).
    assert [point["examples"] for point in points] == [0, 4, 8, 12]
    assert all(point["n"] == 4 and "ranking_hit_ratio_at_1" in point for point in points)
    # Every point on one clock: the final adapter's seconds are its run's last logged ones.
    final_state = json.loads((run_dir / "trainer_state.json").read_text())
    assert points[-1]["seconds"] == [entry for entry in final_state["log_history"] if "elapsed_seconds" in entry][-1][
        "elapsed_seconds"]
    assert points[1]["seconds"] <= points[2]["seconds"] <= points[3]["seconds"]
    table = (tmp_path / "curves" / "curves.md").read_text()
    assert "| hinted | 12 |" in table and "| base (no training) | | |" in table
    assert (tmp_path / "curves" / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert os.path.isfile(tmp_path / "base" / "eval_valid" / "predictions.jsonl")

    with pytest.raises(InputError, match="--runs: 'hinted' is not label=folder"):
        curves(runs="hinted", output_dir=str(tmp_path / "bad"))
    with pytest.raises(InputError, match=r"--starts: \['other'\] name no run"):
        curves(runs=f"hinted={run_dir}", starts=f"other={tmp_path}", output_dir=str(tmp_path / "bad"))
