"""SFT whose loss runs the vocabulary head on the answer tokens only.

TRL's SFTTrainer runs the model's vocabulary head (576 x 49,152 on the embedded model) on every
position of prompt + answer and masks the prompt out afterwards; here a prompt has ~160 tokens
and an answer ~5, so almost all of that work is thrown away. This trainer left-pads its batches,
which puts every answer among the last positions of its row, and computes log-probabilities only
there (trainer.logprobs.completion_logps). The loss is the same number: measured on 4 LastFM
prompts, a step takes ~25% less time.
"""

import torch
from trl import SFTTrainer

from trainer.frozen_layers import completion_logps_from_frozen, pad_hidden_left
from trainer.logprobs import completion_logps, pad_left
from trainer.training import SameOrderForAnyProcessCount, GuardedTraining

IGNORED_LABEL = -100
# With a frozen-layer cache: each row's place in the cache, and the batch's cached hidden states.
CACHE_INDEX_COLUMN = "cache_index"
FROZEN_HIDDEN = "frozen_hidden"


class AnswerCollator:
    """Left-pads (input_ids, labels) rows: input_ids, attention_mask and labels, -100 on prompt and padding.

    With `frozen_cache` (trainer.frozen_layers: one [length, hidden] tensor per example, found by the
    rows' cache_index), the batch also carries their hidden states, left-padded the same way.
    """

    def __init__(self, pad_token_id: int, frozen_cache: list[torch.Tensor] | None = None):
        self.pad_token_id = pad_token_id
        self.frozen_cache = frozen_cache

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = [example["input_ids"] for example in examples]
        batch = {
            "input_ids": pad_left(input_ids, self.pad_token_id),
            "attention_mask": pad_left([[1] * len(ids) for ids in input_ids], 0),
            "labels": pad_left([example["labels"] for example in examples], IGNORED_LABEL),
        }
        if self.frozen_cache is not None:
            batch[FROZEN_HIDDEN] = pad_hidden_left([self.frozen_cache[example[CACHE_INDEX_COLUMN]]
                                                    for example in examples])
        return batch


class AnswerOnlySFTTrainer(GuardedTraining, SameOrderForAnyProcessCount, SFTTrainer):
    """SFTTrainer with the answer-only loss: each forward pass's loss is the mean NLL over its answer tokens.

    Needs AnswerCollator batches and prediction_loss_only=True (no logits are built to return).
    With `first_cached_layer`, batches carry the cached hidden states entering that layer
    (AnswerCollator's frozen_cache) and the forward starts there.
    """

    stage_name = "SFT"
    # The loss is a per-batch mean: Trainer divides it by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, first_cached_layer: int | None = None, **kwargs):
        self.first_cached_layer = first_cached_layer
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.first_cached_layer is not None and CACHE_INDEX_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, CACHE_INDEX_COLUMN]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        answer_mask = inputs["labels"] != IGNORED_LABEL
        if self.first_cached_layer is None:
            answer_logps = completion_logps(model, inputs["input_ids"], inputs["attention_mask"], answer_mask)
        else:
            answer_logps = completion_logps_from_frozen(model, inputs[FROZEN_HIDDEN], self.first_cached_layer,
                                                        inputs["input_ids"], inputs["attention_mask"], answer_mask)
        loss = -answer_logps.sum() / answer_mask.sum()
        return (loss, {}) if return_outputs else loss
