"""Converting a dataset in the LLaRA layout into the JSON records every stage reads (data/prepare.py).

Input folder (the layout LLaRA and the S-DPO paper use, for LastFM, Steam and MovieLens):
    id2name.txt                       one `item_id::title` per line (LastFM, Steam), or
    u.item                            MovieLens' `id|title (year)|date|...` lines in latin-1; as LLaRA
                                      reads them, ids count from 0 (id - 1), the year is dropped and a
                                      trailing article comes first ("Usual Suspects, The (1995)" ->
                                      "The Usual Suspects")
    train_data.tsv, val_data.tsv (or Val_data.tsv), test_data.tsv (or Test_data.tsv)
                                      the splits as plain text (dataprep/llara_files.py), or LLaRA's own
    train_data.df, val_data.df, ...   pandas DataFrames (pickle); either way the columns seq (item ids,
                                      padded; MovieLens: (id, rating) pairs), len_seq, next (id or pair)

Output folder:
    train.json, valid.json, test.json lists of {"historyList", "itemList", "trueSelection"}

The candidates of a record are its true item and --negatives_per_list negatives drawn from every item
outside its history, in one of two ways:
  independent (the default): uniform draws seeded by --seed and the record's split and row, for many
      records at once (independent_candidates), the true item at a place drawn from the same stream.
      Nothing in a list depends on which item is the true one.
  llara: LLaRA's procedure, reproduced exactly so that the validation split matches the S-DPO authors'
      published file record for record: seed Python's `random` with the true next id, sample the
      negatives from every item (in id2name order) outside the history and the true item, append the
      true item, seed again with the true id and shuffle. Records sharing a true item then share much
      of their list, and a rule that reads only the lists names the true item of 98% of LastFM's test
      records (trainer/audit.py; docs/leak.md): use it to reproduce the authors' numbers, not to
      measure a model.
Either way, rows with len_seq < --min_history (LLaRA: 3) are dropped and the history is the
non-padding ids of seq, in order. The converted folder is then audited for leaks (trainer/audit.py:
audit.json and audit.md beside the records; a warning names each leak flagged).

Pickle runs code when loaded: only convert pickles you trust (the text files run nothing).

Usage:
    python data/prepare.py --source data/lastfm-source --output_dir data/lastfm
"""

import dataclasses
import json
import logging
import os
import random
import re
import typing
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from trainer.commands import Flags, command, flag, required
from trainer.data import HISTORY_SEPARATOR, prompt_safe_title, prompt_safety_problem
from trainer.errors import InputError
from dataprep.llara_files import TEXT_FIRST_ROW_LINE, TEXT_SUFFIX, TITLE_FILES, read_split, split_paths
from trainer import audit as leak_audit
from trainer.outputs import save_run_config, stage_json_list
from trainer.prompts import domain_words

logger = logging.getLogger("prepare")

ID_SEPARATOR = "::"
NEGATIVE_DRAWS = ("independent", "llara")
RENAMED_DRAWS = {"fast": "independent"}  # old name -> new name, refused with a pointer
CHUNK_ROWS = 50_000  # rows converted together: array operations, yet flat memory whatever a split's size
COMPARISONS_AT_ONCE = 2**26  # booleans of one round of the independent draw's checks (64 MB)
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


def prompt_safe_titles(titles: dict[int, str], source_name: str) -> dict[int, str]:
    """Rewrites the titles a prompt could not list unambiguously (trainer.data.prompt_safe_title).

    Raw catalogues hold such titles: 8 of hetrec-lastfm-2k's 17,632 artists contain '; ', the
    separator of a prompt's title lists ("Per Gessle; Roxette" becomes "Per Gessle, Roxette").
    """
    unsafe = {item_id: title for item_id, title in titles.items() if prompt_safety_problem(title)}
    if unsafe:
        examples = ", ".join(repr(title) for title in list(unsafe.values())[:3])
        logger.warning("%s: %d titles hold '; ' or a line break, which a prompt's title list cannot; they are "
                       "rewritten ('; ' as ', ', line breaks as spaces), e.g. %s", source_name, len(unsafe), examples)
    return {item_id: prompt_safe_title(title) if item_id in unsafe else title for item_id, title in titles.items()}


