"""The rejected titles of a preference example (--negatives), one of:

random   drawn uniformly from the other candidates, seeded by run and example (the paper's);
popular  drawn in proportion to 1 + each candidate's count as a training true item;
hinted   the other candidates the training counts rank highest (needs hints): the ones a model
         that follows the hint names wrongly;
hard     the other candidates the starting model (the SFT adapter) scores highest: the mistakes it
         is closest to making. Scored once, before training, with one packed forward per prompt
         (trainer.evaluation), and cached in the stage's output folder for a rerun (never in the
         adapter folder it reads, which may be shared or read-only).
self     the starting model's own answer when it names a wrong candidate, then random others: SPRec's
         self-play negatives (Gao et al. 2025, "SPRec: Self-Play to Debias LLM-based Recommendation"),
         where each round's rejected titles are the previous round's answers. Where the answer is right
         or names no single candidate, all k are random. Answered once, greedily as inference.py
         answers, and cached beside the scores.
"""

import hashlib
import json
import logging
import os
import random
from collections.abc import Mapping

from trainer.cli import is_main_process
from trainer.data import Record
from trainer.evaluation import ANSWER_TOKENS, answer_and_score_shared
from trainer.metrics import match_answer
from trainer.outputs import write_json_atomically

NEGATIVE_SAMPLING = ("random", "popular", "hinted", "hard", "self")
# Where the starting model's candidate scores and answers are kept, inside the preference stage's output folder.
SCORE_CACHE_FOLDER = "candidate_scores"

logger = logging.getLogger("negatives")


def sample_negatives(record: Record, neg_num: int, seed: int, example_index: int) -> list[str]:
    """`neg_num` candidates other than the true one, without replacement, seeded by run and example."""
    others = [title for title in record.candidates if title != record.target]
    if not 1 <= neg_num <= len(others):
        raise ValueError(f"cannot draw {neg_num} negatives from {len(others)}")
    return random.Random(f"{seed}:{example_index}:negatives").sample(others, neg_num)


def sample_popular_negatives(record: Record, neg_num: int, seed: int, example_index: int,
                             target_counts: Mapping[str, int]) -> list[str]:
    """`neg_num` candidates other than the true one, without replacement, each drawn with
    probability proportional to 1 + the number of training records it is the true item of.

    Weighted sampling without replacement by Efraimidis and Spirakis' keys (u ** (1 / weight), the
    largest keys win), seeded by run and example as `sample_negatives` is.
    """
    others = [title for title in record.candidates if title != record.target]
    if not 1 <= neg_num <= len(others):
        raise ValueError(f"cannot draw {neg_num} negatives from {len(others)}")
    rng = random.Random(f"{seed}:{example_index}:popular-negatives")
    keys = {title: rng.random() ** (1.0 / (1 + target_counts.get(title, 0))) for title in others}
    return sorted(others, key=keys.__getitem__, reverse=True)[:neg_num]


def highest_scored_others(record: Record, scores: list[float], neg_num: int) -> list[str]:
    """The `neg_num` candidates other than the true one with the highest scores, best first (ties: listed first)."""
    ranked = sorted(range(len(record.candidates)), key=lambda position: -scores[position])
    return [record.candidates[position] for position in ranked if record.candidates[position] != record.target][:neg_num]


def own_answer_first(record: Record, own_answer: str | None, neg_num: int, seed: int, example_index: int) -> list[str]:
    """The model's own answer (the candidate it named) when it is wrong, then `neg_num` - 1 others drawn as
    `sample_negatives` draws; `neg_num` drawn ones when the answer is right or names no candidate."""
    if own_answer is None or own_answer == record.target:
        return sample_negatives(record, neg_num, seed, example_index)
    if own_answer not in record.candidates:
        raise ValueError(f"the answer {own_answer!r} is not a candidate of the record")
    others = [title for title in record.candidates if title not in (record.target, own_answer)]
    if not 0 <= neg_num - 1 <= len(others):
        raise ValueError(f"cannot draw {neg_num - 1} negatives from {len(others)}")
    return [own_answer] + random.Random(f"{seed}:{example_index}:negatives").sample(others, neg_num - 1)


