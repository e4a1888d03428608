"""Which candidate an answer names, HitRatio@1, ValidRatio and their confidence intervals.

The matching rule (exact and case-sensitive, like the paper's substring test, but not fooled by a
title inside another title):
  1. A candidate is *mentioned* where its exact text occurs in the answer and does not run into a
     neighbouring letter or digit: "Hope" is not mentioned in "Hopeless" nor in "Hope2".
     (A title that starts or ends with punctuation, like "Sunn O)))", has no such check at that end.)
  2. A mention that lies inside a longer mention of another candidate does not count: in
     "Genesis P-Orridge", only "Genesis P-Orridge" is named, not "Genesis".
  3. The answer is *valid* when the mentions left name exactly one candidate (repeats of the same
     candidate are fine); it is a *hit* when it is valid and that candidate is the true one.

HitRatio@1 = hits / all rows and ValidRatio = valid answers / all rows, as in the S-DPO paper.
"""

import collections
import math

import numpy as np

BOOTSTRAP_SAMPLES = 1000
TOP_NAMED = 3  # or_ratio's most named items, SPRec's choice
# Resamples drawn together: BOOTSTRAP_CHUNK x rows indices in memory at once, whatever the number of rows.
BOOTSTRAP_CHUNK = 50


def _is_word_character(character: str) -> bool:
    return character.isalnum()


def _mention_spans(answer: str, title: str) -> list[tuple[int, int]]:
    """Where `title` occurs in `answer` without running into a neighbouring letter or digit."""
    spans = []
    start = answer.find(title)
    while start != -1:
        end = start + len(title)
        clean_left = start == 0 or not (_is_word_character(title[0]) and _is_word_character(answer[start - 1]))
        clean_right = end == len(answer) or not (_is_word_character(title[-1]) and _is_word_character(answer[end]))
        if clean_left and clean_right:
            spans.append((start, end))
        start = answer.find(title, start + 1)
    return spans


def named_candidates(answer: str, candidates) -> list[str]:
    """The candidates the answer names under the rule above, in candidate order."""
    mentions = [(span, title) for title in candidates for span in _mention_spans(answer, title)]
    named = set()
    for (start, end), title in mentions:
        inside_longer = any(
            other_start <= start and end <= other_end and other_end - other_start > end - start
            for (other_start, other_end), other in mentions
            if other != title
        )
        if not inside_longer:
            named.add(title)
    return [title for title in candidates if title in named]


def match_answer(answer: str, candidates) -> str | None:
    """The one candidate the answer names, or None when it names none or several."""
    named = named_candidates(answer, candidates)
    return named[0] if len(named) == 1 else None


def wilson_interval(successes: int, total: int, confidence_z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default); sound at 0 and 1, unlike +-1.96*SE."""
    if total == 0:
        return (0.0, 1.0)
    proportion = successes / total
    denominator = 1 + confidence_z**2 / total
    centre = (proportion + confidence_z**2 / (2 * total)) / denominator
    half_width = (
        confidence_z * math.sqrt(proportion * (1 - proportion) / total + confidence_z**2 / (4 * total**2))
    ) / denominator
    # At 0 or all successes the bound is exactly 0 or 1; rounding would leave it a hair inside.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == total else min(1.0, centre + half_width)
    return (low, high)


def paired_bootstrap_interval(first, second, seed: int, samples: int = BOOTSTRAP_SAMPLES) -> list[float]:
    """95% percentile bootstrap interval of mean(first) - mean(second) over the same rows.

    Each resample draws row indices with replacement and takes both values of a drawn row, so the
    interval reflects only the rows where the two disagree. Values are hits (booleans) or any numbers
    (an expected hit between 0 and 1, say). The interval runs from the 2.5% to the 97.5% point of the
    sorted resample means.
    """
    if len(first) != len(second):
        raise ValueError(f"paired rows differ in number: {len(first)} and {len(second)}")
    differences = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    generator = np.random.default_rng(seed)
    means = np.concatenate([
        differences[generator.integers(0, len(differences), size=(min(BOOTSTRAP_CHUNK, samples - done),
                                                                   len(differences)))].mean(axis=1)
        for done in range(0, samples, BOOTSTRAP_CHUNK)])
    means.sort()
    return [float(means[int(0.025 * samples)]), float(means[int(0.975 * samples) - 1])]


def summarize(hits: list[bool], valid: list[bool]) -> dict:
    """HitRatio@1 and ValidRatio over all rows, each with its 95% Wilson interval."""
    total = len(hits)
    if total == 0:
        raise ValueError("no rows to summarize")
    metrics = {"n": total}
    for name, flags in (("hit_ratio_at_1", hits), ("valid_ratio", valid)):
        count = sum(flags)
        low, high = wilson_interval(count, total)
        metrics[name] = count / total
        metrics[f"{name}_ci95"] = [low, high]
    return metrics


def summarize_diversity(named: list[str | None]) -> dict:
    """How spread the named items are, over the answers that name one (`named`: each row's named
    candidate, None where the answer names none). The diversity figures SPRec (Gao et al. 2025,
    "SPRec: Self-Play to Debias LLM-based Recommendation") reports, over one answer per prompt:

        distinct_answers  the number of different items named
        div_ratio         distinct_answers / the answers naming an item (1: every answer another item)
        or_ratio          the share of those answers naming one of the TOP_NAMED items named most often
                          (over-recommendation: near 1, a few items take every answer)

    div_ratio and or_ratio are None when no answer names an item."""
    answers = [item for item in named if item is not None]
    counts = collections.Counter(answers)
    most_named = sum(count for _, count in counts.most_common(TOP_NAMED))
    return {"distinct_answers": len(counts),
            "div_ratio": len(counts) / len(answers) if answers else None,
            "or_ratio": most_named / len(answers) if answers else None}


def true_item_rank(scores: list[float], true_index: int) -> int:
    """1 + the number of other candidates scored at least as high as the true one: a tie ranks the true item
    last among the tied, so a model that scores every candidate alike earns no hit. Scores must be finite
    (a NaN compares false with everything and would rank the true item first)."""
    if not all(map(math.isfinite, scores)):
        raise ValueError(f"non-finite candidate scores: {scores}")
    true_score = scores[true_index]
    return 1 + sum(score >= true_score for index, score in enumerate(scores) if index != true_index)


def summarize_ranks(ranks: list[int]) -> dict:
    """Ranking metrics from the true item's rank among the candidates, averaged over all rows.

    HR@k: the true item ranks k or better. NDCG@k: 1 / log2(rank + 1) when it ranks k or better,
    else 0 (one relevant item, so the ideal DCG is 1). MRR: mean of 1 / rank.
    """
    if not ranks:
        raise ValueError("no rows to summarize")
    total = len(ranks)
    metrics = {}
    for cutoff in (1, 5):
        metrics[f"ranking_hit_ratio_at_{cutoff}"] = sum(rank <= cutoff for rank in ranks) / total
    for cutoff in (5, 10):
        metrics[f"ranking_ndcg_at_{cutoff}"] = sum(1 / math.log2(rank + 1) for rank in ranks if rank <= cutoff) / total
    metrics["ranking_mrr"] = sum(1 / rank for rank in ranks) / total
    return metrics
