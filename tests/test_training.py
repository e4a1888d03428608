"""What every training stage shares (trainer/training.py): the time budget and the data loader workers."""

import json
import types

import pytest
import torch
from safetensors.torch import load_file

from sft import sft
from softmax_dpo import softmax_dpo
from transformers import TrainerState

from trainer.preference_trainer import NegativeScoreBaseline
from trainer.training import LearningCurveCallback, dataloader_workers, finish_training_stage

STAGES = {"sft": sft, "softmax_dpo": softmax_dpo}


def stage_flags(stage: str, tiny_model_dir: str, small_data_dir: str, output_dir) -> dict:
    """Three optimizer steps of 4 prompts over the 12 training records, validation on 4."""
    flags = dict(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
                 valid_file=f"{small_data_dir}/valid.json", output_dir=str(output_dir), batch_size=4,
                 gradient_accumulation_steps=1, num_train_epochs=1, learning_rate=1e-2, warmup_ratio=0.0,
                 logging_steps=1, max_valid_samples=4)
    if stage == "softmax_dpo":
        flags |= dict(neg_num=3)
    return flags


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_time_budget_ends_training_after_the_step_that_crosses_it(stage, tiny_model_dir, small_data_dir, tmp_path):
    # Any step outlasts a nanosecond: the budget is crossed during the first of the three planned steps.
    output_dir = tmp_path / "out"
    STAGES[stage](**stage_flags(stage, tiny_model_dir, small_data_dir, output_dir), max_train_seconds=1e-9)
    results = json.loads((output_dir / "train_results.json").read_text())
    assert results["stopped_by_time_budget"] is True and results["max_train_seconds"] == 1e-9
    assert results["stopped_after_step"] == 1 and results["examples_trained"] == 4
    assert results["train_examples"] == 12, "the sample drawn is still reported whole"
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 1
    # The stopped run still validates and saves its adapter.
    assert "eval_loss" in results and load_file(output_dir / "adapter_model.safetensors")

    unhurried = tmp_path / "unhurried"
    STAGES[stage](**stage_flags(stage, tiny_model_dir, small_data_dir, unhurried), max_train_seconds=3600)
    results = json.loads((unhurried / "train_results.json").read_text())
    assert "stopped_by_time_budget" not in results
    assert json.loads((unhurried / "trainer_state.json").read_text())["global_step"] == 3


def test_data_loader_workers_give_the_same_training(tiny_model_dir, small_data_dir, tmp_path):
    """Batches built in worker processes are the batches built in the training process: same order,
    same negatives, same losses, same adapter."""
    logged, adapters = {}, {}
    for workers in (0, 2):
        output_dir = tmp_path / f"workers-{workers}"
        softmax_dpo(**stage_flags("softmax_dpo", tiny_model_dir, small_data_dir, output_dir)
                    | {"batch_size": 2, "dataloader_workers": workers})
        assert json.loads((output_dir / "run_config.json").read_text())["dataloader_workers"] == workers
        history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        logged[workers] = [(entry["loss"], entry["logps/chosen"]) for entry in history if "loss" in entry]
        adapters[workers] = load_file(output_dir / "adapter_model.safetensors")
    assert len(logged[0]) == 6 and logged[2] == pytest.approx(logged[0], abs=1e-6)
    assert adapters[2].keys() == adapters[0].keys()
    for name, tensor in adapters[0].items():
        torch.testing.assert_close(adapters[2][name], tensor)


def test_automatic_workers_only_where_a_gpu_computes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dataloader_workers(-1) == 0 and dataloader_workers(3) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dataloader_workers(-1) == 2 and dataloader_workers(0) == 0


def test_the_final_state_records_the_callbacks_last_states(tmp_path):
    """Trainer writes its stateful callbacks' states into trainer_state.json only when it saves a checkpoint; a
    run whose last step is not one would otherwise end with the states from when the trainer was built."""
    baseline, curve = NegativeScoreBaseline(decay=0.9), LearningCurveCallback()
    state = TrainerState(stateful_callbacks=[baseline, curve])  # taken now: no baseline yet
    baseline.baseline(torch.tensor([[-2.0, -4.0]]), update=True)
    curve.seconds_before = 12.5
    trainer = types.SimpleNamespace(state=state, callback_handler=types.SimpleNamespace(callbacks=[baseline, curve]),
                                    is_world_process_zero=lambda: True,
                                    save_state=lambda: state.save_to_json(str(tmp_path / "trainer_state.json")))
    finish_training_stage(trainer, str(tmp_path), {"train_loss": 1.0}, save_adapter=lambda: None)
    saved = json.loads((tmp_path / "trainer_state.json").read_text())["stateful_callbacks"]
    assert saved["NegativeScoreBaseline"]["attributes"]["value"] == -3.0
    assert saved["LearningCurveCallback"]["attributes"]["seconds_before"] >= 12.5
