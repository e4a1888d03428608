"""Converting a raw interaction log and an item-title table into the JSON records every stage reads
(data/prepare_log.py).

The way LLaRA builds its LastFM, Steam and MovieLens sets, from a log instead of its prepared files:
  1. read (user, item, time) rows; keep each user's first interaction with an item (unless
     --keep_repeats) and drop items and users with too few interactions, repeatedly, until every
     remaining item and user has enough (a k-core);
  2. number the remaining items in the title table's order and write id2name.txt;
  3. order each user's items by time (file order among equal times) and slide a window over them:
     at every position the item is the target and the up to --history_size items before it the
     history (LLaRA: 10);
  4. split by --split:
       time  the windows whose target came after the (1 - valid - test) quantile of all target
             times are validation, after the (1 - test) quantile test: training never sees the
             future of a validation or test target, the usual leakage-free split (default);
       user  a seeded --valid_fraction / --test_fraction of the users with all their windows;
  5. write the LLaRA layout (id2name.txt, train_data.tsv, val_data.tsv, test_data.tsv as text, with seq
     right-padded by the id len(items) as LLaRA's files are) into --llara_dir, then convert it with
     data/prepare.py: rows with fewer than --min_history items are dropped and each record gets
     --negatives_per_list negatives, drawn uniformly from the items outside its history (--negative_draw
     independent, seeded by --seed and the record; llara: LLaRA's own per-record procedure, seeded by
     the true item, which gives the true item away), and the result is audited for leaks.

The log is CSV/TSV (with a header, or name its columns with --columns) or JSON lines (.jsonl).
Time is one or more numeric columns compared in order ("year,month,day"), or one ISO date-time.

Usage (MovieLens 100K: u.data is `user<TAB>item<TAB>rating<TAB>timestamp`, u.item `id|title|...`):
    python data/prepare_log.py --interactions ml-100k/u.data --columns user,item,rating,time \\
        --items ml-100k/u.item --items_separator '|' --items_columns id,title --encoding latin-1 \\
        --title_format movielens --output_dir data/movielens
"""

import csv
import dataclasses
import logging
import os
import random
import typing

import numpy as np
import pandas as pd

from trainer.commands import Flags, command, flag, required
from trainer.errors import InputError
from dataprep.llara_files import SPLIT_STEMS, TEXT_SUFFIX, write_split_text
from dataprep.llara_layout import ID_SEPARATOR, movielens_title, prepare
from trainer.prompts import domain_words
from trainer.outputs import save_run_config, write_text_atomically

logger = logging.getLogger("prepare_log")

SPLIT_RULES = ("time", "user")
TITLE_FORMATS = {"plain": str.strip, "movielens": movielens_title}


def parse_names(value, flag: str) -> list[str]:
    """'a,b' or a sequence (fire turns comma lists into tuples) -> ['a', 'b']."""
    names = value.split(",") if isinstance(value, str) else [str(name) for name in value]
    names = [name.strip() for name in names if str(name).strip()]
    if not names:
        raise InputError(f"--{flag}: name at least one column")
    return names


def read_table(path: str, wanted: list[str], separator: str | None, columns, encoding: str, flag: str,
               columns_flag: str) -> pd.DataFrame:
    """The `wanted` columns of a delimited or JSON-lines file, every value as a string.

    Rows keep their file order; a `line` column holds each row's line number in the file.
    """
    if not os.path.isfile(path):
        raise InputError(f"--{flag} {path}: file not found")
    try:
        if path.endswith((".jsonl", ".json")):
            table = pd.read_json(path, lines=True, dtype=False, encoding=encoding)
            first_line = 1
        else:
            separator = separator or ("," if path.endswith(".csv") else "\t")
            names = parse_names(columns, columns_flag) if columns else None
            table = pd.read_csv(path, sep=separator, header=None if names else 0, dtype=str, keep_default_na=False,
                                encoding=encoding, engine="python" if len(separator) > 1 else "c",
                                quoting=csv.QUOTE_NONE)  # titles may hold quotes
            if names:  # the first columns, in order; a file may have more (MovieLens' u.item has 24)
                if len(names) > table.shape[1]:
                    raise InputError(f"{path}: --{columns_flag} names {len(names)} columns, the file has "
                                     f"{table.shape[1]}")
                table.columns = names + [f"column {index + 1}" for index in range(len(names), table.shape[1])]
            first_line = 1 if names else 2
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise InputError(f"{path}: cannot read it ({error})") from None
    missing = [name for name in wanted if name not in table.columns]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r}; its columns are {[str(name) for name in table.columns]}"
                         + ("" if columns else f" (a file without a header line needs --{columns_flag})"))
    table = table[wanted].copy()
    lines = np.arange(first_line, first_line + len(table))
    for name in wanted:
        empty = table[name].isna().to_numpy() | (table[name].astype(str).str.strip() == "").to_numpy()
        if empty.any():
            raise InputError(f"{path}: line {lines[empty.argmax()]}: field {name!r} is empty")
    table = table.astype(str)
    table["line"] = lines
    return table


