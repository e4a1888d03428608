"""Records: reading and checking the data files every stage starts from, and choosing which of them a run uses.

A record is one recommendation question: the titles a user interacted with (oldest first), the
candidate titles, and the true next title. On disk a data file is a JSON list of
{"historyList": "t1::t2::...", "itemList": [titles], "trueSelection": title} (see data/README.md).
Every title must be listable in a prompt (trainer/prompts.py) without ambiguity.
"""

import json
import random
from dataclasses import dataclass

from trainer.errors import InputError

HISTORY_SEPARATOR = "::"
# Titles are listed with "; " rather than ", " because titles contain commas ("Harry Connick, Jr.").
# Each title then follows a space, exactly as it does in the answer, so the tokens a model copies
# from the list are the tokens it must produce.
TITLE_SEPARATOR = "; "


@dataclass(frozen=True)
class Record:
    """One recommendation question."""

    history: tuple[str, ...]  # titles, oldest first
    candidates: tuple[str, ...]  # titles offered, in prompt order
    target: str  # the true next title, one of the candidates


def prompt_safety_problem(title: str) -> str | None:
    """Why `title` cannot be listed in a prompt unambiguously, or None when it can.

    A prompt lists titles joined by TITLE_SEPARATOR on one line: a title holding the separator
    would read as two titles, and a line break would split the list.
    """
    if TITLE_SEPARATOR in title:
        return f"contains {TITLE_SEPARATOR!r}, which separates the titles listed in a prompt"
    if "".join(title.splitlines()) != title:
        return "contains a line break; a prompt lists its titles on one line"
    return None


def prompt_safe_title(title: str) -> str:
    """`title` rewritten so that a prompt can list it: line breaks become spaces, the separator ', '."""
    return " ".join(title.splitlines()).replace(TITLE_SEPARATOR, ", ")


def _titles(value, path: str, index: int, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(title, str) and title.strip() for title in value):
        raise InputError(f"{path}: record {index}: field '{field}': expected a list of non-empty title strings")
    for title in value:
        problem = prompt_safety_problem(title)
        if problem:
            raise InputError(f"{path}: record {index}: field '{field}': title {title!r} {problem}; rename it "
                             f"(data/prepare.py writes {prompt_safe_title(title)!r})")
    return tuple(value)


def parse_record(raw, path: str, index: int) -> Record:
    """Validate one raw JSON record; errors name the file, the record index and the field."""
    if not isinstance(raw, dict):
        raise InputError(f"{path}: record {index}: expected an object, got {type(raw).__name__}")
    for field in ("historyList", "itemList", "trueSelection"):
        if field not in raw:
            raise InputError(f"{path}: record {index}: field '{field}' is missing")
    history = raw["historyList"]
    if isinstance(history, str):
        history = history.split(HISTORY_SEPARATOR) if history else []
    history = _titles(history, path, index, "historyList")
    candidates = _titles(raw["itemList"], path, index, "itemList")
    if len(candidates) < 2:
        raise InputError(f"{path}: record {index}: field 'itemList': needs at least 2 candidates")
    seen = set()
    for title in candidates:
        if title in seen:
            raise InputError(f"{path}: record {index}: field 'itemList': duplicate candidate {title!r}")
        seen.add(title)
    target = raw["trueSelection"]
    if not isinstance(target, str):
        raise InputError(f"{path}: record {index}: field 'trueSelection': expected a title string")
    if target not in seen:
        raise InputError(f"{path}: record {index}: field 'trueSelection': {target!r} is not one of the candidates")
    return Record(history=history, candidates=candidates, target=target)


def load_records(path: str, allow_empty: bool = False) -> list[Record]:
    """Read and validate a data file (a JSON list of records; an empty list is an error unless `allow_empty`)."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw_records = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a folder, not a data file (a JSON list of records)") from None
    except PermissionError:
        raise InputError(f"{path}: not readable (permission denied)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(raw_records, list):
        raise InputError(f"{path}: expected a JSON list of records, got {type(raw_records).__name__}")
    if not raw_records and not allow_empty:
        raise InputError(f"{path}: no records")
    return [parse_record(raw, path, index) for index, raw in enumerate(raw_records)]


def select_indices(total: int, max_samples: int | None, seed: int) -> list[int]:
    """Which records a run uses, in file order: all of them, or a sample of `max_samples` seeded by `seed`
    (the one sampling scheme of every stage: the same seed and size give the same records)."""
    if max_samples is None or max_samples >= total:
        return list(range(total))
    if max_samples < 1:
        raise ValueError(f"a sample of {max_samples} records")
    return sorted(random.Random(seed).sample(range(total), max_samples))
