"""TRL's DPOTrainer, taught to compare one chosen completion with k rejected ones per prompt.

What changes from DPOTrainer: examples arrive tokenized (prompt_ids, completion_ids with the chosen
completion first), a batch scores 1 + k completions per prompt (packed into one row per prompt by
default, see trainer.logprobs), and the loss is one of trainer.losses.
Everything else (optimizer, schedule, PEFT reference adapter, logging, saving, distributed
training) is DPOTrainer's and Trainer's own.

The reference policy is never a second copy of the base model: when training continues an SFT
adapter, DPOTrainer copies it into a frozen adapter named "ref"; when training a fresh adapter,
the reference is the base model with adapters disabled.
"""

from dataclasses import dataclass, field

import torch
from accelerate.utils import tqdm
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from trl import DPOConfig, DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from trainer.logprobs import (collate_packed, completion_logps, completion_token_counts, pack_example,
                              packed_completion_logps, pad_left)
from trainer.losses import (LOSS_TYPES, LOSSES, dynamic_negatives, napo_margins, napo_shared_negatives,
                            preference_loss, rewards)
from trainer.prompts import HISTORY_COLUMN
from trainer.training import SameOrderForAnyProcessCount, GuardedTraining

# DPOTrainer's name for the frozen copy of the adapter a run starts from (saved in every checkpoint).
REFERENCE_ADAPTER_NAME = "ref"
PREFERENCE_COLUMNS = ["prompt_ids", "completion_ids"]
# Added by precompute_ref_log_probs: the reference log-probs of an example's 1 + k completions.
REFERENCE_COLUMN = "ref_logps"
# Added to every dataset (under MultiNegativeDPOConfig.length_column_name): packed_length of each example.
LENGTH_COLUMN = "packed_length"
# The batch's key for NAPO's shared rejected titles.
SHARED_NEGATIVES = "shared_negatives"
# What every step logs, in the order _record_metrics stacks them.
METRIC_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected")


def packed_length(example: dict) -> int:
    """Tokens the packed forward computes for an example: its prompt once and every completion once."""
    return len(example["prompt_ids"]) + sum(map(len, example["completion_ids"]))


