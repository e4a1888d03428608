"""Bench: an SFT step with LoRA on every layer, LoRA on the top layers only, and the top layers run
from the frozen layers' cached output (sft.py --lora_top_layers N --cache_frozen_layers True).

All three in one process on the same model and the same batches of LastFM prompts (with hints,
as the cpu profile trains): each step is the answer-only loss, forward and backward. The cached
way also pays once for the frozen layers' forward over its examples; that cost is printed per
example, and the step time of a run of E epochs is (cache + E x step) / E per step.

    python bench/frozen_layers.py                         # 16 prompts, top 4 of 30 layers
    python bench/frozen_layers.py --top_layers 8 --device cuda --dtype bfloat16
"""

import time

import torch
from peft import get_peft_model
from timing import median_seconds

from trainer.cli import run
from trainer.collaborative import load_hints
from trainer.data import load_records, select_indices
from trainer.frozen_layers import completion_logps_from_frozen, frozen_hidden_states, pad_hidden_left, top_lora_layers
from trainer.logprobs import completion_logps
from trainer.modeling import (EMBEDDED_MODEL_NAME, LLAMA_PROJECTIONS, load_model, load_tokenizer, lora_config,
                              resolve_dtype, resolve_model_path)
from trainer.prompts import PromptBuilder, supervised_example
from trainer.sft_trainer import AnswerCollator, IGNORED_LABEL


def bench(model_name: str = EMBEDDED_MODEL_NAME, train_file: str = "data/lastfm/train.json",
          num_prompts: int = 16, batch_size: int = 4, top_layers: int = 4, dtype: str = "float32",
          device: str = "cpu", seed: int = 0, repeats: int = 3):
    """Print seconds per SFT step (forward and backward of one batch) for the three ways, and their ratios.

    Args:
        model_name: Base model ('embedded-smollm2', a folder or a hub id).
        train_file: JSON records to draw prompts from; their hints are counted from the same file.
        num_prompts: Prompts timed, a seeded sample, in batches of --batch_size.
        batch_size: Prompts per step.
        top_layers: Decoder layers with LoRA in the top-layer ways.
        dtype: float32 or bfloat16.
        device: cpu or cuda.
        seed: Seeds the sample.
        repeats: Timed repetitions (the median is printed), after one warm-up.
    """
    torch_dtype = resolve_dtype(dtype)
    model_path = resolve_model_path(model_name)
    tokenizer = load_tokenizer(model_path, padding_side="left")
    records = load_records(train_file)
    indices = select_indices(len(records), num_prompts, seed)
    builder = PromptBuilder("music", tokenizer, 512, template_index=0, hints=load_hints(train_file, 3, train_file))
    rows = [supervised_example(tokenizer, builder.build(records[index], index), records[index].target)
            for index in indices]
    collator = AnswerCollator(tokenizer.pad_token_id)
    batches = [collator(rows[start : start + batch_size]) for start in range(0, len(rows), batch_size)]
    batches = [{name: tensor.to(device) for name, tensor in batch.items()} for batch in batches]

    def model_with_lora(layers):
        torch.manual_seed(seed)
        base = load_model(model_path, torch_dtype).to(device)
        return get_peft_model(base, lora_config(8, 32, 0.0, ",".join(LLAMA_PROJECTIONS),
                                                top_lora_layers(base, top_layers) if layers == "top" else None))

    def steps(model, logps_of):
        """One pass over the batches: answer-only loss, backward, gradients dropped."""
        def run_all():
            for index, batch in enumerate(batches):
                answer_mask = batch["labels"] != IGNORED_LABEL
                loss = -logps_of(model, index, answer_mask).sum() / answer_mask.sum()
                loss.backward()
                model.zero_grad(set_to_none=True)
        return run_all

    def full(model, index, answer_mask):
        batch = batches[index]
        return completion_logps(model, batch["input_ids"], batch["attention_mask"], answer_mask)

    every_layer = median_seconds(steps(model_with_lora("all"), full), device, repeats, warmup=1) / len(batches)
    top_model = model_with_lora("top")
    top_only = median_seconds(steps(top_model, full), device, repeats, warmup=1) / len(batches)
    first = len(top_model.get_base_model().model.layers) - top_layers
    started = time.perf_counter()
    cache = frozen_hidden_states(top_model, [row["input_ids"] for row in rows], first, tokenizer.pad_token_id)
    cache_seconds = (time.perf_counter() - started) / len(rows)
    hidden = [pad_hidden_left(cache[start : start + batch_size]).to(device) for start in range(0, len(rows), batch_size)]

    def cached(model, index, answer_mask):
        batch = batches[index]
        return completion_logps_from_frozen(model, hidden[index], first, batch["input_ids"], batch["attention_mask"],
                                            answer_mask)

    cached_step = median_seconds(steps(top_model, cached), device, repeats, warmup=1) / len(batches)
    print(f"{len(rows)} prompts in steps of {batch_size}, {dtype} on {device}, LoRA r 8 on {top_layers} top layers "
          f"of {first + top_layers}")
    print("| way | s / step | vs every layer |")
    print("|---|---|---|")
    for name, seconds in (("LoRA on every layer", every_layer), (f"LoRA on the top {top_layers}", top_only),
                          (f"top {top_layers} from the cache", cached_step)):
        print(f"| {name} | {seconds:.3f} | {every_layer / seconds:.2f}x |")
    print(f"cache, once: {cache_seconds * batch_size:.3f} s per {batch_size} prompts "
          f"({cache_seconds:.3f} s per prompt); over 5 epochs the cached way costs "
          f"{(cache_seconds * batch_size + 5 * cached_step) / 5:.3f} s per step")


if __name__ == "__main__":
    run(bench)
