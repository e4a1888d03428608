"""Several processes on this CPU (gloo), started by the stage scripts as a user starts them.

Two processes with accumulation a must train exactly as one process with accumulation 2a (the same
prompts in every optimizer step, the same losses and weights), and evaluate exactly as one. The
one-process references run inside the test process (the same entry functions, the flags the
scripts resolve to), which saves a Python start-up each. LoRA dropout is off: with it, each process
draws its own dropout masks, equal only in distribution.
"""

import json
import multiprocessing
import os
import subprocess
import time

import pytest
import torch.distributed
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from conftest import REPO_ROOT, make_record, write_records
from safetensors.torch import load_file
from transformers.models.llama import modeling_llama

from inference import inference
from sft import sft
from softmax_dpo import softmax_dpo
from trainer.cli import end_process_group

CONFIG_FOLDER = os.path.join(REPO_ROOT, "configs", "accelerate")
# Same sums in another order, and gloo's all-reduce: float32 rounding, nothing more.
WEIGHT_TOLERANCE = 1e-5


def run_stage(script: str, processes: int, settings: dict, *flags: str) -> subprocess.CompletedProcess:
    env = os.environ | {"NUM_PROCESSES": str(processes)} | settings
    completed = subprocess.run(["bash", script, *flags], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def logged(output_dir, key: str) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry[key] for entry in state["log_history"] if key in entry]


def adapter_difference(first, second) -> float:
    """The largest absolute difference between two saved adapters' weights."""
    weights = [load_file(folder / "adapter_model.safetensors") for folder in (first, second)]
    assert weights[0].keys() == weights[1].keys()
    return max((weights[0][name] - weights[1][name]).abs().max().item() for name in weights[0])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """120 training records: more than one length group of the sampler (50 x a process's step share)."""
    folder = tmp_path_factory.mktemp("distributed-data")
    for split, count in (("train", 120), ("valid", 4), ("test", 7)):
        write_records(folder / f"{split}.json", [make_record(index) for index in range(count)])
    return folder


@pytest.fixture(scope="module")
def sft_runs(tiny_model_dir, data_dir, tmp_path_factory):
    """SFT with 1 process x accumulation 4 and with 2 processes (sft.sh, the ddp configuration) x 2."""
    folder = tmp_path_factory.mktemp("distributed-sft")
    runs = {processes: folder / f"processes-{processes}" for processes in (1, 2)}
    # sft.sh passes its profile's LoRA alpha; the same one here, so the two runs train the same adapter.
    training = {"max_steps": 3, "logging_steps": 1, "learning_rate": 1e-2, "lora_dropout": 0, "lora_alpha": 64}
    sft(model_name=tiny_model_dir, train_file=str(data_dir / "train.json"), valid_file=str(data_dir / "valid.json"),
        output_dir=str(runs[1]), max_valid_samples=4, batch_size=1, gradient_accumulation_steps=4, **training)
    run_stage("sft.sh", 2, {"MODEL_NAME": tiny_model_dir, "DATA_DIR": str(data_dir), "OUTPUT_DIR": str(runs[2]),
                            "SFT_MAX_TRAIN_SAMPLES": "", "SFT_MAX_VALID_SAMPLES": "4", "SFT_EFFECTIVE_BATCH_SIZE": "4",
                            "SFT_BATCH_SIZE": "1", "ACCELERATE_CONFIG": "ddp", "HINTS": "False"},
              *(f"--{name}={value}" for name, value in training.items()))
    return runs


def test_two_processes_train_sft_as_one_process_with_twice_the_accumulation(sft_runs):
    one, two = sft_runs[1], sft_runs[2]
    layout = {name: json.loads((run / "run_config.json").read_text()) for name, run in (("one", one), ("two", two))}
    assert [layout["one"][key] for key in ("num_processes", "gradient_accumulation_steps", "effective_batch_size")] \
        == [1, 4, 4]
    assert [layout["two"][key] for key in ("num_processes", "gradient_accumulation_steps", "effective_batch_size")] \
        == [2, 2, 4]
    assert len(logged(one, "loss")) == 3
    assert logged(one, "loss") == pytest.approx(logged(two, "loss"), abs=1e-5)
    assert logged(one, "grad_norm") == pytest.approx(logged(two, "grad_norm"), rel=1e-4)
    assert adapter_difference(one, two) < WEIGHT_TOLERANCE


