"""Trainer settings that SFT and the preference stages share, from their identically named flags."""

import dataclasses
import json
import logging
import os
import time
from typing import NamedTuple

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from trainer.cli import is_main_process
from trainer.errors import InputError
from trainer.modeling import load_tokenizer, resolve_dtype, resolve_model_path
from trainer.outputs import RUN_CONFIG_FILE, check_output_dir, start_run

logger = logging.getLogger("training")

# A training stage's figures, written last: the stage finished (reproduce.sh's completion marker).
TRAIN_RESULTS_FILE = "train_results.json"


class StageStart(NamedTuple):
    """What a training stage knows once its flags are resolved, before it reads any data."""

    config: dict  # the flags, as run_config.json records them
    torch_dtype: torch.dtype
    training_arguments: dict  # for the stage's transformers/TRL config
    model_path: str
    tokenizer: object  # left-padded, as generation and the collators expect


def start_training_stage(flags) -> StageStart:
    """The first steps of SFT and the preference stages alike: the output folder checked (nothing
    written), dtype and trainer settings resolved, the model found and its tokenizer loaded."""
    config = dataclasses.asdict(flags)
    check_output_dir(flags.output_dir)
    torch_dtype = resolve_dtype(flags.dtype)
    arguments = trainer_arguments(config, torch_dtype, evaluates_during_training=flags.validates)
    model_path = resolve_model_path(flags.model_name)
    return StageStart(config, torch_dtype, arguments, model_path, load_tokenizer(model_path, padding_side="left"))


def trainer_arguments(flags: dict, torch_dtype: torch.dtype, evaluates_during_training: bool) -> dict:
    """Keyword arguments for a transformers/TRL training config, read from an entry script's flags.

    `flags` holds the entry's resolved flags, each already checked by trainer.flags: output_dir, seed,
    num_train_epochs, max_steps, batch_size, gradient_accumulation_steps, learning_rate,
    lr_scheduler_type, warmup_ratio, weight_decay, max_grad_norm, logging_steps, eval_steps,
    save_steps, select_best and dataloader_workers. Refuses --select_best without validations to select from.
    """
    eval_steps, save_steps, select_best = flags["eval_steps"], flags["save_steps"], flags["select_best"]
    periodic_eval = evaluates_during_training and eval_steps > 0
    if select_best:
        if not periodic_eval:
            raise InputError("--select_best keeps the checkpoint with the lowest validation loss: give --eval_steps "
                             "and validation records")
        if save_steps and save_steps != eval_steps:
            raise InputError(f"--select_best saves a checkpoint at every evaluation: leave --save_steps at 0 or "
                             f"equal to --eval_steps ({eval_steps}), got {save_steps}")
        save_steps = eval_steps
    return dict(
        output_dir=flags["output_dir"],
        seed=flags["seed"],
        num_train_epochs=flags["num_train_epochs"],
        max_steps=flags["max_steps"],
        per_device_train_batch_size=flags["batch_size"],
        per_device_eval_batch_size=flags["batch_size"],
        gradient_accumulation_steps=flags["gradient_accumulation_steps"],
        learning_rate=flags["learning_rate"],
        lr_scheduler_type=flags["lr_scheduler_type"],
        # A warmup_steps value below 1 is a fraction of the steps (transformers 5).
        warmup_steps=flags["warmup_ratio"],
        weight_decay=flags["weight_decay"],
        max_grad_norm=flags["max_grad_norm"],
        bf16=torch_dtype == torch.bfloat16,
        fp16=False,
        logging_steps=flags["logging_steps"],
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=eval_steps if periodic_eval else None,
        save_strategy="steps" if save_steps > 0 else "no",
        save_steps=save_steps if save_steps > 0 else None,
        # Trainer reloads the best checkpoint's adapter after the last step.
        load_best_model_at_end=select_best,
        metric_for_best_model="loss" if select_best else None,
        greater_is_better=False if select_best else None,
        report_to="none",
        # Trainer would read every micro-batch's loss on the host to leave a NaN or infinite one out of the
        # logged average: on a GPU, a wait for the device after every forward pass. A NaN shows in the log instead.
        logging_nan_inf_filter=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        dataloader_num_workers=(workers := dataloader_workers(flags["dataloader_workers"])),
        # Workers started once for the run, not again for every epoch and every validation.
        dataloader_persistent_workers=workers > 0,
        # Every LoRA weight takes part in every forward: DDP need not search for unused ones each step.
        ddp_find_unused_parameters=False,
    )