@dataclass
class MultiNegativeDPOConfig(DPOConfig):
    """DPOConfig plus the settings of multi-negative preference training.

    `beta` and `precompute_ref_log_probs` are DPOConfig's own; with the latter the reference
    log-probs of every example's 1 + k completions are computed once before training (and before
    evaluation) instead of in every step. `loss_type` is DPOConfig's field, which TRL keeps as a list,
    holding one of this trainer's losses instead of TRL's pairwise ones.

    Parameters:
        neg_num (`int`, defaults to `3`):
            Rejected completions per prompt (k); each example must carry 1 + k completions.
        loss_type (`str` or a list of one, defaults to `"sdpo"`):
            A name of trainer/losses.py's LOSSES; a loss that needs no reference skips the reference pass.
        target_margin (`float`, defaults to `0.0`):
            gamma, the margin the chosen title's reward must win by, for the losses that read completion
            lengths (simpo_sdpo); any other value than 0 is refused for the others.
        boundary_negatives (`bool`, defaults to `False`):
            DynamicPO's selection: each prompt's loss counts only its boundary negatives, the rejected titles
            the policy scores at least as high as the chosen one (or the top k-means cluster of them when none
            does), recomputed in every step (trainer.losses.dynamic_negatives). For the losses that take it.
        dynamic_beta (`bool`, defaults to `False`):
            DynamicPO's beta per negative, between beta / 2 and 3 beta / 2, larger for a rejected title near the
            chosen one; recomputed in every step from the policy's log-probs. For the losses that take it.
        dynamic_beta_margin (`float`, defaults to `6.0`):
            The fixed margin of DynamicPO's per-negative beta (6.0 in the authors' code).
        napo_neighbours (`int`, defaults to `1`):
            NAPO: each prompt also takes the rejected titles of this many of the most similar prompts in its
            batch (trainer.losses.napo_shared_negatives); 0 shares none. For the losses that share negatives.
        napo_max_margin (`float`, defaults to `1.0`):
            NAPO: the largest margin of a rejected title (trainer.losses.napo_margins); 0 turns the margins off.
        napo_margin_decay (`float`, defaults to `0.9`):
            NAPO: the decay of the moving average of the rejected titles' scores the margins are measured from,
            updated once per training batch and kept in checkpoints.
        packed_forward (`bool`, defaults to `True`):
            One sequence per prompt holding the prompt once and then every completion, each completion
            attending only to the prompt and itself. False scores 1 + k padded sequences per prompt
            (the plain way, kept for comparison).
        train_sampling_strategy (`str`, defaults to `"group_by_length"`):
            Trainer's field with another default: batches of examples of similar packed length, so
            that little compute goes to padding ("random" draws them as they come).
        length_column_name (`str`, defaults to `"packed_length"`):
            Trainer's field with another default: the column of each example's packed length (its
            prompt once plus every completion, in tokens), which the trainer adds when missing.
    """

    neg_num: int = field(default=3, metadata={"help": "Rejected completions per prompt (k)."})
    loss_type: str | list[str] = field(default="sdpo", metadata={"help": f"One of {LOSS_TYPES}."})
    target_margin: float = field(default=0.0, metadata={"help": "gamma of the losses that read lengths."})
    boundary_negatives: bool = field(default=False, metadata={"help": "Count only DynamicPO's boundary negatives."})
    dynamic_beta: bool = field(default=False, metadata={"help": "DynamicPO's beta per negative."})
    dynamic_beta_margin: float = field(default=6.0, metadata={"help": "The margin of DynamicPO's per-negative beta."})
    napo_neighbours: int = field(default=1, metadata={"help": "NAPO: similar prompts whose rejected titles are shared."})
    napo_max_margin: float = field(default=1.0, metadata={"help": "NAPO: the largest margin of a rejected title."})
    napo_margin_decay: float = field(default=0.9, metadata={"help": "NAPO: decay of the scores' moving average."})
    packed_forward: bool = field(default=True, metadata={"help": "Compute each prompt once for its 1 + k completions."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "Trainer's sampler; by default batches of examples of similar packed length."},
    )
    length_column_name: str = field(default=LENGTH_COLUMN,
                                    metadata={"help": "Column of each example's packed length, added when missing."})

    def __post_init__(self):
        super().__post_init__()
        # DPOConfig has turned it into a list: one loss, ours.
        if len(self.loss_type) != 1 or self.loss_type[0] not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.neg_num < 1:
            raise ValueError(f"neg_num must be at least 1, got {self.neg_num}")
        if self.target_margin != 0 and not LOSSES[self.loss_type[0]].reads_lengths:
            raise ValueError(f"{self.loss_type[0]} has no target margin; target_margin must be 0")
        if (self.boundary_negatives or self.dynamic_beta) and not LOSSES[self.loss_type[0]].takes_dynamic_negatives:
            raise ValueError(f"{self.loss_type[0]} takes neither boundary negatives nor a dynamic beta")
        if self.napo_neighbours < 0 or self.napo_max_margin < 0 or not 0 <= self.napo_margin_decay < 1:
            raise ValueError(f"napo_neighbours and napo_max_margin must be at least 0 and napo_margin_decay in [0, 1), "
                             f"got {self.napo_neighbours}, {self.napo_max_margin} and {self.napo_margin_decay}")

    @property
    def shares_negatives(self) -> bool:
        return LOSSES[self.loss_type[0]].shares_negatives


