"""Bench: one preference training step, the plain ways against the packed way, side by side.

For each k, every way scores the same prompts (LastFM training records, seeded negatives) on the
same model: a policy forward and backward plus a reference forward, as one S-DPO step does.
  plain    1 + k left-padded sequences per prompt, the vocabulary head on the answer positions
           only (trainer.logprobs.completion_logps, --packed_forward False in training);
  authors  the same sequences with logits at every position, as the S-DPO authors' code scores;
  packed   one sequence per prompt holding the prompt once and every answer (the default).
The prompts of a step have similar packed lengths, as training's sampler groups them
(--group_by_length False takes them in file order). Each measurement runs in its own worker
process so that its peak memory is its own; the table reports seconds per step (median of
--steps after one warm-up), peak memory added over the loaded model after one forward (so buffers
any forward allocates, the same for every way, count for none), tokens processed against the
floor (each prompt once plus every title once), the ratios of each plain way to the packed one,
and, as a check that the ways compute the same numbers, the largest difference between a plain
way's and the packed way's policy log-probs in the first timed step.

    python bench/preference_step.py                      # k = 1, 3, 7, 19 on the embedded model
    python bench/preference_step.py --neg_nums 3,19 --dtype bfloat16 --device cuda
    python bench/preference_step.py --neg_nums 3,19 --dtype bfloat16 --device cuda --load_in_4bit True
"""

import json
import os
import statistics
import subprocess
import sys
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
from trainer.preference_trainer import MultiNegativeCollator, packed_length
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


def largest_difference(first: list[list[float]], second: list[list[float]]) -> float:
    """Largest absolute difference between two ways' policy log-probs of the same step: they compute the same numbers."""
    return max(abs(a - b) for row_a, row_b in zip(first, second) for a, b in zip(row_a, row_b))


def measure(model_name: str, train_file: str, neg_num: int, way: str, batch_size: int, steps: int,
            dtype: str, device: str, load_in_4bit: bool, group_by_length: bool, seed: int) -> dict:
    """One worker: seconds per step, peak memory added and tokens for one way and one k."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    model_path = resolve_model_path(model_name)
    tokenizer = load_tokenizer(model_path, padding_side="left")
    base = load_model_for_training(model_path, resolve_dtype(dtype), load_in_4bit, gradient_checkpointing=False)
    model = get_peft_model(base if load_in_4bit else base.to(device), lora_config(8, 32, 0.0, LLAMA_PROJECTIONS))
    model.train()
    records = load_records(train_file)[: batch_size * (steps + 1)]
    builder = PromptBuilder("music", tokenizer, 512, seed=seed)
    examples = [preference_example(tokenizer, builder.build(record, index), record.target,
                                   sample_negatives(record, neg_num, seed, index))
                for index, record in enumerate(records)]
    if group_by_length:
        examples.sort(key=packed_length)
    collate = MultiNegativeCollator(tokenizer.pad_token_id, packed=way == "packed")
    width = 1 + neg_num

    def logps(batch):
        if way == "packed":
            return packed_completion_logps(model, batch, width)
        score = completion_logps if way == "plain" else full_logits_logps
        return score(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])

    with torch.no_grad():
        model(input_ids=torch.tensor([examples[0]["prompt_ids"]], device=device), use_cache=False)
    baseline = current_memory_bytes(device)
    seconds, tokens, floor = [], 0, 0
    with PeakMemory(device) as memory:
        for step in range(steps + 1):
            chunk = examples[step * batch_size : (step + 1) * batch_size]
            batch = {name: tensor.to(device) for name, tensor in collate(chunk).items()}
            started = time.perf_counter()
            policy_logps = logps(batch)
            policy_logps.sum().backward()
            with torch.no_grad(), model.disable_adapter():
                logps(batch)
            if device == "cuda":
                torch.cuda.synchronize()
            if step == 1:
                first_logps = policy_logps.detach().float().reshape(len(chunk), width).tolist()
            if step > 0:  # the first step warms up allocators and kernels
                seconds.append(time.perf_counter() - started)
                tokens += batch["input_ids"].numel()
                floor += sum(map(packed_length, chunk))
            model.zero_grad(set_to_none=True)
    return {"seconds_per_step": statistics.median(seconds), "peak_added_gb": (memory.peak - baseline) / 1e9,
            "tokens": tokens, "floor": floor, "first_logps": first_logps}


def bench(model_name: str = EMBEDDED_MODEL_NAME, train_file: str = "data/lastfm/train.json",
          neg_nums: int | tuple = (1, 3, 7, 19), batch_size: int = 2, steps: int = 3, dtype: str = "float32",
          device: str = "cpu", load_in_4bit: bool = False, group_by_length: bool = True, seed: int = 0,
          worker: str | None = None):
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
        worker: Internal: 'way:k' (plain, authors or packed) runs one measurement and prints it as JSON.
    """
    if load_in_4bit and device != "cuda":
        raise InputError("--load_in_4bit: the bench places a 4-bit model on cuda:0; pass --device cuda")
    settings = dict(model_name=model_name, train_file=train_file, batch_size=batch_size, steps=steps, dtype=dtype,
                    device=device, load_in_4bit=load_in_4bit, group_by_length=group_by_length, seed=seed)
    if worker:
        way, neg_num = worker.split(":")
        print(json.dumps(measure(neg_num=int(neg_num), way=way, **settings)))
        return
    values = (neg_nums,) if isinstance(neg_nums, int) else tuple(neg_nums)
    print(f"one S-DPO step ({batch_size} prompts): policy forward+backward and reference forward; "
          f"{dtype}{' (4-bit NF4 base)' if load_in_4bit else ''} on {device}, median of {steps} steps, "
          f"{'grouped by length' if group_by_length else 'in file order'}")
    header = ("k", "plain s", "authors s", "packed s", "speed-up vs plain", "vs authors", "plain GB", "authors GB",
              "packed GB", "memory ratio vs plain", "vs authors", "plain tok/floor", "packed tok/floor",
              "max |logp - packed| plain", "authors")
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
        print(" | ".join([
            str(neg_num), *(f"{value:.3g}" for value in seconds),
            *(f"{value / seconds[2]:.1f}x" for value in seconds[:2]),
            *(f"{value:.2f}" for value in memory),
            *(f"{value / max(memory[2], 1e-3):.1f}x" for value in memory[:2]),
            f"{plain['tokens'] / plain['floor']:.2f}", f"{packed['tokens'] / packed['floor']:.2f}",
            *(f"{largest_difference(results[way]['first_logps'], packed['first_logps']):.2g}" for way in WAYS[:2]),
        ]), flush=True)


if __name__ == "__main__":
    run(bench)
