"""Trainer settings that SFT and the preference stages share, from their identically named flags."""

import time

import torch
from transformers import TrainerCallback


def trainer_arguments(flags: dict, torch_dtype: torch.dtype, evaluates_during_training: bool) -> dict:
    """Keyword arguments for a transformers/TRL training config, read from an entry script's flags.

    `flags` holds the entry's resolved flags: output_dir, seed, num_train_epochs, max_steps,
    batch_size, gradient_accumulation_steps, learning_rate, lr_scheduler_type, warmup_ratio,
    weight_decay, max_grad_norm, logging_steps, eval_steps and save_steps.
    """
    eval_steps, save_steps = flags["eval_steps"], flags["save_steps"]
    periodic_eval = evaluates_during_training and eval_steps > 0
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
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
    )


class LearningCurveCallback(TrainerCallback):
    """Adds wall seconds since training began and examples seen so far to every logged entry.

    With them, trainer_state.json (a checkpoint's too) places each logged point on a learning curve
    against time and against training examples, not only against optimizer steps.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Trainer.log has already appended this entry to the history; it is extended in place.
        entry = state.log_history[-1]
        entry["elapsed_seconds"] = round(time.perf_counter() - self.started, 1)
        entry["examples_seen"] = (state.global_step * args.per_device_train_batch_size
                                  * args.gradient_accumulation_steps * args.world_size)
