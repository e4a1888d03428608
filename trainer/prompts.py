"""Prompt templates and tokenization: the one place every stage builds its model inputs from records.

A prompt is a template filled with the history and the candidates; it ends with the answer cue
"Answer:". The answer is " " + title followed by the end-of-sequence token. Prompt and answer are
tokenized separately, the same way in SFT, preference training and scoring, so the model is
trained on exactly the token boundary it sees when it generates after the prompt.
"""

import random
from collections.abc import Sequence

from trainer.data import Record, TITLE_SEPARATOR
from trainer.errors import InputError

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
    cue, naming the candidates it returns for the record (computed from the whole history). `source`
    names the records' file in errors.
    """

    def __init__(self, domain: str, tokenizer=None, max_prompt_tokens: int | None = None,
                 seed: int = 0, template_index: int | None = None, hints=None, source: str | None = None):
        self.source = source  # the data file the records come from, named in errors
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
                f"{self.source or 'records'}: record {example_index}: the prompt needs {shortest} tokens without any history, "
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


# A preference example's column of its history titles.
HISTORY_COLUMN = "history"


def preference_example(tokenizer, prompt: str, chosen: str, rejected: list[str],
                       history: Sequence[str] | None = None) -> dict:
    """prompt_ids, and completion_ids: the chosen answer first, then each rejected answer; with `history`,
    the history's titles too (NAPO compares users by them)."""
    example = {
        "prompt_ids": encode_prompt(tokenizer, prompt),
        "completion_ids": [encode_answer(tokenizer, title) for title in [chosen, *rejected]],
    }
    if history is not None:
        example[HISTORY_COLUMN] = list(history)
    return example
