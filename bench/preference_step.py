"""Bench: one preference training step, the plain way against the packed way, side by side.

For each k, both ways score the same prompts (LastFM training records, seeded negatives) on the
same model: a policy forward and backward plus a reference forward, as one S-DPO step does.
Each measurement runs in its own worker process so that its peak memory is its own; the table
reports seconds per step (median of --steps after one warm-up), peak memory added over the loaded
model, tokens processed against the floor (each prompt once plus every title once), and the
plain/packed ratios.

    python bench/preference_step.py                      # k = 1, 3, 7, 19 on the embedded model
    python bench/preference_step.py --neg_nums 3 --dtype bfloat16 --device cuda
"""

import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from trainer.cli import run  # noqa: E402
from trainer.data_interface import PromptBuilder, load_records, preference_example, sample_negatives  # noqa: E402
from trainer.logprobs import completion_logps, packed_completion_logps  # noqa: E402
from trainer.modeling import (  # noqa: E402
    EMBEDDED_MODEL_NAME,
    LLAMA_PROJECTIONS,
    load_model,
    load_tokenizer,
    lora_config,
    resolve_dtype,
    resolve_model_path,
)
from trainer.preference_trainer import MultiNegativeCollator  # noqa: E402


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


def measure(model_name: str, train_file: str, neg_num: int, packed: bool, batch_size: int, steps: int,
            dtype: str, device: str, seed: int) -> dict:
    """One worker: seconds per step, peak memory added and tokens for one way and one k."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    model_path = resolve_model_path(model_name)
    tokenizer = load_tokenizer(model_path, padding_side="left")
    model = get_peft_model(load_model(model_path, resolve_dtype(dtype), device_map={"": device}),
                           lora_config(8, 32, 0.0, LLAMA_PROJECTIONS))
    model.train()
    records = load_records(train_file)[: batch_size * (steps + 1)]
    builder = PromptBuilder("music", tokenizer, 512, seed=seed)
    examples = [preference_example(tokenizer, builder.build(record, index), record.target,
                                   sample_negatives(record, neg_num, seed, index))
                for index, record in enumerate(records)]
    collate = MultiNegativeCollator(tokenizer.pad_token_id, packed=packed)
    width = 1 + neg_num

    def logps(batch):
        if packed:
            return packed_completion_logps(model, batch, width)
        return completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])

    baseline = current_memory_bytes(device)
    seconds, tokens, floor = [], 0, 0
    with PeakMemory(device) as memory:
        for step in range(steps + 1):
            chunk = examples[step * batch_size : (step + 1) * batch_size]
            batch = {name: tensor.to(device) for name, tensor in collate(chunk).items()}
            started = time.perf_counter()
            logps(batch).sum().backward()
            with torch.no_grad(), model.disable_adapter():
                logps(batch)
            if device == "cuda":
                torch.cuda.synchronize()
            if step > 0:  # the first step warms up allocators and kernels
                seconds.append(time.perf_counter() - started)
                tokens += batch["input_ids"].numel()
                floor += sum(len(example["prompt_ids"]) + sum(map(len, example["completion_ids"]))
                             for example in chunk)
            model.zero_grad(set_to_none=True)
    return {"seconds_per_step": statistics.median(seconds), "peak_added_gb": (memory.peak - baseline) / 1e9,
            "tokens": tokens, "floor": floor}


def bench(model_name: str = EMBEDDED_MODEL_NAME, train_file: str = "data/lastfm/train.json",
          neg_nums: int | tuple = (1, 3, 7, 19), batch_size: int = 2, steps: int = 3, dtype: str = "float32",
          device: str = "cpu", seed: int = 0, worker: str | None = None):
    """Print plain against packed for each k.

    Args:
        model_name: Base model ('embedded-smollm2', a folder or a hub id); a fresh LoRA adapter goes on it.
        train_file: JSON records to draw prompts from.
        neg_nums: The k values, e.g. 3 or 1,3,7,19.
        batch_size: Prompts per step.
        steps: Timed steps per measurement, after one warm-up step.
        dtype: float32, bfloat16 or float16.
        device: cpu or cuda.
        seed: Seeds the negatives and the templates.
        worker: Internal: 'packed:k' or 'plain:k' runs one measurement and prints it as JSON.
    """
    settings = dict(model_name=model_name, train_file=train_file, batch_size=batch_size, steps=steps, dtype=dtype,
                    device=device, seed=seed)
    if worker:
        way, neg_num = worker.split(":")
        print(json.dumps(measure(neg_num=int(neg_num), packed=way == "packed", **settings)))
        return
    values = (neg_nums,) if isinstance(neg_nums, int) else tuple(neg_nums)
    print(f"one S-DPO step ({batch_size} prompts): policy forward+backward and reference forward; "
          f"{dtype} on {device}, median of {steps} steps")
    header = ("k", "plain s", "packed s", "speed-up", "plain GB", "packed GB", "memory ratio",
              "plain tok/floor", "packed tok/floor")
    print(" | ".join(header))
    for neg_num in values:
        results = {}
        for way in ("plain", "packed"):
            command = [sys.executable, os.path.abspath(__file__), "--worker", f"{way}:{neg_num}"]
            command += [f"--{name}={value}" for name, value in settings.items()]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[way] = json.loads(output.strip().splitlines()[-1])
        plain, packed = results["plain"], results["packed"]
        print(" | ".join([
            str(neg_num), f"{plain['seconds_per_step']:.2f}", f"{packed['seconds_per_step']:.2f}",
            f"{plain['seconds_per_step'] / packed['seconds_per_step']:.1f}x",
            f"{plain['peak_added_gb']:.2f}", f"{packed['peak_added_gb']:.2f}",
            f"{plain['peak_added_gb'] / max(packed['peak_added_gb'], 1e-3):.1f}x",
            f"{plain['tokens'] / plain['floor']:.2f}", f"{packed['tokens'] / packed['floor']:.2f}",
        ]), flush=True)


if __name__ == "__main__":
    run(bench)
