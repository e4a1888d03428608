"""The answer-matching rule and the summary metrics, on hand-made cases."""

import math

import pytest

from trainer.collaborative import ItemStatistics
from trainer.data import Record
from trainer.metrics import (match_answer, named_candidates, summarize, summarize_diversity, summarize_ranks,
                             true_item_rank, wilson_interval)

CANDIDATES = ["Genesis", "Genesis P-Orridge", "Hope", "Sunn O)))", "Harry Connick, Jr.", "Yes", "Muse"]


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Genesis", "Genesis"),
        (" Genesis", "Genesis"),
        # A title inside a longer title is not a second mention.
        ("Genesis P-Orridge", "Genesis P-Orridge"),
        ("I pick Genesis P-Orridge.", "Genesis P-Orridge"),
        # ...but the shorter title named on its own next to the longer one is.
        ("Genesis or Genesis P-Orridge", None),
        # No match inside a longer word or next to a digit.
        ("Hopeless", None),
        ("Hope2", None),
        ("Hope", "Hope"),
        ("'Hope'", "Hope"),
        # Titles ending in punctuation need no boundary at that end.
        ("Sunn O))) rules", "Sunn O)))"),
        ("Harry Connick, Jr.", "Harry Connick, Jr."),
        # "Yes" inside the word "Yesterday" is not a mention; as a word it is.
        ("Yesterday", None),
        ("Yes", "Yes"),
        # Two different candidates: invalid. The same one twice: fine.
        ("Muse\nHope", None),
        ("Muse, Muse", "Muse"),
        # Case-sensitive, as the paper's substring test.
        ("muse", None),
        ("", None),
        ("\nA: 2\nB: 1", None),
    ],
)
def test_match_answer(answer, expected):
    assert match_answer(answer, CANDIDATES) == expected


def test_named_candidates_lists_every_separate_mention_in_candidate_order():
    assert named_candidates("Muse then Genesis then Hope", CANDIDATES) == ["Genesis", "Hope", "Muse"]


def test_a_title_is_not_named_inside_a_longer_word_or_at_the_end_of_a_longer_title():
    """Word edges are judged by the title's own first and last characters: "A-ha" starts with a letter, so a
    letter before it joins it ("BA-ha"), and ends with one ("A-hab"). A title inside a longer candidate that
    ends where it ends ("Bowie" in "David Bowie") is not named either."""
    assert named_candidates("BA-ha", ["A-ha", "Yes"]) == []
    assert named_candidates("A-hab", ["A-ha", "Yes"]) == []
    assert named_candidates("(A-ha)", ["A-ha", "Yes"]) == ["A-ha"]
    assert named_candidates("Jay-Zed", ["Jay-Z", "Yes"]) == []  # the last character, not the one before it
    # Every occurrence is tried in turn: the clean one between two that run into a word counts.
    assert named_candidates("Hopeless Hope Hopeful", ["Hope", "Yes"]) == ["Hope"]
    assert named_candidates("David Bowie", ["Bowie", "David Bowie"]) == ["David Bowie"]


def test_partly_overlapping_titles_both_count():
    # Neither mention lies inside the other, so the answer names two candidates.
    assert named_candidates("Alpha Beta Gamma", ["Alpha Beta", "Beta Gamma"]) == ["Alpha Beta", "Beta Gamma"]


def test_wilson_interval_matches_hand_computed_values():
    # 5/10: centre 0.5, half-width 1.96*sqrt(0.025 + 0.0096)/1.384 = 0.2634 (z = 1.959964).
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    # 0/10: [0, z^2/(n+z^2)] = [0, 3.8415/13.8415].
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.27753, abs=1e-4)
    # 10/10 mirrors it, the upper bound exactly 1 (a bar's error above 1.0 must not come out negative).
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(1 - 0.27753, abs=1e-4) and high == 1.0
    # One success of one: low = 1 - 0.79345 (the 0/1 upper bound, z^2/(1+z^2)); one of ten is above 0.
    assert wilson_interval(1, 1) == pytest.approx((0.20655, 1.0), abs=1e-4)
    assert wilson_interval(1, 10)[0] == pytest.approx(0.01787, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0), "no rows: nothing is known"
    # At 0 of 69 the formula leaves the lower bound a rounding error above 0: it must be exactly 0.
    assert wilson_interval(0, 69)[0] == 0.0


