"""Bench: one preference training step, the plain ways against the packed way, side by side.

For each k, every way scores the same prompts (LastFM training records, seeded negatives) on the
same model with a fresh LoRA adapter:
  plain    1 + k left-padded sequences per prompt, the vocabulary head on the answer positions
           only (trainer.logprobs.completion_logps, --packed_forward False in training);
  authors  the same sequences with logits at every position, as the S-DPO authors' code scores;
  packed   one sequence per prompt holding the prompt once and every answer (the default).
The step is one of two (--reference):
  precomputed  the preference stage's default step (--precompute_ref_log_probs True): the stage's
               own trainer (trainer.preference_trainer.MultiNegativeDPOTrainer) computes every
               example's reference log-probs once when it is built, and a step is its loss
               (compute_loss: the policy forward, the loss against the batch's reference
               log-probs) and the backward. The one-time reference pass is timed too (seconds per
               prompt). The authors' way goes through the same trainer with its scoring swapped in.
  per_step     the only step of this bench before --reference existed (the stage's step with
               --precompute_ref_log_probs False, its default before 2026-11-28): the policy forward and
               backward, then a reference forward with the adapter disabled, scored directly with
               trainer.logprobs.
The prompts of a step have similar packed lengths, as training's sampler groups them
(--group_by_length False takes them in file order). Each measurement runs in its own worker
process so that its peak memory is its own; the table reports seconds per step (median of
--steps after one warm-up), peak memory added over the loaded model after one forward (so buffers
any forward allocates, the same for every way, count for none), tokens processed against the
floor (each prompt once plus every title once), the ratios of each plain way to the packed one,
and, as a check that the ways compute the same numbers, the largest difference between a plain
way's and the packed way's policy log-probs in the first timed step.

    python bench/preference_step.py                      # k = 1, 3, 7, 19 on the embedded model
    python bench/preference_step.py --reference per_step # the same with a reference forward in each step
    python bench/preference_step.py --neg_nums 3,19 --dtype bfloat16 --device cuda
    python bench/preference_step.py --neg_nums 3,19 --dtype bfloat16 --device cuda --load_in_4bit True
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

from trainer.cli import run
from trainer.data import load_records
from trainer.errors import InputError
from trainer.logprobs import completion_logps, packed_completion_logps
from trainer.modeling import (EMBEDDED_MODEL_NAME, LLAMA_PROJECTIONS, load_model_for_training, load_tokenizer,
                              lora_config, resolve_dtype, resolve_model_path)
from trainer.negatives import sample_negatives
from trainer.preference_trainer import (MultiNegativeCollator, MultiNegativeDPOConfig, MultiNegativeDPOTrainer,
                                        packed_length)
from trainer.prompts import PromptBuilder, preference_example


def current_memory_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory while the block runs: CUDA's own counter, or the process RSS sampled every 2 ms on a CPU."""

    def __init__(self, device: str):
        self.device, self.peak, self._running = device, 0, False

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, current_memory_bytes(self.device))
            time.sleep(0.002)

    def __enter__(self):
        self.peak = current_memory_bytes(self.device)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self._running = True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info):
        if self.device == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._running = False
            self._thread.join()


def full_logits_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      completion_mask: torch.Tensor) -> torch.Tensor:
    """The S-DPO authors' scoring: logits and log-softmax at every position, then the answer tokens summed."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    token_logps = logits.log_softmax(dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_logps * completion_mask[:, 1:]).sum(dim=1)


WAYS = ("plain", "authors", "packed")
# How a step gets its reference log-probs: the preference stage's default first.
REFERENCES = ("precomputed", "per_step")


class BenchTrainer(MultiNegativeDPOTrainer):
    """The preference stage's trainer, with the authors' scoring swapped in for that way and the
    one-time reference pass timed; everything else (the reference pass, the loss) is the stage's."""

    def __init__(self, *args, way: str, **kwargs):
        self.way, self.reference_seconds, self.last_policy = way, 0.0, None
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        started = time.perf_counter()
        dataset = super()._precompute_ref_logps(dataset, name, batch_size)
        if self.args.device.type == "cuda":
            torch.cuda.synchronize()
        self.reference_seconds += time.perf_counter() - started
        return dataset

    def _completion_logps(self, model, inputs):
        if self.way != "authors":
            return super()._completion_logps(model, inputs)
        logps = full_logits_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        return logps.view(-1, 1 + self.args.neg_num)

    def _policy_and_reference_logps(self, model, inputs):
        policy, reference = super()._policy_and_reference_logps(model, inputs)
        self.last_policy = policy.detach()  # for the check that the ways compute the same numbers
        return policy, reference


