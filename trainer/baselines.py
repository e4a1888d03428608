"""Reference points scored exactly as a model is (trainer.evaluation), so that the metrics compare with
inference.py's and trainer.results reads them. Rules over the training records' counts:

- `popularity`: the candidate most often the true item of a training record.
- `transitions`: the candidate that most often came next after a title of the prompt's history in
  the training records (summed over the history's titles), popularity breaking ties.
- `itemknn`: the candidate most similar to the history's titles, the similarity of two items being
  the cosine of their occurrence in the training records' sequences (history and true item):
  records holding both / sqrt(records holding one x records holding the other), summed over the
  history's distinct titles (Sarwar et al., WWW 2001, on sequences instead of user baskets).
Remaining ties go to the candidate listed first. Counts come from trainer.collaborative, the same
counts the prompt hints (--hint_file) name.

And sequential models trained from scratch on the training records, early-stopped on --valid_file
(trainer.sequential): `sasrec` and `gru4rec`. They, and itemknn, also score every candidate, so
their evaluations carry the ranking metrics and every candidate's score.

    python -m trainer.baselines --rule transitions --train_file data/lastfm/train.json \
        --test_file data/lastfm/test.json --max_samples 500 --sample_seed 0 --output_dir output/eval_transitions
    python -m trainer.baselines --rule sasrec --output_dir output/eval_sasrec --max_samples 500
"""

import collections
import dataclasses
import json
import math
import os
import typing

from trainer.cli import run
from trainer.collaborative import ItemStatistics, counts_own_records
from trainer.data import Record, load_records, select_indices
from trainer.errors import InputError
from trainer.evaluation import METRICS_FILE, PREDICTIONS_FILE, score_answers, write_evaluation
from trainer.commands import OutputFlags, command, flag
from trainer.flags import EvaluationDataFlags
from trainer.outputs import start_run, write_json_atomically
from trainer.sequential import MODEL_TYPES, Catalogue, TrainingSettings, candidate_scores, train_sequential_model

COUNT_RULES = ("popularity", "transitions")
SCORED_RULES = ("itemknn", *MODEL_TYPES)  # score every candidate
RULES = (*COUNT_RULES, *SCORED_RULES)
TRAINING_LOG_FILE = "training_log.json"


def rule_answer(rule: str, statistics: ItemStatistics, record: Record, exclude_own: bool, recency: float = 1.0) -> str:
    """The candidate a rule names for a record; `exclude_own` when the record is one of those counted,
    `recency` the weight of older history titles in the transitions rule (trainer.collaborative)."""
    if rule == "popularity":
        # max() keeps the first of equally popular candidates.
        return max(record.candidates, key=lambda title: statistics.popularity_of(record, title, exclude_own))
    return statistics.ranked_by_transitions(record, exclude_own, recency)[0][0]


class ItemKNN:
    """Item-to-item cosine similarity of occurrence in the training records' sequences (history and true item)."""

    def __init__(self, records: list[Record]):
        self.holding = collections.defaultdict(set)  # title -> indices of the records whose sequence holds it
        for index, record in enumerate(records):
            for title in {*record.history, record.target}:
                self.holding[title].add(index)

    def similarity(self, first: str, second: str) -> float:
        both = self.holding.get(first, set()) & self.holding.get(second, set())
        return len(both) / math.sqrt(len(self.holding[first]) * len(self.holding[second])) if both else 0.0

    def scores(self, record: Record) -> list[float]:
        """Each candidate's summed similarity to the distinct titles of the record's history."""
        history = set(record.history)
        return [sum(self.similarity(past, title) for past in history) for title in record.candidates]


