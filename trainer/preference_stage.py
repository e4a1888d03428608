"""The preference stage shared by softmax_dpo.py and dpo.py: S-DPO, DPO, DMPO or another loss of
trainer/losses.py's LOSSES, from an SFT adapter.

Each training example is a prompt, its true title as the chosen answer and `neg_num` other
candidates as rejected answers, chosen by `--negatives` (trainer/negatives.py; by default drawn
without replacement from a generator seeded by the run seed and the example index, the paper's
way). Writes the trained adapter, the tokenizer,
run_config.json and the training log (trainer_state.json with the per-step rewards and chosen
log-probs, train_results.json).
"""

import dataclasses
import logging
import os
from collections.abc import Mapping

from datasets import Dataset
from peft import PeftModel
from transformers import set_seed
from transformers.trainer import TRAINER_STATE_NAME

from trainer.cli import is_main_process
from trainer.collaborative import statistics_of
from trainer.data import Record, load_records, select_indices
from trainer.errors import InputError
from trainer.commands import OutputFlags, flag
from trainer.flags import (CheckpointFlags, LoraFlags, ModelFlags, OptimizationFlags, PromptFlags, TrainingDataFlags,
                           check_adapter_folder)
from trainer.losses import DYNAMIC_NEGATIVE_TAKERS, LENGTH_READERS, LOSS_TYPES, LOSSES, NEGATIVE_SHARERS, loss_choices
from trainer.modeling import (base_model_fingerprint, check_attn_implementation,
                              is_adapter_folder, load_model_for_training, lora_config)
from trainer.negatives import NEGATIVE_SAMPLING, rejected_titles, starting_model_answers, starting_model_scores
from trainer.preference_trainer import (LENGTH_COLUMN, MultiNegativeDPOConfig, MultiNegativeDPOTrainer,
                                        REFERENCE_ADAPTER_NAME)
from trainer.prompts import PromptBuilder, evaluation_template, preference_example
from trainer.training import start_training_stage, train_validate_save, training_callbacks

logger = logging.getLogger("preference")


def sample_records(path: str, max_samples: int | None, seed: int, neg_num: int) -> list[tuple[int, Record]]:
    """A seeded sample of a data file as (index in the file, record), each checked to have `neg_num` negatives."""
    records = load_records(path)
    examples = [(index, records[index]) for index in select_indices(len(records), max_samples, seed)]
    for index, record in examples:
        available = len(record.candidates) - 1
        if neg_num > available:
            raise InputError(f"{path}: record {index}: field 'itemList': {available} negatives available, "
                             f"fewer than --neg_num {neg_num}")
    return examples


def preference_dataset(examples: list[tuple[int, Record]], seed: int, builder: PromptBuilder, tokenizer,
                       neg_num: int, negatives: str = "random", popularity: Mapping[str, int] | None = None,
                       scores: list[list[float]] | None = None, own_answers: list[str | None] | None = None) -> Dataset:
    """Tokenized (prompt_ids, completion_ids) preference examples: the true title, then `neg_num`
    rejected ones chosen by `negatives` (trainer.negatives; per example, `scores` for "hard" and
    `own_answers` for "self")."""
    rows = []
    for position, (index, record) in enumerate(examples):
        rejected = rejected_titles(record, index, negatives, neg_num, seed, builder.hints, popularity,
                                   scores[position] if scores is not None else None,
                                   own_answers[position] if own_answers is not None else None)
        rows.append(preference_example(tokenizer, builder.build(record, index), record.target, rejected,
                                       record.history))
    return Dataset.from_list(rows)


