"""Convert a dataset in the LLaRA layout into the JSON records every stage reads.

Input folder (the layout LLaRA and the S-DPO paper use, for LastFM, Steam and MovieLens):
    id2name.txt                       one `item_id::title` per line (LastFM, Steam), or
    u.item                            MovieLens' `id|title (year)|date|...` lines in latin-1; as LLaRA
                                      reads them, ids count from 0 (id - 1), the year is dropped and a
                                      trailing article comes first ("Usual Suspects, The (1995)" ->
                                      "The Usual Suspects")
    train_data.df, val_data.df (or Val_data.df), test_data.df (or Test_data.df)
                                      pandas DataFrames (pickle) with columns seq (item ids, padded;
                                      MovieLens: (id, rating) pairs), len_seq, next (id or pair)

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

import logging
import os
import random
import re
import sys
from collections.abc import Iterator, Sequence

import pandas as pd

# Run as `python data/prepare.py`: make the project's package importable from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.cli import run, stage_json_list  # noqa: E402
from trainer.data_interface import HISTORY_SEPARATOR, parse_record  # noqa: E402
from trainer.errors import InputError  # noqa: E402

# Each split's file names, as LLaRA's loaders spell them (LastFM lower case, MovieLens and Steam capitalised).
logger = logging.getLogger("prepare")

SPLITS = {"train": ("train_data.df",), "valid": ("val_data.df", "Val_data.df"), "test": ("test_data.df", "Test_data.df")}
ID_SEPARATOR = "::"
TITLE_FILES = ("id2name.txt", "u.item")
# MovieLens titles end in their year and put a leading article last: "Usual Suspects, The (1995)".
MOVIELENS_YEAR = re.compile(r"\s*\(\d{4}\)$")
MOVIELENS_TRAILING_ARTICLE = re.compile(r"^(?P<title>.+?), (?P<article>The|A|An)(?P<rest> \(.*\))?$")


def read_titles(path: str, encoding: str, parse_line, expected: str) -> dict[int, str]:
    """{id: title} from a title file, in file order; `parse_line` turns a line into (id, title) or None."""
    titles = {}
    with open(path, encoding=encoding) as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parsed = parse_line(line)
            if parsed is None:
                raise InputError(f"{path}: line {line_number}: expected '{expected}', got {line!r}")
            titles[parsed[0]] = parsed[1]
    if not titles:
        raise InputError(f"{path}: no items")
    return titles


def id2name_line(line: str) -> tuple[int, str] | None:
    """`item_id::title` (LastFM, Steam)."""
    item_id, separator, title = line.partition(ID_SEPARATOR)
    if not separator or not item_id.strip().isdigit() or not title.strip():
        return None
    return int(item_id), title.strip()


def movielens_title(raw: str) -> str:
    """ "Usual Suspects, The (1995)" -> "The Usual Suspects": LLaRA's reading of a u.item title."""
    title = MOVIELENS_YEAR.sub("", raw.strip())
    match = MOVIELENS_TRAILING_ARTICLE.match(title)
    if match:
        title = f"{match['article']} {match['title']}{match['rest'] or ''}"
    return title


def movielens_line(line: str) -> tuple[int, str] | None:
    """MovieLens' u.item `id|title|date|...`, read as LLaRA reads it: ids from 0 (id - 1)."""
    fields = line.split("|")
    if len(fields) < 2 or not fields[0].strip().isdigit() or not movielens_title(fields[1]):
        return None
    return int(fields[0]) - 1, movielens_title(fields[1])


def read_item_titles(path: str) -> dict[int, str]:
    """Parse `id::title` lines into {id: title}, in file order."""
    return read_titles(path, "utf-8", id2name_line, "item_id::title")


def read_movielens_titles(path: str) -> dict[int, str]:
    """Parse MovieLens' u.item (`id|title|date|...`, latin-1) into {id - 1: title}, in file order."""
    return read_titles(path, "latin-1", movielens_line, "id|title|...")


def distinct_titles(titles: dict[int, str], source_name: str) -> dict[int, str]:
    """Gives items that share a title a distinct one ("Title (2)", "Title (3)" in id order).

    A prompt's candidates must be distinct titles: two items with one title would be two identical
    candidates, one right and one wrong. MovieLens 100K lists some films twice under two ids.
    """
    seen = {}
    renamed = 0
    distinct = {}
    taken = set(titles.values())
    for item_id, title in titles.items():
        count = seen.get(title, 0) + 1
        seen[title] = count
        if count > 1:
            candidate = f"{title} ({count})"
            while candidate in taken:
                count += 1
                candidate = f"{title} ({count})"
            taken.add(candidate)
            title = candidate
            renamed += 1
        distinct[item_id] = title
    if renamed:
        logger.warning("%s: %d items share a title with an earlier item; they are named 'title (2)', "
                       "'title (3)', ...", source_name, renamed)
    return distinct


def load_item_titles(source: str) -> tuple[dict[int, str], str]:
    """The titles of a LLaRA-layout folder: id2name.txt, else MovieLens' u.item. Returns (titles, path)."""
    for file_name, reader in zip(TITLE_FILES, (read_item_titles, read_movielens_titles)):
        path = os.path.join(source, file_name)
        if os.path.isfile(path):
            return distinct_titles(reader(path), path), path
    raise InputError(f"{source}: no item titles: expected {' or '.join(TITLE_FILES)}")


