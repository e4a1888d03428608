"""trainer/audit.py: each planted leak is flagged on synthetic data, clean synthetic data is not; the rules and
the chi-square tail worked out by hand; the LastFM splits, the authors' draw flagged and the clean one not."""

import collections
import dataclasses
import inspect
import json
import logging
import math
import os
import random
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, checkout_environment, write_records
from trainer.audit import (LEAKS, MIN_OVERLAP_TITLES, RULES, AuditFlags, TrainingCounts, audit, audit_split,
                           chi_square_survival, expected_hit, is_flagged, markdown_table, overlap_counts, position_test,
                           read_splits, rule_keys, sequence_followers, verdicts, write_audit)
from trainer.data import Record, load_records
from trainer.errors import InputError
from dataprep.llara_layout import prepare

ITEMS = 300
USERS = 600
SEQUENCE_LENGTH = 14
CANDIDATES = 20


def user_sequences(seed: int) -> list[list[int]]:
    """Each user's items in order: mostly one of the previous item's few usual successors (a signal the
    transitions rule reads), otherwise an item drawn by a Zipf-like popularity; no item twice."""
    generator = random.Random(seed)
    successors = {item: generator.sample(range(ITEMS), 6) for item in range(ITEMS)}
    weights = [1 / (rank + 1) for rank in range(ITEMS)]
    sequences = []
    for _ in range(USERS):
        sequence = [generator.choices(range(ITEMS), weights)[0]]
        while len(sequence) < SEQUENCE_LENGTH:
            follow = generator.random() < 0.6
            item = generator.choice(successors[sequence[-1]]) if follow else generator.choices(range(ITEMS), weights)[0]
            if item not in sequence:
                sequence.append(item)
        sequences.append(sequence)
    return sequences


def windows(sequence: list[int]) -> list[tuple[list[int], int]]:
    """(history of up to 10 items, next item) at every position with at least 3 items before it."""
    return [(sequence[max(0, end - 10) : end], sequence[end]) for end in range(3, len(sequence))]


def title(item: int) -> str:
    return f"Item {item}"


def candidate_list(history: list[int], target: int, generator: random.Random, leak: str) -> list[int]:
    """19 negatives outside the history and the target, the target placed among them."""
    pool = [item for item in range(ITEMS) if item not in history and item != target]
    if leak == "candidate_list":  # LLaRA's draw: Python's random seeded by the true item
        seeded = random.Random(target)
        candidates = seeded.sample(pool, CANDIDATES - 1) + [target]
        seeded.seed(target)
        seeded.shuffle(candidates)
        return candidates
    if leak == "negative_sampler":  # negatives only among the odd items, true items from all
        pool = [item for item in pool if item % 2]
    negatives = generator.sample(pool, CANDIDATES - 1)
    place = 0 if leak == "position" and generator.random() < 0.3 else generator.randrange(CANDIDATES)
    return negatives[:place] + [target] + negatives[place:]