def test_summarize_divides_by_all_rows():
    metrics = summarize(hits=[True, False, False, False], valid=[True, True, False, False])
    assert metrics["n"] == 4
    assert metrics["hit_ratio_at_1"] == 0.25
    assert metrics["valid_ratio"] == 0.5
    low, high = metrics["hit_ratio_at_1_ci95"]
    assert low < 0.25 < high
    with pytest.raises(ValueError, match="^no rows to summarize$"):
        summarize([], [])


def test_true_item_rank_breaks_ties_against_the_true_item():
    assert true_item_rank([-1.0, -3.0, -2.0], 0) == 1
    assert true_item_rank([-1.0, -3.0, -2.0], 1) == 3
    assert true_item_rank([-2.0, -2.0, -5.0], 1) == 2, "a tie ranks the true item below the tied candidate"
    assert true_item_rank([0.0] * 20, 7) == 20, "scoring every candidate alike earns no hit"
    with pytest.raises(ValueError, match="non-finite candidate scores"):
        true_item_rank([float("nan")] * 3, 0)


def test_ranking_metrics_count_a_rank_equal_to_the_cutoff():
    """Rank 5 is inside HR@5 and NDCG@5, rank 10 inside NDCG@10: 1 / log2(6) and 1 / log2(11), halved."""
    metrics = summarize_ranks([5, 10])
    assert metrics["ranking_hit_ratio_at_5"] == 0.5
    assert metrics["ranking_ndcg_at_5"] == pytest.approx(1 / math.log2(6) / 2)
    assert metrics["ranking_ndcg_at_10"] == pytest.approx((1 / math.log2(6) + 1 / math.log2(11)) / 2)
    with pytest.raises(ValueError, match="^no rows to summarize$"):
        summarize_ranks([])


def test_ranking_metrics_by_hand():
    metrics = summarize_ranks([1, 3, 7, 12])
    assert metrics["ranking_hit_ratio_at_1"] == 0.25
    assert metrics["ranking_hit_ratio_at_5"] == 0.5
    # NDCG@5: (1/log2(2) + 1/log2(4)) / 4 = (1 + 0.5) / 4; NDCG@10 adds 1/log2(8) = 1/3 for rank 7.
    assert metrics["ranking_ndcg_at_5"] == pytest.approx(0.375)
    assert metrics["ranking_ndcg_at_10"] == pytest.approx((1 + 0.5 + 1 / 3) / 4)
    assert metrics["ranking_mrr"] == pytest.approx((1 + 1 / 3 + 1 / 7 + 1 / 12) / 4)


def test_diversity_counts_the_named_items_by_hand():
    # Eight answers name A, A, A, B, B, C, D, E and two name nothing: 5 different items of 8 named;
    # the 3 named most often (A 3, B 2, then C, D or E 1) take 6 of the 8.
    named = ["A", "A", None, "B", "A", "C", "B", None, "D", "E"]
    assert summarize_diversity(named) == {"distinct_answers": 5, "div_ratio": 5 / 8, "or_ratio": 6 / 8}
    assert summarize_diversity(["A"] * 4) == {"distinct_answers": 1, "div_ratio": 0.25, "or_ratio": 1.0}
    assert summarize_diversity([None, None]) == {"distinct_answers": 0, "div_ratio": None, "or_ratio": None}


def test_the_most_popular_tenth_takes_ties_at_its_boundary():
    records = [Record(("H",), ("A", "B", "C"), target) for target in "AAABBC"]
    statistics = ItemStatistics(records)
    assert statistics.catalogue == {"H", "A", "B", "C"}
    assert statistics.popular_items() == {"A"}  # place ceil(0.4) = 1: count 3
    assert statistics.popular_items(share=0.5) == {"A", "B"}  # place 2: count 2
    tied = ItemStatistics([Record(("H",), ("A", "B"), target) for target in "AB"])
    assert tied.popular_items() == {"A", "B"}, "A and B share the top place"
