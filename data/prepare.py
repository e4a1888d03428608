"""Convert a dataset in the LLaRA layout into the JSON records every stage reads.

Input folder (the layout LLaRA and the S-DPO paper use):
    id2name.txt                       one `item_id::title` per line
    train_data.df, val_data.df, test_data.df
                                      pandas DataFrames (pickle) with columns
                                      seq (item ids, padded), len_seq, next

Output folder:
    train.json, valid.json, test.json lists of {"historyList", "itemList", "trueSelection"}

The candidate procedure is LLaRA's, reproduced exactly so that the validation split matches
the S-DPO authors' published file record for record:
  1. keep rows with len_seq >= 3; the history is the non-padding ids of seq, in order;
  2. seed Python's `random` with the true next id, sample `num_negatives` ids from every item
     (in id2name order) that is neither in the history nor the true item, append the true item,
     seed again with the true id and shuffle.

Pickle runs code when loaded: only convert files you trust.

Usage:
    python data/prepare.py --source ../shared/data/lastfm --output_dir data/lastfm
"""

import os
import random
import sys

import pandas as pd

# Run as `python data/prepare.py`: make the project's package importable from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.cli import run, write_json_atomically  # noqa: E402
from trainer.data_interface import HISTORY_SEPARATOR, parse_record  # noqa: E402
from trainer.errors import InputError  # noqa: E402

SPLITS = {"train": "train_data.df", "valid": "val_data.df", "test": "test_data.df"}
ID_SEPARATOR = "::"


def read_item_titles(path: str) -> dict[int, str]:
    """Parse `id::title` lines into {id: title}, in file order."""
    titles = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            item_id, separator, title = line.partition(ID_SEPARATOR)
            if not separator or not item_id.strip().isdigit() or not title:
                raise InputError(f"{path}: line {line_number}: expected 'item_id::title', got {line!r}")
            titles[int(item_id)] = title
    if not titles:
        raise InputError(f"{path}: no items")
    return titles


def sample_candidates(
    history_ids: list[int], next_id: int, item_ids: list[int], num_negatives: int
) -> list[int]:
    """LLaRA's candidate list: `num_negatives` seeded negatives plus the true item, shuffled."""
    excluded = set(history_ids) | {next_id}
    pool = [item_id for item_id in item_ids if item_id not in excluded]
    rng = random.Random(next_id)
    candidates = rng.sample(pool, num_negatives) + [next_id]
    rng.seed(next_id)
    rng.shuffle(candidates)
    return candidates


def convert_split(
    frame: pd.DataFrame,
    titles: dict[int, str],
    padding_id: int,
    num_negatives: int,
    min_history: int,
    source_name: str,
) -> list[dict]:
    """Turn one LLaRA DataFrame into JSON records; rows with len_seq < min_history are dropped."""
    missing = {"seq", "len_seq", "next"} - set(frame.columns)
    if missing:
        raise InputError(f"{source_name}: missing column(s) {sorted(missing)}")
    item_ids = list(titles)
    records = []
    for row_index, row in enumerate(frame.itertuples(index=False)):
        if row.len_seq < min_history:
            continue
        history_ids = [int(item_id) for item_id in row.seq if int(item_id) != padding_id]
        next_id = int(row.next)
        for field, ids in (("seq", history_ids), ("next", [next_id])):
            unknown = [item_id for item_id in ids if item_id not in titles]
            if unknown:
                raise InputError(f"{source_name}: row {row_index}: field '{field}': unknown item id {unknown[0]}")
        candidates = sample_candidates(history_ids, next_id, item_ids, num_negatives)
        record = {
            "historyList": HISTORY_SEPARATOR.join(titles[item_id] for item_id in history_ids),
            "itemList": [titles[item_id] for item_id in candidates],
            "trueSelection": titles[next_id],
        }
        # The stages will read it back: fail here, on the source row, rather than there.
        parse_record(record, f"{source_name} (row {row_index})", len(records))
        records.append(record)
    return records


def prepare(
    source: str,
    output_dir: str,
    num_negatives: int = 19,
    min_history: int = 3,
    padding_id: int | None = None,
) -> dict[str, int]:
    """Convert a LLaRA-layout folder into train.json, valid.json and test.json.

    Args:
        source: Folder holding id2name.txt and {train,val,test}_data.df.
        output_dir: Folder to write train.json, valid.json and test.json into (created if missing).
        num_negatives: Negatives per record; the record has num_negatives + 1 candidates.
        min_history: Keep rows whose len_seq is at least this (LLaRA uses 3).
        padding_id: Id that pads `seq`; defaults to the number of items (LLaRA's convention).
    Returns:
        The number of records written per split.
    """
    titles_path = os.path.join(source, "id2name.txt")
    if not os.path.isfile(titles_path):
        raise InputError(f"{titles_path}: file not found")
    titles = read_item_titles(titles_path)
    padding_id = len(titles) if padding_id is None else padding_id
    converted = {}
    # Convert every split before writing any, so bad input leaves the output folder untouched.
    for split, file_name in SPLITS.items():
        path = os.path.join(source, file_name)
        if not os.path.isfile(path):
            raise InputError(f"{path}: file not found")
        converted[split] = convert_split(
            pd.read_pickle(path), titles, padding_id, num_negatives, min_history, path
        )
    os.makedirs(output_dir, exist_ok=True)
    for split, records in converted.items():
        write_json_atomically(records, os.path.join(output_dir, f"{split}.json"))
    counts = {split: len(records) for split, records in converted.items()}
    print(f"wrote {counts} records to {output_dir}")
    return counts


if __name__ == "__main__":
    run(prepare)
