"""What a training file says about items, without a model: how often each title was the next item
(popularity) and how often it came next after each history title (transitions).

Two uses share these counts:
- rules that answer without a model (trainer.baselines): the most popular candidate, or the
  candidate that most often followed the titles of the user's history;
- hints in the prompt (`--hint_file`, PromptBuilder): the candidates that most often followed the
  history, named in one sentence before the answer cue. This hands the language model the
  collaborative signal it cannot learn from a few hundred prompts (on LastFM the transition rule
  alone reaches HR@1 0.64 on the test split, the popularity rule 0.26).

A record that is itself one of the counted records would see its own answer in its counts. Its
hints and rule scores are therefore computed leave-one-out (`exclude_own=True`): its own
contribution is taken back out, so a training prompt's hint is as informative as a test prompt's
and not a copy of the answer.

A candidate's transition score sums, over the distinct titles of the history, how often it came next
after that title. With `recency` below 1 the recent titles count more: a title last seen i items
before the newest one weighs recency**i (1: every title alike; on LastFM's validation split 0.5 lifts
the transitions rule from HR@1 0.619 to 0.715, docs/levers.md).
"""

import collections
import functools
import math
import os

from trainer.data import Record, load_records
from trainer.errors import InputError


POPULAR_SHARE = 0.1  # the catalogue's most popular tenth, for the share of answers among them


class ItemStatistics:
    """Popularity and history -> next transition counts of a list of records, and their catalogue."""

    def __init__(self, records: list[Record]):
        self.popularity = collections.Counter(record.target for record in records)
        # Every title the records name: in a history, among the candidates or as the true item.
        self.catalogue = {title for record in records for title in (*record.history, *record.candidates)}
        # transitions[h][t]: records whose history holds title h and whose next title is t.
        self.transitions: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for record in records:
            for title in set(record.history):
                self.transitions[title][record.target] += 1

    def popular_items(self, share: float = POPULAR_SHARE) -> set[str]:
        """The catalogue's most popular `share`: every title counted as a true item at least as often as the
        one at place ceil(share x catalogue size) in the order of counts, most first (ties at that place all in)."""
        ordered = sorted((self.popularity[title] for title in self.catalogue), reverse=True)
        if not ordered:
            return set()
        threshold = ordered[math.ceil(share * len(ordered)) - 1]
        return {title for title in self.catalogue if self.popularity[title] >= threshold}

    def popularity_of(self, record: Record, title: str, exclude_own: bool) -> int:
        """Training records whose next title is `title`; without `record`'s own when `exclude_own`."""
        return self.popularity[title] - (exclude_own and title == record.target)

    def transition_score(self, record: Record, title: str, exclude_own: bool, recency: float = 1.0) -> float:
        """How often `title` came next after a title of `record`'s history, summed over its distinct history
        titles, each weighted by `recency` ** (items between its last occurrence and the newest item)."""
        return self._weighted_score(record, title, exclude_own, history_weights(record.history, recency))

    def _weighted_score(self, record: Record, title: str, exclude_own: bool, weights: dict[str, float]) -> float:
        # The record's own count is 1 after each of its distinct history titles; taking it out of each
        # count before weighting keeps a score of nothing else exactly 0.
        own = int(exclude_own and title == record.target)
        return sum(weight * (self.transitions[past][title] - own)
                   for past, weight in weights.items() if past in self.transitions)

    def ranked_by_transitions(self, record: Record, exclude_own: bool,
                              recency: float = 1.0) -> list[tuple[str, float]]:
        """(candidate, transition score), highest first; ties by popularity, then by listed order."""
        weights = history_weights(record.history, recency)  # once per record, not per candidate
        scored = [(title, self._weighted_score(record, title, exclude_own, weights),
                   self.popularity_of(record, title, exclude_own)) for title in record.candidates]
        # sorted() is stable, so fully tied candidates keep their listed order.
        ranked = sorted(scored, key=lambda item: (item[1], item[2]), reverse=True)
        return [(title, score) for title, score, _ in ranked]


def history_weights(history: tuple[str, ...], recency: float) -> dict[str, float]:
    """Each distinct title of a history (oldest first) -> recency ** (items after its last occurrence)."""
    if not 0 < recency <= 1:
        raise ValueError(f"recency weights lie in (0, 1], got {recency}")
    last_seen = {title: position for position, title in enumerate(history)}
    newest = len(history) - 1
    return {title: recency ** (newest - position) for title, position in last_seen.items()}


class CollaborativeHints:
    """The hint sentence of a prompt: up to `size` candidates that most often followed the history."""

    def __init__(self, statistics: ItemStatistics, size: int, exclude_own: bool, recency: float = 1.0):
        if size < 1:
            raise ValueError(f"a hint names at least one candidate, got size {size}")
        history_weights((), recency)  # checks the weight's range before any prompt is built
        self.statistics = statistics
        self.size = size
        self.exclude_own = exclude_own
        self.recency = recency

    def titles(self, record: Record) -> list[str]:
        """The hinted candidates, most often followed first; only those that followed at least once."""
        ranked = self.statistics.ranked_by_transitions(record, self.exclude_own, self.recency)
        return [title for title, score in ranked[: self.size] if score > 0]

    def hinted_negatives(self, record: Record, neg_num: int) -> list[str]:
        """The `neg_num` candidates other than the answer that the counts rank highest: the ones a model
        that follows the hint would name wrongly (preference training's `--negatives hinted`)."""
        ranked = self.statistics.ranked_by_transitions(record, self.exclude_own, self.recency)
        return [title for title, _ in ranked if title != record.target][:neg_num]


@functools.lru_cache(maxsize=4)
def statistics_of(path: str) -> ItemStatistics:
    """The counts of a data file, read once per process however many prompt builders use them."""
    return ItemStatistics(load_records(path))


def popularity_rank(title: str, candidates, counts: collections.Counter) -> float:
    """Place of `title` among `candidates` by training count: 1 is the most popular.

    Tied candidates share the mean of their places, so a candidate picked at random averages
    (number of candidates + 1) / 2, 10.5 for 20.
    """
    more = sum(counts[other] > counts[title] for other in candidates)
    equal = sum(counts[other] == counts[title] for other in candidates)
    return 1 + more + (equal - 1) / 2


def counts_own_records(counted_file: str, data_file: str) -> bool:
    """Whether the records of `data_file` are among those counted: the same file."""
    return os.path.exists(counted_file) and os.path.exists(data_file) and os.path.samefile(counted_file, data_file)


def load_hints(hint_file: str | None, size: int, data_file: str, recency: float = 1.0) -> CollaborativeHints | None:
    """Hints from `hint_file`'s counts for the prompts of `data_file`; None without a hint file.

    When both name the same file, each record's own contribution is left out of its hint.
    """
    if not hint_file:
        return None
    if size < 1:
        raise InputError(f"--hint_size must be at least 1, got {size}")
    if not 0 < recency <= 1:
        raise InputError(f"--hint_recency must lie in (0, 1], got {recency}")
    statistics = statistics_of(os.path.abspath(hint_file))
    return CollaborativeHints(statistics, size, counts_own_records(hint_file, data_file), recency)