class Catalogue:
    """The item ids in title-file order, and each id's position in it."""

    def __init__(self, item_ids):
        self.ids = list(item_ids)
        self.position = {item_id: position for position, item_id in enumerate(self.ids)}


class PoolWithout(Sequence):
    """The catalogue's ids without a few excluded positions, read in place instead of copied.

    `random.sample` only indexes its population, so sampling from this gives exactly what sampling
    from the filtered list gives, at a cost of O(excluded) per draw instead of O(items) per record.
    """

    def __init__(self, ids: list[int], excluded_positions):
        self.ids = ids
        self.excluded = sorted(excluded_positions)

    def __len__(self) -> int:
        return len(self.ids) - len(self.excluded)

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(index)
        position = index
        for excluded in self.excluded:  # ascending: each one at or before `position` shifts it by one
            if excluded > position:
                break
            position += 1
        return self.ids[position]


def sample_candidates(history_ids: list[int], next_id: int, catalogue: Catalogue, num_negatives: int) -> list[int]:
    """LLaRA's candidate list: `num_negatives` seeded negatives plus the true item, shuffled.

    The negatives are drawn from every catalogue item, in catalogue order, that is neither in the
    history nor the true item, with Python's `random` seeded by the true item's id.
    """
    excluded = {catalogue.position[item_id] for item_id in history_ids} | {catalogue.position[next_id]}
    pool = PoolWithout(catalogue.ids, excluded)
    if len(pool) < num_negatives:
        raise InputError(f"--num_negatives {num_negatives}: only {len(pool)} items are left to draw from")
    rng = random.Random(next_id)
    candidates = rng.sample(pool, num_negatives) + [next_id]
    rng.seed(next_id)
    rng.shuffle(candidates)
    return candidates


def item_id(value) -> int:
    """An id of `seq` or `next`: a plain id, or MovieLens' (id, rating) pair."""
    return int(value[0]) if isinstance(value, (tuple, list)) else int(value)


def convert_split(
    frame: pd.DataFrame,
    titles: dict[int, str],
    padding_id: int,
    num_negatives: int,
    min_history: int,
    source_name: str,
) -> Iterator[dict]:
    """Turn one LLaRA DataFrame into JSON records, one at a time; rows with len_seq < min_history are dropped."""
    missing = {"seq", "len_seq", "next"} - set(frame.columns)
    if missing:
        raise InputError(f"{source_name}: missing column(s) {sorted(missing)}")
    catalogue = Catalogue(titles)
    for row_index, row in enumerate(frame.itertuples(index=False)):
        if row.len_seq < min_history:
            continue
        history_ids = [item_id(value) for value in row.seq if item_id(value) != padding_id]
        next_id = item_id(row.next)
        for field, ids in (("seq", history_ids), ("next", [next_id])):
            unknown = [value for value in ids if value not in titles]
            if unknown:
                raise InputError(f"{source_name}: row {row_index}: field '{field}': unknown item id {unknown[0]}")
        candidates = sample_candidates(history_ids, next_id, catalogue, num_negatives)
        history = [titles[item_id] for item_id in history_ids]
        record = {
            # The file format's '::'-joined string, or a list where a title itself holds '::'.
            "historyList": history if any(HISTORY_SEPARATOR in title for title in history)
            else HISTORY_SEPARATOR.join(history),
            "itemList": [titles[item_id] for item_id in candidates],
            "trueSelection": titles[next_id],
        }
        # The stages will read it back: fail here, on the source row, rather than there.
        parse_record(record, source_name, row_index)
        yield record


def prepare(
    source: str,
    output_dir: str,
    num_negatives: int = 19,
    min_history: int = 3,
    padding_id: int | None = None,
) -> dict[str, int]:
    """Convert a LLaRA-layout folder into train.json, valid.json and test.json.

    Args:
        source: Folder holding id2name.txt (or MovieLens' u.item) and {train,val,test}_data.df.
        output_dir: Folder to write train.json, valid.json and test.json into (created if missing).
        num_negatives: Negatives per record; the record has num_negatives + 1 candidates.
        min_history: Keep rows whose len_seq is at least this (LLaRA uses 3).
        padding_id: Id that pads `seq`; defaults to the number of items (LLaRA's convention).
    Returns:
        The number of records written per split.
    """
    if not os.path.isdir(source):
        raise InputError(f"--source {source}: folder not found")
    titles, _ = load_item_titles(source)
    padding_id = len(titles) if padding_id is None else padding_id
    split_files = {}
    for split, file_names in SPLITS.items():
        paths = [os.path.join(source, file_name) for file_name in file_names]
        split_files[split] = next((path for path in paths if os.path.isfile(path)), None)
        if split_files[split] is None:
            raise InputError(f"{paths[0]}: file not found")
    # Every split is staged in a temporary file and renamed into place only when all converted, so
    # bad input leaves the output folder as it was; records stream through, never all in memory.
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    staged = {}
    try:
        for split, path in split_files.items():
            records = convert_split(pd.read_pickle(path), titles, padding_id, num_negatives, min_history, path)
            staged[split] = stage_json_list(records, output_dir)
    except BaseException:
        for staged_path, _ in staged.values():
            os.remove(staged_path)
        if created:
            os.rmdir(output_dir)
        raise
    for split, (staged_path, _) in staged.items():
        os.replace(staged_path, os.path.join(output_dir, f"{split}.json"))
    counts = {split: count for split, (_, count) in staged.items()}
    print(f"wrote {counts} records to {output_dir}")
    return counts


if __name__ == "__main__":
    run(prepare)