def check_start_adapter(path: str, output_dir: str) -> None:
    """Refuse, before any work, an adapter to start from that this stage would misread or overwrite.

    A checkpoint of a preference run (a Trainer checkpoint holding DPOTrainer's frozen "ref" copy)
    is not an adapter to start from: taken as one, the run would start at step 0 with that
    checkpoint as its reference. A preference run continues from its own checkpoints when its
    command is run again (trainer.training.checkpoint_to_resume).
    """
    check_adapter_folder(path)
    continue_instead = ("to continue a killed run, run its command again unchanged: it resumes from the last "
                        "checkpoint in its --output_dir")
    output_folder = os.path.abspath(output_dir)
    if os.path.commonpath([os.path.abspath(path), output_folder]) == output_folder:
        raise InputError(f"--adapter {path!r} lies in --output_dir {output_dir!r}, which this run overwrites; "
                         f"{continue_instead}")
    is_trainer_checkpoint = os.path.isfile(os.path.join(path, TRAINER_STATE_NAME))
    if is_trainer_checkpoint and is_adapter_folder(os.path.join(path, REFERENCE_ADAPTER_NAME)):
        raise InputError(f"--adapter {path!r}: a checkpoint of a preference run, not an adapter to start from; "
                         f"{continue_instead}")


@dataclasses.dataclass
class PreferenceFlags(CheckpointFlags, OptimizationFlags, LoraFlags, ModelFlags, PromptFlags, TrainingDataFlags,
                      OutputFlags):
    output_dir: str = "output/softmax_dpo"
    num_train_epochs: float = 3.0
    gradient_accumulation_steps: int = 8
    learning_rate: float = 1e-5
    logging_steps: int = 1
    adapter: str | None = flag(
        None, "LoRA adapter folder from sft.py to start from; it also serves, frozen, as the reference policy. "
              "Unset: a fresh adapter is trained against the base model. Not needed to continue a killed run: run "
              "its command again and it resumes from its last checkpoint.")
    loss_type: str = flag("sdpo", f"The preference loss (trainer/losses.py): {loss_choices()}.")
    neg_num: int = flag(3, "k: rejected titles per prompt, drawn from the other candidates by --negatives.")
    negatives: str = flag(
        "random", "random (drawn uniformly from the other candidates, seeded by --seed and the example index; the "
                  "paper's), popular (drawn in proportion to 1 + how often each was the true item of a training "
                  "record), hinted (needs --hint_file: the k other candidates that the training counts rank "
                  "highest, the ones a model following the hint would name wrongly), hard (the k other "
                  "candidates the starting model scores highest, scored once before training and cached in "
                  "--output_dir for a rerun) or self (SPRec's self-play: the starting model's own answer where it "
                  "names a wrong candidate, then random others; answered once before training, cached the same "
                  "way; scripts/self_play.sh runs rounds of it).")
    beta: float = flag(1.0, "Inverse temperature of the implicit reward beta * log(pi / pi_ref); above 0.")
    target_margin: float = flag(
        0.0, f"gamma: the margin by which the chosen title's reward must win (SimPO's target margin), for the losses "
             f"that read title lengths ({', '.join(LENGTH_READERS)}); refused for the others.")
    boundary_negatives: bool = flag(
        False, "DynamicPO: each prompt's loss counts only its boundary negatives, the rejected titles the policy "
               "scores at least as high as the true one (else the top of three k-means clusters of their scores), "
               f"chosen again in every step. For {', '.join(DYNAMIC_NEGATIVE_TAKERS)}.")
    dynamic_beta: bool = flag(
        False, f"DynamicPO: a beta per rejected title, from beta / 2 to 3 beta / 2, larger for one scored near the "
               f"true title than for one near the clearly wrong ones, computed in every step. For "
               f"{', '.join(DYNAMIC_NEGATIVE_TAKERS)}.")
    dynamic_beta_margin: float = flag(6.0, "The fixed margin in DynamicPO's per-negative beta (the authors' 6.0).")
    napo_neighbours: int = flag(
        1, f"NAPO: each prompt also takes the rejected titles of this many of the most similar prompts in its batch "
           f"(history overlap), except its own true title and titles it already has; 0 shares none. For "
           f"{', '.join(NEGATIVE_SHARERS)}.")
    napo_max_margin: float = flag(
        1.0, f"NAPO: the largest margin of a rejected title, max_margin * sigmoid(baseline - score), the score being "
             f"the policy's mean token log-probability of the title; 0 turns the margins off. For "
             f"{', '.join(NEGATIVE_SHARERS)}.")
    napo_margin_decay: float = flag(
        0.9, f"NAPO: decay of the baseline, a moving average over training batches of their rejected titles' mean "
             f"score, in [0, 1). For {', '.join(NEGATIVE_SHARERS)}.")
    packed_forward: bool = flag(
        True, "Compute each prompt once for all its 1 + neg_num titles; False scores 1 + neg_num padded sequences "
              "per prompt (the plain way, slower).")
    attn_implementation: str = flag(
        "sdpa", "Attention kernel: sdpa (PyTorch's scaled-dot-product attention; the packed layout passes it a "
                "[B, 1, S, S] mask) or flex_attention (a block mask computed from each token's segment, no dense "
                "mask, blocks nobody attends to skipped; GPU only, as it has no backward on a CPU).")
    precompute_ref_log_probs: bool = flag(
        True, "Compute the reference log-probs of every example once before training (and validation) instead of "
              "in each step: the same numbers, one forward less per step (bench/README.md measures it), paid once "
              "instead of once per epoch and per validation. False computes them in each step.")

    def check(self) -> None:
        super().check()
        if self.loss_type not in LOSS_TYPES:
            raise InputError(f"--loss_type: expected one of {list(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.neg_num < 1:
            raise InputError(f"--neg_num must be at least 1, got {self.neg_num}")
        if not self.beta > 0:
            # beta 0 gives every loss a zero gradient, a negative beta pushes the chosen title down.
            raise InputError(f"--beta must be above 0, got {self.beta}")
        if self.target_margin != 0 and self.loss_type not in LENGTH_READERS:
            raise InputError(f"--target_margin: {self.loss_type} has no target margin (only {list(LENGTH_READERS)} do)")
        if (self.boundary_negatives or self.dynamic_beta) and self.loss_type not in DYNAMIC_NEGATIVE_TAKERS:
            raise InputError(f"--boundary_negatives and --dynamic_beta apply to {list(DYNAMIC_NEGATIVE_TAKERS)}, "
                             f"not {self.loss_type}")
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        changed = [f"--{name}" for name in ("napo_neighbours", "napo_max_margin", "napo_margin_decay")
                   if getattr(self, name) != defaults[name]]
        if changed and self.loss_type not in NEGATIVE_SHARERS:
            raise InputError(f"{', '.join(changed)}: for {list(NEGATIVE_SHARERS)} only, not {self.loss_type}")
        if self.napo_neighbours < 0 or self.napo_max_margin < 0 or not 0 <= self.napo_margin_decay < 1:
            raise InputError(f"--napo_neighbours and --napo_max_margin must be at least 0 and --napo_margin_decay in "
                             f"[0, 1), got {self.napo_neighbours}, {self.napo_max_margin} and {self.napo_margin_decay}")
        if self.negatives not in NEGATIVE_SAMPLING:
            raise InputError(f"--negatives: expected one of {list(NEGATIVE_SAMPLING)}, got {self.negatives!r}")
        if self.negatives == "hinted" and not self.hint_file:
            raise InputError("--negatives hinted ranks the candidates by the counts of --hint_file; give one")
        if self.adapter:
            check_start_adapter(self.adapter, self.output_dir)
        check_attn_implementation(self.attn_implementation)


def train_preference(flags: PreferenceFlags) -> None:
    """Preference-train a LoRA adapter with --loss_type (S-DPO by default), one true title against --neg_num others."""
    config, torch_dtype, training_arguments, model_path, tokenizer = start_training_stage(flags)

    # Read and check the records before anything is loaded or written.
    splits = [(sample_records(flags.train_file, flags.max_train_samples, flags.seed, flags.neg_num),
               PromptBuilder(flags.domain, tokenizer, flags.max_prompt_tokens, seed=flags.seed,
                             template_index=flags.template_index,
                             hints=flags.hints_for(flags.train_file), source=flags.train_file))]
    if flags.validates:
        splits.append((sample_records(flags.valid_file, flags.max_valid_samples, flags.seed, flags.neg_num),
                       PromptBuilder(flags.domain, tokenizer, flags.max_prompt_tokens,
                                     template_index=evaluation_template(flags.template_index),
                                     hints=flags.hints_for(flags.valid_file), source=flags.valid_file)))
    popularity = statistics_of(flags.train_file).popularity if flags.negatives == "popular" else None

    model = load_model_for_training(model_path, torch_dtype, flags.load_in_4bit, flags.gradient_checkpointing,
                                    flags.attn_implementation)
    fingerprint = base_model_fingerprint(model)
    flags.check_adapter_base(flags.adapter, model_path, fingerprint)
    # A fresh adapter's random weights come from --seed, so a run repeats in any process.
    set_seed(flags.seed)
    peft_config = None
    if flags.adapter:
        if difference := flags.hint_difference(flags.adapter):
            logger.warning("%s: the preference stage usually keeps the SFT stage's hint flags", difference)
        model = PeftModel.from_pretrained(model, flags.adapter, is_trainable=True)
    else:
        logger.warning("No --adapter: training a fresh adapter against the base model")
        peft_config = lora_config(flags.lora_r, flags.lora_alpha, flags.lora_dropout, flags.lora_target_modules)

    datasets = []
    for examples, builder in splits:
        scores = own_answers = None
        if flags.negatives in ("hard", "self"):  # negatives from the starting model's view of each prompt
            prompts = [builder.build(record, index) for index, record in examples]
            records = [record for _, record in examples]
        if flags.negatives == "hard":  # its scores of every candidate
            scores = starting_model_scores(model, tokenizer, prompts, records, flags.batch_size, model_path,
                                           flags.adapter, flags.output_dir)
        if flags.negatives == "self":  # the candidate its own answer names
            own_answers = starting_model_answers(model, tokenizer, prompts, records, flags.batch_size, model_path,
                                                 flags.adapter, flags.output_dir)
            wrong = sum(answer is not None and answer != record.target for answer, record in zip(own_answers, records))
            logger.info("The starting model names a wrong candidate on %d of %d prompts: its answer is their first "
                        "rejected title; the others draw theirs at random", wrong, len(records))
        datasets.append(preference_dataset(examples, flags.seed, builder, tokenizer, flags.neg_num, flags.negatives,
                                           popularity, scores, own_answers))
    train_dataset, eval_dataset = datasets[0], datasets[1] if len(datasets) > 1 else None
    logger.info("%s with %d %s negatives on %d training prompts (%s)%s", flags.loss_type, flags.neg_num,
                flags.negatives, len(train_dataset), flags.train_file,
                f", evaluated on {len(eval_dataset)} ({flags.valid_file})" if eval_dataset else "")

    args = MultiNegativeDPOConfig(
        **training_arguments,
        loss_type=flags.loss_type,
        neg_num=flags.neg_num,
        packed_forward=flags.packed_forward,
        # A loss without a reference needs no reference pass, precomputed or not.
        precompute_ref_log_probs=flags.precompute_ref_log_probs and LOSSES[flags.loss_type].needs_reference,
        beta=flags.beta,
        target_margin=flags.target_margin,
        boundary_negatives=flags.boundary_negatives,
        dynamic_beta=flags.dynamic_beta,
        dynamic_beta_margin=flags.dynamic_beta_margin,
        napo_neighbours=flags.napo_neighbours,
        napo_max_margin=flags.napo_max_margin,
        napo_margin_decay=flags.napo_margin_decay,
        gradient_checkpointing=flags.gradient_checkpointing,
    )
    trainer = MultiNegativeDPOTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=training_callbacks(flags.max_train_seconds),
    )
    if is_main_process():
        trainer.model.print_trainable_parameters()
    def save_adapter() -> None:
        # Only the trained adapter is saved; the frozen "ref" copy is the SFT adapter, already on disk.
        if trainer.is_world_process_zero():
            trainer.accelerator.unwrap_model(trainer.model).save_pretrained(flags.output_dir,
                                                                            selected_adapters=["default"])
            tokenizer.save_pretrained(flags.output_dir)

    train_validate_save(trainer, flags.output_dir, config, model_path, fingerprint,
                        trainer.train_dataset[LENGTH_COLUMN], save_adapter)
