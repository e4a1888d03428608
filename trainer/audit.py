"""Leak audit of a data folder: how far rules that need no model get on its validation and test splits.

A split can hand a model the answer through something other than the user's history: the way the
negatives were drawn, where the true item sits in the list, records or user sequences that the
training split also holds. Each such route has a rule that reads it, with counts from the training
split only, and a baseline: the rule that reads the same kind of evidence without the leak. The
rule's gain over its baseline, on the same prompts, is what the leak is worth.

Reference rules, the signal a recommender is meant to learn:
  popularity        the candidate most often a training true item
  transitions       the candidate that most often came next after the history's titles in training,
                    a title seen i items before the newest weighted recency**i (trainer.collaborative,
                    the counts behind the prompt hints)
Leak rules, each breaking ties (and scoring records without its signal) by its baseline:
  candidate_list    (baseline popularity) for each candidate c: how often each other candidate was a
                    negative in training records whose true item was c, summed, divided by c's count
                    as a training true item. High when lists are drawn from the true item: LLaRA's draw
                    seeds Python's random with it, so records sharing a true item share negatives.
                    Training copies of the very record are left out (they are shared records).
  listing_rate      (baseline popularity) the share of the training lists offering a candidate in which
                    it was the true item: high when the negatives come from another distribution than
                    the true items.
  position_and_popularity  (baseline popularity) popularity times the training rate of the candidate's
                    position: what the position adds. The table also shows `position` alone (the
                    position most often right in training) and each split gets a chi-square test of
                    the true item's position against a uniform one.
  shared_history    (baseline transitions) the true item of training records with the very same
                    history: records shared between splits.
  sequence_overlap  (baseline transitions) the title that came right after the record's newest
                    `overlap_titles` history titles, in that order, inside another training record's
                    history and true item: the same user's sequence in both splits. Its baseline is
                    the transitions rule because following the titles that came after the same titles
                    in other users' sequences is the signal a recommender should use; only an exact run
                    of several titles beyond that says the sequence itself is shared.

HR@1 here is the expected hit of a random choice among the candidates a rule ties at the top, so
no rule profits from where the true item is listed (breaking ties by list order would hand the
position leak to every rule).

A leak is flagged when its rule beats its baseline by at least `margin` HR@1 (0.01 by default) and
the 95% paired bootstrap interval of that gain lies above 0. Why 0.01: differences of one to two
points separate the stages this project compares (DPO - SFT, S-DPO - DPO), so a route to the answer
worth one point can make or unmake such an ordering; the interval keeps sampling noise from
flagging clean data, where the expected gain of every leak rule is 0 or below.
"""

import collections
import dataclasses
import math
import os
import typing

import numpy as np

from trainer.collaborative import ItemStatistics
from trainer.commands import Flags, command, flag
from trainer.data import Record, load_records
from trainer.errors import InputError
from trainer.metrics import paired_bootstrap_interval, wilson_interval
from trainer.outputs import write_json_atomically, write_text_atomically

SPLIT_FILES = {"train": "train.json", "valid": "valid.json", "test": "test.json"}
EVALUATED_SPLITS = ("valid", "test")
AUDIT_FILE = "audit.json"
AUDIT_TABLE_FILE = "audit.md"
REFERENCE_RULES = ("popularity", "transitions")
# A history shorter than this is not matched against training sequences: a run of one or two popular
# titles in the same order is common across users and says nothing about a shared sequence.
MIN_OVERLAP_TITLES = 3


@dataclasses.dataclass(frozen=True)
class Leak:
    """One route to the answer, the rule that reads it, and what it means in words."""

    name: str
    rule: str
    baseline: str  # the rule that reads the same evidence without the leak; the gain is measured over it
    what: str


LEAKS = (
    Leak("candidate_list", "candidate_list", "popularity",
         "the candidate list depends on the true item: records sharing a true item share their negatives"),
    Leak("negative_sampler", "listing_rate", "popularity",
         "the negatives come from another distribution than the true items"),
    Leak("position", "position_and_popularity", "popularity", "the true item's position in the list is not random"),
    Leak("shared_records", "shared_history", "transitions",
         "records with the same history (and true item) are in both splits"),
    Leak("shared_sequences", "sequence_overlap", "transitions",
         "a user's sequence is in both splits: the true item follows the same titles in a training record"),
)
RULES = ("popularity", "transitions", "candidate_list", "listing_rate", "position", "position_and_popularity",
         "shared_history", "sequence_overlap")