def dataloader_workers(requested: int) -> int:
    """--dataloader_workers resolved: -1 is 2 on a GPU (collation off the step's critical path) and 0 on a
    CPU, whose cores the training's own threads already use."""
    if requested >= 0:
        return requested
    return 2 if torch.cuda.is_available() else 0


class SameOrderForAnyProcessCount:
    """Trainer mixin: the examples of each optimizer step do not depend on the number of processes.

    Trainer's length-grouped sampler orders the whole dataset in groups sized by one process's share
    of a step (micro-batch x accumulation), and accelerate then deals its micro-batches out to the
    processes in turn. Sized by the whole step (x processes) instead, the order is one and the same,
    so 2 processes x accumulation a train on exactly the micro-batches of 1 process x accumulation 2a.
    """

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            sampler.batch_size = (self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
                                  * self.args.world_size)
        return sampler


class LearningCurveCallback(TrainerCallback):
    """Adds wall seconds since the trainer was built and examples seen so far to every logged entry.

    With them, trainer_state.json (a checkpoint's too) places each logged point on a learning curve
    against time and against training examples, not only against optimizer steps. The clock starts
    when the trainer is built, not at the first step, so work done once before training (the
    reference log-probs of the preference stages) counts towards the seconds it costs.
    """

    def on_init_end(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Trainer.log has already appended this entry to the history; it is extended in place.
        entry = state.log_history[-1]
        entry["elapsed_seconds"] = round(time.perf_counter() - self.started, 1)
        entry["examples_seen"] = examples_in_steps(args, state.global_step)


def examples_in_steps(args, steps: int) -> int:
    """Training examples in `steps` optimizer steps: micro-batch x accumulation x processes each."""
    return steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size


class TimeBudgetCallback(TrainerCallback):
    """Ends training after the first optimizer step that ends `max_seconds` after the trainer was built.

    Trainer then returns as after its last planned step: the stage validates, saves and reports as
    usual. With several processes, the first process's clock decides for all, so every process stops
    after the same step. The learning-rate schedule keeps the length planned for the whole run.
    """

    def __init__(self, max_seconds: float):
        self.max_seconds = max_seconds
        self.stopped_after_step = None

    def on_init_end(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        over = time.perf_counter() - self.started >= self.max_seconds
        if PartialState().num_processes > 1:
            over = broadcast_object_list([over], from_process=0)[0]
        if over and state.global_step < state.max_steps:
            control.should_training_stop = True
            self.stopped_after_step = state.global_step

    def results(self, args) -> dict:
        """For train_results.json: where the budget stopped the run, if it did."""
        if self.stopped_after_step is None:
            return {}
        return {"stopped_by_time_budget": True, "max_train_seconds": self.max_seconds,
                "stopped_after_step": self.stopped_after_step,
                "examples_trained": examples_in_steps(args, self.stopped_after_step)}


def training_callbacks(max_train_seconds: float) -> list[TrainerCallback]:
    """The callbacks every training stage runs with: its learning curve, and its time budget if it has one."""
    callbacks = [LearningCurveCallback()]
    if max_train_seconds > 0:
        callbacks.append(TimeBudgetCallback(max_train_seconds))
    return callbacks


def time_budget_results(trainer) -> dict:
    """What the time budget did to a finished run (empty without one, or when the run ended first)."""
    budget = next((callback for callback in trainer.callback_handler.callbacks
                   if isinstance(callback, TimeBudgetCallback)), None)
    results = budget.results(trainer.args) if budget else {}
    if results and is_main_process():
        logger.warning("Stopped by --max_train_seconds %g after step %d of %d (%d examples)", budget.max_seconds,
                       results["stopped_after_step"], trainer.state.max_steps, results["examples_trained"])
    return results


def best_checkpoint_results(state) -> dict:
    """What --select_best kept: the step of the checkpoint with the lowest validation loss, and that loss."""
    if state.best_model_checkpoint is None:
        return {}
    step = int(state.best_model_checkpoint.rstrip("/").rsplit("-", 1)[1])
    return {"best_checkpoint_step": step, "best_validation_loss": state.best_metric}


def token_throughput(metrics: dict, example_tokens: list[int]) -> dict:
    """Useful tokens per second of training, from Trainer's train metrics (samples per second).

    `example_tokens`: what each training example needs computed at least, padding excluded (SFT: its
    prompt and answer; preference stages: its prompt once and every completion once, the packed
    layout). Counted from the dataset rather than per batch, so training pays no device
    synchronisation for it.
    """
    mean_tokens = sum(example_tokens) / len(example_tokens)
    return {"train_tokens_per_example": round(mean_tokens, 1),
            "train_tokens_per_second": round(metrics["train_samples_per_second"] * mean_tokens, 1)}


def kept_weights(results: dict) -> str:
    """Which weights a stage saved, for its last log line."""
    if "best_checkpoint_step" not in results:
        return "the last weights"
    return (f"the weights of step {results['best_checkpoint_step']}, the lowest validation loss "
            f"({results['best_validation_loss']:.4f})")


def batch_layout(flags: dict) -> dict:
    """Processes and prompts per optimizer step (micro-batch x accumulation x processes), for run_config.json."""
    processes = PartialState().num_processes
    return {"num_processes": processes,
            "effective_batch_size": flags["batch_size"] * flags["gradient_accumulation_steps"] * processes}


def train_or_continue(trainer, output_dir: str, run_config: dict):
    """trainer.train() from the last checkpoint a killed run of the same flags left in `output_dir`, or
    from the start; the run's flags are written first, and an earlier run's completion file removed."""
    checkpoint = checkpoint_to_resume(output_dir, run_config)
    if is_main_process():
        if checkpoint:
            logger.info("Continuing from %s", checkpoint)
        start_run(run_config, output_dir, TRAIN_RESULTS_FILE)
    return trainer.train(resume_from_checkpoint=checkpoint)


def checkpoint_to_resume(output_dir: str, run_config: dict) -> str | None:
    """The last checkpoint a killed run of the same flags left in `output_dir`; None to start afresh.

    A stage saves its flags (run_config.json) before its first step and a checkpoint every
    --save_steps (or every evaluation with --select_best); run again with the same flags, it
    continues from the last checkpoint with the weights, optimizer, schedule, random states and
    data position restored. Checkpoints written under other flags are never continued silently.
    """
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if last is None:
        return None
    config_path = os.path.join(output_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise InputError(f"--output_dir {output_dir} holds {os.path.basename(last)} but no {RUN_CONFIG_FILE} to tell "
                         "which flags wrote it; remove the folder or choose another")
    with open(config_path, encoding="utf-8") as handle:
        saved = json.load(handle)
    # Through JSON, as saved: fire's tuples become lists.
    wanted = json.loads(json.dumps(run_config))
    changed = sorted(name for name in set(saved) | set(wanted) if saved.get(name) != wanted.get(name))
    if changed:
        name = changed[0]
        raise InputError(f"--output_dir {output_dir} holds {os.path.basename(last)} of a run with other flags "
                         f"({name}: {saved.get(name)!r} then, {wanted.get(name)!r} now); rerun with the same "
                         "flags to continue it, or remove the folder or choose another to start afresh")
    return last
