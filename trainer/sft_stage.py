"""The SFT stage that sft.py runs: prompt -> true title, loss on the answer tokens only, with LoRA.

Writes the LoRA adapter (save_pretrained), the tokenizer, run_config.json and the training log
(trainer_state.json, train_results.json with the final validation loss) to --output_dir.
"""

import dataclasses
import logging

from accelerate import PartialState
from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import set_seed
from trl import SFTConfig

from trainer.cli import is_main_process
from trainer.data import load_records, select_indices
from trainer.errors import InputError
from trainer.commands import OutputFlags, flag
from trainer.flags import (CheckpointFlags, LoraFlags, ModelFlags, OptimizationFlags, PromptFlags, TrainingDataFlags,
                           check_adapter_folder)
from trainer.frozen_layers import first_trainable_layer, frozen_hidden_states, top_lora_layers
from trainer.modeling import base_model_fingerprint, load_model_for_training, lora_config
from trainer.prompts import PromptBuilder, evaluation_template, supervised_example
from trainer.sft_trainer import AnswerCollator, AnswerOnlySFTTrainer, CACHE_INDEX_COLUMN
from trainer.training import start_training_stage, train_validate_save, training_callbacks

logger = logging.getLogger("sft")


def supervised_dataset(path: str, max_samples: int | None, seed: int, builder: PromptBuilder, tokenizer) -> Dataset:
    """A seeded sample of a data file as tokenized (input_ids, labels) rows."""
    records = load_records(path)
    indices = select_indices(len(records), max_samples, seed)
    rows = [supervised_example(tokenizer, builder.build(records[index], index), records[index].target)
            for index in indices]
    return Dataset.from_list(rows)


@dataclasses.dataclass
class SFTFlags(CheckpointFlags, OptimizationFlags, LoraFlags, ModelFlags, PromptFlags, TrainingDataFlags,
               OutputFlags):
    output_dir: str = "output/sft"
    adapter: str | None = flag(
        None, "A LoRA adapter folder to go on training (its LoRA settings replace the --lora_* flags). Not needed "
              "to continue a killed run: run its command again and it resumes from its last checkpoint.")
    lora_top_layers: int | None = flag(
        None, "LoRA only in the top N decoder layers (default: every layer): the backward pass stops at the "
              "lowest of them.")
    cache_frozen_layers: bool = flag(
        False, "With --lora_top_layers (or an adapter confined to top layers): compute the frozen layers below "
               "once per example before training and start every later forward from their cached output (same "
               "loss, less compute per pass after the first; needs memory for tokens x hidden size numbers per "
               "example; LLaMA-architecture models).")

    def check(self) -> None:
        super().check()
        if self.adapter:
            check_adapter_folder(self.adapter)


def train_sft(flags: SFTFlags) -> None:
    """Fine-tune a LoRA adapter to answer each prompt with its true title."""
    config, torch_dtype, training_arguments, model_path, tokenizer = start_training_stage(flags)

    # Build (and so validate) both datasets before anything is written.
    train_builder = PromptBuilder(flags.domain, tokenizer, flags.max_prompt_tokens, seed=flags.seed,
                                  template_index=flags.template_index,
                                  hints=flags.hints_for(flags.train_file), source=flags.train_file)
    eval_builder = PromptBuilder(flags.domain, tokenizer, flags.max_prompt_tokens,
                                 template_index=evaluation_template(flags.template_index),
                                 hints=flags.hints_for(flags.valid_file), source=flags.valid_file)
    train_dataset = supervised_dataset(flags.train_file, flags.max_train_samples, flags.seed, train_builder,
                                       tokenizer)
    eval_dataset = None
    if flags.validates:
        eval_dataset = supervised_dataset(flags.valid_file, flags.max_valid_samples, flags.seed, eval_builder,
                                          tokenizer)
    logger.info("SFT on %d training examples (%s), validation loss on %s", len(train_dataset), flags.train_file,
                f"{len(eval_dataset)} ({flags.valid_file})" if flags.validates else "none (--max_valid_samples 0)")

    model = load_model_for_training(model_path, torch_dtype, flags.load_in_4bit, flags.gradient_checkpointing)
    fingerprint = base_model_fingerprint(model)
    flags.check_adapter_base(flags.adapter, model_path, fingerprint)
    # A fresh adapter's random weights come from --seed, so a run repeats in any process.
    set_seed(flags.seed)
    if flags.adapter:
        model = PeftModel.from_pretrained(model, flags.adapter, is_trainable=True)
    else:
        layers = None
        if flags.lora_top_layers is not None:
            layers = top_lora_layers(model, flags.lora_top_layers)
        model = get_peft_model(model, lora_config(flags.lora_r, flags.lora_alpha, flags.lora_dropout,
                                                  flags.lora_target_modules, layers))
    if is_main_process():
        model.print_trainable_parameters()

    first_cached_layer, frozen_cache = None, None
    if flags.cache_frozen_layers:
        try:
            first_cached_layer = first_trainable_layer(model)
        except ValueError as error:
            raise InputError(f"--cache_frozen_layers: {error}") from None
        if first_cached_layer == 0:
            raise InputError("--cache_frozen_layers: the lowest layer trains, so no layer is frozen below it; "
                             "give --lora_top_layers")
        # Computed where training will run; every example of both datasets, once.
        model.to(PartialState().device)
        sequences = list(train_dataset["input_ids"]) + (list(eval_dataset["input_ids"]) if flags.validates else [])
        frozen_cache = frozen_hidden_states(model, sequences, first_cached_layer, tokenizer.pad_token_id)
        train_dataset = train_dataset.add_column(CACHE_INDEX_COLUMN, list(range(len(train_dataset))))
        if flags.validates:
            eval_dataset = eval_dataset.add_column(CACHE_INDEX_COLUMN,
                                                   list(range(len(train_dataset), len(sequences))))
        logger.info("Cached the hidden states entering layer %d of %d examples", first_cached_layer, len(sequences))

    args = SFTConfig(
        **training_arguments,
        activation_checkpointing=flags.gradient_checkpointing,
        # Prompts are budgeted by the builder; truncating here could cut the answer off.
        max_length=None,
        # Batches of similar length waste little compute on padding.
        train_sampling_strategy="group_by_length",
        # Validation needs only the loss; the answer-only loss builds no logits to return.
        prediction_loss_only=True,
    )
    trainer = AnswerOnlySFTTrainer(
        model=model,
        args=args,
        data_collator=AnswerCollator(tokenizer.pad_token_id, frozen_cache),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=training_callbacks(flags.max_train_seconds),
        first_cached_layer=first_cached_layer,
    )
    example_tokens = [len(input_ids) for input_ids in train_dataset["input_ids"]]
    # Every process takes part in save_model (sharded weights are gathered under FSDP or DeepSpeed).
    train_validate_save(trainer, flags.output_dir, config, model_path, fingerprint, example_tokens,
                        lambda: trainer.save_model(flags.output_dir))

