"""Nothing silently wrong (issue 30): a diverged run stops, a NaN model is not ranked, one run per folder,
checkpoints cut short are skipped, an evaluation's outputs appear whole, files follow the umask."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import transformers
from conftest import REPO_ROOT, lora_model
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from inference import inference
from sft import sft
from softmax_dpo import softmax_dpo
from trainer.baselines import rules
from trainer.errors import InputError, TrainingDiverged
from trainer.evaluation import NonFiniteScores
from trainer.modeling import base_model_fingerprint
from trainer.outputs import LOCK_FILE, write_json_atomically, write_jsonl_atomically
from trainer.prompts import PromptBuilder
from trainer.sft_trainer import AnswerOnlySFTTrainer


def sft_flags(tiny_model_dir, small_data_dir, **overrides) -> dict:
    return dict(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
                valid_file=f"{small_data_dir}/valid.json", batch_size=4, warmup_ratio=0.0,
                lr_scheduler_type="constant", logging_steps=1) | overrides


def assert_stopped_without_a_finished_adapter(output_dir, error: str, stage: str):
    assert error.startswith(f"{stage}: step ") and "not finite at learning rate" in error
    assert not os.path.exists(output_dir / "train_results.json")
    assert not os.path.exists(output_dir / "adapter_model.safetensors")
    for checkpoint in output_dir.glob("checkpoint-*"):  # the steps before the divergence, usable
        weights = load_file(checkpoint / "adapter_model.safetensors")
        assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_a_diverging_sft_run_stops_at_that_step(tiny_model_dir, small_data_dir, tmp_path):
    output_dir = tmp_path / "sft"
    with pytest.raises(TrainingDiverged) as raised:
        sft(output_dir=str(output_dir), max_steps=6, save_steps=1,
            **sft_flags(tiny_model_dir, small_data_dir, learning_rate=1e6))
    assert_stopped_without_a_finished_adapter(output_dir, str(raised.value), "SFT")
    step = int(str(raised.value).split("step ")[1].split(":")[0])
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in range(1, step)]


def test_a_diverging_preference_run_stops_at_that_step(tiny_model_dir, small_data_dir, tmp_path):
    sft_dir = tmp_path / "sft"
    lora_model(tiny_model_dir).save_pretrained(sft_dir)
    output_dir = tmp_path / "sdpo"
    with pytest.raises(TrainingDiverged) as raised:
        softmax_dpo(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json",
                    valid_file=f"{small_data_dir}/valid.json", output_dir=str(output_dir), adapter=str(sft_dir),
                    max_steps=6, batch_size=2, gradient_accumulation_steps=1, learning_rate=1e6, warmup_ratio=0.0,
                    lr_scheduler_type="constant", save_steps=1)
    assert_stopped_without_a_finished_adapter(output_dir, str(raised.value), "sdpo")


def test_a_diverged_run_is_one_line_and_exit_1(tmp_path):
    script = ("import sys; sys.argv = ['x']; from trainer.cli import run; from trainer.errors import TrainingDiverged\n"
              "def entry():\n    raise TrainingDiverged('SFT: step 3: the training loss not finite')\nrun(entry)")
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 1
    assert completed.stderr == "error: SFT: step 3: the training loss not finite\n"


def nan_adapter(tiny_model_dir, folder) -> str:
    lora_model(tiny_model_dir).save_pretrained(folder)
    weights = load_file(folder / "adapter_model.safetensors")
    save_file({name: torch.full_like(tensor, float("nan")) for name, tensor in weights.items()},
              folder / "adapter_model.safetensors")
    return str(folder)


def test_a_nan_model_is_refused_by_evaluation_and_leaves_no_outputs(tiny_model_dir, small_data_dir, tmp_path):
    """A NaN model used to rank the true item first on every prompt (ties in its favour): ranked HR@1 1.0."""
    output_dir = tmp_path / "eval"
    output_dir.mkdir()
    for name in ("predictions.jsonl", "metrics.json"):  # an earlier evaluation's outputs
        (output_dir / name).write_text("{}\n")
    with pytest.raises(NonFiniteScores, match=r"test.json: record 0: the model's log-probabilities of its "
                                              r"candidates are not finite .*adapter"):
        inference(model_name=tiny_model_dir, adapter=nan_adapter(tiny_model_dir, tmp_path / "nan"),
                  test_file=f"{small_data_dir}/test.json", output_dir=str(output_dir), max_new_tokens=2)
    assert sorted(os.listdir(output_dir)) == ["run.lock", "run_config.json"], "neither the old nor new outputs"


def run_rules(folder, **flags):
    return subprocess.run([sys.executable, "-m", "trainer.baselines", "--output_dir", str(folder), *[
        f"--{name}={value}" for name, value in flags.items()]], cwd=REPO_ROOT, capture_output=True, text=True)


def test_one_run_per_output_folder_and_a_dead_holder_is_taken_over(small_data_dir, tmp_path):
    output_dir = tmp_path / "out"
    data = {"train_file": f"{small_data_dir}/train.json", "test_file": f"{small_data_dir}/test.json"}
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.argv = ['first', '--flag']; from trainer.outputs import claimed_output_dir\n"
        f"with claimed_output_dir({str(output_dir)!r}):\n    print('held', flush=True); time.sleep(600)")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        second = run_rules(output_dir, **data)
        assert second.returncode == 2
        assert second.stderr.startswith(f"error: --output_dir {output_dir}: another run is writing into it "
                                        f"(process {holder.pid} on ")
        assert second.stderr.rstrip().endswith("first --flag); wait for it to end or choose another folder")
        assert not (output_dir / "metrics.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    taken_over = run_rules(output_dir, **data)
    assert taken_over.returncode == 0, taken_over.stderr
    assert f"taking over from a run that ended without releasing it (process {holder.pid}" in taken_over.stderr
    assert (output_dir / "metrics.json").is_file() and (output_dir / LOCK_FILE).read_text() == ""
    again = run_rules(output_dir, **data)
    assert again.returncode == 0 and "taking over" not in again.stderr, "a run that ended released it"


def test_a_refused_run_leaves_no_folder_behind(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        rules(output_dir=str(tmp_path / "out"), train_file=str(tmp_path / "missing.json"))
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_cut_short_is_removed_and_the_run_continues_from_the_one_before(tiny_model_dir, small_data_dir,
                                                                                     tmp_path, caplog):
    flags = sft_flags(tiny_model_dir, small_data_dir, learning_rate=1e-2, max_steps=3, save_steps=1,
                      max_valid_samples=0)
    run_dir = tmp_path / "sft"
    sft(output_dir=str(run_dir), **flags)
    whole = load_file(run_dir / "adapter_model.safetensors")
    # As a kill while checkpoint-2 was being written leaves the folder: checkpoint-2 with only its first file.
    for name in ("train_results.json", "adapter_model.safetensors", "checkpoint-3"):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in (run_dir / "checkpoint-2").iterdir():
        if path.name != "README.md":
            path.unlink()
    first_checkpoint = (run_dir / "checkpoint-1" / "trainer_state.json").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="training"):
        sft(output_dir=str(run_dir), **flags)
    assert f"{run_dir / 'checkpoint-2'}: incomplete (no readable trainer_state.json" in caplog.text
    # Continued from checkpoint-1, not restarted (a seeded restart would reach the same weights, but write it again).
    assert (run_dir / "checkpoint-1" / "trainer_state.json").stat().st_mtime_ns == first_checkpoint
    continued = load_file(run_dir / "adapter_model.safetensors")
    assert whole.keys() == continued.keys() and all(torch.equal(whole[name], continued[name]) for name in whole)
    assert (run_dir / "checkpoint-2" / "trainer_state.json").is_file(), "written again, whole"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_adapters_and_checkpoints_follow_the_umask(tiny_model_dir, small_data_dir, tmp_path, umask):
    previous = os.umask(umask)
    try:
        sft(output_dir=str(tmp_path / "sft"), max_steps=1, save_steps=1,
            **sft_flags(tiny_model_dir, small_data_dir, learning_rate=1e-2, max_valid_samples=0))
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for path in (tmp_path / "sft" / "adapter_model.safetensors",
                 tmp_path / "sft" / "checkpoint-1" / "adapter_model.safetensors",
                 tmp_path / "sft" / "train_results.json"):
        assert os.stat(path).st_mode & 0o777 == expected, path


@pytest.mark.parametrize("case", ["empty model folder", "train file is a folder", "hint file is a folder"])
def test_bad_paths_are_one_line_errors_naming_the_path(tiny_model_dir, small_data_dir, tmp_path, case):
    (tmp_path / "folder").mkdir()
    folder = str(tmp_path / "folder")
    flags = sft_flags(tiny_model_dir, small_data_dir, output_dir=str(tmp_path / "out"), max_steps=1)
    expected = {"empty model folder": (dict(model_name=folder), f"--model_name {folder}: no config.json"),
                "train file is a folder": (dict(train_file=folder), f"{folder}: a folder, not a data file"),
                "hint file is a folder": (dict(hint_file=folder), f"{folder}: a folder, not a data file")}
    overrides, message = expected[case]
    with pytest.raises(InputError, match=message):
        sft(**(flags | overrides))
    assert not (tmp_path / "out").exists()


def test_a_prompt_over_the_budget_names_the_file_and_record(tiny_model_dir, small_data_dir, tmp_path):
    with pytest.raises(InputError, match=rf"{small_data_dir}/train.json: record \d+: the prompt needs \d+ tokens"):
        sft(**sft_flags(tiny_model_dir, small_data_dir, output_dir=str(tmp_path / "out"), max_prompt_tokens=20))


def test_a_continued_run_reports_whole_run_figures(tiny_model_dir, small_data_dir, tmp_path, monkeypatch):
    """Killed after checkpoint-1 and continued: seconds and throughput cover both parts. (They restarted at 0:
    elapsed_seconds went backwards at the continuation and train_runtime covered only the last part.)"""
    flags = sft_flags(tiny_model_dir, small_data_dir, learning_rate=1e-2, max_steps=3, save_steps=1,
                      max_valid_samples=0, output_dir=str(tmp_path / "sft"))
    slow_loss = AnswerOnlySFTTrainer.compute_loss

    def compute_loss_slowly(self, *args, **kwargs):  # the first part's steps take at least a second each
        time.sleep(1.0)
        return slow_loss(self, *args, **kwargs)

    monkeypatch.setattr(AnswerOnlySFTTrainer, "compute_loss", compute_loss_slowly)
    sft(**flags)
    monkeypatch.undo()
    run_dir = tmp_path / "sft"
    saved = json.loads((run_dir / "checkpoint-1" / "trainer_state.json").read_text())
    before = saved["stateful_callbacks"]["LearningCurveCallback"]["attributes"]
    assert before["seconds_before"] >= 1.0 and before["train_seconds_before"] >= 1.0
    for name in ("train_results.json", "adapter_model.safetensors", "checkpoint-2", "checkpoint-3"):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    sft(**flags)  # continues from checkpoint-1, quickly
    elapsed = [entry["elapsed_seconds"] for entry in json.loads((run_dir / "trainer_state.json").read_text())[
        "log_history"] if "loss" in entry]
    assert len(elapsed) == 3 and elapsed == sorted(elapsed) and elapsed[1] >= before["seconds_before"] - 0.05
    results = json.loads((run_dir / "train_results.json").read_text())
    assert results["train_runtime"] >= before["train_seconds_before"]
    assert results["train_samples_per_second"] == pytest.approx(3 * 4 / results["train_runtime"], rel=1e-2)


def test_an_adapter_on_another_base_model_of_the_same_shape_is_refused(tiny_model_dir, small_data_dir, tmp_path):
    other = tmp_path / "other-base"
    torch.manual_seed(1)
    LlamaForCausalLM(AutoConfig.from_pretrained(tiny_model_dir)).save_pretrained(other)
    for name in os.listdir(tiny_model_dir):
        if name.startswith(("tokenizer", "special_tokens")) or name == "chat_template.jinja":
            shutil.copy(os.path.join(tiny_model_dir, name), other)
    adapter = tmp_path / "sft"
    sft(output_dir=str(adapter), max_steps=1, **sft_flags(tiny_model_dir, small_data_dir, learning_rate=1e-2,
                                                           max_valid_samples=0))
    recorded = json.loads((adapter / "run_config.json").read_text())["base_model_fingerprint"]
    evaluate = dict(adapter=str(adapter), test_file=f"{small_data_dir}/test.json", max_new_tokens=2, max_samples=2)
    with pytest.raises(InputError, match=rf"--adapter {adapter} was trained on the base model {tiny_model_dir} "
                                         rf"\(weights {recorded}\), this run loads {other} \(weights [0-9a-f]{{16}}\)"):
        inference(model_name=str(other), output_dir=str(tmp_path / "eval-other"), **evaluate)
    assert not (tmp_path / "eval-other").exists()
    with pytest.raises(InputError, match="was trained on the base model"):
        softmax_dpo(model_name=str(other), adapter=str(adapter), output_dir=str(tmp_path / "sdpo"), max_steps=1,
                    train_file=f"{small_data_dir}/train.json", valid_file=f"{small_data_dir}/valid.json")
    inference(model_name=str(other), output_dir=str(tmp_path / "eval-allowed"), allow_other_base_model=True, **evaluate)
    inference(model_name=tiny_model_dir, output_dir=str(tmp_path / "eval-same"), **evaluate)
    assert json.loads((tmp_path / "eval-same" / "run_config.json").read_text())["base_model_fingerprint"] == recorded


def test_the_fingerprint_is_the_same_for_the_same_weights_in_fp32_and_bf16(tiny_model_dir):
    fp32 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    bf16 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    assert base_model_fingerprint(fp32) == base_model_fingerprint(bf16) == base_model_fingerprint(
        lora_model(tiny_model_dir))


def test_json_outputs_refuse_nan_instead_of_writing_bare_nan(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_jsonl_atomically([{"candidate_logps": [float("nan")]}], str(tmp_path / "predictions.jsonl"))
    with pytest.raises(ValueError):
        write_json_atomically({"eval_loss": float("inf")}, str(tmp_path / "metrics.json"))
    assert os.listdir(tmp_path) == [], "nothing half-written either"


@pytest.mark.parametrize("stage", ["sft", "preference"])
def test_a_training_prompts_hint_leaves_its_own_record_out(tiny_model_dir, small_data_dir, tmp_path, monkeypatch,
                                                          stage):
    """Every made-up record is the only one whose history leads to its answer, so with its own record left out
    a training prompt's hint names nothing; a validation prompt (counted against the training file) does name
    it. (Break caught: the stages' hints built from the validation file, which turns leave-one-out off.)"""
    built = []
    build = PromptBuilder.build

    def recorded_build(self, record, index):
        prompt = build(self, record, index)
        built.append((self.source, record.target, prompt.split("most often listened to next: ")[1].split(". ")[0]))
        return prompt

    monkeypatch.setattr(PromptBuilder, "build", recorded_build)
    flags = dict(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json", max_steps=1,
                 valid_file=f"{small_data_dir}/valid.json", hint_file=f"{small_data_dir}/train.json",
                 output_dir=str(tmp_path / stage), batch_size=2)
    if stage == "sft":
        sft(**flags)
    else:
        lora_model(tiny_model_dir).save_pretrained(tmp_path / "adapter")
        softmax_dpo(adapter=str(tmp_path / "adapter"), gradient_accumulation_steps=1, **flags)
    training = [hint for source, _, hint in built if source == flags["train_file"]]
    validation = [(target, hint) for source, target, hint in built if source == flags["valid_file"]]
    assert len(training) == 12 and set(training) == {"none of them"}
    assert validation and all(hint == target for target, hint in validation)


@pytest.mark.parametrize("stage", ["sft", "preference"])
def test_select_best_keeps_the_best_of_four_in_the_middle(tiny_model_dir, small_data_dir, tmp_path, monkeypatch,
                                                         stage):
    """The validation losses are set by hand (2.0, 1.0, 1.5, 3.0 after steps 1 to 4), so the best is the second
    of four, neither first nor last, whatever the machine's arithmetic. (Breaks caught: keeping the first or the
    last checkpoint; the older tests' best was always the first of two, found by chaotic learning rates.)"""
    losses = {1: 2.0, 2: 1.0, 3: 1.5, 4: 3.0}
    evaluate = transformers.Trainer.evaluate

    measured = []  # the true validation loss of every evaluation, in order

    def evaluate_with_set_losses(self, *args, **kwargs):
        metrics = evaluate(self, *args, **kwargs)
        measured.append(metrics["eval_loss"])
        return metrics | {"eval_loss": losses[self.state.global_step]}

    monkeypatch.setattr(transformers.Trainer, "evaluate", evaluate_with_set_losses)
    output_dir = tmp_path / stage
    flags = dict(model_name=tiny_model_dir, train_file=f"{small_data_dir}/train.json", max_steps=4, eval_steps=1,
                 valid_file=f"{small_data_dir}/valid.json", output_dir=str(output_dir), batch_size=2,
                 select_best=True, learning_rate=0.05, warmup_ratio=0.0)
    if stage == "sft":
        sft(**flags)
    else:
        lora_model(tiny_model_dir).save_pretrained(tmp_path / "adapter")
        softmax_dpo(adapter=str(tmp_path / "adapter"), gradient_accumulation_steps=1, neg_num=2, **flags)
    results = json.loads((output_dir / "train_results.json").read_text())
    assert (results["best_checkpoint_step"], results["best_validation_loss"]) == (2, 1.0)
    assert len(measured) == 5 and measured[4] == pytest.approx(measured[1], rel=1e-5), \
        "the evaluation after training is of the kept weights, step 2's"
    kept, best = load_file(output_dir / "adapter_model.safetensors"), load_file(
        output_dir / "checkpoint-2" / "adapter_model.safetensors")
    assert kept.keys() == best.keys() and all(torch.equal(kept[name], best[name]) for name in kept)
    for other in (1, 3, 4):
        weights = load_file(output_dir / f"checkpoint-{other}" / "adapter_model.safetensors")
        assert any(not torch.equal(kept[name], weights[name]) for name in kept), f"checkpoint-{other} differs"
