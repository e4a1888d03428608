"""trainer/collaborative.py and the rules and prompt hints built on it, on records counted by hand."""

import json

import pytest

from tests.conftest import write_records
from trainer.baselines import rules
from trainer.collaborative import CollaborativeHints, ItemStatistics, history_weights, load_hints
from trainer.data import Record
from trainer.errors import InputError
from trainer.prompts import ANSWER_CUE, PromptBuilder

CANDIDATES = ("A", "B", "C", "D")
# History titles X, Y, Z. Counts by hand:
#   popularity: A 2, B 2, C 1
#   transitions: X -> A 2, X -> B 1;  Y -> A 1, Y -> B 1, Y -> C 1;  Z -> B 2
TRAINING = [
    Record(history=("X", "Y"), candidates=CANDIDATES, target="A"),
    Record(history=("X",), candidates=CANDIDATES, target="A"),
    Record(history=("X", "Y", "Z"), candidates=CANDIDATES, target="B"),
    Record(history=("Z",), candidates=CANDIDATES, target="B"),
    Record(history=("Y",), candidates=CANDIDATES, target="C"),
]


def test_counts_and_transition_scores_by_hand():
    statistics = ItemStatistics(TRAINING)
    assert statistics.popularity == {"A": 2, "B": 2, "C": 1}
    assert statistics.transitions["X"] == {"A": 2, "B": 1}
    unseen = Record(history=("X", "Z", "W"), candidates=CANDIDATES, target="D")
    # A: X 2 + Z 0; B: X 1 + Z 2; C: 0; D: 0 (W was never in a history).
    scores = {title: statistics.transition_score(unseen, title, exclude_own=False) for title in CANDIDATES}
    assert scores == {"A": 2, "B": 3, "C": 0, "D": 0}
    # C and D tie at 0: C's popularity 1 puts it before D.
    assert statistics.ranked_by_transitions(unseen, exclude_own=False) == [("B", 3), ("A", 2), ("C", 0), ("D", 0)]
    # After Y, A, B and C followed once each; A and B share popularity 2, so the listed order decides.
    tied = Record(history=("Y",), candidates=("B", "A", "C", "D"), target="D")
    assert [title for title, _ in statistics.ranked_by_transitions(tied, exclude_own=False)] == ["B", "A", "C", "D"]


def test_a_counted_record_is_scored_without_its_own_contribution():
    statistics = ItemStatistics(TRAINING)
    own = TRAINING[0]  # X, Y -> A
    # With its own record A scores X 2 + Y 1 = 3; without it, 1 + 0 = 1, and popularity 2 -> 1.
    assert statistics.transition_score(own, "A", exclude_own=False) == 3
    assert statistics.transition_score(own, "A", exclude_own=True) == 1
    assert statistics.popularity_of(own, "A", exclude_own=True) == 1
    # B (X 1 + Y 1 = 2) is not the record's answer: unchanged.
    assert statistics.transition_score(own, "B", exclude_own=True) == 2
    assert statistics.ranked_by_transitions(own, exclude_own=True)[0] == ("B", 2)


