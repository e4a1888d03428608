"""Reference points without a model: answer each prompt by a rule over the training records' counts.

- `popularity`: the candidate most often the true item of a training record.
- `transitions`: the candidate that most often came next after a title of the prompt's history in
  the training records (summed over the history's titles), popularity breaking ties.
Remaining ties go to the candidate listed first. Counts come from trainer.collaborative, the same
counts the prompt hints (--hint_file) name. The answers are scored exactly as a model's
(trainer.evaluation), so the metrics compare with inference.py's and trainer.results reads them:

    python -m trainer.baselines --rule transitions --train_file data/lastfm/train.json \
        --test_file data/lastfm/test.json --max_samples 500 --seed 0 --output_dir output/eval_transitions

popularity_rank places any answer among its candidates by training popularity, which shows whether
a model has learned what the data rewards (trainer.results).
"""

import collections
import dataclasses
import json

from trainer.cli import run
from trainer.collaborative import ItemStatistics, counts_own_records
from trainer.data import Record, load_records, select_indices
from trainer.errors import InputError
from trainer.evaluation import METRICS_FILE, PREDICTIONS_FILE, score_answers, write_evaluation
from trainer.flags import EvaluationDataFlags, OutputFlags, command, flag
from trainer.outputs import start_run

RULES = ("popularity", "transitions")


def target_counts(train_file: str) -> collections.Counter:
    """How often each title is the true item of a record of `train_file`."""
    return collections.Counter(record.target for record in load_records(train_file))


def popularity_rank(title: str, candidates, counts: collections.Counter) -> float:
    """Place of `title` among `candidates` by training count: 1 is the most popular.

    Tied candidates share the mean of their places, so a candidate picked at random averages
    (number of candidates + 1) / 2, 10.5 for 20.
    """
    more = sum(counts[other] > counts[title] for other in candidates)
    equal = sum(counts[other] == counts[title] for other in candidates)
    return 1 + more + (equal - 1) / 2


def rule_answer(rule: str, statistics: ItemStatistics, record: Record, exclude_own: bool, recency: float = 1.0) -> str:
    """The candidate a rule names for a record; `exclude_own` when the record is one of those counted,
    `recency` the weight of older history titles in the transitions rule (trainer.collaborative)."""
    if rule == "popularity":
        # max() keeps the first of equally popular candidates.
        return max(record.candidates, key=lambda title: statistics.popularity_of(record, title, exclude_own))
    return statistics.ranked_by_transitions(record, exclude_own, recency)[0][0]


@dataclasses.dataclass
class RulesFlags(EvaluationDataFlags, OutputFlags):
    output_dir: str = "output/eval_popularity"
    rule: str = flag("popularity", "popularity (the candidate most often true in training) or transitions (the "
                                   "candidate that most often came next after the history's titles in training).")
    train_file: str = flag("data/lastfm/train.json", "JSON records whose true items and histories are counted.")
    recency: float = flag(1.0, "transitions: a history title last seen i items before the newest counts recency**i, "
                               "in (0, 1]; the stages' --hint_recency, so the rule is the first hinted candidate.")

    def check(self) -> None:
        super().check()
        if self.rule not in RULES:
            raise InputError(f"--rule: expected one of {list(RULES)}, got {self.rule!r}")
        if not 0 < self.recency <= 1:
            raise InputError(f"--recency must lie in (0, 1], got {self.recency}")


@command(RulesFlags)
def rules(flags: RulesFlags) -> None:
    """Answer every test prompt by a rule over the training records: no model."""
    statistics = ItemStatistics(load_records(flags.train_file))
    records = load_records(flags.test_file)
    indices = select_indices(len(records), flags.max_samples, flags.seed)
    records = [records[index] for index in indices]
    # Scoring the counted file itself leaves each record out of its own counts.
    exclude_own = counts_own_records(flags.train_file, flags.test_file)
    answers = [rule_answer(flags.rule, statistics, record, exclude_own, flags.recency) for record in records]
    predictions, metrics = score_answers(indices, records, answers)
    start_run(dataclasses.asdict(flags), flags.output_dir, METRICS_FILE, (PREDICTIONS_FILE,))
    write_evaluation(flags.output_dir, predictions, metrics)
    print(json.dumps(metrics))


if __name__ == "__main__":
    run(rules)