class TrainingCounts:
    """What the audit's rules count in the training records."""

    def __init__(self, records: list[Record], recency: float):
        self.recency = recency
        self.statistics = ItemStatistics(records)  # popularity and transitions, as the hints count them
        self.listed = collections.Counter(title for record in records for title in record.candidates)
        # co_negatives[c][d]: training records whose true item is c that list d as a negative.
        self.co_negatives: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.targets_by_history: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
        self.identical = collections.Counter((record.history, record.candidates, record.target) for record in records)
        longest = max(len(record.candidates) for record in records)
        self.right_at = np.zeros(longest)  # records whose true item sits at each position
        self.offered_at = np.zeros(longest)  # records whose list reaches each position
        for record in records:
            negatives = self.co_negatives[record.target]
            for title in record.candidates:
                if title != record.target:
                    negatives[title] += 1
            self.targets_by_history[record.history][record.target] += 1
            self.right_at[record.candidates.index(record.target)] += 1
            self.offered_at[: len(record.candidates)] += 1
        self.records = records

    def popularity(self, title: str) -> int:
        return self.statistics.popularity[title]

    def position_rate(self, position: int) -> float:
        """Share of the training lists reaching `position` whose true item sat there (0 beyond them)."""
        if position >= len(self.offered_at) or not self.offered_at[position]:
            return 0.0
        return self.right_at[position] / self.offered_at[position]


def sequence_followers(train: list[Record], records: list[Record], overlap_titles: int) -> list[collections.Counter]:
    """For each record: the titles that came right after its newest `overlap_titles` history titles (all of a
    shorter history of at least MIN_OVERLAP_TITLES), in that order, inside a training record's history followed
    by its true item, with how often. A training record with the very same history is left out: that is a
    shared record (the shared_history rule), not another part of the same sequence."""
    runs = {}
    for index, record in enumerate(records):
        length = min(len(record.history), overlap_titles)
        if length >= MIN_OVERLAP_TITLES:
            runs.setdefault(record.history[-length:], []).append(index)
    lengths = sorted({len(run) for run in runs})
    followers = [collections.Counter() for _ in records]
    for training_record in train:
        sequence = training_record.history + (training_record.target,)
        for length in lengths:
            for start in range(len(sequence) - length):
                for index in runs.get(sequence[start : start + length], ()):
                    if records[index].history != training_record.history:
                        followers[index][sequence[start + length]] += 1
    return followers


def rule_keys(counts: TrainingCounts, record: Record, followers: collections.Counter) -> dict[str, list]:
    """Each rule's score of every candidate of `record`, in candidate order; a rule names the highest.
    Leak rules break ties (and score records without their signal) by their baseline rule's score."""
    candidates = record.candidates
    popularity = [counts.popularity(title) for title in candidates]
    transition = dict(counts.statistics.ranked_by_transitions(record, exclude_own=False, recency=counts.recency))
    transitions = [(transition[title], pop) for title, pop in zip(candidates, popularity)]
    same_history = counts.targets_by_history.get(record.history, {})
    keys = {"popularity": popularity, "transitions": transitions, "candidate_list": [], "listing_rate": []}
    for title, pop in zip(candidates, popularity):
        negatives = counts.co_negatives.get(title)
        shared = sum(negatives[other] for other in candidates if other != title) if negatives else 0
        # Training copies of this very record with `title` as the answer are shared records, which the
        # shared_history rule reads; here they are left out, so that only other records' lists count.
        copies = counts.identical[(record.history, candidates, title)]
        shared, lists = shared - copies * (len(candidates) - 1), pop - copies
        keys["candidate_list"].append((shared / lists if lists else 0.0, pop))
        listed = counts.listed[title]
        keys["listing_rate"].append((pop / listed if listed else 0.0, pop))
    keys["position"] = [counts.position_rate(position) for position in range(len(candidates))]
    # +1: an item never true in training keeps a chance, ordered by its position alone.
    keys["position_and_popularity"] = [(pop + 1) * counts.position_rate(position)
                                       for position, pop in enumerate(popularity)]
    keys["shared_history"] = [(same_history.get(title, 0), *key) for title, key in zip(candidates, transitions)]
    keys["sequence_overlap"] = [(followers[title], *key) for title, key in zip(candidates, transitions)]
    return keys