def test_two_processes_train_a_preference_stage_as_one_and_share_the_reference_pass(sft_runs, tiny_model_dir,
                                                                                    data_dir, tmp_path):
    """S-DPO from the SFT adapter with reference log-probs precomputed: each process computes them
    for its share of the prompts and they are gathered back in order, so the first step's rewards
    (policy minus reference, equal models) are exactly zero."""
    runs = {processes: tmp_path / f"processes-{processes}" for processes in (1, 2)}
    training = {"max_steps": 3, "logging_steps": 1, "learning_rate": 1e-2, "lora_dropout": 0,
                "precompute_ref_log_probs": True}
    softmax_dpo(model_name=tiny_model_dir, adapter=str(sft_runs[1]), train_file=str(data_dir / "train.json"),
                valid_file=str(data_dir / "valid.json"), output_dir=str(runs[1]), max_valid_samples=4,
                batch_size=1, gradient_accumulation_steps=4, **training)
    run_stage("softmax_dpo.sh", 2, {"MODEL_NAME": tiny_model_dir, "DATA_DIR": str(data_dir),
                                    "ADAPTER": str(sft_runs[1]), "OUTPUT_DIR": str(runs[2]),
                                    "PREF_MAX_TRAIN_SAMPLES": "", "PREF_MAX_VALID_SAMPLES": "4",
                                    "PREF_EFFECTIVE_BATCH_SIZE": "4", "PREF_BATCH_SIZE": "1",
                                    "HINTS": "False"},
              *(f"--{name}={value}" for name, value in training.items()))
    one, two = runs[1], runs[2]
    assert json.loads((two / "run_config.json").read_text())["gradient_accumulation_steps"] == 2
    assert logged(two, "rewards/chosen")[0] == 0 and logged(two, "rewards/margins")[0] == 0
    assert logged(one, "loss") == pytest.approx(logged(two, "loss"), abs=1e-5)
    assert adapter_difference(one, two) < WEIGHT_TOLERANCE


def test_two_processes_evaluate_every_prompt_once_in_order(sft_runs, tiny_model_dir, data_dir, tmp_path):
    """7 test prompts over 2 processes (4 + 3): the same predictions, in the same order, and metrics."""
    outputs = {processes: tmp_path / f"processes-{processes}" for processes in (1, 2)}
    inference(model_name=tiny_model_dir, adapter=str(sft_runs[2]), test_file=str(data_dir / "test.json"),
              output_dir=str(outputs[1]), batch_size=2, max_new_tokens=6)
    run_stage("inference.sh", 2, {"MODEL_NAME": tiny_model_dir, "DATA_DIR": str(data_dir), "ADAPTER": str(sft_runs[2]),
                                  "OUTPUT_DIR": str(outputs[2]), "EVAL_MAX_SAMPLES": "", "EVAL_BATCH_SIZE": "2",
                                  "HINTS": "False", "EVAL_SCORE_CANDIDATES": "True"},
              "--max_new_tokens", "6")
    predictions = {processes: (folder / "predictions.jsonl").read_text() for processes, folder in outputs.items()}
    assert len(predictions[1].splitlines()) == 7 and predictions[1] == predictions[2]
    metrics = {processes: json.loads((folder / "metrics.json").read_text()) for processes, folder in outputs.items()}
    for timing in ("seconds", "prompts_per_second"):
        for values in metrics.values():
            values.pop(timing)
    assert metrics[1] == metrics[2]


def batch_layout(effective: int, most: int, processes: int, **settings: str) -> subprocess.CompletedProcess:
    script = ("source scripts/common.sh; SFT_EFFECTIVE_BATCH_SIZE=$1 SFT_BATCH_SIZE=$2 NUM_PROCESSES=$3; "
              "set_batch_layout SFT; echo $layout_batch_size $layout_accumulation")
    return subprocess.run(["bash", "-c", script, "layout", str(effective), str(most), str(processes)], cwd=REPO_ROOT,
                          env=os.environ | settings, capture_output=True, text=True)


