"""Evaluation: greedy answers scored by trainer.metrics (the headline), and candidate scoring.

Candidate scoring ranks the candidates of each prompt by the model's log-probability of answering
with each of them; the ranking gives HR@1, HR@5, NDCG@5, NDCG@10 and MRR, which show what the model
prefers even where its generated answer names no candidate.
"""

import os

import torch
from tqdm.auto import tqdm

from trainer.cli import is_main_process, write_json_atomically, write_jsonl_atomically
from trainer.data_interface import Record, encode_answer, encode_prompt
from trainer.logprobs import collate_packed, pack_example, packed_completion_logps
from trainer.metrics import match_answer, summarize, summarize_ranks, true_item_rank

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


@torch.no_grad()
def candidate_logps(model, tokenizer, prompts: list[str], records: list[Record], batch_size: int) -> list[list[float]]:
    """log pi(" " + title + eos | prompt) for every candidate of every prompt, in candidate order.

    One packed forward per prompt scores all its candidates (trainer.logprobs): the prompt is
    computed once, each title sees only the prompt and itself. Packed rows are batched by length
    so little compute goes to padding.
    """
    packed = [pack_example(encode_prompt(tokenizer, prompt), [encode_answer(tokenizer, title)
                                                              for title in record.candidates])
              for prompt, record in zip(prompts, records)]
    order = sorted(range(len(packed)), key=lambda index: len(packed[index]["input_ids"]))
    device = next(model.parameters()).device
    scores = [None] * len(packed)
    for start in tqdm(range(0, len(order), batch_size), desc="scoring candidates", disable=not is_main_process()):
        batch_order = order[start : start + batch_size]
        width = max(len(records[index].candidates) for index in batch_order)
        batch = collate_packed([packed[index] for index in batch_order], tokenizer.pad_token_id)
        logps = packed_completion_logps(model, {name: tensor.to(device) for name, tensor in batch.items()}, width)
        for index, row in zip(batch_order, logps.tolist()):
            scores[index] = row[: len(records[index].candidates)]
    return scores


def score_answers(indices: list[int], records: list[Record], answers: list[str],
                  candidate_scores: list[list[float]] | None = None) -> tuple[list[dict], dict]:
    """Per-row predictions and the summary metrics (HitRatio@1, ValidRatio, intervals, n).

    With candidate scores, each row also gets the candidates' log-probabilities, the top-scored
    candidate and the true item's rank, and the metrics the ranking ones (trainer.metrics).
    """
    predictions = []
    for position, (index, record, answer) in enumerate(zip(indices, records, answers, strict=True)):
        matched = match_answer(answer, record.candidates)
        row = {
            "index": index,
            "candidates": list(record.candidates),
            "true_item": record.target,
            "answer": answer,
            "matched_candidate": matched,
            "valid": matched is not None,
            "hit": matched == record.target,
        }
        if candidate_scores is not None:
            scores = candidate_scores[position]
            row["candidate_logps"] = scores
            row["top_scored_candidate"] = record.candidates[max(range(len(scores)), key=scores.__getitem__)]
            row["true_item_rank"] = true_item_rank(scores, record.candidates.index(record.target))
        predictions.append(row)
    metrics = summarize([row["hit"] for row in predictions], [row["valid"] for row in predictions])
    if candidate_scores is not None:
        metrics |= summarize_ranks([row["true_item_rank"] for row in predictions])
    return predictions, metrics


def write_evaluation(output_dir: str, predictions: list[dict], metrics: dict) -> None:
    """predictions.jsonl first, metrics.json last: a metrics file means the evaluation finished."""
    write_jsonl_atomically(predictions, os.path.join(output_dir, PREDICTIONS_FILE))
    write_json_atomically(metrics, os.path.join(output_dir, METRICS_FILE))
