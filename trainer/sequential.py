"""Sequential recommenders trained from scratch on the training records: the baselines the field compares
language-model recommenders against, scored on the very same prompts (trainer.baselines).

- SASRec (Kang and McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018): item and learned
  position embeddings, self-attention blocks with a causal mask, the item embeddings shared with the
  output layer.
- GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016),
  in the form RecBole implements: item embeddings, a GRU, a dense layer, scores against the item
  embeddings.

Both read a record's history (its newest `max_length` titles, as the prompts hold them) and learn to
predict its true item from the state at the history's last position, with a cross-entropy over the
whole catalogue. The published models predict every item of a user's sequence from the ones before
it; the records here are windows sliding over those sequences, one per item, so predicting each
window's last item trains on every item of every sequence once, as they do, at a tenth of the cost.
After each epoch the candidates of every validation record are scored by the model's last position;
training stops when the validation HR@1 has not improved for `patience` epochs, and the weights of
the best epoch are kept. The settings' search, and why not RecBole itself: docs/baselines.md.
"""

import copy
import dataclasses
import logging
import math
import time

import torch
from torch import nn

from trainer.data import Record

logger = logging.getLogger("sequential")

PADDING = 0  # item id 0 pads sequences; the catalogue's items count from 1
MODEL_TYPES = ("sasrec", "gru4rec")


