"""Records, prompt templates and tokenization: the one place every stage builds its inputs.

A record is one recommendation question: the titles a user interacted with (oldest first), the
candidate titles, and the true next title. On disk a data file is a JSON list of
{"historyList": "t1::t2::...", "itemList": [titles], "trueSelection": title} (see data/README.md).

A prompt is a template filled with the history and the candidates; it ends with the answer cue
"Answer:". The answer is " " + title followed by the end-of-sequence token. Prompt and answer are
tokenized separately, the same way in SFT, preference training and scoring, so the model is
trained on exactly the token boundary it sees when it generates after the prompt.
"""

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass

from trainer.errors import InputError

HISTORY_SEPARATOR = "::"
# Titles are listed with "; " rather than ", " because titles contain commas ("Harry Connick, Jr.").
# Each title then follows a space, exactly as it does in the answer, so the tokens a model copies
# from the list are the tokens it must produce.
TITLE_SEPARATOR = "; "
ANSWER_CUE = "Answer:"
# Evaluation uses one fixed template: inference's default, and the validation prompts of training.
EVAL_TEMPLATE_INDEX = 0


def evaluation_template(template_index: int | None) -> int:
    """The template of validation and test prompts: the one given, else EVAL_TEMPLATE_INDEX."""
    return EVAL_TEMPLATE_INDEX if template_index is None else template_index

# Per-domain vocabulary that fills the shared sentence patterns below.
DOMAINS = {
    "music": {"noun": "artist", "nouns": "artists", "person": "listener", "past": "listened to", "verb": "listen to"},
    "movie": {"noun": "movie", "nouns": "movies", "person": "viewer", "past": "watched", "verb": "watch"},
    "book": {"noun": "book", "nouns": "books", "person": "reader", "past": "read", "verb": "read"},
    "game": {"noun": "game", "nouns": "games", "person": "player", "past": "played", "verb": "play"},
}

# Sentence patterns, our own wording. {history} and {candidates} are filled per record; the rest
# from DOMAINS. Pattern 0 is the fixed inference template by default.
PATTERNS = (
    "A {person} has recently {past} these {nouns}, oldest first: {history}. "
    "Which {noun} will they {verb} next? Choose exactly one of these candidates: {candidates}. " + ANSWER_CUE,
    "Recent history of a {person}: {history}. From the candidates {candidates}, name the one {noun} "
    "this {person} is most likely to {verb} next. " + ANSWER_CUE,
    "These are the {nouns} someone {past} lately: {history}. Candidates: {candidates}. "
    "Reply with the single candidate they will {verb} next. " + ANSWER_CUE,
    "Given that a user {past} {history}, pick the {noun} they will {verb} next from this list: "
    "{candidates}. " + ANSWER_CUE,
    "The latest {nouns} of a {person}: {history}. Which one of the following {nouns} should they {verb} "
    "next? Options: {candidates}. " + ANSWER_CUE,
)
# With --hint_file, this sentence goes right before the answer cue of every template: the candidates
# that other users with this history chose next most often (trainer.collaborative), best first.
HINT_PATTERN = "Among the candidates, other {person}s with this history most often {past} next: {hints}. "
NO_HINT = "none of them"


def domain_words(domain: str) -> dict[str, str]:
    if domain not in DOMAINS:
        raise InputError(f"--domain: unknown domain {domain!r}; choose one of {sorted(DOMAINS)}")
    return DOMAINS[domain]


def templates_for(domain: str) -> list[str]:
    """The domain's templates, with only {history} and {candidates} left to fill."""
    words = domain_words(domain)
    return [pattern.format(history="{history}", candidates="{candidates}", **words) for pattern in PATTERNS]


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


