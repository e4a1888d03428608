"""Bench: where a preference training step's time goes when the model's arithmetic costs little.

A narrow random LLaMA with the embedded model's depth (30 layers, hidden size 64, the embedded
tokenizer: every module and LoRA adapter of the real model, so the same number of operations, at a
sliver of their arithmetic) trains S-DPO on LastFM training prompts through the real stage
(softmax_dpo.py) under torch.profiler. Whatever the profile shows here is paid
again on every step of a real model on a GPU, on top of its arithmetic. Each step's parts are timed as
profiler ranges (the bench wraps the trainer's methods; the stage's code is unchanged):
  data       the data loader's next batch, collation included (torch.profiler's own range)
  collate    building the packed rows and 4D masks (inside data)
  policy     the policy's forward (log-probs of the 1 + k completions)
  reference  the reference forward (adapters disabled), unless precomputed before training
  backward   accelerator.backward
  optimizer  the optimizer's step and zero_grad (torch.profiler's own ranges)
  metrics    the per-micro-batch reward statistics kept for logging
  log        Trainer.log (the host copy of the kept statistics, the history, the console line)
  other      the rest of the steps' wall time: Trainer's own bookkeeping, callbacks, scheduler
Each setting runs in its own process; the table gives seconds per step (the profiled steps' wall
time / steps), prompts per second and each part's share of the step. A last sweep runs the
leanest setting at several micro-batch sizes: a step's cost that does not grow with its prompts is
overhead, and a larger micro-batch spreads it over more prompts.

    python bench/step_overhead.py                         # the settings at 4 prompts a step, then the sweep
    python bench/step_overhead.py --device cuda --steps 100 --batch_sizes 4,16,64
"""

import json
import os
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from trainer.cli import run

PARTS = ("data", "collate", "policy", "reference", "backward", "optimizer", "metrics", "log")
# Settings: (name, extra flags of softmax_dpo).
# The reference's setting is named in each, as its default changed (precomputed since 2026-11-28).
SETTINGS = (
    ("log every step, reference per step", {"precompute_ref_log_probs": False}),
    ("log every 10 steps, reference per step", {"logging_steps": 10, "precompute_ref_log_probs": False}),
    ("reference precomputed", {"precompute_ref_log_probs": True}),
    ("log every 10 + reference precomputed", {"logging_steps": 10, "precompute_ref_log_probs": True}),
)