class Catalogue:
    """Item ids for every title that any split names, so that every candidate has an embedding."""

    def __init__(self, *record_lists: list[Record]):
        titles = sorted({title for records in record_lists for record in records
                         for title in (*record.history, *record.candidates)})
        self.ids = {title: index + 1 for index, title in enumerate(titles)}

    def __len__(self) -> int:
        return len(self.ids) + 1  # with the padding id

    def histories(self, records: list[Record], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[records, max_length] item ids of each record's newest `max_length` history titles, left-aligned and
        right-padded (at least one column); and each history's length."""
        rows = torch.full((len(records), max(1, max_length)), PADDING, dtype=torch.long)
        lengths = torch.zeros(len(records), dtype=torch.long)
        for row, record in enumerate(records):
            items = [self.ids[title] for title in record.history[-max_length:]]
            rows[row, : len(items)] = torch.tensor(items, dtype=torch.long)
            lengths[row] = len(items)
        return rows, lengths

    def candidates(self, records: list[Record]) -> torch.Tensor:
        """[records, most candidates] item ids of every record's candidates, padded with PADDING."""
        width = max(len(record.candidates) for record in records)
        rows = torch.full((len(records), width), PADDING, dtype=torch.long)
        for row, record in enumerate(records):
            rows[row, : len(record.candidates)] = torch.tensor([self.ids[title] for title in record.candidates])
        return rows


class SASRec(nn.Module):
    """Self-attention over the items so far: [batch, length] ids -> [batch, length, hidden] states."""

    def __init__(self, num_items: int, hidden_size: int, max_length: int, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2):
        super().__init__()
        self.items = nn.Embedding(num_items, hidden_size, padding_idx=PADDING)
        self.positions = nn.Embedding(max(1, max_length), hidden_size)
        self.dropout = nn.Dropout(dropout)
        # Pre-norm blocks, as SASRec's: layer norm, attention, residual; layer norm, point-wise feed-forward.
        layer = nn.TransformerEncoderLayer(hidden_size, heads, dim_feedforward=hidden_size, dropout=dropout,
                                           activation="relu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        states = self.dropout(self.items(items) * math.sqrt(self.items.embedding_dim) + self.positions(positions))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=items.device)
        # Padding sits after every real item, so the causal mask alone keeps real positions from seeing it.
        return self.norm(self.blocks(states, mask=causal, is_causal=True))

    def item_embeddings(self) -> torch.Tensor:
        return self.items.weight


class GRU4Rec(nn.Module):
    """A GRU over the items so far: [batch, length] ids -> [batch, length, hidden] states."""

    def __init__(self, num_items: int, hidden_size: int, max_length: int, layers: int = 1, dropout: float = 0.2):
        super().__init__()
        self.items = nn.Embedding(num_items, hidden_size, padding_idx=PADDING)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden_size, hidden_size, layers, batch_first=True)
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        # Padding follows the real items, so a state at a real position has seen only real items.
        states, _ = self.gru(self.dropout(self.items(items)))
        return self.dense(states)

    def item_embeddings(self) -> torch.Tensor:
        return self.items.weight


@dataclasses.dataclass
class TrainingSettings:
    """How a sequential baseline is trained (flags of trainer.baselines; defaults chosen on the validation
    split, docs/baselines.md)."""

    hidden_size: int = 64
    dropout: float = 0.2
    learning_rate: float = 3e-3
    batch_size: int = 256
    max_epochs: int = 50
    patience: int = 3
    max_length: int = 10
    seed: int = 42


def build_model(model_type: str, num_items: int, settings: TrainingSettings) -> nn.Module:
    if model_type == "sasrec":
        return SASRec(num_items, settings.hidden_size, settings.max_length, dropout=settings.dropout)
    if model_type == "gru4rec":
        return GRU4Rec(num_items, settings.hidden_size, settings.max_length, dropout=settings.dropout)
    raise ValueError(f"unknown model type {model_type!r}; one of {MODEL_TYPES}")


def initialize(module: nn.Module) -> None:
    """Small initial embeddings and weights (normal, standard deviation 0.02, as RecBole's), so that the first
    scores, dot products of item embeddings, start near 0 instead of at catalogue-wide extremes."""
    if isinstance(module, (nn.Embedding, nn.Linear)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


def last_states(model: nn.Module, histories: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[records, hidden] the state at each history's last item (an empty history: its first, padding, position)."""
    return model(histories)[torch.arange(len(histories)), (lengths - 1).clamp(min=0)]


def next_item_loss(model: nn.Module, histories: torch.Tensor, lengths: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the catalogue (padding excluded) of each true item after its history."""
    logits = last_states(model, histories, lengths) @ model.item_embeddings().T
    logits[:, PADDING] = float("-inf")
    return nn.functional.cross_entropy(logits, targets)


@torch.no_grad()
def candidate_scores(model: nn.Module, histories: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor,
                     batch_size: int = 1024) -> torch.Tensor:
    """[records, candidates] score of each candidate after each history: the last history position's state
    against the candidate's embedding. An empty history scores from the padding position's state."""
    model.eval()
    scores = []
    for start in range(0, len(histories), batch_size):
        part = slice(start, start + batch_size)
        states = last_states(model, histories[part], lengths[part])
        scores.append(torch.einsum("bh,bch->bc", states, model.item_embeddings()[candidates[part]]))
    return torch.cat(scores)


def hit_ratio(scores: torch.Tensor, records: list[Record]) -> float:
    """Share of records whose true item scores highest among its candidates."""
    named = scores.argmax(dim=1).tolist()
    return sum(record.candidates[index] == record.target for index, record in zip(named, records)) / len(records)


def train_sequential_model(model_type: str, train_records: list[Record], valid_records: list[Record], catalogue: Catalogue,
          settings: TrainingSettings) -> tuple[nn.Module, list[dict]]:
    """Trains with early stopping on the validation HR@1; returns the best epoch's model and each epoch's log."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = build_model(model_type, len(catalogue), settings)
    model.apply(initialize)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    histories, lengths = catalogue.histories(train_records, settings.max_length)
    targets = torch.tensor([catalogue.ids[record.target] for record in train_records])
    valid_histories, valid_lengths = catalogue.histories(valid_records, settings.max_length)
    valid_candidates = catalogue.candidates(valid_records)
    best, best_state, since_best, log = -1.0, None, 0, []
    started = time.perf_counter()
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        order = torch.randperm(len(targets), generator=generator)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            loss = next_item_loss(model, histories[batch], lengths[batch], targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * min(settings.batch_size, len(order) - start)
        valid_hit_ratio = hit_ratio(candidate_scores(model, valid_histories, valid_lengths, valid_candidates),
                                    valid_records)
        log.append({"epoch": epoch, "train_loss": round(total / len(order), 4), "valid_hr_at_1": valid_hit_ratio,
                    "seconds": round(time.perf_counter() - started, 1)})
        logger.info("%s epoch %d: training loss %.4f, validation HR@1 %.4f", model_type, epoch,
                    log[-1]["train_loss"], valid_hit_ratio)
        if valid_hit_ratio > best:
            best, best_state, since_best = valid_hit_ratio, copy.deepcopy(model.state_dict()), 0
        else:
            since_best += 1
            if since_best >= settings.patience:
                break
    model.load_state_dict(best_state)
    return model.eval(), log
