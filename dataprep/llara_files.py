"""The files of the LLaRA layout: their names, the split files read as pickles or as plain text, and the
export to text that made data/lastfm-source/.

LLaRA keeps each split as a pickled pandas DataFrame (`train_data.df`), and unpickling runs code. The
text form holds the same rows, losslessly, and reading it runs nothing. One file per split, named as
the pickle with `.tsv` in place of `.df` (`train_data.tsv`), UTF-8, tab-separated, first line the
header `seq<TAB>len_seq<TAB>next`, then one line per DataFrame row, in order:

    seq      the row's ids separated by single spaces, padding ids included, as the pickle holds them
    len_seq  an integer
    next     an id

MovieLens' rows hold (id, rating) pairs in place of ids: a pair is written `id,rating`.

Usage (the export that made data/lastfm-source/):
    python data/to_text.py --source ../shared/data/lastfm --output_dir data/lastfm-source
"""

import dataclasses
import os
import shutil

import numpy as np
import pandas as pd

from trainer.commands import Flags, command, required
from trainer.errors import InputError

COLUMNS = ("seq", "len_seq", "next")
HEADER = "\t".join(COLUMNS)
TEXT_SUFFIX = ".tsv"
TEXT_FIRST_ROW_LINE = 2  # the header is line 1
PICKLE_SUFFIX = ".df"
# Each split's file name without its suffix, as LLaRA's loaders spell it (LastFM lower case, MovieLens and
# Steam capitalised); a split is read from its text file where there is one, else from its pickle.
SPLIT_STEMS = {"train": ("train_data",), "valid": ("val_data", "Val_data"), "test": ("test_data", "Test_data")}
SPLIT_SUFFIXES = (TEXT_SUFFIX, PICKLE_SUFFIX)
TITLE_FILES = ("id2name.txt", "u.item")


def split_paths(source: str, suffixes: tuple[str, ...] = SPLIT_SUFFIXES) -> dict[str, str]:
    """{split: path} of a LLaRA-layout folder's three split files; a missing one is an error naming it."""
    found = {}
    for split, stems in SPLIT_STEMS.items():
        paths = [os.path.join(source, stem + suffix) for suffix in suffixes for stem in stems]
        found[split] = next((path for path in paths if os.path.isfile(path)), None)
        if found[split] is None:
            raise InputError(f"{source}: no {split} split: expected {' or '.join(map(os.path.basename, paths))}")
    return found


def item_text(value) -> str:
    """An id, or an (id, rating) pair as `id,rating`."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return ",".join(str(int(part)) for part in value)
    return str(int(value))


def parse_item(text: str, path: str, line_number: int, field: str):
    """`id` -> int, `id,rating` -> (int, int); anything else is an error naming the file, line and field."""
    parts = text.split(",")
    if len(parts) > 2 or not all(part.lstrip("-").isdigit() for part in parts):
        raise InputError(f"{path}: line {line_number}: field '{field}': {text!r} is not an id (or an 'id,rating' pair)")
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def write_split_text(frame: pd.DataFrame, path: str) -> int:
    """Write a LLaRA DataFrame as text to `path` (through a temporary file, so a failure leaves no partial
    file); returns the number of rows."""
    missing = set(COLUMNS) - set(frame.columns)
    if missing:
        raise InputError(f"{path}: the DataFrame lacks column(s) {sorted(missing)}")
    staged = f"{path}.partial"
    try:
        with open(staged, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(HEADER + "\n")
            for seq, len_seq, next_item in zip(frame["seq"], frame["len_seq"], frame["next"]):
                handle.write(f"{' '.join(map(item_text, seq))}\t{int(len_seq)}\t{item_text(next_item)}\n")
    except BaseException:
        if os.path.exists(staged):
            os.remove(staged)
        raise
    os.replace(staged, path)
    return len(frame)


def read_split_text(path: str) -> pd.DataFrame:
    """A split in the text form as the DataFrame the pickle holds (seq a list per row)."""
    seqs, lengths, next_items = [], [], []
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n")
        if header != HEADER:
            raise InputError(f"{path}: line 1: expected the header {HEADER!r}, got {header!r}")
        for line_number, line in enumerate(handle, start=TEXT_FIRST_ROW_LINE):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != len(COLUMNS):
                raise InputError(f"{path}: line {line_number}: expected {len(COLUMNS)} tab-separated fields "
                                 f"({', '.join(COLUMNS)}), got {len(fields)}")
            seq, len_seq, next_item = fields
            if not len_seq.isdigit():
                raise InputError(f"{path}: line {line_number}: field 'len_seq': {len_seq!r} is not a count")
            seqs.append([parse_item(text, path, line_number, "seq") for text in seq.split(" ")] if seq else [])
            lengths.append(int(len_seq))
            next_items.append(parse_item(next_item, path, line_number, "next"))
    return pd.DataFrame({"seq": seqs, "len_seq": lengths, "next": next_items})


def read_split(path: str) -> pd.DataFrame:
    """A LLaRA split file, text (.tsv) or pickle (.df); a damaged or foreign pickle is an error naming it."""
    if path.endswith(TEXT_SUFFIX):
        return read_split_text(path)
    try:
        frame = pd.read_pickle(path)
    except Exception as error:  # pickle raises many kinds for a damaged file
        raise InputError(f"{path}: not a readable pickled DataFrame ({type(error).__name__}: {error})") from None
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"{path}: holds a {type(frame).__name__}, not a DataFrame")
    return frame


@dataclasses.dataclass
class ToTextFlags(Flags):
    source: str = required("Folder in the LLaRA layout: id2name.txt (or MovieLens' u.item) and *_data.df pickles.")
    output_dir: str = required("Folder to write the title file and one *_data.tsv per *_data.df into (created if "
                               "missing).")


@command(ToTextFlags)
def to_text(flags: ToTextFlags) -> dict[str, int]:
    """Write a LLaRA-layout folder's pickled splits as text, beside a copy of its title file; returns the rows
    written per file."""
    if not os.path.isdir(flags.source):
        raise InputError(f"--source {flags.source}: folder not found")
    title_files = [name for name in TITLE_FILES if os.path.isfile(os.path.join(flags.source, name))]
    if not title_files:
        raise InputError(f"{flags.source}: no title file ({' or '.join(TITLE_FILES)})")
    # Every split is read before anything is written.
    frames = {path: read_split(path) for path in split_paths(flags.source, (PICKLE_SUFFIX,)).values()}
    os.makedirs(flags.output_dir, exist_ok=True)
    shutil.copyfile(os.path.join(flags.source, title_files[0]), os.path.join(flags.output_dir, title_files[0]))
    counts = {}
    for path, frame in frames.items():
        name = os.path.basename(path).removesuffix(PICKLE_SUFFIX) + TEXT_SUFFIX
        counts[name] = write_split_text(frame, os.path.join(flags.output_dir, name))
    print(f"wrote {counts} rows to {flags.output_dir}")
    return counts
