"""Trainer settings that SFT and the preference stages share, from their identically named flags."""

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from typing import NamedTuple

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from trainer.cli import is_main_process
from trainer.errors import InputError, TrainingDiverged
from trainer.modeling import BASE_FINGERPRINT_KEY, load_tokenizer, resolve_dtype, resolve_model_path
from trainer.outputs import RUN_CONFIG_FILE, check_output_dir, follow_umask, start_run, write_json_atomically

logger = logging.getLogger("training")

# A training stage's figures, written last: the stage finished (reproduce.sh's completion marker).
TRAIN_RESULTS_FILE = "train_results.json"
# The finished adapter at the top of the output folder: an earlier run's is removed when a run starts.
FINAL_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
CHECKPOINT_FOLDER = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


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


class GuardedTraining:
    """Trainer mixin for what a training run guarantees about its outputs.

    A step whose loss or updated weights are not finite ends the run with TrainingDiverged: each
    forward pass's loss is kept on the device, after each optimizer step the trainable weights are
    checked too (a non-finite gradient reaches them through the update), and the host reads the
    verdict once per step, before the step's checkpoint is saved. With several processes the verdict
    is reduced over all of them, so all stop after the same step. (Without this, a diverged run ended
    with rc 0 and a NaN adapter saved as finished.)

    A checkpoint's files get the mode the umask gives (trainer.outputs.follow_umask), and its
    trainer_state.json, which Trainer writes after every other file of it, marks it complete
    (complete_checkpoints).
    """

    stage_name = "training"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._losses_finite = None
        self.add_callback(NonFiniteCheck(self))

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss.detach()).all()
        self._losses_finite = finite if self._losses_finite is None else self._losses_finite & finite
        return loss

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.is_world_process_zero():
            follow_umask(os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"))

    def check_step(self) -> None:
        """Raise TrainingDiverged if this optimizer step's losses or the trainable weights are not finite."""
        weights = [parameter.detach().isfinite().all() for parameter in self.model.parameters()
                   if parameter.requires_grad]
        losses = self._losses_finite if self._losses_finite is not None else torch.tensor(True)
        verdict = torch.stack([losses.to(weights[0].device), torch.stack(weights).all()]).float()
        self._losses_finite = None
        if self.accelerator.num_processes > 1:
            verdict = self.accelerator.reduce(verdict, reduction="sum") / self.accelerator.num_processes
        losses_finite, weights_finite = (value == 1.0 for value in verdict.tolist())
        if losses_finite and weights_finite:
            return
        what = " and ".join(name for name, finite in (("the training loss", losses_finite),
                                                      ("trained weights", weights_finite)) if not finite)
        rate = self.lr_scheduler.get_last_lr()[0] if self.lr_scheduler is not None else self.args.learning_rate
        raise TrainingDiverged(
            f"{self.stage_name}: step {self.state.global_step}: {what} not finite at learning rate {rate:.3g} "
            f"(--learning_rate {self.args.learning_rate:g}); stopped without saving an adapter as finished "
            f"(checkpoints of earlier steps in {self.args.output_dir} stay); try a lower --learning_rate")


class NonFiniteCheck(TrainerCallback):
    """Runs GuardedTraining's check at the end of every optimizer step."""

    def __init__(self, trainer: GuardedTraining):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.check_step()


class LearningCurveCallback(TrainerCallback, ExportableState):
    """Adds wall seconds since the trainer was built and examples seen so far to every logged entry.

    With them, trainer_state.json (a checkpoint's too) places each logged point on a learning curve
    against time and against training examples, not only against optimizer steps. The clock starts
    when the trainer is built, not at the first step, so work done once before training (the
    reference log-probs of the preference stages) counts towards the seconds it costs.

    A continued run goes on counting: every checkpoint records the seconds spent so far (in its
    trainer_state.json, as this callback's state), and a run continuing from it starts its clocks
    there, so the curves' seconds and train_results.json's train_runtime cover the whole run.
    """

    def __init__(self):
        self.started = self.train_started = None
        self.seconds_before = self.train_seconds_before = 0.0

    def on_init_end(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_started = time.perf_counter()
        saved = state.stateful_callbacks.get(type(self).__name__)
        if state.global_step > 0 and saved:  # continuing from a checkpoint
            self.seconds_before = saved["attributes"]["seconds_before"]
            self.train_seconds_before = saved["attributes"]["train_seconds_before"]

    def elapsed_seconds(self) -> float:
        """Since the trainer was built, plus the earlier parts of a continued run."""
        return self.seconds_before + (time.perf_counter() - self.started if self.started else 0.0)

    def state(self) -> dict:
        train_seconds = time.perf_counter() - self.train_started if self.train_started else 0.0
        return {"args": {}, "attributes": {"seconds_before": self.elapsed_seconds(),
                                           "train_seconds_before": self.train_seconds_before + train_seconds}}

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Trainer.log has already appended this entry to the history; it is extended in place.
        entry = state.log_history[-1]
        entry["elapsed_seconds"] = round(self.elapsed_seconds(), 1)
        entry["examples_seen"] = examples_in_steps(args, state.global_step)


def whole_run_metrics(trainer, metrics: dict) -> dict:
    """Trainer's train metrics over the whole run: a continued run's train() reports only its own part."""
    curve = next(callback for callback in trainer.callback_handler.callbacks
                 if isinstance(callback, LearningCurveCallback))
    runtime = metrics["train_runtime"] + curve.train_seconds_before
    steps = trainer.state.global_step
    return metrics | {"train_runtime": round(runtime, 4),
                      "train_samples_per_second": round(examples_in_steps(trainer.args, steps) / runtime, 3),
                      "train_steps_per_second": round(steps / runtime, 3)}


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


def train_validate_save(trainer, output_dir: str, config: dict, model_path: str, fingerprint: str,
                        example_tokens: list[int], save_adapter) -> None:
    """The end of every training stage: train (continuing a killed run of the same flags), validate, then
    save the adapter and the results (finish_training_stage). `example_tokens` is each training
    example's length in tokens, for the throughput; `save_adapter()` is called by every process."""
    resolved_config = (config | {"resolved_model_path": model_path, BASE_FINGERPRINT_KEY: fingerprint}
                       | batch_layout(config))
    metrics = whole_run_metrics(trainer, train_or_continue(trainer, output_dir, resolved_config).metrics)
    results = (metrics | token_throughput(metrics, example_tokens) | best_checkpoint_results(trainer.state)
               | time_budget_results(trainer))
    if trainer.eval_dataset is not None:
        results |= trainer.evaluate()
    results |= {"train_examples": len(trainer.train_dataset),
                "valid_examples": 0 if trainer.eval_dataset is None else len(trainer.eval_dataset)}
    finish_training_stage(trainer, output_dir, results, save_adapter)


def finish_training_stage(trainer, output_dir: str, results: dict, save_adapter) -> None:
    """The end of every training stage: the adapter (`save_adapter()`, called by every process), the trainer's
    state, then train_results.json, the stage's completion marker; every file with the umask's mode."""
    save_adapter()
    if not trainer.is_world_process_zero():
        return
    # Trainer records its stateful callbacks' states only in checkpoints; the final state gets them too.
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ExportableState):
            trainer.state.stateful_callbacks[type(callback).__name__] = callback.state()
    trainer.save_state()
    follow_umask(output_dir)
    write_json_atomically(results, os.path.join(output_dir, TRAIN_RESULTS_FILE))
    validation = f"; validation loss {results['eval_loss']:.4f}" if "eval_loss" in results else ""
    logger.info("Saved the adapter to %s (%s)%s", output_dir, kept_weights(results), validation)


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
        start_run(run_config, output_dir, TRAIN_RESULTS_FILE, FINAL_ADAPTER_FILES)
    return trainer.train(resume_from_checkpoint=checkpoint)


def checkpoint_to_resume(output_dir: str, run_config: dict) -> str | None:
    """The last complete checkpoint a killed run of the same flags left in `output_dir`; None to start afresh.

    A stage saves its flags (run_config.json) before its first step and a checkpoint every
    --save_steps (or every evaluation with --select_best); run again with the same flags, it
    continues from the last checkpoint with the weights, optimizer, schedule, random states and
    data position restored. A checkpoint that a kill cut short is removed with a warning and the one
    before it is taken. Checkpoints written under other flags are never continued silently.
    """
    complete, incomplete = checkpoints_in(output_dir)
    if not complete and not incomplete:
        return None
    config_path = os.path.join(output_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise InputError(f"--output_dir {output_dir} holds {os.path.basename((complete + incomplete)[-1])} but no "
                         f"{RUN_CONFIG_FILE} to tell which flags wrote it; remove the folder or choose another")
    if incomplete and is_main_process():
        for path in incomplete:
            logger.warning("%s: incomplete (no readable %s: the run was stopped while writing it); removed, "
                           "continuing from the last complete checkpoint if any", path, TRAINER_STATE_NAME)
            shutil.rmtree(path, ignore_errors=True)
    if not complete:
        return None
    last = complete[-1]
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


def checkpoints_in(output_dir: str) -> tuple[list[str], list[str]]:
    """The checkpoint folders of `output_dir` by step: (complete ones, incomplete ones).

    Trainer writes a checkpoint's trainer_state.json after its weights, optimizer, schedule and random
    states, so a checkpoint whose trainer_state.json reads as JSON was written whole; one without it
    (or with a truncated one) was cut short by a kill.
    """
    if not os.path.isdir(output_dir):
        return [], []
    found = sorted((int(match.group(1)), os.path.join(output_dir, name)) for name in os.listdir(output_dir)
                   if (match := CHECKPOINT_FOLDER.fullmatch(name)) and os.path.isdir(os.path.join(output_dir, name)))
    complete, incomplete = [], []
    for _, path in found:
        (complete if is_complete_checkpoint(path) else incomplete).append(path)
    return complete, incomplete


def is_complete_checkpoint(path: str) -> bool:
    try:
        with open(os.path.join(path, TRAINER_STATE_NAME), encoding="utf-8") as handle:
            return "global_step" in json.load(handle)
    except (OSError, ValueError):
        return False