def synthetic_folder(folder, leak: str | None = None, seed: int = 0) -> str:
    """train/valid/test.json from user sequences split by user (70/15/15), with one leak planted or none:
    candidate_list, negative_sampler, position, shared_records (a third of the test records are training
    records) or shared_sequences (windows split at random, whatever their user)."""
    generator = random.Random(seed + 1)
    sequences = user_sequences(seed)
    if leak == "shared_sequences":
        every = [window for sequence in sequences for window in windows(sequence)]
        generator.shuffle(every)
        cut = [int(len(every) * 0.7), int(len(every) * 0.85)]
        split_windows = {"train": every[: cut[0]], "valid": every[cut[0] : cut[1]], "test": every[cut[1] :]}
    else:
        users = list(range(USERS))
        generator.shuffle(users)
        parts = {"train": users[: int(USERS * 0.7)], "valid": users[int(USERS * 0.7) : int(USERS * 0.85)],
                 "test": users[int(USERS * 0.85) :]}
        split_windows = {split: [window for user in chosen for window in windows(sequences[user])]
                         for split, chosen in parts.items()}
    records = {}
    for split, found in split_windows.items():
        records[split] = [{"historyList": "::".join(map(title, history)),
                           "itemList": [title(item) for item in candidate_list(history, target, generator, leak)],
                           "trueSelection": title(target)} for history, target in found]
    if leak == "shared_records":
        copies = generator.sample(records["train"], len(records["test"]) // 3)
        records["test"] = records["test"][: len(records["test"]) - len(copies)] + copies
    for split, split_records in records.items():
        write_records(os.path.join(folder, f"{split}.json"), split_records)
    return str(folder)


def flagged(report: dict) -> dict[str, set[str]]:
    found = {}
    for leak in report["leaks"]:
        found.setdefault(leak["name"], set()).add(leak["split"])
    return found


def test_clean_synthetic_data_flags_nothing(tmp_path):
    report = audit(synthetic_folder(tmp_path))
    assert report["leaks"] == []
    test = report["splits"]["test"]["rules"]
    # The data has a history signal, which the transitions rule reads and no leak rule adds to.
    assert test["transitions"]["hr_at_1"] > test["popularity"]["hr_at_1"] + 0.1
    assert report["splits"]["test"]["overlap_with_train"]["identical_to_a_training_record"] == 0


@pytest.mark.parametrize("leak", ["candidate_list", "negative_sampler", "position", "shared_records",
                                  "shared_sequences"])
def test_each_planted_leak_is_flagged_and_only_it(tmp_path, leak):
    report = audit(synthetic_folder(tmp_path, leak))
    if leak == "shared_records":
        # Planted in the test split only; a copied training record also brings its user's other windows.
        assert flagged(report) == {"shared_records": {"test"}, "shared_sequences": {"test"}}
    else:
        assert flagged(report) == {leak: {"valid", "test"}}
    entry = next(found for found in report["leaks"] if found["split"] == "test")
    assert entry["gain_over_baseline"] >= 0.05 and entry["gain_over_baseline_ci95"][0] > 0
    assert entry["hr_at_1"] == report["splits"]["test"]["rules"][entry["rule"]]["hr_at_1"]


def test_the_margin_decides_what_is_flagged(tmp_path):
    folder = synthetic_folder(tmp_path, "position")
    gains = {split: found["rules"]["position_and_popularity"]["gain_over_baseline"]
             for split, found in audit(folder)["splits"].items()}
    # Just above the smaller gain: only the other split is flagged.
    low_split = min(gains, key=gains.get)
    flagged_splits = flagged(audit(folder, margin=gains[low_split] + 1e-6))
    assert flagged_splits == {"position": {split for split in gains if split != low_split}}
    assert audit(folder, margin=max(gains.values()) + 1e-6)["leaks"] == []


def record(history, candidates, target) -> Record:
    return Record(tuple(history), tuple(candidates), target)


def test_rules_by_hand():
    train = [record(["x", "y"], ["a", "b", "c"], "a"),   # a true at position 0, b and c its negatives
             record(["y", "z"], ["a", "b", "d"], "a"),   # a again: b is a negative twice
             record(["x"], ["c", "b", "d"], "b"),        # b at position 1
             record(["w", "x", "y"], ["d", "c", "b"], "c")]
    counts = TrainingCounts(train, recency=1.0)
    evaluated = record(["q", "y"], ["b", "a", "c"], "a")
    keys = rule_keys(counts, evaluated, sequence_followers(train, [evaluated], 5)[0])
    assert keys["popularity"] == [1, 2, 1]
    # After y (in three training histories) came a (twice) and c: transitions 0, 2, 1.
    assert keys["transitions"] == [(0, 1), (2, 2), (1, 1)]
    # candidate_list: a's records list b twice and c once as negatives; listed with b and c: (2 + 1) / 2.
    # b's one record lists c and d: with a and c, 1 / 1. c's one record lists d and b: with b and a, 1 / 1.
    assert keys["candidate_list"] == [(1.0, 1), (1.5, 2), (1.0, 1)]
    # listing_rate: b listed 4 times, true once; a listed twice, true twice; c listed 3 times, true once.
    assert keys["listing_rate"] == [(0.25, 1), (1.0, 2), (1 / 3, 1)]
    # Position rates: the true item sat at position 0 in 2 of 4 lists, at 1 in 2, at 2 in none.
    assert keys["position"] == [0.5, 0.5, 0.0]
    # (popularity + 1) x rate: b (1 + 1) 0.5, a (2 + 1) 0.5, c at position 2: 0.
    assert keys["position_and_popularity"] == [1.0, 1.5, 0.0]
    # Positions 0 and 1 tie; a uniform pick between them is right half the time.
    assert expected_hit(keys["position"], evaluated) == 0.5
    assert expected_hit(keys["candidate_list"], evaluated) == 1.0
    assert expected_hit([1, 1, 1], record([], ["a", "b", "c"], "b")) == pytest.approx(1 / 3)


def test_shared_history_and_sequence_overlap_by_hand():
    train = [record(["p", "q", "r", "s"], ["t", "u"], "t"),          # the same history as `shared`
             record(["o", "p", "q", "r"], ["s", "u"], "s")]          # p q r, then s
    shared = record(["p", "q", "r", "s"], ["u", "t"], "t")
    shifted = record(["n", "p", "q", "r"], ["u", "s"], "s")          # its newest 3 titles are p q r
    short = record(["q", "r"], ["u", "s"], "s")                      # under 3 titles: never matched
    followers = sequence_followers(train, [shared, shifted, short], overlap_titles=3)
    # shared: q r s is followed by t in the first record, which is its own history (left out) -> nothing.
    assert followers[0] == {}
    # shifted: p q r is followed by s in both training records' sequences.
    assert followers[1] == {"s": 2}
    assert followers[2] == {}
    counts = TrainingCounts(train, recency=1.0)
    assert [key[0] for key in rule_keys(counts, shared, followers[0])["shared_history"]] == [0, 1]


def test_counts_by_hand_runs_from_the_newest_titles_and_no_rate_past_the_lists():
    """A history followed twice by A and once by B counts 2 and 1 (not seen or unseen); a record whose history
    (P, Q, X, Y, Z) is longer than the 3 overlap titles matches its newest run X Y Z, absent from training, not
    the Y Z that follows its first 3 titles (which (C, Y, Z) -> G would match); no training list reaches
    position 2, whose rate is 0 (the breaks caught: `= 1` for `+= 1`, `history[+length:]`, a rate of 1 past
    the lists)."""
    train = [record(["X", "Y"], ["A", "B"], "A"), record(["X", "Y"], ["B", "A"], "A"),
             record(["X", "Y"], ["A", "B"], "B"), record(["C", "Y", "Z"], ["G", "A"], "G")]
    counts = TrainingCounts(train, recency=1.0)
    assert counts.targets_by_history[("X", "Y")] == {"A": 2, "B": 1}
    long_history = record(["P", "Q", "X", "Y", "Z"], ["G", "A"], "G")
    assert sequence_followers(train, [long_history], overlap_titles=3) == [{}]
    assert [counts.position_rate(position) for position in range(3)] == [2 / 4, 2 / 4, 0.0]


def test_candidate_list_leaves_a_records_own_training_copy_out_by_hand():
    """Training: (H) [A, B, C] -> A and (H2) [A, B, D] -> A. Evaluating the first record itself: A's lists name
    B twice and C once as negatives (3), less its own copy's 2 (the list's other titles), over A's 2 lists
    less that copy: 1 / 1. B and C were never a true item: 0 (the breaks caught: the copy's titles counted
    as len + 1 or len - 2, its list added instead of removed, 1 for a title with no lists or never listed)."""
    evaluated = record(["H"], ["A", "B", "C"], "A")
    counts = TrainingCounts([evaluated, record(["H2"], ["A", "B", "D"], "A")], recency=1.0)
    assert rule_keys(counts, evaluated, collections.Counter())["candidate_list"] == [(1.0, 2), (0.0, 0), (0.0, 0)]
    # The listing rate: A true in both of its 2 lists; E never listed in training, so rate 0, not 1.
    never_listed = record(["H"], ["A", "E"], "A")
    assert rule_keys(counts, never_listed, collections.Counter())["listing_rate"] == [(1.0, 2), (0.0, 0)]


def test_chi_square_survival_by_hand():
    # Two degrees of freedom: the tail is exactly exp(-x / 2).
    for statistic in (0.5, 2.0, 7.3, 40.0):
        assert chi_square_survival(statistic, 2) == pytest.approx(math.exp(-statistic / 2), rel=1e-12)
    # Textbook 5% critical values: 3.841 (1 degree), 18.307 (10), 30.144 (19).
    assert chi_square_survival(3.841459, 1) == pytest.approx(0.05, rel=1e-5)
    assert chi_square_survival(18.307038, 10) == pytest.approx(0.05, rel=1e-5)
    assert chi_square_survival(30.143527, 19) == pytest.approx(0.05, rel=1e-5)
    # Four degrees: Q = exp(-x/2) (1 + x/2).
    assert chi_square_survival(3.0, 4) == pytest.approx(math.exp(-1.5) * 2.5, rel=1e-12)
    # x = a - 1, where the continued fraction would start by dividing by x + 1 - a = 0: the series' side.
    assert chi_square_survival(2.0, 4) == pytest.approx(2 / math.e, rel=1e-12)
    assert chi_square_survival(0.0, 5) == 1.0
    with pytest.raises(ValueError, match="^degrees of freedom must be at least 1, got 0$"):
        chi_square_survival(1.0, 0)


def test_position_test_by_hand():
    records = [record([], ["a", "b"], "a")] * 30 + [record([], ["a", "b"], "b")] * 10
    found = position_test(records)
    # Expected 20 and 20: (30 - 20)^2 / 20 * 2 = 10, one degree of freedom.
    assert found["chi_square"] == 10.0
    assert found["p_value"] == pytest.approx(0.0015654, rel=1e-4)
    assert found["true_item_at_position"] == [30, 10]


def test_position_test_reads_by_hand_with_lists_of_two_lengths():
    """Seven lists of 3 (the true item first 5 times, second once, third once) and three lists of 2 (the true
    item second): expected per position 7/3 + 3/2 = 23/6, 23/6 and 7/3 against 5, 4 and 1 observed, so
    chi-square = 49/138 + 1/138 + 16/21 = 543/483 on 2 degrees, whose tail is exp(-543/966). Every field
    by hand: counts as integers, chi-square to 2 decimals, expected counts to 1 (the breaks caught: a key
    renamed, the rounding changed, the counts left as floats)."""
    records = ([record([], ["a", "b", "c"], "a")] * 5 + [record([], ["a", "b", "c"], "b"),
                                                         record([], ["a", "b", "c"], "c")]
               + [record([], ["a", "b"], "b")] * 3)
    found = position_test(records)
    assert found == {"chi_square": 1.12, "degrees_of_freedom": 2,
                     "p_value": pytest.approx(math.exp(-543 / 966), rel=1e-12),
                     "true_item_at_position": [5, 4, 1], "expected_at_position": [3.8, 3.8, 2.3]}
    assert all(type(count) is int for count in found["true_item_at_position"])


def test_lastfm_conversions_the_llara_draw_leaks_the_default_does_not(lastfm_source, tmp_path, caplog):
    source = lastfm_source
    with caplog.at_level(logging.WARNING, logger="prepare"):
        prepare(source=source, output_dir=str(tmp_path / "llara"), negative_draw="llara")
    assert "candidate_list leaks" in caplog.text and "HR@1 0.982 on the test split" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prepare"):
        prepare(source=source, output_dir=str(tmp_path / "clean"))
    assert caplog.text == ""
    authors = json.loads((tmp_path / "llara" / "audit.json").read_text())
    assert flagged(authors) == {"candidate_list": {"valid", "test"}}
    # The figures of ../shared/notes/facts.md: 0.979 on validation, 0.982 on test.
    assert authors["splits"]["valid"]["rules"]["candidate_list"]["hr_at_1"] == pytest.approx(0.979, abs=0.0005)
    assert authors["splits"]["test"]["rules"]["candidate_list"]["hr_at_1"] == pytest.approx(0.982, abs=0.0005)
    assert json.loads((tmp_path / "clean" / "audit.json").read_text())["leaks"] == []
    assert json.loads((tmp_path / "clean" / "run_config.json").read_text())["negative_draw"] == "independent"
    # The two versions of a prompt pair up: the same history and true item, other negatives.
    for split in ("train", "valid", "test"):
        clean, leaky = (load_records(str(tmp_path / name / f"{split}.json")) for name in ("clean", "llara"))
        assert [(r.history, r.target) for r in clean] == [(r.history, r.target) for r in leaky]
        assert sum(r.candidates == l.candidates for r, l in zip(clean, leaky)) == 0


def test_command_writes_the_report_and_exits_0_with_a_leak(tmp_path):
    (tmp_path / "data").mkdir()
    folder = synthetic_folder(tmp_path / "data", "candidate_list")
    completed = subprocess.run([sys.executable, "data/audit.py", "--data_dir", folder, "--output_dir",
                                str(tmp_path / "out")], cwd=REPO_ROOT, env=checkout_environment(), capture_output=True,
                               text=True)
    assert completed.returncode == 0, completed.stderr
    assert "LEAK candidate_list" in completed.stdout and "| candidate_list |" in completed.stdout
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert set(report["splits"]) == {"valid", "test"}
    assert {leak["name"] for leak in report["leaks"]} == {"candidate_list"}
    assert all({"name", "split", "hr_at_1"} <= set(leak) for leak in report["leaks"])
    assert "**leak**" in (tmp_path / "out" / "audit.md").read_text()


def test_bad_folder_is_one_line(tmp_path):
    completed = subprocess.run([sys.executable, "data/audit.py", "--data_dir", str(tmp_path), "--output_dir",
                                str(tmp_path / "out")], cwd=REPO_ROOT, env=checkout_environment(), capture_output=True,
                               text=True)
    assert completed.returncode == 2
    assert completed.stderr.strip() == f"error: {tmp_path}/train.json: file not found; the audit counts the training split"


def made_up_report() -> dict:
    """A report in audit()'s shape with numbers chosen so that every value lands in its own place: rule r on
    split s has HR@1 0.1 r + 0.01 s, interval [HR@1 - 0.05, HR@1 + 0.07], gain over its baseline 0.02 r - 0.03
    (interval [gain - 0.04, gain + 0.06]) and over popularity 0.5 - 0.01 r."""
    splits = {}
    for split_number, split in enumerate(("valid", "test"), start=1):
        rules = {}
        for rule_number, rule in enumerate(RULES):
            hit = 0.1 * rule_number + 0.01 * split_number
            gain = 0.02 * rule_number - 0.03
            rules[rule] = {"hr_at_1": hit, "hr_at_1_ci95": [hit - 0.05, hit + 0.07], "gain_over_baseline": gain,
                           "gain_over_baseline_ci95": [gain - 0.04, gain + 0.06],
                           "gain_over_popularity": 0.5 - 0.01 * rule_number}
        splits[split] = {"rules": rules, "chance": 0.05 * split_number,
                         "position_test": {"p_value": 0.0123 * split_number}}
    return {"splits": splits, "train": {"position_test": {"p_value": 0.5}}, "margin": 0.02,
            "leaks": [{"name": "candidate_list", "rule": "candidate_list", "split": "test", "hr_at_1": 0.22}]}


def test_the_report_reads_by_hand(tmp_path):
    """The table's cells, the verdicts' words and where write_audit puts them, on a made-up report (the
    formatting kept 63 mutants alive when only its presence was checked)."""
    report = made_up_report()
    table = markdown_table(report).splitlines()
    assert table[0] == ("| rule | leak it reads (gain over) | valid HR@1 [95% CI] | valid gain [95% CI] | "
                        "test HR@1 [95% CI] | test gain [95% CI] |")
    assert table[1] == "|---|---|---|---|---|---|"
    assert table[2] == "| popularity | (reference) | 0.010 [-0.040, 0.080] |  | 0.020 [-0.030, 0.090] |  |"
    # candidate_list (rule 2): gain 0.01 [-0.03, +0.07], flagged on test only.
    assert table[4] == ("| candidate_list | candidate_list (popularity) | 0.210 [0.160, 0.280] | "
                        "+0.010 [-0.030, +0.070] | 0.220 [0.170, 0.290] | +0.010 [-0.030, +0.070] **leak** |")
    assert table[6] == "| position | (shown) | 0.410 [0.360, 0.480] |  | 0.420 [0.370, 0.490] |  |"
    assert table[-1] == "| chance (a random candidate) | | 0.050 |  | 0.100 |  |"
    lines = verdicts(report)
    assert lines[0] == ("LEAK candidate_list: the candidate list depends on the true item: records sharing a true item "
                        "share their negatives. Rule candidate_list: HR@1 valid 0.210, +0.480 over popularity "
                        "[-0.030, +0.070]; test 0.220, +0.480 over popularity [-0.030, +0.070]")
    # shared_records reads rule shared_history (6) against transitions: gain 0.09 [+0.05, +0.15].
    assert lines[3] == ("ok   shared_records: rule shared_history: HR@1 valid 0.610, +0.440 over popularity, "
                        "+0.090 [+0.050, +0.150] over transitions; test 0.620, +0.440 over popularity, "
                        "+0.090 [+0.050, +0.150] over transitions")
    assert lines[-2] == ("     the true item's position against a uniform one (chi-square): train p = 0.5; "
                         "valid p = 0.012; test p = 0.025")
    assert lines[-1] == ("     a leak is flagged when its rule gains at least 0.02 HR@1 over its baseline, the 95% "
                         "paired interval above 0")
    write_audit(report, str(tmp_path / "out"))
    assert (tmp_path / "out" / "audit.md").read_text() == markdown_table(report) + "\n" + "\n".join(lines) + "\n"
    assert json.loads((tmp_path / "out" / "audit.json").read_text()) == report


def test_overlap_counts_and_a_rules_hit_ratio_by_hand():
    """Training: (X, Y) -> A twice, (Y, Z) -> B. Evaluated: (X, Y) -> A with the training candidates (identical
    to a training record), (X, Y) -> C (same history, another answer), (Q, Y, Z) -> B (its newest run Y, Z was
    followed by B in training) and (Q, R) -> A (unseen). The popularity rule names the candidate most often a
    training true item (A twice, B once): A on the first, third and last lists, B on the second (C, B, D); right
    on the first and the last, so HR@1 = 2 / 4 (the breaks caught: the sum multiplied by the count, every
    overlap count's condition turned)."""
    train = [record(["X", "Y"], ["A", "B", "C"], "A"), record(["X", "Y"], ["A", "B", "D"], "A"),
             record(["Y", "Z"], ["B", "C", "D"], "B")]
    evaluated = [record(["X", "Y"], ["A", "B", "C"], "A"), record(["X", "Y"], ["C", "B", "D"], "C"),
                 record(["Q", "Y", "Z"], ["A", "B", "D"], "B"), record(["Q", "R"], ["B", "A", "C"], "A")]
    followers = [collections.Counter(), collections.Counter(), collections.Counter({"B": 1}), collections.Counter()]
    assert overlap_counts(train, evaluated, followers) == {
        "identical_to_a_training_record": 1, "same_history_and_true_item_as_a_training_record": 1,
        "history_run_found_in_training_sequences": 1, "true_item_follows_that_run_in_training": 1}
    split = audit_split(TrainingCounts(train, recency=1.0), evaluated, overlap_titles=2, seed=0)
    assert split["rules"]["popularity"]["hr_at_1"] == 0.5


def test_a_splits_entries_chance_and_flags_by_hand():
    """On the records of the test above: each leak rule's baseline named, its gains the differences of the
    HR@1s, the records counted, chance the mean 1 / list length; the same seed gives the same intervals; a gain
    exactly at the margin is flagged, an interval touching 0 is not."""
    train = [record(["X", "Y"], ["A", "B", "C"], "A"), record(["X", "Y"], ["A", "B", "D"], "A"),
             record(["Y", "Z"], ["B", "C", "D"], "B")]
    evaluated = [record(["X", "Y"], ["A", "B", "C"], "A"), record(["X", "Y"], ["C", "B", "D", "E"], "C"),
                 record(["Q", "Y", "Z"], ["A", "B", "D"], "B"), record(["Q", "R"], ["B", "A", "C"], "A")]
    split = audit_split(TrainingCounts(train, recency=1.0), evaluated, overlap_titles=2, seed=0)
    assert split["records"] == 4 and split["chance"] == pytest.approx((3 * (1 / 3) + 1 / 4) / 4)
    rules = split["rules"]
    for leak_rule, baseline in (("candidate_list", "popularity"), ("shared_history", "transitions")):
        entry = rules[leak_rule]
        assert entry["baseline"] == baseline
        assert entry["gain_over_popularity"] == pytest.approx(entry["hr_at_1"] - rules["popularity"]["hr_at_1"])
        assert entry["gain_over_baseline"] == pytest.approx(entry["hr_at_1"] - rules[baseline]["hr_at_1"])
    assert audit_split(TrainingCounts(train, recency=1.0), evaluated, overlap_titles=2, seed=0) == split
    assert is_flagged({"gain_over_baseline": 0.02, "gain_over_baseline_ci95": [0.001, 0.05]}, margin=0.02)
    assert not is_flagged({"gain_over_baseline": 0.05, "gain_over_baseline_ci95": [0.0, 0.1]}, margin=0.02)
    assert not is_flagged({"gain_over_baseline": 0.019, "gain_over_baseline_ci95": [0.001, 0.05]}, margin=0.02)


def test_a_folder_the_audit_cannot_read_is_named(tmp_path):
    with pytest.raises(InputError, match=f"^--data_dir {tmp_path / 'no'}: folder not found$"):
        read_splits(str(tmp_path / "no"))
    missing_train = f"^{tmp_path / 'train.json'}: file not found; the audit counts the training split$"
    with pytest.raises(InputError, match=missing_train):
        read_splits(str(tmp_path))
    write_records(tmp_path / "train.json", [{"historyList": ["X"], "itemList": ["A", "B"], "trueSelection": "A"}])
    write_records(tmp_path / "valid.json", [])  # an empty split is left out, not refused
    with pytest.raises(InputError, match="no records in valid.json or test.json to audit$"):
        read_splits(str(tmp_path))
    write_records(tmp_path / "test.json", [{"historyList": ["Y"], "itemList": ["B", "A"], "trueSelection": "B"}])
    assert sorted(read_splits(str(tmp_path))) == ["test", "train"]


def test_audits_defaults_are_the_commands(tmp_path):
    """The converters call audit() with its defaults: they must be data/audit.py's, so the audit.json a
    conversion writes is the one the command writes with no flags (the breaks caught: overlap_titles 6, seed 1)."""
    defaults = {field.name: field.default for field in dataclasses.fields(AuditFlags)}
    for name, parameter in inspect.signature(audit).parameters.items():
        if parameter.default is not inspect.Parameter.empty:
            assert parameter.default == defaults[AuditFlags.renamed.get(name, name)], name


def test_audit_refuses_out_of_range_values_and_accepts_their_edges(tmp_path):
    """margin 0, recency 1 and the fewest overlap titles are allowed; just past each edge is refused with the
    flag's name and value (the breaks caught: each comparison moved past its edge, a message-less error)."""
    write_records(tmp_path / "train.json", [{"historyList": ["X", "Y", "Z"], "itemList": ["A", "B"],
                                             "trueSelection": "A"}])
    write_records(tmp_path / "test.json", [{"historyList": ["Y", "Z", "W"], "itemList": ["B", "A"],
                                            "trueSelection": "B"}])
    folder = str(tmp_path)
    assert audit(folder, margin=0.0, recency=1.0, overlap_titles=MIN_OVERLAP_TITLES)["splits"]["test"]["records"] == 1
    refusals = [(dict(margin=-0.001), r"^--margin must be 0 or more, got -0.001$"),
                (dict(recency=0.0), r"^--hint_recency must lie in \(0, 1\], got 0.0$"),
                (dict(recency=1.001), r"^--hint_recency must lie in \(0, 1\], got 1.001$"),
                (dict(overlap_titles=MIN_OVERLAP_TITLES - 1),
                 f"^--overlap_titles must be at least {MIN_OVERLAP_TITLES}, got {MIN_OVERLAP_TITLES - 1}$")]
    for values, message in refusals:
        with pytest.raises(InputError, match=message):
            audit(folder, **values)


def test_the_reports_fields_by_hand(tmp_path):
    """audit.json's top level names the settings it ran with and the training split; each flagged leak repeats
    its split's figures under fixed names; the bootstrap seed reaches the intervals, so the same seed gives the
    same report and another seed other intervals (the breaks caught: a renamed key, the seed dropped)."""
    folder = synthetic_folder(tmp_path, "candidate_list")
    report = audit(folder, margin=0.02, recency=0.75, overlap_titles=4, seed=3)
    assert set(report) == {"data_dir", "margin", "recency", "overlap_titles", "train", "splits", "leaks"}
    settings = (report["data_dir"], report["margin"], report["recency"], report["overlap_titles"])
    assert settings == (folder, 0.02, 0.75, 4)
    train = load_records(os.path.join(folder, "train.json"))
    assert report["train"] == {"records": len(train), "position_test": position_test(train)}
    assert report["leaks"], "the planted leak is flagged"
    what = next(known.what for known in LEAKS if known.name == "candidate_list")
    for leak in report["leaks"]:
        rules = report["splits"][leak["split"]]["rules"]
        entry = rules[leak["rule"]]
        assert leak == {"name": "candidate_list", "split": leak["split"], "rule": "candidate_list",
                        "what": what, "hr_at_1": entry["hr_at_1"],
                        "popularity_hr_at_1": rules["popularity"]["hr_at_1"],
                        "gain_over_popularity": entry["gain_over_popularity"], "baseline": "popularity",
                        "gain_over_baseline": entry["gain_over_baseline"],
                        "gain_over_baseline_ci95": entry["gain_over_baseline_ci95"]}
    assert audit(folder, margin=0.02, recency=0.75, overlap_titles=4, seed=3) == report
    other_seed = audit(folder, margin=0.02, recency=0.75, overlap_titles=4, seed=4)
    assert other_seed["splits"]["test"]["rules"]["candidate_list"]["gain_over_baseline_ci95"] != \
        report["splits"]["test"]["rules"]["candidate_list"]["gain_over_baseline_ci95"]