def test_recent_history_titles_weigh_more_by_hand():
    # X last seen 1 item before the newest (Z), Y 2 items before: weights 0.5, 0.25, 1.
    assert history_weights(("X", "Y", "X", "Z"), 0.5) == {"X": 0.5, "Y": 0.25, "Z": 1.0}
    assert history_weights(("X", "Y", "X"), 1.0) == {"X": 1.0, "Y": 1.0}
    for recency in (0.0, 1.5):  # a weight above 1 would make older titles count more than the newest
        with pytest.raises(ValueError, match=rf"recency weights lie in \(0, 1\], got {recency}"):
            history_weights(("X",), recency)
    statistics = ItemStatistics(TRAINING)
    newest_x = Record(history=("Z", "X"), candidates=CANDIDATES, target="D")
    # Alike: A = X 2 + Z 0 = 2, B = X 1 + Z 2 = 3. At 0.25 Z counts a quarter: A = 2, B = 1 + 0.5 = 1.5.
    assert statistics.ranked_by_transitions(newest_x, exclude_own=False)[:2] == [("B", 3), ("A", 2)]
    assert statistics.ranked_by_transitions(newest_x, exclude_own=False, recency=0.25)[:2] == [("A", 2), ("B", 1.5)]
    # Left out of its own counts, record 2 (X, Y, Z -> B; weights 0.25, 0.5, 1) scores B = X 0 + Y 0 + Z 1 = 1,
    # A = X 2 x 0.25 + Y 1 x 0.5 = 1, C = Y 0.5; A and B tie and A's popularity 2 beats B's 2 - 1.
    assert statistics.ranked_by_transitions(TRAINING[2], exclude_own=True, recency=0.5) == [
        ("A", 1.0), ("B", 1.0), ("C", 0.5), ("D", 0.0)]
    hints = CollaborativeHints(statistics, size=3, exclude_own=False, recency=0.25)
    assert hints.titles(newest_x) == ["A", "B"]
    # Hard negatives weigh the history by the same recency: at recency 1 B would come first.
    assert hints.hinted_negatives(newest_x, 2) == ["A", "B"]
    with pytest.raises(ValueError, match="a hint names at least one candidate, got size 0"):
        CollaborativeHints(statistics, size=0, exclude_own=False)


def test_hints_name_followed_candidates_best_first_and_stop_at_their_size():
    statistics = ItemStatistics(TRAINING)
    record = Record(history=("Y",), candidates=("D", "C", "B", "A"), target="D")
    # Y -> A, B, C once each: ties go to popularity (A 2, B 2, C 1), then to the listed order (B before A).
    assert CollaborativeHints(statistics, size=2, exclude_own=False).titles(record) == ["B", "A"]
    assert CollaborativeHints(statistics, size=5, exclude_own=False).titles(record) == ["B", "A", "C"]
    nothing_followed = Record(history=("W",), candidates=CANDIDATES, target="A")
    assert CollaborativeHints(statistics, size=3, exclude_own=False).titles(nothing_followed) == []


def test_hinted_negatives_are_the_highest_ranked_candidates_other_than_the_answer():
    hints = CollaborativeHints(ItemStatistics(TRAINING), size=1, exclude_own=False)
    # After X and Z: B 3, A 2, then C and D at 0 (C more popular); the answer A is skipped.
    record = Record(history=("X", "Z"), candidates=("D", "C", "B", "A"), target="A")
    assert hints.hinted_negatives(record, 1) == ["B"]
    assert hints.hinted_negatives(record, 3) == ["B", "C", "D"]
    # Left out of its own counts, training record 2 (X, Y, Z -> B) scores A 3, B 4 - 3 = 1, C 1, D 0.
    own = CollaborativeHints(ItemStatistics(TRAINING), size=1, exclude_own=True)
    assert own.hinted_negatives(TRAINING[2], 2) == ["A", "C"]


def test_the_hint_sentence_sits_before_the_answer_cue_of_every_template():
    hints = CollaborativeHints(ItemStatistics(TRAINING), size=2, exclude_own=False)
    record = Record(history=("X",), candidates=("C", "B", "A", "D"), target="D")
    for template_index in range(5):
        plain = PromptBuilder("music", template_index=template_index).build(record, 0)
        hinted = PromptBuilder("music", template_index=template_index, hints=hints).build(record, 0)
        sentence = "Among the candidates, other listeners with this history most often listened to next: A; B. "
        assert hinted == plain[: -len(ANSWER_CUE)] + sentence + ANSWER_CUE
    unseen = Record(history=("W",), candidates=CANDIDATES, target="A")
    assert PromptBuilder("movie", template_index=0, hints=hints).build(unseen, 0).endswith(
        "other viewers with this history most often watched next: none of them. Answer:")


