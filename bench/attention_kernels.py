"""Bench: the packed preference forward and backward under sdpa and under flex_attention, side by side.

A random LLaMA of the embedded model's shape (SmolLM2-135M: 30 layers, width 576, 9 query and 3
key/value heads, vocabulary 49,152; --layers and --hidden shrink it) with LoRA on every projection
scores packed batches (trainer.logprobs) of made-up prompts and answers of LastFM's lengths (a
prompt of 150-210 tokens and 1 + k answers of 3-9 tokens). Each kernel gets the same weights and
batches: sdpa reads a dense [B, 1, S, S] boolean mask, flex_attention a block mask computed from
the segments. Reported per kernel: seconds per step (policy forward and backward, median of
--steps after two warm-ups, which also pay flex_attention's compilation), tokens per second, peak
memory on a GPU, and the largest difference of its log-probs and LoRA gradients from sdpa's.
FlexAttention has no backward on a CPU: there flex_attention is measured forward only.

    python bench/attention_kernels.py --device cuda                      # scripts/device.sh receive runs this
    python bench/attention_kernels.py --device cpu --layers 2 --hidden 64 --batch_size 4
"""

import json
import random
import statistics
import time

import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from trainer.cli import run
from trainer.errors import InputError
from trainer.logprobs import collate_packed, pack_example, packed_completion_logps
from trainer.modeling import lora_config, resolve_dtype

KERNELS = ("sdpa", "flex_attention")


def made_up_batches(count: int, batch_size: int, neg_num: int, vocabulary: int, seed: int) -> list[dict]:
    """Packed batches of random tokens with LastFM's prompt and answer lengths."""
    generator = random.Random(seed)

    def tokens(length: int) -> list[int]:
        return [generator.randrange(vocabulary) for _ in range(length)]

    return [collate_packed([pack_example(tokens(generator.randint(150, 210)),
                                         [tokens(generator.randint(3, 9)) for _ in range(1 + neg_num)])
                            for _ in range(batch_size)], pad_token_id=0)
            for _ in range(count)]


def lora_llama(kernel: str, layers: int, hidden: int, dtype: torch.dtype, device: str):
    config = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 192), max_position_embeddings=2048,
                         tie_word_embeddings=True, attn_implementation=kernel)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    model = get_peft_model(model, lora_config(8, 32, 0.0, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"))
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; random values make every gradient path count
            parameter.data.normal_(std=0.02)
    return model


def measure(kernel: str, batches: list[dict], neg_num: int, layers: int, hidden: int, dtype: torch.dtype,
            device: str, steps: int) -> dict:
    model = lora_llama(kernel, layers, hidden, dtype, device)
    backward = not (kernel == "flex_attention" and device == "cpu")
    seconds, first_logps, first_gradients = [], None, None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for index in range(steps + 2):
        batch = {name: tensor.to(device) for name, tensor in batches[index % len(batches)].items()}
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.set_grad_enabled(backward):
            logps = packed_completion_logps(model, batch, 1 + neg_num)
            if backward:
                logps.sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if index >= 2:
            seconds.append(time.perf_counter() - started)
        if index == 0:
            first_logps = logps.detach().float().cpu()
            if backward:
                first_gradients = {name: parameter.grad.float().cpu() for name, parameter in model.named_parameters()
                                   if parameter.grad is not None}
    tokens = sum(int((batch["segments"] != -2).sum()) for batch in batches) / len(batches)
    step = statistics.median(seconds)
    return {"kernel": kernel, "backward": backward, "seconds_per_step": step, "tokens_per_second": tokens / step,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
            "logps": first_logps, "gradients": first_gradients}


def bench(device: str = "cuda", dtype: str = "auto", batch_size: int = 32, neg_num: int = 3, steps: int = 10,
          layers: int = 30, hidden: int = 576, seed: int = 0, output: str | None = None):
    """Time and compare the attention kernels on packed preference batches.

    Args:
        device: cuda or cpu.
        dtype: auto (bf16 on a capable GPU, else fp32), float32 or bfloat16.
        batch_size: Prompts per packed batch.
        neg_num: Rejected answers per prompt (each prompt carries 1 + neg_num answers).
        steps: Timed steps per kernel, after two warm-up steps.
        layers: Decoder layers of the random LLaMA (the embedded model: 30).
        hidden: Its width (the embedded model: 576).
        seed: Seeds the made-up batches.
        output: Also write the table's rows as JSON to this file.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no GPU here; use --device cpu")
    torch_dtype = resolve_dtype(dtype)
    batches = made_up_batches(4, batch_size, neg_num, 49152, seed)
    results = [measure(kernel, batches, neg_num, layers, hidden, torch_dtype, device, steps) for kernel in KERNELS]
    reference = results[0]
    rows = []
    print("| kernel | pass | s / step | tokens / s | peak GB | max abs logp diff | max abs grad diff |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        logp_difference = float((result["logps"] - reference["logps"]).abs().max())
        gradient_difference = None
        if result["gradients"] is not None:
            gradient_difference = max(float((gradient - reference["gradients"][name]).abs().max())
                                      for name, gradient in result["gradients"].items())
        row = {key: result[key] for key in ("kernel", "backward", "seconds_per_step", "tokens_per_second", "peak_gb")}
        row |= {"max_abs_logp_difference": logp_difference, "max_abs_gradient_difference": gradient_difference}
        rows.append(row)
        peak = f"{row['peak_gb']:.2f}" if row["peak_gb"] is not None else ""
        gradient = f"{gradient_difference:.2e}" if gradient_difference is not None else ""
        print(f"| {row['kernel']} | {'forward + backward' if row['backward'] else 'forward'} | "
              f"{row['seconds_per_step']:.4f} | {row['tokens_per_second']:,.0f} | {peak} | {logp_difference:.2e} | "
              f"{gradient} |")
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            json.dump({"device": device, "dtype": str(torch_dtype), "batch_size": batch_size, "neg_num": neg_num,
                       "layers": layers, "hidden": hidden, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    run(bench)
