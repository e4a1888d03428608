"""Generation-based evaluation: greedy answers for a batch of prompts, scored by trainer.metrics."""

import os

import torch
from tqdm.auto import tqdm

from trainer.cli import is_main_process, write_json_atomically, write_jsonl_atomically
from trainer.data_interface import Record
from trainer.metrics import match_answer, summarize

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    """Greedy answers (new tokens only, special tokens dropped), in the order of `prompts`.

    Prompts are batched by length so little compute goes to padding; padding is on the left so
    every row's generation starts right after its own prompt. A batch stops as soon as every row
    has produced end-of-sequence.
    """
    if tokenizer.padding_side != "left":
        raise ValueError("generation needs a left-padding tokenizer")
    lengths = [len(ids) for ids in tokenizer(prompts).input_ids]
    order = sorted(range(len(prompts)), key=lambda index: lengths[index])
    answers = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc="generating", disable=not is_main_process()):
        batch = order[start : start + batch_size]
        inputs = tokenizer([prompts[index] for index in batch], return_tensors="pt", padding=True).to(device)
        outputs = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = outputs[:, inputs.input_ids.shape[1] :]
        for index, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            answers[index] = text
    return answers


def score_answers(indices: list[int], records: list[Record], answers: list[str]) -> tuple[list[dict], dict]:
    """Per-row predictions and the summary metrics (HitRatio@1, ValidRatio, intervals, n)."""
    predictions = []
    for index, record, answer in zip(indices, records, answers, strict=True):
        matched = match_answer(answer, record.candidates)
        predictions.append(
            {
                "index": index,
                "candidates": list(record.candidates),
                "true_item": record.target,
                "answer": answer,
                "matched_candidate": matched,
                "valid": matched is not None,
                "hit": matched == record.target,
            }
        )
    metrics = summarize([row["hit"] for row in predictions], [row["valid"] for row in predictions])
    return predictions, metrics


def write_evaluation(output_dir: str, predictions: list[dict], metrics: dict) -> None:
    """predictions.jsonl first, metrics.json last: a metrics file means the evaluation finished."""
    write_jsonl_atomically(predictions, os.path.join(output_dir, PREDICTIONS_FILE))
    write_json_atomically(metrics, os.path.join(output_dir, METRICS_FILE))