@dataclass
class MultiNegativeCollator:
    """Examples -> a batch for the packed forward (default) or for the plain one.

    Packed: one left-padded row per prompt holding the prompt and then all 1 + k completions
    (trainer.logprobs.collate_packed). Plain: one left-padded row per (prompt, completion),
    example-major: row i * (1 + k) + j is example i's completion j (j = 0: chosen). With
    `napo_neighbours` set (NAPO), the batch also says which rejected titles each prompt shares
    (SHARED_NEGATIVES, [B, B, k] bool, trainer.losses.napo_shared_negatives).
    """

    pad_token_id: int
    packed: bool = True
    napo_neighbours: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self._packed(examples) if self.packed else self._plain(examples)
        if REFERENCE_COLUMN in examples[0]:
            batch[REFERENCE_COLUMN] = torch.tensor([example[REFERENCE_COLUMN] for example in examples])
        if self.napo_neighbours is not None:
            batch[SHARED_NEGATIVES] = napo_shared_negatives([example[HISTORY_COLUMN] for example in examples],
                                                            [example["completion_ids"] for example in examples],
                                                            self.napo_neighbours)
        return batch

    def _packed(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        packed = [pack_example(example["prompt_ids"], example["completion_ids"]) for example in examples]
        return collate_packed(packed, self.pad_token_id)

    def _plain(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences, completion_masks = [], []
        for example in examples:
            prompt = example["prompt_ids"]
            for completion in example["completion_ids"]:
                sequences.append(prompt + completion)
                completion_masks.append([0] * len(prompt) + [1] * len(completion))
        return {
            "input_ids": pad_left(sequences, self.pad_token_id),
            "attention_mask": pad_left([[1] * len(sequence) for sequence in sequences], 0),
            "completion_mask": pad_left(completion_masks, 0),
        }


class NegativeScoreBaseline(TrainerCallback, ExportableState):
    """NAPO's baseline for the margins: the moving average, over training batches, of the mean score of their
    rejected titles (`decay` weighs the past). Saved in every checkpoint, so a continued run goes on from it;
    it lives on the batches' device, so reading it never waits for a GPU."""

    def __init__(self, decay: float):
        self.decay = decay
        self.value: torch.Tensor | None = None

    def baseline(self, scores: torch.Tensor, update: bool) -> torch.Tensor:
        """The baseline for a batch of rejected-title scores, after this batch when `update` (training); before
        any training batch, the batch's own mean."""
        mean = scores.detach().float().mean()  # in float32 whatever the policy's dtype, as it accumulates
        if not update:
            return mean if self.value is None else self.value.to(mean)
        self.value = mean if self.value is None else self.decay * self.value.to(mean) + (1 - self.decay) * mean
        return self.value

    def state(self) -> dict:
        value = None if self.value is None else self.value.item()
        return {"args": {"decay": self.decay}, "attributes": {"value": value}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__)
        if state.global_step > 0 and saved and saved["attributes"]["value"] is not None:  # continuing
            self.value = torch.tensor(saved["attributes"]["value"])


class MultiNegativeDPOTrainer(GuardedTraining, SameOrderForAnyProcessCount, DPOTrainer):
    """DPOTrainer over batches of one chosen and `args.neg_num` rejected completions per prompt."""

    @property
    def stage_name(self) -> str:
        return self.args.loss_type[0]

    def __init__(self, model, args: MultiNegativeDPOConfig, processing_class, **kwargs):
        kwargs.setdefault("data_collator", MultiNegativeCollator(
            processing_class.pad_token_id, args.packed_forward, args.napo_neighbours if args.shares_negatives else None))
        # Before Trainer's __init__, which lists the callbacks whose state checkpoints keep.
        self._score_baseline = NegativeScoreBaseline(args.napo_margin_decay) if args.shares_negatives else None
        if self._score_baseline is not None:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), self._score_baseline]
        super().__init__(model=model, args=args, processing_class=processing_class, **kwargs)
        # Each micro-batch's metric means stay on the device until the next log: reading them on the
        # host would wait for the GPU after every forward pass instead of once per logged step.
        self._pending_metrics = {"train": [], "eval": []}

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # Examples come tokenized by trainer.prompts.preference_example; check their shape once here.
        missing = [column for column in PREFERENCE_COLUMNS if column not in dataset.column_names]
        if missing:
            raise ValueError(f"the {dataset_name} dataset lacks the columns {missing}")
        counts = {len(completions) for completions in dataset["completion_ids"]}
        if counts != {1 + args.neg_num}:
            raise ValueError(f"every {dataset_name} example needs 1 + {args.neg_num} completions, "
                             f"found {sorted(counts)}")
        if args.shares_negatives and HISTORY_COLUMN not in dataset.column_names:
            raise ValueError(f"{args.loss_type[0]} compares the prompts' histories: the {dataset_name} dataset lacks "
                             f"the column {HISTORY_COLUMN!r}")
        if args.length_column_name in dataset.column_names:
            return dataset
        columns = dataset.select_columns(PREFERENCE_COLUMNS)
        return dataset.add_column(args.length_column_name, [packed_length(example) for example in columns])

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = PREFERENCE_COLUMNS + [REFERENCE_COLUMN, HISTORY_COLUMN,
                                                            self.args.length_column_name]

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """The dataset with a column of its examples' reference log-probs, computed once, in dataset order."""
        loader = self.accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator,
                                                     shuffle=False))
        values = []
        # Iterating a DataLoader draws its base seed from torch's global generator: restored after, so
        # training sees the same example order with and without this pass.
        with torch.random.fork_rng(devices=[]):
            for batch in tqdm(loader, desc=f"Reference log-probs of the {name} examples"):
                values.append(self.accelerator.gather_for_metrics(self._reference_logps(self.model, batch)).cpu())
        return dataset.add_column(REFERENCE_COLUMN, torch.cat(values).tolist())

    def _completion_logps(self, model, inputs) -> torch.Tensor:
        """[B, 1 + k] log pi(completion | prompt), chosen first: the one place completions are scored."""
        width = 1 + self.args.neg_num
        if self.args.packed_forward:
            return packed_completion_logps(model, inputs, width)
        plain = completion_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        return plain.view(-1, width)

    def _reference_logps(self, model, inputs) -> torch.Tensor:
        """[B, 1 + k] log-probs under the frozen reference, without gradients."""
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if self.ref_model is not None:
                return self._completion_logps(self.ref_model, inputs)
            unwrapped = self.accelerator.unwrap_model(self.model)
            with use_adapter(unwrapped, "ref" if "ref" in unwrapped.peft_config else None):
                return self._completion_logps(model, inputs)

    def _policy_and_reference_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 1 + k] log-probs under the policy (with gradients) and the frozen reference; zeros for a loss
        that reads no reference (so the logged rewards are then beta * log pi)."""
        policy = self._completion_logps(model, inputs)
        if not LOSSES[self.args.loss_type[0]].needs_reference:
            return policy, torch.zeros_like(policy.detach())
        if REFERENCE_COLUMN in inputs:
            return policy, inputs[REFERENCE_COLUMN].to(policy.dtype)
        return policy, self._reference_logps(model, inputs)

    def _completion_lengths(self, inputs) -> torch.Tensor:
        """[B, 1 + k] token counts of the completions, chosen first, in the layout of _completion_logps."""
        width = 1 + self.args.neg_num
        if self.args.packed_forward:
            return completion_token_counts(inputs["owners"], width)
        return inputs["completion_mask"].sum(dim=1).view(-1, width)

    def _loss_options(self, inputs, policy: torch.Tensor) -> dict:
        """What the loss reads besides the log-probs: token counts and margin, DynamicPO's options, or NAPO's."""
        args = self.args
        if args.shares_negatives:
            lengths = self._completion_lengths(inputs).to(policy.dtype)
            # A title's score: its mean token log-probability, so that long titles do not read as unlikely.
            scores = policy[:, 1:].detach() / lengths[:, 1:]
            baseline = self._score_baseline.baseline(scores, update=self.model.training)
            return {"shared_negatives": inputs[SHARED_NEGATIVES],
                    "negative_margins": napo_margins(scores, baseline, args.napo_max_margin)}
        if LOSSES[args.loss_type[0]].reads_lengths:
            lengths = self._completion_lengths(inputs).to(policy.dtype)
            return {"chosen_lengths": lengths[:, 0], "rejected_lengths": lengths[:, 1:],
                    "target_margin": args.target_margin}
        if not (args.boundary_negatives or args.dynamic_beta):
            return {}
        boundary, betas = dynamic_negatives(policy[:, 0], policy[:, 1:], self.beta, args.dynamic_beta_margin)
        return {"negative_mask": boundary if args.boundary_negatives else None,
                "beta": betas if args.dynamic_beta else self.beta}

    def _compute_loss(self, model, inputs, return_outputs):
        policy, reference = self._policy_and_reference_logps(model, inputs)
        options = {"beta": self.beta} | self._loss_options(inputs, policy)
        loss = preference_loss(self.args.loss_type[0], policy[:, 0], policy[:, 1:], reference[:, 0],
                               reference[:, 1:], **options).mean()
        self._record_metrics(policy.detach(), reference)
        return (loss, None) if return_outputs else loss

    def _record_metrics(self, policy: torch.Tensor, reference: torch.Tensor) -> None:
        """Keeps this micro-batch's averages (over its prompts, on every process) of METRIC_NAMES."""
        mode = "train" if self.model.training else "eval"
        reward = rewards(policy, reference, self.beta)
        chosen, rejected = reward[:, 0], reward[:, 1:]
        per_prompt = torch.stack([
            chosen,
            rejected.mean(dim=1),
            chosen - rejected.mean(dim=1),
            # The chosen completion must beat every rejected one.
            (chosen > rejected.max(dim=1).values).float(),
            # S-DPO's claim is that it keeps the chosen likelihood from falling as DPO's does.
            policy[:, 0],
            policy[:, 1:].mean(dim=1),
        ], dim=1)  # [B, len(METRIC_NAMES)]
        self._pending_metrics[mode].append(self.accelerator.gather_for_metrics(per_prompt).mean(dim=0))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """DPOTrainer.log, with the kept micro-batch averages moved to the host in one copy first."""
        mode = "train" if self.model.training else "eval"
        pending = self._pending_metrics[mode]
        if pending:
            averages = torch.stack(pending).mean(dim=0).tolist()
            for name, value in zip(METRIC_NAMES, averages):
                self._metrics[mode][name].append(value)
            pending.clear()
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Evaluation is the loss and the logged metrics; there are no logits to return.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
