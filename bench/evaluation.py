"""Bench: evaluation by generation and by candidate scoring, against one forward over the prompts alone.

All run in one process on the same model and the same test prompts: the floor is a single
batched forward over the prompts (the least any evaluation must compute), generation is
inference's greedy answer alone, candidate scoring is one packed forward per prompt over all its
candidates alone, and both is what inference.py runs: the scoring pass, then greedy decoding from
the prompts' cached keys and values. With an adapter, these run with the adapter as separate LoRA
weights, then generation and both again with it merged into the base weights, as inference.py
evaluates. Prints seconds per prompt and the ratio of each to the floor.

    python bench/evaluation.py                           # 64 LastFM test prompts, embedded model
    python bench/evaluation.py --adapter output/sft --dtype bfloat16 --device cuda
"""

import torch
from timing import median_seconds

from trainer.cli import run
from trainer.data import load_records, select_indices
from trainer.evaluation import answer_and_score
from trainer.modeling import (EMBEDDED_MODEL_NAME, load_model_for_evaluation, load_tokenizer, resolve_dtype,
                              resolve_model_path)
from trainer.prompts import PromptBuilder


@torch.no_grad()
def prompt_forward(model, tokenizer, prompts: list[str], batch_size: int) -> None:
    """The floor: each prompt through the model once, batched by length, the vocabulary head on the last position only."""
    device = next(model.parameters()).device
    prompts = sorted(prompts, key=lambda prompt: len(tokenizer(prompt).input_ids))
    for start in range(0, len(prompts), batch_size):
        inputs = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
        model(**inputs, logits_to_keep=1, use_cache=False)


def bench(model_name: str = EMBEDDED_MODEL_NAME, adapter: str | None = None,
          test_file: str = "data/lastfm/test.json", num_prompts: int = 64, batch_size: int = 16,
          max_new_tokens: int = 20, dtype: str = "float32", device: str = "cpu", seed: int = 0, repeats: int = 3):
    """Print seconds per prompt for the prompt-only floor, generation, candidate scoring and both.

    Args:
        model_name: Base model ('embedded-smollm2', a folder or a hub id).
        adapter: LoRA adapter folder to apply (a trained model answers differently from the base).
        test_file: JSON records to draw prompts from.
        num_prompts: Prompts evaluated, a seeded sample.
        batch_size: Prompts per batch, for all of them.
        max_new_tokens: Longest generated answer.
        dtype: float32, bfloat16 or float16.
        device: cpu or cuda.
        seed: Seeds the sample of prompts.
        repeats: Each measurement is the median of this many runs.
    """
    model_path = resolve_model_path(model_name)
    tokenizer = load_tokenizer(model_path, padding_side="left")
    model = load_model_for_evaluation(model_path, resolve_dtype(dtype), False, {"": device}, adapter, merge_adapter=False)
    records = load_records(test_file)
    indices = select_indices(len(records), num_prompts, seed)
    records = [records[index] for index in indices]
    builder = PromptBuilder("music", tokenizer, 512, template_index=0)
    prompts = [builder.build(record, index) for record, index in zip(records, indices)]

    prompt_forward(model, tokenizer, prompts[:batch_size], batch_size)  # warm-up
    def evaluation(model, new_tokens: int, score_candidates: bool):
        return lambda: answer_and_score(model, tokenizer, prompts, records, batch_size, new_tokens,
                                        score_candidates=score_candidates)

    seconds = {
        "prompt forward (floor)": median_seconds(lambda: prompt_forward(model, tokenizer, prompts, batch_size),
                                                 device, repeats),
        "generation": median_seconds(evaluation(model, max_new_tokens, False), device, repeats),
        "candidate scoring": median_seconds(evaluation(model, 0, True), device, repeats),
        "both (inference.py)": median_seconds(evaluation(model, max_new_tokens, True), device, repeats),
    }
    if adapter:
        # What inference.py runs: the adapter folded into the base weights, the same answers up to rounding.
        merged = model.merge_and_unload()
        seconds["generation, adapter merged"] = median_seconds(evaluation(merged, max_new_tokens, False), device,
                                                               repeats)
        seconds["both, adapter merged"] = median_seconds(evaluation(merged, max_new_tokens, True), device, repeats)
    floor = seconds["prompt forward (floor)"]
    print(f"{len(prompts)} prompts, batches of {batch_size}, {dtype} on {device}, median of {repeats} runs"
          f"{' with ' + adapter if adapter else ''}")
    print("what | s/prompt | x floor")
    for name, value in seconds.items():
        print(f"{name} | {value / len(prompts):.3f} | {value / floor:.2f}")


if __name__ == "__main__":
    run(bench)