def test_titles_with_braces_survive_the_hint():
    record = Record(history=("{x}",), candidates=("{a}", "b"), target="b")
    hints = CollaborativeHints(ItemStatistics([Record(("{x}",), ("{a}", "b"), "{a}")]), 1, exclude_own=False)
    assert "next: {a}. Answer:" in PromptBuilder("music", template_index=0, hints=hints).build(record, 0)


def test_load_hints_leaves_records_out_of_their_own_hint_only_for_the_counted_file(tmp_path):
    raw = [{"historyList": "::".join(record.history), "itemList": list(record.candidates),
            "trueSelection": record.target} for record in TRAINING]
    train = write_records(tmp_path / "train.json", raw)
    test = write_records(tmp_path / "test.json", raw[:1])
    assert load_hints(None, 3, train) is None
    assert load_hints(train, 3, train).exclude_own
    assert not load_hints(train, 3, test).exclude_own
    # Record 0 (X, Y -> A) in the training file: A's own count is left out, so B leads its hint.
    assert load_hints(train, 1, train).titles(TRAINING[0]) == ["B"]
    assert load_hints(train, 1, test).titles(TRAINING[0]) == ["A"]
    with pytest.raises(InputError, match="--hint_size must be at least 1"):
        load_hints(train, 0, test)
    for recency in (0.0, 1.5):
        with pytest.raises(InputError, match=r"--hint_recency must lie in \(0, 1\]"):
            load_hints(train, 3, test, recency=recency)
    assert load_hints(train, 3, test, recency=1.0).recency == 1.0
    with pytest.raises(InputError, match="missing.json: file not found"):
        load_hints(str(tmp_path / "missing.json"), 3, test)


def test_transitions_rule_answers_the_candidate_that_most_often_followed_the_history(tmp_path):
    raw = [{"historyList": "::".join(record.history), "itemList": list(record.candidates),
            "trueSelection": record.target} for record in TRAINING]
    train = write_records(tmp_path / "train.json", raw)
    test = write_records(tmp_path / "test.json", [
        {"historyList": "Z", "itemList": ["A", "C", "B", "D"], "trueSelection": "B"},  # Z -> B once
        {"historyList": "W", "itemList": ["C", "D", "A", "B"], "trueSelection": "D"},  # nothing: popularity, A
    ])
    rules(rule="transitions", train_file=train, test_file=test, output_dir=str(tmp_path / "out"))
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [row["answer"] for row in rows] == ["B", "A"]
    assert [row["hit"] for row in rows] == [True, False]
    # Scored on the counted file itself, each record is answered without its own count: record 1
    # (X -> A) then sees X -> A once and X -> B once, a tie that popularity (A 1, B 2) gives to B.
    rules(rule="transitions", train_file=train, test_file=train, output_dir=str(tmp_path / "own"))
    rows = [json.loads(line) for line in (tmp_path / "own" / "predictions.jsonl").read_text().splitlines()]
    assert rows[1]["answer"] == "B"
    # Z, X -> the rule names B when the history's titles count alike (3 against 2), A when the older Z
    # counts a quarter (2 against 1.5): the hint's first title at the same --hint_recency.
    recent = write_records(tmp_path / "recent.json", [{"historyList": "Z::X", "itemList": list(CANDIDATES),
                                                        "trueSelection": "A"}])
    for recency, answer in ((1.0, "B"), (0.25, "A")):
        rules(rule="transitions", train_file=train, test_file=recent, output_dir=str(tmp_path / f"r{recency}"),
              hint_recency=recency)
        assert json.loads((tmp_path / f"r{recency}" / "predictions.jsonl").read_text())["answer"] == answer
        assert load_hints(train, 1, recent, recency).titles(Record(("Z", "X"), CANDIDATES, "A")) == [answer]
    with pytest.raises(InputError, match="--rule: expected one of"):
        rules(rule="random", train_file=train, test_file=test, output_dir=str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()
