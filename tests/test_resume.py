"""A stage killed (SIGKILL) midway: run again, it continues to the same adapter; meanwhile its folder never passes for complete."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import REPO_ROOT, lora_model
from safetensors.torch import load_file

from inference import inference
from sft import sft
from softmax_dpo import softmax_dpo
from trainer.errors import InputError
from trainer.preference_stage import check_start_adapter
from trainer.training import GuardedTraining

# Runs an entry script with a callback that kills the process with SIGKILL at the end of step
# KILL_AT_STEP: after that step's update, before anything of it is saved.
KILLER = """
import os, runpy, signal, sys
from transformers import trainer_callback

class KillAtStep(trainer_callback.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)

original_init = trainer_callback.CallbackHandler.__init__

def init_with_killer(self, callbacks, *args, **kwargs):
    original_init(self, [*callbacks, KillAtStep()], *args, **kwargs)

trainer_callback.CallbackHandler.__init__ = init_with_killer
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# Runs an entry script that is killed with SIGKILL while it writes the checkpoint of step KILL_AT_STEP:
# after the adapter and optimizer files, before the random states and trainer_state.json.
KILLER_WHILE_SAVING = """
import os, runpy, signal, sys
import transformers

original_save_rng_state = transformers.Trainer._save_rng_state

def save_rng_state_then_die(self, output_dir):
    if self.state.global_step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    original_save_rng_state(self, output_dir)

transformers.Trainer._save_rng_state = save_rng_state_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# Tolerance on the final LoRA weights: the resumed run repeats the same float operations.
WEIGHT_TOLERANCE = 1e-6


def killed_at(step: int, script: str, flags: dict, output_dir, killer: str = KILLER) -> None:
    arguments = [f"--{name}={value}" for name, value in flags.items()] + [f"--output_dir={output_dir}"]
    completed = subprocess.run([sys.executable, "-c", killer, script, *arguments], cwd=REPO_ROOT,
                               env=os.environ | {"KILL_AT_STEP": str(step)}, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == -9, completed.stderr[-3000:]


def assert_killed_after_the_first_checkpoint(output_dir):
    checkpoints = sorted(name for name in os.listdir(output_dir) if name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-2"] and (output_dir / "run_config.json").is_file()
    assert not (output_dir / "adapter_model.safetensors").exists()
    assert not (output_dir / "train_results.json").exists(), "a killed stage must not look complete"


def assert_same_adapter(first, second):
    first_weights = load_file(first / "adapter_model.safetensors")
    second_weights = load_file(second / "adapter_model.safetensors")
    assert first_weights.keys() == second_weights.keys()
    for name in first_weights:
        torch.testing.assert_close(first_weights[name], second_weights[name], atol=WEIGHT_TOLERANCE, rtol=0)


def killed_and_continued(train, script: str, flags: dict, tmp_path, monkeypatch):
    """Trains uninterrupted, then kills the same run at step 3 and runs it again: the adapters must be equal,
    and the second run must have trained only the steps after checkpoint-2 (a seeded run restarted from
    scratch reaches the same adapter, so the step count is what shows the continuation). Returns the folder
    of the killed and continued run."""
    train(output_dir=str(tmp_path / "whole"), **flags)
    killed = tmp_path / "killed"
    killed_at(3, script, flags, killed)
    assert_killed_after_the_first_checkpoint(killed)
    forward_passes = []
    training_step = GuardedTraining.training_step

    def counted_training_step(self, *args, **kwargs):
        forward_passes.append(self.state.global_step)
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(GuardedTraining, "training_step", counted_training_step)
    train(output_dir=str(killed), **flags)
    monkeypatch.undo()
    accumulation = flags.get("gradient_accumulation_steps", 1)
    assert len(forward_passes) == (flags["max_steps"] - 2) * accumulation and forward_passes[0] == 2
    assert_same_adapter(tmp_path / "whole", killed)
    return killed


def test_sft_killed_between_checkpoints_continues_to_the_same_adapter(tiny_model_dir, small_data_dir, tmp_path,
                                                                      monkeypatch):
    # Dropout on, so the restored random state matters; checkpoints at steps 2 and 4 of 6.
    flags = dict(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
                 valid_file=f"{small_data_dir}/valid.json", max_valid_samples=2, batch_size=2, max_steps=6,
                 save_steps=2, learning_rate=0.01, lora_dropout=0.1, seed=3)
    killed = killed_and_continued(sft, "sft.py", flags, tmp_path, monkeypatch)
    state = json.loads((killed / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    config = json.loads((killed / "run_config.json").read_text())
    assert config["num_processes"] == 1
    assert config["effective_batch_size"] == 2 * config["gradient_accumulation_steps"]
    # Different flags never continue someone else's checkpoints.
    with pytest.raises(InputError, match=r"holds checkpoint-6 of a run with other flags \(learning_rate: 0.01 then, "
                                         r"0.02 now\)"):
        sft(output_dir=str(killed), **(flags | {"learning_rate": 0.02}))


def test_sft_killed_while_writing_a_checkpoint_continues_from_the_one_before(tiny_model_dir, small_data_dir,
                                                                             tmp_path, caplog):
    """Killed inside the checkpoint of step 4 (its adapter and optimizer written, not its trainer state): the rerun
    used to fail on that folder until it was removed by hand; now it drops it and continues from checkpoint-2."""
    flags = dict(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
                 valid_file=f"{small_data_dir}/valid.json", max_valid_samples=2, batch_size=2, max_steps=6,
                 save_steps=2, learning_rate=0.01, lora_dropout=0.1, seed=3)
    sft(output_dir=str(tmp_path / "whole"), **flags)
    killed = tmp_path / "killed"
    killed_at(4, "sft.py", flags, killed, KILLER_WHILE_SAVING)
    cut_short = killed / "checkpoint-4"
    assert (cut_short / "adapter_model.safetensors").is_file() and not (cut_short / "trainer_state.json").exists()
    second_checkpoint = (killed / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns
    with caplog.at_level("WARNING", logger="training"):
        sft(output_dir=str(killed), **flags)
    assert f"{cut_short}: incomplete" in caplog.text
    assert (killed / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns == second_checkpoint, "continued"
    assert_same_adapter(tmp_path / "whole", killed)


def test_preference_stage_killed_between_checkpoints_continues_to_the_same_adapter(tiny_model_dir, small_data_dir,
                                                                                  tmp_path, monkeypatch):
    # From an SFT adapter, which is also the frozen reference: the checkpoint must restore the trained copy only.
    sft_dir = tmp_path / "sft"
    lora_model(tiny_model_dir).save_pretrained(sft_dir)
    flags = dict(model_name=tiny_model_dir, adapter=str(sft_dir), train_file=f"{small_data_dir}/train.json",
                 valid_file=f"{small_data_dir}/valid.json", max_valid_samples=2, batch_size=2,
                 gradient_accumulation_steps=1, max_steps=5, save_steps=2, learning_rate=0.01, neg_num=3, seed=3)
    killed_and_continued(softmax_dpo, "softmax_dpo.py", flags, tmp_path, monkeypatch)


def test_checkpoints_without_their_flags_are_not_continued(tiny_model_dir, small_data_dir, tmp_path):
    (tmp_path / "out" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(InputError, match="holds checkpoint-3 but no run_config.json"):
        sft(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
            valid_file=f"{small_data_dir}/valid.json", output_dir=str(tmp_path / "out"), max_steps=1)


def fail_when_training_starts(*args, **kwargs):
    raise RuntimeError("killed")


@pytest.mark.parametrize("stage", ["sft", "preference"])
def test_a_run_killed_in_the_folder_of_a_finished_one_leaves_it_incomplete(stage, tiny_model_dir, small_data_dir,
                                                                           tmp_path, monkeypatch):
    # reproduce.sh takes train_results.json, written last, as the mark of a finished stage.
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "train_results.json").write_text('{"train_loss": 0.1}')
    monkeypatch.setattr(transformers.Trainer, "train", fail_when_training_starts)
    flags = dict(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json", max_steps=1,
                 valid_file=f"{small_data_dir}/valid.json", output_dir=str(output_dir), learning_rate=0.03)
    with pytest.raises(RuntimeError, match="killed"):
        sft(**flags) if stage == "sft" else softmax_dpo(neg_num=2, **flags)
    assert not (output_dir / "train_results.json").exists()
    assert json.loads((output_dir / "run_config.json").read_text())["learning_rate"] == 0.03


def test_an_evaluation_killed_in_the_folder_of_a_finished_one_leaves_no_metrics(tiny_model_dir, small_data_dir,
                                                                                tmp_path, monkeypatch):
    output_dir = tmp_path / "eval"
    output_dir.mkdir()
    (output_dir / "metrics.json").write_text('{"hit_ratio_at_1": 0.9}')
    monkeypatch.setattr("inference.answer_and_score_shared", fail_when_training_starts)
    with pytest.raises(RuntimeError, match="killed"):
        inference(test_file=f"{small_data_dir}/test.json", output_dir=str(output_dir), model_name=tiny_model_dir,
                  max_samples=2)
    assert not (output_dir / "metrics.json").exists()
    assert (output_dir / "run_config.json").exists()


def test_an_adapter_the_preference_run_would_misread_or_overwrite_is_refused(tmp_path):
    def adapter(folder, trainer_state=False, reference=False):
        (folder / "ref" if reference else folder).mkdir(parents=True)
        for inner in ([folder, folder / "ref"] if reference else [folder]):
            (inner / "adapter_config.json").write_text("{}")
        if trainer_state:
            (folder / "trainer_state.json").write_text("{}")
        return str(folder)

    output_dir = str(tmp_path / "out")
    cases = [
        (str(tmp_path / "empty"), "not a LoRA adapter folder"),
        (adapter(tmp_path / "out" / "checkpoint-4", trainer_state=True, reference=True),
         "lies in --output_dir .*, which this run overwrites; to continue a killed run, run its command again"),
        (adapter(tmp_path / "old" / "checkpoint-4", trainer_state=True, reference=True),
         "a checkpoint of a preference run, not an adapter to start from"),
    ]
    for path, message in cases:
        separator = " " if "lies" in message else ": "
        with pytest.raises(InputError, match=f"^--adapter '{re.escape(path)}'{separator}{message}"):
            softmax_dpo(output_dir=output_dir, adapter=path)
    # An SFT checkpoint (no reference adapter inside) is an adapter to start from.
    check_start_adapter(adapter(tmp_path / "sft" / "checkpoint-4", trainer_state=True), output_dir)
    assert sorted(os.listdir(tmp_path / "out")) == ["checkpoint-4"], "nothing written"