def expected_hit(keys: list, record: Record) -> float:
    """The chance that a uniform pick among the top-scored candidates is the true item."""
    best = max(keys)
    tied = [title for title, key in zip(record.candidates, keys) if key == best]
    return 1 / len(tied) if record.target in tied else 0.0


def chi_square_survival(statistic: float, degrees: int) -> float:
    """P(X >= statistic) for X chi-square with `degrees` degrees of freedom: the regularized upper incomplete
    gamma function Q(degrees / 2, statistic / 2), by its series below a + 1 and its continued fraction above."""
    if degrees < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {degrees}")
    if statistic <= 0:
        return 1.0
    a, x = degrees / 2, statistic / 2
    log_prefactor = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # P(a, x) = x^a e^-x / Gamma(a + 1) * sum_n x^n / ((a + 1) ... (a + n))
        term = total = 1 / a
        denominator = a
        while abs(term) > abs(total) * 1e-15:
            denominator += 1
            term *= x / denominator
            total += term
        return max(0.0, 1 - total * math.exp(log_prefactor))
    # Q(a, x) = x^a e^-x / Gamma(a) * 1 / (x + 1 - a - 1 (1 - a) / (x + 3 - a - ...)), by Lentz's method.
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    fraction = d
    for n in range(1, 10_000):
        numerator = -n * (n - a)
        b += 2
        d = numerator * d + b
        d = tiny if abs(d) < tiny else d
        c = b + numerator / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        step = d * c
        fraction *= step
        if abs(step - 1) < 1e-15:
            break
    return math.exp(log_prefactor) * fraction


def position_test(records: list[Record]) -> dict:
    """Chi-square test of the true item's position against a position drawn uniformly from each list."""
    longest = max(len(record.candidates) for record in records)
    observed = np.zeros(longest)
    expected = np.zeros(longest)
    for record in records:
        observed[record.candidates.index(record.target)] += 1
        expected[: len(record.candidates)] += 1 / len(record.candidates)
    statistic = float(((observed - expected) ** 2 / expected).sum())
    degrees = longest - 1
    return {"chi_square": round(statistic, 2), "degrees_of_freedom": degrees,
            "p_value": chi_square_survival(statistic, degrees), "true_item_at_position": observed.astype(int).tolist(),
            "expected_at_position": np.round(expected, 1).tolist()}


def overlap_counts(train: list[Record], records: list[Record], followers: list[collections.Counter]) -> dict:
    """How many records the training split shares, whole or in part."""
    whole = {(record.history, record.candidates, record.target) for record in train}
    same_answer = {(record.history, record.target) for record in train}
    return {
        "identical_to_a_training_record": sum((r.history, r.candidates, r.target) in whole for r in records),
        "same_history_and_true_item_as_a_training_record": sum((r.history, r.target) in same_answer for r in records),
        "history_run_found_in_training_sequences": sum(bool(found) for found in followers),
        "true_item_follows_that_run_in_training": sum(found[r.target] > 0 for r, found in zip(records, followers)),
    }


def audit_split(counts: TrainingCounts, records: list[Record], overlap_titles: int, seed: int) -> dict:
    """Every rule's HR@1 on one split; for a leak rule, its gain over popularity and over its baseline with
    paired intervals; the position test and the overlap counts."""
    followers = sequence_followers(counts.records, records, overlap_titles)
    hits = {rule: [] for rule in RULES}
    for record, found in zip(records, followers):
        for rule, keys in rule_keys(counts, record, found).items():
            hits[rule].append(expected_hit(keys, record))
    total = len(records)
    baseline_of = {leak.rule: leak.baseline for leak in LEAKS}
    rules = {}
    for rule, rule_hits in hits.items():
        entry = {"hr_at_1": sum(rule_hits) / total, "hr_at_1_ci95": list(wilson_interval(sum(rule_hits), total))}
        for name, other in (("popularity", "popularity"), ("baseline", baseline_of.get(rule))):
            if other and other != rule:
                entry[f"gain_over_{name}"] = entry["hr_at_1"] - sum(hits[other]) / total
                entry[f"gain_over_{name}_ci95"] = paired_bootstrap_interval(rule_hits, hits[other], seed)
        if rule in baseline_of:
            entry["baseline"] = baseline_of[rule]
        rules[rule] = entry
    return {"records": total, "chance": sum(1 / len(record.candidates) for record in records) / total,
            "rules": rules, "position_test": position_test(records),
            "overlap_with_train": overlap_counts(counts.records, records, followers)}