def stage_trainer(base, tokenizer, examples: list[dict], way: str, neg_num: int, batch_size: int, device: str,
                  seed: int, output_dir: str) -> BenchTrainer:
    """The stage's trainer on `examples` with a fresh LoRA adapter, its reference log-probs computed once, in order."""
    from datasets import Dataset

    args = MultiNegativeDPOConfig(output_dir=output_dir, per_device_train_batch_size=batch_size, neg_num=neg_num,
                                  packed_forward=way == "packed", precompute_ref_log_probs=True,
                                  gradient_checkpointing=False, use_cpu=device == "cpu", seed=seed,
                                  report_to="none", dataloader_num_workers=0)
    return BenchTrainer(model=base, args=args, processing_class=tokenizer, way=way,
                        train_dataset=Dataset.from_list(examples),
                        peft_config=lora_config(8, 32, 0.0, LLAMA_PROJECTIONS))


def largest_difference(first: list[list[float]], second: list[list[float]]) -> float:
    """Largest absolute difference between two ways' policy log-probs of the same step: they compute the same numbers."""
    return max(abs(a - b) for row_a, row_b in zip(first, second) for a, b in zip(row_a, row_b))


def measure(model_name: str, train_file: str, neg_num: int, way: str, batch_size: int, steps: int,
            dtype: str, device: str, load_in_4bit: bool, group_by_length: bool, seed: int, reference: str) -> dict:
    """One worker: seconds per step, peak memory added and tokens for one way and one k."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    model_path = resolve_model_path(model_name)
    tokenizer = load_tokenizer(model_path, padding_side="left")
    base = load_model_for_training(model_path, resolve_dtype(dtype), load_in_4bit, gradient_checkpointing=False)
    base = base if load_in_4bit else base.to(device)
    records = load_records(train_file)[: batch_size * (steps + 1)]
    builder = PromptBuilder("music", tokenizer, 512, seed=seed)
    examples = [preference_example(tokenizer, builder.build(record, index), record.target,
                                   sample_negatives(record, neg_num, seed, index))
                for index, record in enumerate(records)]
    if group_by_length:
        examples.sort(key=packed_length)
    collate = MultiNegativeCollator(tokenizer.pad_token_id, packed=way == "packed")
    width = 1 + neg_num
    trainer, output_dir = None, tempfile.TemporaryDirectory()
    if reference == "precomputed":
        trainer = stage_trainer(base, tokenizer, examples, way, neg_num, batch_size, device, seed, output_dir.name)
        model = trainer.model
        # The stage's dataset, in the same order, now with each example's reference log-probs.
        examples = trainer.train_dataset.to_list()
    else:
        model = get_peft_model(base, lora_config(8, 32, 0.0, LLAMA_PROJECTIONS))
    model.train()

    def logps(batch):
        if way == "packed":
            return packed_completion_logps(model, batch, width)
        score = completion_logps if way == "plain" else full_logits_logps
        return score(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])

    def step(batch) -> torch.Tensor:
        """One step's forward and backward; returns the policy log-probs."""
        if trainer is not None:  # the stage's default step: its loss against the precomputed reference
            trainer.compute_loss(model, batch).backward()
            return trainer.last_policy
        policy_logps = logps(batch)
        policy_logps.sum().backward()
        with torch.no_grad(), model.disable_adapter():
            logps(batch)
        return policy_logps

    with torch.no_grad():
        model(input_ids=torch.tensor([examples[0]["prompt_ids"]], device=device), use_cache=False)
    baseline = current_memory_bytes(device)
    seconds, tokens, floor = [], 0, 0
    with PeakMemory(device) as memory:
        for index in range(steps + 1):
            chunk = examples[index * batch_size : (index + 1) * batch_size]
            batch = {name: tensor.to(device) for name, tensor in collate(chunk).items()}
            started = time.perf_counter()
            policy_logps = step(batch)
            if device == "cuda":
                torch.cuda.synchronize()
            if index == 1:
                first_logps = policy_logps.detach().float().reshape(len(chunk), width).tolist()
            if index > 0:  # the first step warms up allocators and kernels
                seconds.append(time.perf_counter() - started)
                tokens += batch["input_ids"].numel()
                floor += sum(map(packed_length, chunk))
            model.zero_grad(set_to_none=True)
    output_dir.cleanup()
    return {"seconds_per_step": statistics.median(seconds), "peak_added_gb": (memory.peak - baseline) / 1e9,
            "tokens": tokens, "floor": floor, "first_logps": first_logps,
            "reference_seconds_per_prompt": trainer.reference_seconds / len(examples) if trainer else None}