@pytest.mark.parametrize("effective, most, processes, expected", [
    (128, 4, 1, "4 32"), (128, 4, 8, "4 4"), (128, 4, 32, "4 1"), (128, 4, 64, "2 1"), (12, 4, 2, "3 2"),
    (8, 2, 2, "2 2"), (4, 4, 2, "2 1"), (14, 4, 2, "1 7"),
])
def test_an_optimizer_step_keeps_its_prompts_for_any_process_count(effective, most, processes, expected):
    completed = batch_layout(effective, most, processes)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == expected.split()
    size, accumulation = map(int, expected.split())
    assert size * accumulation * processes == effective and size <= most


def test_a_step_that_the_processes_cannot_share_equally_is_an_error():
    completed = batch_layout(128, 4, 3)
    assert completed.returncode == 2
    assert "SFT_EFFECTIVE_BATCH_SIZE=128" in completed.stderr and "NUM_PROCESSES=3" in completed.stderr


@pytest.mark.parametrize("effective, most, settings, message", [
    ("8x", 4, {}, "must be whole numbers of prompts, at least 1; got '8x' and '4'"),
    (8, 0, {}, "got '8' and '0'"),
    (8, 4, {"SFT_GRADIENT_ACCUMULATION_STEPS": "2"}, "SFT_GRADIENT_ACCUMULATION_STEPS follows from"),
])
def test_a_batch_layout_that_is_not_one_is_an_error(effective, most, settings, message):
    completed = batch_layout(effective, most, 1, **settings)
    assert completed.returncode == 2 and message in completed.stderr


@pytest.mark.parametrize("name, distributed_type", [("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"),
                                                    ("zero3", "DEEPSPEED"), ("fsdp", "FSDP"),
                                                    ("multinode", "MULTI_GPU")])
def test_accelerate_configurations_load_and_fit_the_stages(name, distributed_type):
    path = os.path.join(CONFIG_FOLDER, f"{name}.yaml")
    config = load_config_from_file(path)  # accelerate's own reader: unknown or missing fields fail here
    assert config.distributed_type.name == distributed_type
    assert config.mixed_precision == "no", "precision is each stage's --dtype"
    assert config.num_processes % config.num_machines == 0
    raw = yaml.safe_load(open(path, encoding="utf-8"))
    if distributed_type == "DEEPSPEED":
        assert raw["deepspeed_config"]["zero_stage"] == int(name[-1])
    if distributed_type == "FSDP":
        fsdp = raw["fsdp_config"]
        assert hasattr(modeling_llama, fsdp["fsdp_transformer_layer_cls_to_wrap"])
        assert fsdp["fsdp_use_orig_params"], "LoRA: frozen and trainable weights share a wrapped unit"


def test_an_unknown_configuration_name_is_an_error_listing_the_known_ones(data_dir):
    completed = subprocess.run(["bash", "sft.sh"], cwd=REPO_ROOT, capture_output=True, text=True,
                               env=os.environ | {"ACCELERATE_CONFIG": "zero9", "DATA_DIR": str(data_dir)})
    assert completed.returncode == 2
    assert completed.stderr.strip() == ("error: ACCELERATE_CONFIG=zero9 is neither a file nor one of: "
                                        "ddp fsdp multinode zero2 zero3")



def end_after(rank: int, seconds: float, succeeded: bool, group_file: str, returned_at) -> None:
    """One process of a two-process gloo group: works `seconds`, then ends the group as an entry script does."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{group_file}", rank=rank, world_size=2)
    time.sleep(seconds)
    end_process_group(wait_for_the_others=succeeded)
    returned_at[rank] = time.monotonic()
    if torch.distributed.is_initialized():
        raise AssertionError("the group is still up")


@pytest.mark.parametrize("succeeded", [True, False])
def test_a_finished_process_ends_its_group_only_once_the_others_are_done(tmp_path, succeeded):
    """Rank 1 finishes first while rank 0 still works (saves the adapter): after a run that succeeded it waits
    for rank 0 before ending the group; after a failure it ends at once, since rank 0 may never arrive."""
    context = multiprocessing.get_context("fork")
    returned_at = context.Array("d", 2)
    work_seconds = {0: 2.0, 1: 0.0}
    processes = [context.Process(target=end_after, args=(rank, work_seconds[rank], succeeded, str(tmp_path / "group"),
                                                         returned_at)) for rank in work_seconds]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]
    rank_1_waited = returned_at[1] >= returned_at[0] - 0.5
    assert rank_1_waited == succeeded
