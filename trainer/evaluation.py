"""Evaluation: greedy answers scored by trainer.metrics (the headline), and candidate scoring.

Candidate scoring ranks the candidates of each prompt by the model's log-probability of answering
with each of them; the ranking gives HR@1, HR@5, NDCG@5, NDCG@10 and MRR, which show what the model
prefers even where its generated answer names no candidate.
"""

import json
import math
import os

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import DynamicCache

from trainer.cli import is_main_process
from trainer.data import Record
from trainer.errors import InputError
from trainer.logprobs import collate_packed, pack_example, packed_completion_logps, pad_left
from trainer.metrics import match_answer, summarize, summarize_diversity, summarize_ranks, true_item_rank
from trainer.outputs import write_json_atomically, write_jsonl_atomically
from trainer.prompts import encode_answer, encode_prompt

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
# Tokens an answer may take: enough for the longest LastFM or MovieLens title and its end of turn.
ANSWER_TOKENS = 20


class NonFiniteScores(InputError):
    """A candidate's log-probability is NaN or infinite: no ranking of it means anything."""


@torch.no_grad()
def answer_and_score(model, tokenizer, prompts: list[str], records: list[Record], batch_size: int,
                     max_new_tokens: int, score_candidates: bool) -> tuple[list[str] | None, list[list[float]] | None]:
    """Greedy answers, and log pi(" " + title + eos | prompt) of every candidate, in the order of `prompts`.

    Returns (answers, scores): answers are the new tokens decoded without special tokens (None when
    `max_new_tokens` is 0), scores are per prompt in candidate order (None without
    `score_candidates`).

    Prompts are batched by length so little compute goes to padding, and left-padded so every
    row's answer starts right after its own prompt. A batch stops generating as soon as every row
    has produced end-of-sequence. With candidate scoring, one packed forward per batch scores all
    the candidates (trainer.logprobs: each title sees only the prompt and itself) with the prompts
    aligned at the same end; their keys and values, cut at the prompt, are then the cache greedy
    decoding starts from, so each prompt is computed once for both.
    """
    if tokenizer.padding_side != "left":
        raise ValueError("generation needs a left-padding tokenizer")
    if max_new_tokens == 0 and not score_candidates:
        raise ValueError("nothing to do: no answers (max_new_tokens 0) and no candidate scores")
    prompt_ids = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    packed = [pack_example(ids, [encode_answer(tokenizer, title) for title in record.candidates])
              for ids, record in zip(prompt_ids, records)] if score_candidates else None
    lengths = [len(example["input_ids"]) for example in packed] if packed else [len(ids) for ids in prompt_ids]
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    answers = [""] * len(prompts) if max_new_tokens else None
    scores = [None] * len(prompts) if score_candidates else None
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc="evaluating", disable=not is_main_process()):
        batch = order[start : start + batch_size]
        cache = None
        if score_candidates:
            cache = DynamicCache(config=model.config) if max_new_tokens else None
            width = max(len(records[index].candidates) for index in batch)
            packed_batch = collate_packed([packed[index] for index in batch], tokenizer.pad_token_id,
                                          align_prompts=max_new_tokens > 0)
            logps = packed_completion_logps(model, {name: tensor.to(device) for name, tensor in packed_batch.items()},
                                            width, cache=cache)
            for index, row in zip(batch, logps.tolist()):
                scores[index] = row[: len(records[index].candidates)]
        if not max_new_tokens:
            continue
        input_ids = pad_left([prompt_ids[index] for index in batch], tokenizer.pad_token_id).to(device)
        attention_mask = pad_left([[1] * len(prompt_ids[index]) for index in batch], 0).to(device)
        if cache is not None:
            # Generation computes the last prompt position itself: its logits give the first answer token.
            cache.crop(input_ids.shape[1] - 1 - cache.get_seq_length())  # a negative count of positions to drop
        outputs = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=cache,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = outputs[:, input_ids.shape[1] :]
        for index, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            answers[index] = text
    return answers, scores


def answer_and_score_shared(model, tokenizer, prompts: list[str], records: list[Record], batch_size: int,
                            max_new_tokens: int, score_candidates: bool) -> tuple[list[str] | None,
                                                                                  list[list[float]] | None]:
    """answer_and_score with the prompts shared among the processes (accelerate launch): each
    process takes a contiguous share, and every process gets back all answers and scores."""
    with PartialState().split_between_processes(list(range(len(prompts)))) as shard:
        answers, scores = answer_and_score(model, tokenizer, [prompts[index] for index in shard],
                                           [records[index] for index in shard], batch_size, max_new_tokens,
                                           score_candidates)
    # Gathered in process order, the contiguous shares are back in prompt order.
    return (None if answers is None else gather_object(answers), None if scores is None else gather_object(scores))


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
            if not all(map(math.isfinite, scores)):
                raise NonFiniteScores(f"record {index}: the model's log-probabilities of its candidates are not "
                                      f"finite ({scores[:3]}...): its weights are probably not finite either "
                                      "(a diverged training run?); nothing was written")
            row["candidate_logps"] = scores
            row["top_scored_candidate"] = record.candidates[max(range(len(scores)), key=scores.__getitem__)]
            row["true_item_rank"] = true_item_rank(scores, record.candidates.index(record.target))
        predictions.append(row)
    metrics = summarize([row["hit"] for row in predictions], [row["valid"] for row in predictions])
    metrics |= summarize_diversity([row["matched_candidate"] for row in predictions])
    if candidate_scores is not None:
        metrics |= summarize_ranks([row["true_item_rank"] for row in predictions])
    return predictions, metrics


def write_evaluation(output_dir: str, predictions: list[dict], metrics: dict) -> None:
    """predictions.jsonl, then metrics.json: a metrics file means the evaluation finished. Each is written whole
    under a temporary name and renamed; both are checked as JSON (no NaN) before either appears."""
    json.dumps(metrics, allow_nan=False)  # a ValueError here leaves neither file
    write_jsonl_atomically(predictions, os.path.join(output_dir, PREDICTIONS_FILE))
    write_json_atomically(metrics, os.path.join(output_dir, METRICS_FILE))