def bench(model_name: str = EMBEDDED_MODEL_NAME, train_file: str = "data/lastfm/train.json",
          neg_nums: int | tuple = (1, 3, 7, 19), batch_size: int = 2, steps: int = 3, dtype: str = "float32",
          device: str = "cpu", load_in_4bit: bool = False, group_by_length: bool = True, seed: int = 0,
          reference: str = "precomputed", worker: str | None = None):
    """Print plain against packed for each k.

    Args:
        model_name: Base model ('embedded-smollm2', a folder or a hub id); a fresh LoRA adapter goes on it.
        train_file: JSON records to draw prompts from.
        neg_nums: The k values, e.g. 3 or 1,3,7,19.
        batch_size: Prompts per step.
        steps: Timed steps per measurement, after one warm-up step.
        dtype: float32, bfloat16 or float16.
        device: cpu or cuda.
        load_in_4bit: Load the base model in 4-bit NF4 (QLoRA) on cuda:0 with `dtype` as the compute type, as training's --load_in_4bit does.
        group_by_length: Put prompts of similar packed length in one step, as training's sampler does (False: file order).
        seed: Seeds the negatives and the templates.
        reference: precomputed (the stage's default step: reference log-probs computed once by its trainer, none in the step) or per_step (a reference forward in every step: this bench's only step before this flag).
        worker: Internal: 'way:k' (plain, authors or packed) runs one measurement and prints it as JSON.
    """
    if load_in_4bit and device != "cuda":
        raise InputError("--load_in_4bit: the bench places a 4-bit model on cuda:0; pass --device cuda")
    if reference not in REFERENCES:
        raise InputError(f"--reference: expected one of {list(REFERENCES)}, got {reference!r}")
    settings = dict(model_name=model_name, train_file=train_file, batch_size=batch_size, steps=steps, dtype=dtype,
                    device=device, load_in_4bit=load_in_4bit, group_by_length=group_by_length, seed=seed,
                    reference=reference)
    if worker:
        way, neg_num = worker.split(":")
        print(json.dumps(measure(neg_num=int(neg_num), way=way, **settings)))
        return
    values = (neg_nums,) if isinstance(neg_nums, int) else tuple(neg_nums)
    precomputed = reference == "precomputed"
    step = ("the stage's default step: policy forward, loss against the reference log-probs precomputed once, "
            "backward" if precomputed else "policy forward+backward and a reference forward in the step")
    print(f"one S-DPO step ({batch_size} prompts), {step}; "
          f"{dtype}{' (4-bit NF4 base)' if load_in_4bit else ''} on {device}, median of {steps} steps, "
          f"{'grouped by length' if group_by_length else 'in file order'}")
    header = ("k", "plain s", "authors s", "packed s", "speed-up vs plain", "vs authors", "plain GB", "authors GB",
              "packed GB", "memory ratio vs plain", "vs authors", "plain tok/floor", "packed tok/floor",
              "max |logp - packed| plain", "authors")
    if precomputed:
        header += ("reference pass once, s/prompt: plain / authors / packed",)
    print(" | ".join(header))
    for neg_num in values:
        results = {}
        for way in WAYS:
            command = [sys.executable, os.path.abspath(__file__), "--worker", f"{way}:{neg_num}"]
            command += [f"--{name}={value}" for name, value in settings.items()]
            finished = subprocess.run(command, capture_output=True, text=True)
            if finished.returncode != 0:
                sys.exit(f"the {way} worker for k={neg_num} failed:\n{finished.stderr[-3000:]}")
            results[way] = json.loads(finished.stdout.strip().splitlines()[-1])
        plain, packed = results["plain"], results["packed"]
        seconds = [results[way]["seconds_per_step"] for way in WAYS]
        memory = [results[way]["peak_added_gb"] for way in WAYS]
        row = [
            str(neg_num), *(f"{value:.3g}" for value in seconds),
            *(f"{value / seconds[2]:.1f}x" for value in seconds[:2]),
            *(f"{value:.2f}" for value in memory),
            *(f"{value / max(memory[2], 1e-3):.1f}x" for value in memory[:2]),
            f"{plain['tokens'] / plain['floor']:.2f}", f"{packed['tokens'] / packed['floor']:.2f}",
            *(f"{largest_difference(results[way]['first_logps'], packed['first_logps']):.2g}" for way in WAYS[:2]),
        ]
        if precomputed:
            row.append(" / ".join(f"{results[way]['reference_seconds_per_prompt']:.3g}" for way in WAYS))
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    run(bench)