def is_flagged(entry: dict, margin: float) -> bool:
    """A leak rule's gain over its baseline reaches the margin, its 95% interval above 0."""
    return entry["gain_over_baseline"] >= margin and entry["gain_over_baseline_ci95"][0] > 0


def read_splits(data_dir: str) -> dict[str, list[Record]]:
    """The folder's training records and its validation and test records where it has any (one split at least)."""
    if not os.path.isdir(data_dir):
        raise InputError(f"--data_dir {data_dir}: folder not found")
    paths = {split: os.path.join(data_dir, name) for split, name in SPLIT_FILES.items()}
    if not os.path.isfile(paths["train"]):
        raise InputError(f"{paths['train']}: file not found; the audit counts the training split")
    splits = {"train": load_records(paths["train"])}
    for split in EVALUATED_SPLITS:
        if os.path.isfile(paths[split]):
            records = load_records(paths[split], allow_empty=True)
            if records:
                splits[split] = records
    if len(splits) == 1:
        raise InputError(f"--data_dir {data_dir}: no records in {SPLIT_FILES['valid']} or {SPLIT_FILES['test']} to audit")
    return splits


def audit(data_dir: str, margin: float = 0.01, recency: float = 0.5, overlap_titles: int = 5, seed: int = 0) -> dict:
    """The audit of a data folder (train.json and valid.json and/or test.json): what audit.json holds."""
    if margin < 0:
        raise InputError(f"--margin must be 0 or more, got {margin}")
    if not 0 < recency <= 1:
        raise InputError(f"--hint_recency must lie in (0, 1], got {recency}")
    if overlap_titles < MIN_OVERLAP_TITLES:
        raise InputError(f"--overlap_titles must be at least {MIN_OVERLAP_TITLES}, got {overlap_titles}")
    splits = read_splits(data_dir)
    counts = TrainingCounts(splits["train"], recency)
    report = {"data_dir": data_dir, "margin": margin, "recency": recency, "overlap_titles": overlap_titles,
              "train": {"records": len(splits["train"]), "position_test": position_test(splits["train"])},
              "splits": {split: audit_split(counts, records, overlap_titles, seed)
                         for split, records in splits.items() if split != "train"}}
    report["leaks"] = [
        {"name": leak.name, "split": split, "rule": leak.rule, "what": leak.what, "hr_at_1": entry["hr_at_1"],
         "popularity_hr_at_1": found["rules"]["popularity"]["hr_at_1"],
         "gain_over_popularity": entry["gain_over_popularity"], "baseline": leak.baseline,
         "gain_over_baseline": entry["gain_over_baseline"], "gain_over_baseline_ci95": entry["gain_over_baseline_ci95"]}
        for leak in LEAKS for split, found in report["splits"].items()
        if is_flagged(entry := found["rules"][leak.rule], margin)]
    return report


def interval_cell(value: float, interval: list[float], signed: bool) -> str:
    sign = "+" if signed else ""
    return f"{value:{sign}.3f} [{interval[0]:{sign}.3f}, {interval[1]:{sign}.3f}]"