def rejected_titles(record: Record, index: int, negatives: str, neg_num: int, seed: int, hints=None,
                    popularity: Mapping[str, int] | None = None, scores: list[float] | None = None,
                    own_answer: str | None = None) -> list[str]:
    """The `neg_num` rejected titles of the record at `index` of its file, by the rule `negatives`
    (`scores`: the starting model's candidate scores, for "hard"; `own_answer`: the candidate its answer
    names or None, for "self")."""
    if negatives == "self":
        return own_answer_first(record, own_answer, neg_num, seed, index)
    if negatives == "popular":
        return sample_popular_negatives(record, neg_num, seed, index, popularity)
    if negatives == "hinted":
        return hints.hinted_negatives(record, neg_num)
    if negatives == "hard":
        return highest_scored_others(record, scores, neg_num)
    return sample_negatives(record, neg_num, seed, index)


def _cache_key(model_path: str, adapter: str | None, prompts: list[str], records: list[Record]) -> str:
    """Changes with the base model, the adapter's weights, the prompts or their candidates."""
    digest = hashlib.sha256(model_path.encode())
    for file_name in sorted(os.listdir(adapter)) if adapter else ():
        if file_name.startswith("adapter_model"):
            with open(os.path.join(adapter, file_name), "rb") as handle:
                digest.update(handle.read())
    digest.update(json.dumps([prompts, [record.candidates for record in records]], ensure_ascii=False).encode())
    return digest.hexdigest()[:20]


def _starting_model_outputs(model, tokenizer, prompts: list[str], records: list[Record], batch_size: int,
                            model_path: str, adapter: str | None, cache_folder: str, answers: bool) -> list:
    """The starting model's answers (each the candidate it names, or None) or candidate scores, per prompt,
    read from or written to cache_folder/candidate_scores/, keyed by the base model, the adapter's weights
    and the prompts: a rerun of the stage computes them once."""
    key = _cache_key(model_path, adapter, prompts, records)
    what = "answers" if answers else "candidate scores"
    cache_path = os.path.join(cache_folder, SCORE_CACHE_FOLDER, f"{key}-answers.json" if answers else f"{key}.json")
    if os.path.isfile(cache_path):
        with open(cache_path, encoding="utf-8") as handle:
            logger.info("The starting model's %s read from %s", what, cache_path)
            return json.load(handle)
    was_training = model.training
    model.eval()
    texts, scores = answer_and_score_shared(model, tokenizer, prompts, records, batch_size,
                                            max_new_tokens=ANSWER_TOKENS if answers else 0,
                                            score_candidates=not answers)
    model.train(was_training)
    outputs = [match_answer(text, record.candidates) for text, record in zip(texts, records)] if answers else scores
    if is_main_process():
        write_json_atomically(outputs, cache_path)
        logger.info("The starting model's %s cached in %s", what, cache_path)
    return outputs


def starting_model_scores(model, tokenizer, prompts: list[str], records: list[Record], batch_size: int,
                          model_path: str, adapter: str | None, cache_folder: str) -> list[list[float]]:
    """log pi(title | prompt) of every candidate under `model` as it starts training, per prompt (cached)."""
    return _starting_model_outputs(model, tokenizer, prompts, records, batch_size, model_path, adapter, cache_folder,
                                   answers=False)


def starting_model_answers(model, tokenizer, prompts: list[str], records: list[Record], batch_size: int,
                           model_path: str, adapter: str | None, cache_folder: str) -> list[str | None]:
    """The candidate `model`'s greedy answer names as it starts training, or None, per prompt (cached)."""
    return _starting_model_outputs(model, tokenizer, prompts, records, batch_size, model_path, adapter, cache_folder,
                                   answers=True)