def load_records(path: str) -> list[Record]:
    """Read and validate a data file (a JSON list of records)."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw_records = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(raw_records, list):
        raise InputError(f"{path}: expected a JSON list of records, got {type(raw_records).__name__}")
    if not raw_records:
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


def answer_text(title: str) -> str:
    """The text the model should produce after the answer cue."""
    return " " + title


class PromptBuilder:
    """Turns records into prompts.

    Training draws a template per example from a generator seeded by (seed, example index), so a
    rerun builds the same prompts; evaluation passes `template_index` to use one fixed template.
    A prompt longer than `max_prompt_tokens` drops its oldest history titles first; candidates,
    the hint and the answer cue are never cut.

    `hints` (trainer.collaborative.CollaborativeHints, optional) adds HINT_PATTERN before the answer
    cue, naming the candidates it returns for the record (computed from the whole history).
    """

    def __init__(self, domain: str, tokenizer=None, max_prompt_tokens: int | None = None,
                 seed: int = 0, template_index: int | None = None, hints=None):
        self.templates = templates_for(domain)
        self.words = domain_words(domain)
        self.hints = hints
        if template_index is not None and not 0 <= template_index < len(self.templates):
            raise InputError(f"--template_index must be in 0..{len(self.templates) - 1}, got {template_index}")
        if max_prompt_tokens is not None and tokenizer is None:
            raise ValueError("a token budget needs a tokenizer to count tokens")
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.seed = seed
        self.template_index = template_index

    def template(self, example_index: int) -> str:
        if self.template_index is not None:
            return self.templates[self.template_index]
        # A string seed is hashed deterministically by `random`, unlike hash() of a tuple.
        return random.Random(f"{self.seed}:{example_index}").choice(self.templates)

    def build(self, record: Record, example_index: int) -> str:
        template = self.template(example_index)
        if self.hints is not None:
            hinted = TITLE_SEPARATOR.join(self.hints.titles(record)) or NO_HINT
            hint = HINT_PATTERN.format(hints=hinted, **self.words)
            # Every template ends with the answer cue; the hint goes right before it.
            template = template[: -len(ANSWER_CUE)] + hint.replace("{", "{{").replace("}", "}}") + ANSWER_CUE
        candidates = TITLE_SEPARATOR.join(record.candidates)

        def prompt_from(start: int) -> str:
            return template.format(history=TITLE_SEPARATOR.join(record.history[start:]), candidates=candidates)

        prompt = prompt_from(0)
        if self.max_prompt_tokens is None or self._fits(prompt):
            return prompt
        without_history = len(record.history)
        shortest = self._count_tokens(prompt_from(without_history))
        if shortest > self.max_prompt_tokens:
            raise InputError(
                f"record {example_index}: the prompt needs {shortest} tokens without any history, "
                f"over --max_prompt_tokens {self.max_prompt_tokens}; raise the budget"
            )
        # Fewer old titles, fewer tokens: bisect for the fewest to drop, a few tokenizations however
        # long the history (one per dropped title would be quadratic in its length).
        fewest, most = 1, without_history
        while fewest < most:
            middle = (fewest + most) // 2
            if self._fits(prompt_from(middle)):
                most = middle
            else:
                fewest = middle + 1
        return prompt_from(fewest)

    def _fits(self, prompt: str) -> bool:
        return self._count_tokens(prompt) <= self.max_prompt_tokens

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text).input_ids)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids, with the tokenizer's own special tokens (a BOS where the model uses one)."""
    return tokenizer(prompt).input_ids


def encode_answer(tokenizer, title: str) -> list[int]:
    """Answer token ids: " " + title, then end-of-sequence, which teaches the model to stop."""
    return tokenizer(answer_text(title), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def supervised_example(tokenizer, prompt: str, title: str) -> dict[str, list[int]]:
    """input_ids = prompt + answer; labels copy the answer and are -100 (ignored) over the prompt."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    answer_ids = encode_answer(tokenizer, title)
    return {"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids}


def sample_negatives(record: Record, num_negatives: int, seed: int, example_index: int) -> list[str]:
    """`num_negatives` candidates other than the true one, without replacement, seeded by run and example."""
    others = [title for title in record.candidates if title != record.target]
    if not 1 <= num_negatives <= len(others):
        raise ValueError(f"cannot draw {num_negatives} negatives from {len(others)}")
    return random.Random(f"{seed}:{example_index}:negatives").sample(others, num_negatives)


def sample_popular_negatives(record: Record, num_negatives: int, seed: int, example_index: int,
                             target_counts: Mapping[str, int]) -> list[str]:
    """`num_negatives` candidates other than the true one, without replacement, each drawn with
    probability proportional to 1 + the number of training records it is the true item of.

    Weighted sampling without replacement by Efraimidis and Spirakis' keys (u ** (1 / weight), the
    largest keys win), seeded by run and example as `sample_negatives` is.
    """
    others = [title for title in record.candidates if title != record.target]
    if not 1 <= num_negatives <= len(others):
        raise ValueError(f"cannot draw {num_negatives} negatives from {len(others)}")
    rng = random.Random(f"{seed}:{example_index}:popular-negatives")
    keys = {title: rng.random() ** (1.0 / (1 + target_counts.get(title, 0))) for title in others}
    return sorted(others, key=keys.__getitem__, reverse=True)[:num_negatives]


def preference_example(tokenizer, prompt: str, chosen: str, rejected: list[str]) -> dict:
    """prompt_ids, and completion_ids: the chosen answer first, then each rejected answer."""
    return {
        "prompt_ids": encode_prompt(tokenizer, prompt),
        "completion_ids": [encode_answer(tokenizer, title) for title in [chosen, *rejected]],
    }