def time_key(table: pd.DataFrame, time_columns: list[str], path: str) -> np.ndarray:
    """One sortable number per row: the time columns as numbers, combined in order, or one ISO date-time."""
    key = np.zeros(len(table), dtype=np.float64)
    for name in time_columns:
        values = pd.to_numeric(table[name], errors="coerce")
        if values.isna().any() and len(time_columns) == 1:
            dates = pd.to_datetime(table[name], errors="coerce", utc=True, format="ISO8601")
            if not dates.isna().any():
                values = dates.astype("int64") / 1e9
        if values.isna().any():
            row = table[values.isna()].iloc[0]
            raise InputError(f"{path}: line {row['line']}: field {name!r}: {row[name]!r} is not a number or date-time")
        if len(time_columns) == 1:
            return values.to_numpy(dtype=np.float64)
        span = float(values.max() - values.min()) + 1
        key = key * span + (values.to_numpy(dtype=np.float64) - float(values.min()))
    return key


def k_core(log: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    """Drop items with fewer than `min_item` interactions and users with fewer than `min_user`, until both hold."""
    while True:
        item_counts = log["item"].map(log["item"].value_counts())
        user_counts = log["user"].map(log["user"].value_counts())
        keep = (item_counts >= min_item) & (user_counts >= min_user)
        if keep.all():
            return log
        log = log[keep]


@dataclasses.dataclass
class Windows:
    """Every (history, target) window of a log, one row per window."""

    users: np.ndarray  # [windows]
    histories: np.ndarray  # [windows, history_size] item codes, oldest first, right-padded
    lengths: np.ndarray  # [windows] history items before the padding
    targets: np.ndarray  # [windows] item codes
    times: np.ndarray  # [windows] the target's time


def windows(items: np.ndarray, users: np.ndarray, times: np.ndarray, history_size: int, padding: int) -> Windows:
    """A window at every position but the first of each user's sequence: the item there is the target,
    the up to `history_size` items before it the history, padded on the right with `padding`.

    `items`, `users` and `times` are sorted by user, then time: each user is one contiguous run.
    """
    count = len(users)
    starts = np.r_[True, users[1:] != users[:-1]]
    position = np.arange(count) - np.maximum.accumulate(np.where(starts, np.arange(count), 0))
    at = np.flatnonzero(position >= 1)
    lengths = np.minimum(position[at], history_size)
    offsets = np.arange(history_size)
    inside = offsets[None, :] < lengths[:, None]
    history_index = np.minimum((at - lengths)[:, None] + offsets[None, :], count - 1)
    return Windows(users=users[at], histories=np.where(inside, items[history_index], padding), lengths=lengths,
                   targets=items[at], times=times[at])


def split_windows(found: Windows, rule: str, valid_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """'train', 'valid' or 'test' for each window.

    time: by the target's time, cut at the (1 - valid - test) and (1 - test) quantiles of all target
    times (equal times fall on the later side); user: a seeded share of the users, all their windows.
    """
    if rule == "time":
        valid_from, test_from = np.quantile(found.times, [1 - valid_fraction - test_fraction, 1 - test_fraction])
        return np.where(found.times >= test_from, "test", np.where(found.times >= valid_from, "valid", "train"))
    users = np.unique(found.users)  # sorted
    shuffled = users.tolist()
    random.Random(seed).shuffle(shuffled)
    test_count = round(len(users) * test_fraction)
    valid_count = round(len(users) * valid_fraction)
    split_of_rank = np.array(["test"] * test_count + ["valid"] * valid_count
                             + ["train"] * (len(users) - test_count - valid_count))
    rank = dict(zip(shuffled, range(len(users))))
    split_of_user = split_of_rank[[rank[user] for user in users.tolist()]]
    return split_of_user[np.searchsorted(users, found.users)]


@dataclasses.dataclass
class PrepareLogFlags(Flags):
    renamed: typing.ClassVar[dict[str, str]] = {"num_negatives": "negatives_per_list"}

    interactions: str = required("The log: CSV (.csv), other delimited text (tab unless --separator) or JSON lines "
                                 "(.jsonl).")
    items: str = required("The item-title table, read the same way (MovieLens' u.item: --items_separator '|').")
    output_dir: str = required("Folder for train.json, valid.json, test.json and run_config.json.")
    llara_dir: str | None = flag(None, "Folder for the LLaRA layout (id2name.txt and *_data.tsv, text); default "
                                       "OUTPUT_DIR/llara.")
    user_column: str = flag("user", "The log's user column.")
    item_column: str = flag("item", "The log's item column (ids as in the title table's --item_id_column).")
    time_column: str | tuple[str, ...] = flag("time", "The log's time column, or several compared in order "
                                                      "(\"year,month,day\").")
    separator: str | None = flag(None, "Field separator of the log; default ',' for .csv, else tab. Several "
                                       "characters (MovieLens-1M's '::') work too.")
    columns: str | tuple[str, ...] | None = flag(None, "Names of the log's columns when it has no header line, in "
                                                       "order (\"user,item,rating,time\").")
    item_id_column: str = flag("id", "The title table's id column.")
    title_column: str = flag("title", "The title table's title column.")
    items_separator: str | None = flag(None, "Field separator of the title table; default as for the log.")
    items_columns: str | tuple[str, ...] | None = flag(None, "Names of the title table's columns when it has no "
                                                             "header line (\"id,title\").")
    encoding: str = flag("utf-8", "Text encoding of both files (MovieLens 100K: latin-1).")
    title_format: str = flag("plain", "plain (titles as given, trimmed) or movielens (drop the year, put a trailing "
                                      "article first).")
    unknown_items: str = flag("error", "A log item missing from the title table: error (stop, naming the line) or "
                                       "drop (leave out its interactions and count them).")
    keep_repeats: bool = flag(False, "Keep every interaction with an item; by default only a user's first one (a "
                                     "recommendation is of something new, and the next item is never one of the "
                                     "history).")
    min_user_interactions: int = flag(5, "Users with fewer interactions are dropped (after the items), repeatedly "
                                         "until none is left.")
    min_item_interactions: int = flag(5, "Items with fewer interactions are dropped, repeatedly until none is left.")
    history_size: int = flag(10, "Most history items per record (LLaRA: 10).")
    split: str = flag("time", "time (by the target's time: train before, valid, then test) or user (a seeded share of"
                              " the users).")
    valid_fraction: float = flag(0.1, "Share of the windows (split=time) or users (split=user) for validation.")
    test_fraction: float = flag(0.1, "Share for the test split.")
    negatives_per_list: int = flag(19, "Negatives per record; each record has negatives_per_list + 1 candidates.")
    negative_draw: str = flag("independent", "independent (uniform over the items outside the history, drawn for many"
                                             " records at once, seeded by --seed and the record) or llara (LLaRA's "
                                             "own procedure, seeded by each record's true item, so that the candidate"
                                             " lists give it away; record by record, slower on a large log: "
                                             "bench/prepare_log.py).")
    audit: bool = flag(True, "Audit the written splits for leaks (trainer/audit.py) into audit.json and audit.md "
                             "beside them, warning of each leak flagged.")
    min_history: int = flag(3, "Records with fewer history items are dropped (LLaRA: 3).")
    seed: int = flag(0, "Seeds the user split and the independent negative draw.")
    domain: str = flag("music", "What the items are (music, movie, book or game), recorded in run_config.json: the "
                                "stage scripts word their prompts by it.")

    def check(self) -> None:
        super().check()
        domain_words(self.domain)
        if self.split not in SPLIT_RULES:
            raise InputError(f"--split must be one of {SPLIT_RULES}, got {self.split!r}")
        if self.title_format not in TITLE_FORMATS:
            raise InputError(f"--title_format must be one of {sorted(TITLE_FORMATS)}, got {self.title_format!r}")
        if self.unknown_items not in ("error", "drop"):
            raise InputError(f"--unknown_items must be error or drop, got {self.unknown_items!r}")
        if not (0 < self.valid_fraction and 0 < self.test_fraction and self.valid_fraction + self.test_fraction < 1):
            raise InputError(f"--valid_fraction {self.valid_fraction} and --test_fraction {self.test_fraction}: each "
                             "must be above 0 and together below 1")
        for name in ("history_size", "min_user_interactions", "min_item_interactions", "min_history"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be at least 1, got {getattr(self, name)}")


@command(PrepareLogFlags)
def prepare_log(flags: PrepareLogFlags) -> dict:
    """Turn an interaction log and a title table into train/valid/test records and their LLaRA layout; returns
    the counts written: interactions, users and items kept, and records per split."""
    config = dataclasses.asdict(flags)
    llara_dir = flags.llara_dir or os.path.join(flags.output_dir, "llara")

    time_columns = parse_names(flags.time_column, "time_column")
    log = read_table(flags.interactions, [flags.user_column, flags.item_column, *time_columns], flags.separator,
                     flags.columns, flags.encoding, "interactions", "columns")
    titles_table = read_table(flags.items, [flags.item_id_column, flags.title_column],
                              flags.items_separator or flags.separator, flags.items_columns, flags.encoding, "items",
                              "items_columns")
    duplicated = titles_table[flags.item_id_column].duplicated()
    if duplicated.any():
        row = titles_table[duplicated].iloc[0]
        raise InputError(f"{flags.items}: line {row['line']}: field {flags.item_id_column!r}: id "
                         f"{row[flags.item_id_column]!r} is listed twice")
    to_title = TITLE_FORMATS[flags.title_format]
    titles = {item: " ".join(to_title(title).split()) for item, title in
              zip(titles_table[flags.item_id_column], titles_table[flags.title_column])}
    untitled = [title for title in titles.values() if not title]
    if untitled:
        raise InputError(f"{flags.items}: an item's title is empty after --title_format {flags.title_format}")

    log = pd.DataFrame({"user": log[flags.user_column].to_numpy(), "item": log[flags.item_column].to_numpy(),
                        "time": time_key(log, time_columns, flags.interactions), "line": log["line"].to_numpy()})
    known = log["item"].isin(titles.keys())
    if not known.all():
        if flags.unknown_items == "error":
            row = log[~known].iloc[0]
            raise InputError(f"{flags.interactions}: line {row['line']}: field {flags.item_column!r}: item "
                             f"{row['item']!r} is not in {flags.items} (--unknown_items drop leaves such interactions "
                             "out)")
        logger.warning("%s: %d interactions with items missing from %s left out", flags.interactions,
                       int((~known).sum()), flags.items)
        log = log[known]
    # Time order within a user; file order among equal times.
    log = log.sort_values(["user", "time", "line"], kind="stable")
    if not flags.keep_repeats:
        log = log.drop_duplicates(["user", "item"], keep="first")
    log = k_core(log, flags.min_user_interactions, flags.min_item_interactions)
    if log.empty:
        raise InputError(f"{flags.interactions}: no interactions left after keeping users with at least "
                         f"{flags.min_user_interactions} and items with at least {flags.min_item_interactions}")

    # LLaRA's ids: 0..n-1 in the title table's order; the padding id is n.
    kept = set(log["item"])
    item_keys = [item for item in titles if item in kept]
    item_ids = {item: index for index, item in enumerate(item_keys)}
    padding_id = len(item_keys)
    item_codes = log["item"].map(item_ids).to_numpy(dtype=np.int64)
    users = log["user"].to_numpy()
    times = log["time"].to_numpy()

    found = windows(item_codes, users, times, flags.history_size, padding_id)
    if not len(found.targets):
        raise InputError(f"{flags.interactions}: no user has two interactions left, so there is no record to make")
    split_of = split_windows(found, flags.split, flags.valid_fraction, flags.test_fraction, flags.seed)
    os.makedirs(llara_dir, exist_ok=True)
    write_text_atomically("".join(f"{index}{ID_SEPARATOR}{titles[item]}\n" for index, item in enumerate(item_keys)),
                          os.path.join(llara_dir, "id2name.txt"))
    for name, stems in SPLIT_STEMS.items():
        chosen = split_of == name
        frame = pd.DataFrame({"seq": found.histories[chosen].tolist(), "len_seq": found.lengths[chosen],
                              "next": found.targets[chosen]})
        write_split_text(frame, os.path.join(llara_dir, stems[0] + TEXT_SUFFIX))
    records = prepare(llara_dir, flags.output_dir, negatives_per_list=flags.negatives_per_list,
                      min_history=flags.min_history, padding_id=padding_id, negative_draw=flags.negative_draw,
                      seed=flags.seed, audit=flags.audit, domain=flags.domain)
    counts = {"interactions": len(log), "users": len(set(users.tolist())), "items": len(item_keys),
              "records": records}
    save_run_config(config | {"counts": counts}, flags.output_dir)
    logger.info("kept %d interactions of %d users on %d items; records %s", counts["interactions"], counts["users"],
                counts["items"], records)
    return counts