def markdown_table(report: dict) -> str:
    """One row per rule: HR@1 with its interval per split and, for a leak rule, its gain over its baseline."""
    splits = list(report["splits"])
    leak_of_rule = {leak.rule: leak for leak in LEAKS}
    flagged = {(leak["rule"], leak["split"]) for leak in report["leaks"]}
    lines = ["| rule | leak it reads (gain over) | " + " | ".join(
        f"{split} HR@1 [95% CI] | {split} gain [95% CI]" for split in splits) + " |",
        "|---" * (2 + 2 * len(splits)) + "|"]
    for rule in RULES:
        leak = leak_of_rule.get(rule)
        reads = f"{leak.name} ({leak.baseline})" if leak else "(reference)" if rule in REFERENCE_RULES else "(shown)"
        cells = [rule, reads]
        for split in splits:
            entry = report["splits"][split]["rules"][rule]
            cells.append(interval_cell(entry["hr_at_1"], entry["hr_at_1_ci95"], signed=False))
            if leak:
                mark = " **leak**" if (rule, split) in flagged else ""
                cells.append(interval_cell(entry["gain_over_baseline"], entry["gain_over_baseline_ci95"], True) + mark)
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    chance = [cell for split in splits for cell in (f"{report['splits'][split]['chance']:.3f}", "")]
    lines.append("| chance (a random candidate) | | " + " | ".join(chance) + " |")
    return "\n".join(lines) + "\n"


def verdicts(report: dict) -> list[str]:
    """One line per kind of leak: flagged or not, and what its rule gains over popularity and its baseline."""
    lines = []
    flagged = {leak["name"] for leak in report["leaks"]}
    for leak in LEAKS:
        gains = "; ".join(
            f"{split} {entry['hr_at_1']:.3f}, {entry['gain_over_popularity']:+.3f} over popularity"
            + (f", {interval_cell(entry['gain_over_baseline'], entry['gain_over_baseline_ci95'], True)} over "
               f"{leak.baseline}" if leak.baseline != "popularity" else
               f" [{entry['gain_over_baseline_ci95'][0]:+.3f}, {entry['gain_over_baseline_ci95'][1]:+.3f}]")
            for split, split_report in report["splits"].items() for entry in (split_report["rules"][leak.rule],))
        if leak.name in flagged:
            lines.append(f"LEAK {leak.name}: {leak.what}. Rule {leak.rule}: HR@1 {gains}")
        else:
            lines.append(f"ok   {leak.name}: rule {leak.rule}: HR@1 {gains}")
    positions = "; ".join(f"{split} p = {found['position_test']['p_value']:.2g}"
                          for split, found in [("train", report["train"]), *report["splits"].items()])
    lines.append(f"     the true item's position against a uniform one (chi-square): {positions}")
    lines.append(f"     a leak is flagged when its rule gains at least {report['margin']} HR@1 over its baseline, "
                 "the 95% paired interval above 0")
    return lines


def write_audit(report: dict, output_dir: str) -> None:
    """audit.md (the table and the verdicts), then audit.json, each whole or not at all."""
    text = markdown_table(report) + "\n" + "\n".join(verdicts(report)) + "\n"
    write_text_atomically(text, os.path.join(output_dir, AUDIT_TABLE_FILE))
    write_json_atomically(report, os.path.join(output_dir, AUDIT_FILE))


@dataclasses.dataclass
class AuditFlags(Flags):
    renamed: typing.ClassVar[dict[str, str]] = {"recency": "hint_recency", "seed": "bootstrap_seed"}

    data_dir: str = flag("data/lastfm", "Folder holding train.json (counted) and valid.json and/or test.json "
                                        "(audited).")
    output_dir: str = flag("output/audit", "Folder for audit.json (every figure; `leaks` lists the flagged ones) and "
                                           "audit.md (the table).")
    margin: float = flag(0.01, "Flag a leak when its rule beats its baseline by at least this HR@1, the 95% paired "
                               "interval of the gain above 0.")
    hint_recency: float = flag(0.5, "Transitions rule: a history title last seen i items before the newest counts "
                                    "hint_recency**i, in (0, 1], as in the stages' hints.")
    overlap_titles: int = flag(5, "Sequence overlap: match this many of a record's newest history titles (all of a "
                                  "shorter history of at least 3) against training sequences.")
    bootstrap_seed: int = flag(0, "Seeds the bootstrap resampling of the gains.")


# audit() checks the values: prepare.py calls it without a command line.
@command(AuditFlags)
def audit_command(flags: AuditFlags) -> dict:
    """Audit a data folder for leaks: how far rules that need no model get on its validation and test splits."""
    report = audit(flags.data_dir, flags.margin, flags.hint_recency, flags.overlap_titles, flags.bootstrap_seed)
    write_audit(report, flags.output_dir)
    print(markdown_table(report))
    print("\n".join(verdicts(report)))
    return report