@dataclasses.dataclass
class RulesFlags(EvaluationDataFlags, OutputFlags):
    # --seed seeds training, as in every stage; the test sample has --sample_seed.
    renamed: typing.ClassVar[dict[str, str]] = {"training_seed": "seed", "recency": "hint_recency"}

    output_dir: str = "output/eval_popularity"
    rule: str = flag("popularity", "popularity (the candidate most often true in training), transitions (the "
                                   "candidate that most often came next after the history's titles in training), "
                                   "itemknn (the candidate most similar to the history's titles by co-occurrence "
                                   "in training sequences), or a model trained on the training records: sasrec or "
                                   "gru4rec.")
    train_file: str = flag("data/lastfm/train.json", "JSON records whose true items and histories are counted, or "
                                                     "that sasrec and gru4rec train on.")
    valid_file: str = flag("data/lastfm/valid.json", "sasrec, gru4rec: JSON records whose HR@1 after each epoch "
                                                     "decides when training stops and which epoch is kept.")
    hint_recency: float = flag(1.0, "transitions: a history title last seen i items before the newest counts "
                                    "hint_recency**i, in (0, 1]; as the stages' hints, so the rule names the first "
                                    "hinted candidate.")
    hidden_size: int = flag(TrainingSettings.hidden_size, "sasrec, gru4rec: width of the item embeddings and states.")
    dropout: float = flag(TrainingSettings.dropout, "sasrec, gru4rec: dropout on embeddings and inside the blocks.")
    learning_rate: float = flag(TrainingSettings.learning_rate, "sasrec, gru4rec: Adam's learning rate.")
    batch_size: int = flag(TrainingSettings.batch_size, "sasrec, gru4rec: training sequences per step.")
    max_epochs: int = flag(TrainingSettings.max_epochs, "sasrec, gru4rec: most passes over the training records.")
    patience: int = flag(TrainingSettings.patience, "sasrec, gru4rec: stop after this many epochs without a better "
                                                    "validation HR@1, keeping the best epoch's weights.")
    seed: int = flag(TrainingSettings.seed, "sasrec, gru4rec: seeds the initial weights and the data order.")

    def check(self) -> None:
        super().check()
        if self.rule not in RULES:
            raise InputError(f"--rule: expected one of {list(RULES)}, got {self.rule!r}")
        if not 0 < self.hint_recency <= 1:
            raise InputError(f"--hint_recency must lie in (0, 1], got {self.hint_recency}")
        if min(self.hidden_size, self.batch_size, self.max_epochs, self.patience) < 1:
            raise InputError("--hidden_size, --batch_size, --max_epochs and --patience must be at least 1")
        if not (0 <= self.dropout < 1 and self.learning_rate > 0):
            raise InputError(f"--dropout must lie in [0, 1) and --learning_rate above 0, got {self.dropout} and "
                             f"{self.learning_rate}")
        if self.rule in SCORED_RULES and counts_own_records(self.train_file, self.test_file):
            raise InputError(f"--rule {self.rule} scores records it was not built from: give a --test_file other "
                             "than --train_file")

    def training_settings(self) -> TrainingSettings:
        return TrainingSettings(hidden_size=self.hidden_size, dropout=self.dropout, learning_rate=self.learning_rate,
                                batch_size=self.batch_size, max_epochs=self.max_epochs, patience=self.patience,
                                seed=self.seed)


def scored_rule(flags: RulesFlags, train_records: list[Record], records: list[Record]) -> tuple[list[list[float]], list]:
    """Every candidate's score under itemknn, sasrec or gru4rec; and, for a trained model, its epochs' log."""
    if flags.rule == "itemknn":
        knn = ItemKNN(train_records)
        return [knn.scores(record) for record in records], []
    valid_records = load_records(flags.valid_file)
    catalogue = Catalogue(train_records, valid_records, records)
    settings = flags.training_settings()
    model, log = train_sequential_model(flags.rule, train_records, valid_records, catalogue, settings)
    histories, lengths = catalogue.histories(records, settings.max_length)
    scores = candidate_scores(model, histories, lengths, catalogue.candidates(records))
    return [row[: len(record.candidates)] for row, record in zip(scores.tolist(), records)], log


@command(RulesFlags)
def rules(flags: RulesFlags) -> None:
    """Answer every test prompt by a rule over the training records, or a model trained on them."""
    train_records = load_records(flags.train_file)
    records = load_records(flags.test_file)
    indices = select_indices(len(records), flags.max_samples, flags.sample_seed)
    records = [records[index] for index in indices]
    scores, log = None, []
    if flags.rule in SCORED_RULES:
        scores, log = scored_rule(flags, train_records, records)
        # max() keeps the first of equal scores, as the count rules do.
        answers = [record.candidates[max(range(len(row)), key=row.__getitem__)] for record, row in zip(records, scores)]
    else:
        statistics = ItemStatistics(train_records)
        # Scoring the counted file itself leaves each record out of its own counts.
        exclude_own = counts_own_records(flags.train_file, flags.test_file)
        answers = [rule_answer(flags.rule, statistics, record, exclude_own, flags.hint_recency) for record in records]
    predictions, metrics = score_answers(indices, records, answers, scores)
    start_run(dataclasses.asdict(flags), flags.output_dir, METRICS_FILE, (PREDICTIONS_FILE, TRAINING_LOG_FILE))
    if log:
        write_json_atomically(log, os.path.join(flags.output_dir, TRAINING_LOG_FILE))
    write_evaluation(flags.output_dir, predictions, metrics)
    print(json.dumps(metrics))


if __name__ == "__main__":
    run(rules)