def narrow_model(folder: str, layers: int, hidden: int) -> str:
    """A random LLaMA of `layers` layers of width `hidden` with the embedded tokenizer, saved in `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.modeling import EMBEDDED_MODEL_NAME, load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(EMBEDDED_MODEL_NAME), padding_side="right")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def ranged(owner, name: str, label: str) -> None:
    """Wraps owner.name in a torch.profiler range called `label`."""
    from torch.profiler import record_function

    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        with record_function(label):
            return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def measure(model_dir: str, train_file: str, output_dir: str, steps: int, warmup: int, device: str,
            batch_size: int, flags: dict) -> dict:
    """Trains `warmup + steps` steps, profiling the last `steps`; returns seconds per step and part shares."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    from trainer import preference_trainer
    # The stage's entry script lies at the repository root, outside the installed package.
    sys.path.insert(0, REPO_ROOT)
    from softmax_dpo import softmax_dpo

    trainer_class = preference_trainer.MultiNegativeDPOTrainer
    ranged(preference_trainer.MultiNegativeCollator, "__call__", "collate")
    ranged(trainer_class, "_reference_logps", "reference")
    ranged(trainer_class, "_record_metrics", "metrics")
    ranged(trainer_class, "log", "log")
    original_logps = trainer_class._completion_logps

    def policy_or_reference(self, model, inputs):
        # The reference pass calls this too (inside its own range); only a call with gradients is the policy's.
        if not torch.is_grad_enabled():
            return original_logps(self, model, inputs)
        with torch.profiler.record_function("policy"):
            return original_logps(self, model, inputs)

    trainer_class._completion_logps = policy_or_reference
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    profiler = profile(activities=activities)
    timing = {}

    class ProfileLastSteps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.trainer_accelerator.backward = wrap_backward(self.trainer_accelerator.backward)
                if device == "cuda":
                    torch.cuda.synchronize()
                profiler.start()
                timing["started"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup + steps:
                if device == "cuda":
                    torch.cuda.synchronize()
                timing["seconds"] = time.perf_counter() - timing["started"]
                profiler.stop()

    def wrap_backward(backward):
        def ranged_backward(*args, **kwargs):
            with torch.profiler.record_function("backward"):
                return backward(*args, **kwargs)
        return ranged_backward

    callback = ProfileLastSteps()
    original_init = trainer_class.__init__

    def init_with_callback(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        callback.trainer_accelerator = self.accelerator
        self.add_callback(callback)

    trainer_class.__init__ = init_with_callback
    softmax_dpo(model_name=model_dir, train_file=train_file, output_dir=output_dir, adapter=None,
                max_train_samples=batch_size * (warmup + steps), max_valid_samples=0, batch_size=batch_size,
                gradient_accumulation_steps=1, max_steps=warmup + steps, learning_rate=1e-4, lora_dropout=0.0,
                neg_num=3, **flags)
    totals = {}
    for event in profiler.key_averages():
        if event.key in PARTS:
            totals[event.key] = event.cpu_time_total / 1e6
        elif event.key.startswith("enumerate(DataLoader)"):
            totals["data"] = totals.get("data", 0) + event.cpu_time_total / 1e6
        elif event.key.startswith(("Optimizer.step", "Optimizer.zero_grad")):
            totals["optimizer"] = totals.get("optimizer", 0) + event.cpu_time_total / 1e6
    seconds = timing["seconds"]
    # collate runs inside data: count it once, under collate.
    totals["data"] = max(0.0, totals.get("data", 0.0) - totals.get("collate", 0.0))
    totals["other"] = max(0.0, seconds - sum(totals.get(part, 0.0) for part in PARTS))
    shares = {part: totals.get(part, 0.0) / seconds for part in (*PARTS, "other")}
    return {"seconds_per_step": seconds / steps, "prompts_per_second": batch_size * steps / seconds, "shares": shares}


def bench(steps: int = 40, warmup: int = 5, device: str = "cpu", layers: int = 30, hidden: int = 64,
          batch_sizes: int | str | tuple[int, ...] = (1, 4, 16), model_name: str | None = None,
          train_file: str = "data/lastfm/train.json", worker: int | None = None, batch_size: int = 4):
    """Print seconds per preference step and where they go, for each setting, then the micro-batch sweep.

    Args:
        steps: Profiled optimizer steps per setting (k = 3).
        warmup: Steps trained before profiling starts.
        device: cpu or cuda (the model goes where training puts it; this only adds CUDA's timings).
        layers: Layers of the random model (the embedded model has 30).
        hidden: Its width (the embedded model: 576).
        batch_sizes: Micro-batch sizes of the sweep ("1,4,16", or one size).
        model_name: A model folder instead of the random one.
        train_file: LastFM training records (bash sft.sh prepares data/lastfm).
        worker: Internal: run one setting (its index) and print its result as JSON.
        batch_size: Internal: the worker's prompts per step.
    """
    if worker is not None:
        with tempfile.TemporaryDirectory() as folder:
            model_dir = model_name or narrow_model(os.path.join(folder, "model"), layers, hidden)
            result = measure(model_dir, train_file, os.path.join(folder, "run"), steps, warmup, device, batch_size,
                             SETTINGS[worker][1])
        print("RESULT " + json.dumps(result))
        return
    if isinstance(batch_sizes, int):
        batch_sizes = (batch_sizes,)
    sizes = [int(size) for size in (batch_sizes.split(",") if isinstance(batch_sizes, str) else batch_sizes)]
    runs = [(index, 4) for index in range(len(SETTINGS))] + [(len(SETTINGS) - 1, size) for size in sizes]
    print("setting | prompts a step | s/step | prompts/s | " + " | ".join(f"{part} %" for part in (*PARTS, "other")))
    for index, size in runs:
        command = [sys.executable, os.path.abspath(__file__), "--worker", str(index), "--batch_size", str(size),
                   "--steps", str(steps), "--warmup", str(warmup), "--device", device, "--layers", str(layers),
                   "--hidden", str(hidden), "--train_file", train_file]
        if model_name:
            command += ["--model_name", model_name]
        completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        if completed.returncode != 0 or not lines:
            raise SystemExit(f"{SETTINGS[index][0]}: the worker failed:\n{completed.stderr[-3000:]}")
        result = json.loads(lines[-1][len("RESULT "):])
        shares = " | ".join(f"{100 * result['shares'][part]:.0f}" for part in (*PARTS, "other"))
        print(f"{SETTINGS[index][0]} | {size} | {result['seconds_per_step']:.4f} | {result['prompts_per_second']:.1f} | "
              f"{shares}")


if __name__ == "__main__":
    run(bench)