def load_item_titles(source: str) -> tuple[dict[int, str], str]:
    """The titles of a LLaRA-layout folder: id2name.txt, else MovieLens' u.item. Returns (titles, path).

    Titles are made prompt-safe first, then distinct, so a rewritten title never equals another one.
    """
    for file_name, reader in zip(TITLE_FILES, (read_item_titles, read_movielens_titles)):
        path = os.path.join(source, file_name)
        if os.path.isfile(path):
            return distinct_titles(prompt_safe_titles(reader(path), path), path), path
    raise InputError(f"{source}: no item titles: expected {' or '.join(TITLE_FILES)}")


class Catalogue:
    """The item ids in title-file order, and each id's position in it (one by one, or for an array at once)."""

    def __init__(self, item_ids):
        self.ids = list(item_ids)
        self.position = {item_id: position for position, item_id in enumerate(self.ids)}
        order = np.argsort(self.ids, kind="stable")
        self.sorted_ids = np.asarray(self.ids, dtype=np.int64)[order]
        self.sorted_positions = order

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """The position of every id in `ids` (any shape), -1 where the catalogue has no such id."""
        index = np.minimum(np.searchsorted(self.sorted_ids, ids), len(self.sorted_ids) - 1)
        return np.where(self.sorted_ids[index] == ids, self.sorted_positions[index], -1)


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


def sample_candidates(history_ids: list[int], next_id: int, catalogue: Catalogue, negatives_per_list: int) -> list[int]:
    """LLaRA's candidate list: `negatives_per_list` seeded negatives plus the true item, shuffled.

    The negatives are drawn from every catalogue item, in catalogue order, that is neither in the
    history nor the true item, with Python's `random` seeded by the true item's id.
    """
    excluded = {catalogue.position[item_id] for item_id in history_ids} | {catalogue.position[next_id]}
    pool = PoolWithout(catalogue.ids, excluded)
    if len(pool) < negatives_per_list:
        raise InputError(f"--negatives_per_list {negatives_per_list}: only {len(pool)} items are left to draw from")
    rng = random.Random(next_id)
    candidates = rng.sample(pool, negatives_per_list) + [next_id]
    rng.seed(next_id)
    rng.shuffle(candidates)
    return candidates


