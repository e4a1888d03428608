"""A reference point without a model: answer each prompt with its most popular candidate.

Popularity is how often a title is the true item of a training record. Ties go to the candidate
listed first. The answers are scored exactly as a model's (trainer.evaluation), so the metrics are
comparable with inference.py's. popularity_rank places any answer among its candidates by the same
count, which shows whether a model has learned what the data rewards (trainer.results):

    python -m trainer.popularity --train_file data/lastfm/train.json --test_file data/lastfm/test.json \
        --max_samples 500 --sample_seed 0 --output_dir output/eval_popularity
"""

import collections
import json

from trainer.cli import run, save_run_config
from trainer.data_interface import load_records, select_indices
from trainer.evaluation import score_answers, write_evaluation


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


def popularity(train_file: str = "data/lastfm/train.json", test_file: str = "data/lastfm/test.json",
               output_dir: str = "output/eval_popularity", max_samples: int | None = None,
               sample_seed: int | None = None):
    """Answer every test prompt with the candidate most often true in the training records.

    Args:
        train_file: JSON records whose true items are counted.
        test_file: JSON records to evaluate.
        output_dir: Folder for metrics.json, predictions.jsonl and run_config.json.
        max_samples: Evaluate only this many records: the first ones, or a seeded sample with --sample_seed.
        sample_seed: With --max_samples, draw the same seeded sample inference.py draws with this seed.
    """
    config = dict(locals())
    counts = target_counts(train_file)
    records = load_records(test_file)
    indices = select_indices(len(records), max_samples, sample_seed)
    records = [records[index] for index in indices]
    # max() keeps the first of equally popular candidates.
    answers = [max(record.candidates, key=lambda title: counts[title]) for record in records]
    predictions, metrics = score_answers(indices, records, answers)
    save_run_config(config, output_dir)
    write_evaluation(output_dir, predictions, metrics)
    print(json.dumps(metrics))


if __name__ == "__main__":
    run(popularity)