# SplitMix64 (Steele, Lea and Flood, OOPSLA 2014): a generator whose n-th output is a mix of
# seed + (n + 1) * GAMMA, so any output of any record's stream is one vectorised expression.
SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)
SPLITMIX_MULTIPLIERS = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def splitmix64(seeds: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Output number `draws` (0, 1, ...) of the SplitMix64 generator seeded with `seeds` (uint64, broadcast)."""
    with np.errstate(over="ignore"):
        mixed = seeds + (draws.astype(np.uint64) + np.uint64(1)) * SPLITMIX_GAMMA
        mixed = (mixed ^ (mixed >> np.uint64(30))) * SPLITMIX_MULTIPLIERS[0]
        mixed = (mixed ^ (mixed >> np.uint64(27))) * SPLITMIX_MULTIPLIERS[1]
    return mixed ^ (mixed >> np.uint64(31))


def below(random_bits: np.ndarray, bound: int) -> np.ndarray:
    """Integers in [0, bound) from uint64 random bits (the top 53 bits as a fraction of `bound`)."""
    return ((random_bits >> np.uint64(11)).astype(np.float64) * 2.0**-53 * bound).astype(np.int64)


def independent_candidates(excluded: np.ndarray, targets: np.ndarray, catalogue_size: int, negatives_per_list: int,
                    record_seeds: np.ndarray) -> np.ndarray:
    """Candidate positions for many records at once: `negatives_per_list` uniform draws without replacement
    from the catalogue positions outside each record's `excluded` ones, and the target at a random place.

    Args:
        excluded: [records, width] catalogue positions a record may not draw (history and target), -1 = none.
        targets: [records] the true item's position.
        catalogue_size: Positions run from 0 to catalogue_size - 1.
        negatives_per_list: Negatives per record; every record must have at least this many positions left.
        record_seeds: [records] uint64 seed of each record's own SplitMix64 stream: a record's draws
            do not depend on the other records, their order or how many are drawn together.
    Returns:
        [records, negatives_per_list + 1] positions: the negatives in draw order with the target inserted
        at the place drawn first from the record's stream.
    """
    records = len(targets)
    negatives = np.full((records, negatives_per_list), -1, dtype=np.int64)
    filled = np.zeros(records, dtype=np.int64)
    pending = np.arange(records)
    # A few spare draws per round: in a large catalogue nearly every record fills in the first round,
    # the rest draw again; the duplicate check costs the square of the round's size.
    round_size = negatives_per_list + 8
    earlier = np.tri(round_size, k=-1, dtype=bool)  # [i, j]: draw j came before draw i
    # The comparisons of a round hold rows x round_size x (round_size + negatives + excluded) booleans:
    # bounded, so that a large k does not take gigabytes.
    rows_at_once = max(1, COMPARISONS_AT_ONCE // (round_size * (round_size + negatives_per_list + excluded.shape[1])))

    def draw_round(rows: np.ndarray, first_draw: int) -> None:
        picks = below(splitmix64(record_seeds[rows, None], (first_draw + np.arange(round_size))[None, :]),
                      catalogue_size)
        # Sequential draws, keeping the first `negatives_per_list` that are allowed and new: exactly a
        # uniform sample without replacement from the allowed positions.
        rejected = (picks[:, :, None] == excluded[rows, None, :]).any(axis=2)
        rejected |= (picks[:, :, None] == negatives[rows, None, :]).any(axis=2)
        rejected |= ((picks[:, :, None] == picks[:, None, :]) & earlier).any(axis=2)
        slot = filled[rows, None] + np.cumsum(~rejected, axis=1) - 1
        taken = ~rejected & (slot < negatives_per_list)
        negatives[np.broadcast_to(rows[:, None], picks.shape)[taken], slot[taken]] = picks[taken]
        filled[rows] = np.minimum(slot[:, -1] + 1, negatives_per_list)

    first_draw = 1  # draw 0 of each stream places the target
    while pending.size:
        for start in range(0, pending.size, rows_at_once):
            draw_round(pending[start : start + rows_at_once], first_draw)
        pending = pending[filled[pending] < negatives_per_list]
        first_draw += round_size
    places = below(splitmix64(record_seeds, np.zeros(records, dtype=np.uint64)), negatives_per_list + 1)
    is_target = np.arange(negatives_per_list + 1)[None, :] == places[:, None]
    candidates = np.empty((records, negatives_per_list + 1), dtype=np.int64)
    candidates[is_target] = targets
    candidates[~is_target] = negatives.ravel()  # row by row, in draw order
    return candidates


def item_id(value) -> int:
    """An id of `seq` or `next`: a plain id, or MovieLens' (id, rating) pair."""
    return int(value[0]) if isinstance(value, (tuple, list)) else int(value)


def id_column(values: list, padding_id: int, per_row: int) -> np.ndarray:
    """A column's ids as int64: `per_row` 0 for one id per row (next) -> [rows], 1 for a list (seq) ->
    [rows, width], shorter lists padded with `padding_id`. MovieLens' (id, rating) pairs give their id.
    """
    try:
        array = np.asarray(values)
        if array.dtype == object:
            raise ValueError("mixed values")
    except ValueError:  # lists of different lengths: pad them one by one
        width = max(map(len, values))
        array = np.asarray([[item_id(value) for value in row] + [padding_id] * (width - len(row)) for row in values])
    if array.ndim == per_row + 2:  # (id, rating) pairs
        array = array[..., 0]
    return array.astype(np.int64)


def distinct_per_row(positions: np.ndarray) -> np.ndarray:
    """How many different positions (-1 = none) each row of [rows, width] holds."""
    ordered = np.sort(positions, axis=1)
    return (ordered[:, 1:] != ordered[:, :-1]).sum(axis=1) + 1 - (ordered[:, 0] < 0)


def row_name(source_name: str, row: int) -> str:
    """A DataFrame row as an error message names it: `row 7`, and in a text split file its line too."""
    return f"row {row} (line {row + TEXT_FIRST_ROW_LINE})" if source_name.endswith(TEXT_SUFFIX) else f"row {row}"


def convert_split(
    frame: pd.DataFrame,
    titles: dict[int, str],
    padding_id: int,
    negatives_per_list: int,
    min_history: int,
    source_name: str,
    negative_draw: str = "independent",
    split_seed: np.uint64 = np.uint64(0),
) -> Iterator[dict]:
    """Turn one LLaRA DataFrame into JSON-encoded records, streamed; rows with len_seq < min_history are dropped.

    The rows go through in chunks, each converted with array operations: memory stays flat and the
    per-record Python work is only building the record. `negative_draw` independent draws the negatives
    for the whole chunk at once (independent_candidates), each row's stream seeded by `split_seed` and
    the row's index; llara draws each row's by LLaRA's procedure (sample_candidates).
    """
    missing = {"seq", "len_seq", "next"} - set(frame.columns)
    if missing:
        raise InputError(f"{source_name}: missing column(s) {sorted(missing)}")
    catalogue = Catalogue(titles)
    # Each title as it reads inside a JSON string (json.dumps without its quotes).
    escaped_at = np.array([json.dumps(titles[item], ensure_ascii=False)[1:-1] for item in catalogue.ids], dtype=object)
    holds_separator = np.array([HISTORY_SEPARATOR in titles[item] for item in catalogue.ids])
    for start in range(0, len(frame), CHUNK_ROWS):
        chunk = frame.iloc[start : start + CHUNK_ROWS]
        kept = np.flatnonzero(chunk["len_seq"].to_numpy() >= min_history)
        if not kept.size:
            continue
        rows = start + kept  # indices in the frame, for error messages and seeds
        seq = id_column(chunk["seq"].to_numpy()[kept].tolist(), padding_id, per_row=1)
        next_ids = id_column(chunk["next"].to_numpy()[kept].tolist(), padding_id, per_row=0)
        in_history = seq != padding_id
        history = catalogue.positions(seq)
        targets = catalogue.positions(next_ids)
        unknown_in_history = in_history & (history < 0)
        unknown = unknown_in_history.any(axis=1) | (targets < 0)
        if unknown.any():
            first = unknown.argmax()
            field, value = (("seq", seq[first][unknown_in_history[first]][0]) if unknown_in_history[first].any()
                            else ("next", next_ids[first]))
            raise InputError(f"{source_name}: {row_name(source_name, rows[first])}: field '{field}': "
                             f"unknown item id {value}")
        history = np.where(in_history, history, -1)

        if negative_draw == "llara":
            candidates = catalogue.positions(np.array([
                sample_candidates(ids[mask].tolist(), next_id, catalogue, negatives_per_list)
                for ids, mask, next_id in zip(seq, in_history, next_ids.tolist())]))
        else:
            excluded = np.concatenate([history, targets[:, None]], axis=1)
            available = len(catalogue.ids) - distinct_per_row(excluded)
            if (available < negatives_per_list).any():
                first = (available < negatives_per_list).argmax()
                raise InputError(f"{source_name}: {row_name(source_name, rows[first])}: --negatives_per_list "
                                 f"{negatives_per_list}: only {available[first]} items are left to draw from")
            record_seeds = splitmix64(split_seed, rows.astype(np.uint64))
            candidates = independent_candidates(excluded, targets, len(catalogue.ids), negatives_per_list, record_seeds)

        # Records are valid by construction (titles non-empty and distinct, the target among distinct
        # candidates), so they are not parsed again; the tests load what this writes. Each title is
        # JSON-escaped once, and a record is joined from the escaped titles: the text json.dumps
        # would write, without encoding the same title a million times.
        history_titles = escaped_at[history[in_history]].tolist()
        offsets = np.concatenate([[0], np.cumsum(in_history.sum(axis=1))]).tolist()
        history_as_list = (holds_separator[history] & in_history).any(axis=1).tolist()
        candidate_titles = escaped_at[candidates].tolist()
        target_titles = escaped_at[targets].tolist()
        for index, as_list in enumerate(history_as_list):
            history_of_row = history_titles[offsets[index] : offsets[index + 1]]
            # The file format's '::'-joined string, or a list where a title itself holds '::'.
            history_json = ('["' + '", "'.join(history_of_row) + '"]' if as_list
                            else '"' + HISTORY_SEPARATOR.join(history_of_row) + '"')
            candidates_json = '["' + '", "'.join(candidate_titles[index]) + '"]'
            yield (f'{{"historyList": {history_json}, "itemList": {candidates_json}, '
                   f'"trueSelection": "{target_titles[index]}"}}')


@dataclasses.dataclass
class PrepareFlags(Flags):
    renamed: typing.ClassVar[dict[str, str]] = {"num_negatives": "negatives_per_list"}

    source: str = required("Folder holding id2name.txt (or MovieLens' u.item) and the train, val and test splits, as "
                           "text (*_data.tsv) or pickles (*_data.df).")
    output_dir: str = required("Folder to write train.json, valid.json, test.json and run_config.json (these flags) "
                               "into (created if missing).")
    negatives_per_list: int = flag(19, "Negatives per record; the record has negatives_per_list + 1 candidates.")
    min_history: int = flag(3, "Keep rows whose len_seq is at least this (LLaRA uses 3).")
    padding_id: int | None = flag(None, "Id that pads `seq`; defaults to the number of items (LLaRA's convention).")
    negative_draw: str = flag("independent", "independent (uniform over the items outside the history, seeded by "
                                             "--seed and the record's split and row, whatever its true item) or llara "
                                             "(LLaRA's procedure, seeded by the true item: record for record the S-DPO "
                                             "authors' files, whose candidate lists give the true item away).")
    seed: int = flag(0, "Seeds the independent draw (LLaRA's draw is seeded by each record's true item).")
    audit: bool = flag(True, "Audit the written splits for leaks (trainer/audit.py) into audit.json and audit.md "
                             "beside them, warning of each leak flagged.")
    domain: str = flag("music", "What the items are (music, movie, book or game), recorded in run_config.json: the "
                                "stage scripts word their prompts by it.")

    def check(self) -> None:
        super().check()
        domain_words(self.domain)
        if not os.path.isdir(self.source):
            raise InputError(f"--source {self.source}: folder not found")
        if self.negative_draw in RENAMED_DRAWS:
            raise InputError(f"--negative_draw {self.negative_draw} is now called {RENAMED_DRAWS[self.negative_draw]}")
        if self.negative_draw not in NEGATIVE_DRAWS:
            raise InputError(f"--negative_draw must be one of {NEGATIVE_DRAWS}, got {self.negative_draw!r}")


@command(PrepareFlags)
def prepare(flags: PrepareFlags) -> dict[str, int]:
    """Convert a LLaRA-layout folder into train.json, valid.json and test.json, then audit them for leaks; returns
    the number of records written per split."""
    config = dataclasses.asdict(flags)
    source, output_dir, negative_draw = flags.source, flags.output_dir, flags.negative_draw
    titles, _ = load_item_titles(source)
    padding_id = len(titles) if flags.padding_id is None else flags.padding_id
    split_files = split_paths(source)
    # Every split is staged in a temporary file and renamed into place only when all converted, so
    # bad input leaves the output folder as it was; records stream through, never all in memory.
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    staged = {}
    try:
        for split_number, (split, path) in enumerate(split_files.items()):
            split_seed = splitmix64(np.uint64(flags.seed), np.uint64(split_number))
            records = convert_split(read_split(path), titles, padding_id, flags.negatives_per_list, flags.min_history,
                                    path, negative_draw, split_seed)
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
    save_run_config(config | {"counts": counts}, output_dir)
    print(f"wrote {counts} records to {output_dir}")
    if flags.audit:
        warn_of_leaks(output_dir, negative_draw)
    return counts


def warn_of_leaks(data_dir: str, negative_draw: str) -> None:
    """Audits a converted folder (trainer/audit.py) into audit.json and audit.md, warning of each leak flagged."""
    try:
        report = leak_audit.audit(data_dir)
    except InputError as error:  # an empty split, say: the records stand, unaudited
        logger.warning("%s: not audited for leaks: %s", data_dir, error)
        return
    leak_audit.write_audit(report, data_dir)
    for leak in report["leaks"]:
        cause = (" (LLaRA's draw seeds each list with its true item; --negative_draw independent does not)"
                 if negative_draw == "llara" and leak["name"] == "candidate_list" else "")
        logger.warning("%s: %s leaks (%s): rule %s reaches HR@1 %.3f on the %s split, %+.3f over %s%s; see %s",
                       data_dir, leak["name"], leak["what"], leak["rule"], leak["hr_at_1"], leak["split"],
                       leak["gain_over_baseline"], leak["baseline"], cause,
                       os.path.join(data_dir, leak_audit.AUDIT_TABLE_FILE))
    if not report["leaks"]:
        logger.info("%s: the leak audit flags nothing (%s)", data_dir, os.path.join(data_dir, leak_audit.AUDIT_TABLE_FILE))

