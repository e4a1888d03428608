"""Supervised fine-tuning with LoRA: prompt -> true title, loss on the answer tokens only.

Writes the LoRA adapter (save_pretrained), the tokenizer, run_config.json and the training log
(trainer_state.json, train_results.json with the final validation loss) to --output_dir.
"""

import logging
import os

from accelerate import PartialState
from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import set_seed
from transformers.trainer import TRAINER_STATE_NAME
from trl import SFTConfig

from trainer.cli import check_output_dir, is_main_process, run, start_run, write_json_atomically
from trainer.collaborative import load_hints
from trainer.data_interface import (
    EVAL_TEMPLATE_INDEX,
    PromptBuilder,
    load_records,
    select_indices,
    supervised_example,
)
from trainer.errors import InputError
from trainer.modeling import (
    EMBEDDED_MODEL_NAME,
    LLAMA_PROJECTIONS,
    is_adapter_folder,
    load_model_for_training,
    load_tokenizer,
    lora_config,
    resolve_dtype,
    resolve_model_path,
)
from trainer.frozen_layers import first_trainable_layer, frozen_hidden_states, top_lora_layers
from trainer.sft_trainer import CACHE_INDEX_COLUMN, AnswerCollator, AnswerOnlySFTTrainer
from trainer.training import (TRAIN_RESULTS_FILE, LearningCurveCallback, batch_layout, best_checkpoint_results,
                              checkpoint_to_resume, kept_weights, token_throughput, trainer_arguments)

logger = logging.getLogger("sft")


def supervised_dataset(path: str, max_samples: int | None, seed: int, builder: PromptBuilder, tokenizer) -> Dataset:
    """A seeded sample of a data file as tokenized (input_ids, labels) rows."""
    records = load_records(path)
    indices = select_indices(len(records), max_samples, seed)
    rows = [supervised_example(tokenizer, builder.build(records[index], index), records[index].target)
            for index in indices]
    return Dataset.from_list(rows)


def sft(
    train_file: str = "data/lastfm/train.json",
    valid_file: str = "data/lastfm/valid.json",
    output_dir: str = "output/sft",
    model_name: str = EMBEDDED_MODEL_NAME,
    resume_from_checkpoint: str | None = None,
    domain: str = "music",
    template_index: int | None = None,
    max_prompt_tokens: int = 512,
    hint_file: str | None = None,
    hint_size: int = 3,
    max_train_samples: int | None = None,
    max_valid_samples: int | None = 500,
    seed: int = 42,
    num_train_epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 4,
    gradient_accumulation_steps: int = 1,
    learning_rate: float = 1e-4,
    lr_scheduler_type: str = "cosine",
    warmup_ratio: float = 0.05,
    weight_decay: float = 0.0,
    max_grad_norm: float = 0.3,
    lora_r: int = 8,
    lora_alpha: int = 32,
    lora_dropout: float = 0.1,
    lora_target_modules: str | tuple[str, ...] = ",".join(LLAMA_PROJECTIONS),
    lora_top_layers: int | None = None,
    cache_frozen_layers: bool = False,
    load_in_4bit: bool = False,
    dtype: str = "auto",
    gradient_checkpointing: bool = False,
    logging_steps: int = 10,
    eval_steps: float = 0,
    save_steps: float = 0,
    select_best: bool = False,
):
    """Fine-tune a LoRA adapter to answer each prompt with its true title.

    Args:
        train_file: JSON training records (see data/README.md).
        valid_file: JSON validation records; their loss is reported during and after training.
        output_dir: Folder for the adapter, tokenizer, run_config.json and training logs.
        model_name: Base model: 'embedded-smollm2' (the bundled SmolLM2-135M-Instruct), a local folder or a hub id.
        resume_from_checkpoint: A Trainer checkpoint folder to resume, or a LoRA adapter folder to continue training.
        domain: Prompt wording: music, movie, book or game.
        template_index: Use this one template (0-4) for every training prompt; by default each example draws one, seeded by --seed and its index.
        max_prompt_tokens: Token budget of a prompt; longer prompts drop their oldest history titles.
        hint_file: Training records whose counts add a hint to every prompt: the candidates that other users with the same history titles chose next most often (trainer.collaborative); pass the same file when training and evaluating. Unset: the text-only prompts of the paper.
        hint_size: Most candidates a hint names.
        max_train_samples: Train on a seeded random sample of this many records (all when unset).
        max_valid_samples: Compute the validation loss on a seeded random sample of this many records (all when unset; 0 skips validation).
        seed: Seeds the samples, the templates, LoRA initialisation and the data order.
        num_train_epochs: Passes over the training sample (ignored when --max_steps is positive).
        max_steps: Stop after this many optimizer steps (-1: run the epochs).
        batch_size: Examples per device per forward pass.
        gradient_accumulation_steps: Forward passes per optimizer step.
        learning_rate: Peak learning rate of AdamW.
        lr_scheduler_type: Learning rate schedule after warm-up (a transformers scheduler name, e.g. cosine, linear, constant).
        warmup_ratio: Fraction of the steps spent warming the learning rate up from 0.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping norm (the S-DPO authors use 0.3).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        lora_dropout: Dropout on the LoRA input (the S-DPO authors' 0.1). On a CPU it costs about a third of the step time; a single pass over unseen prompts has little to overfit, so sft.sh turns it off.
        lora_target_modules: Comma-separated module names that get LoRA (default: every attention and MLP projection).
        lora_top_layers: LoRA only in the top N decoder layers (default: every layer): the backward pass stops at the lowest of them.
        cache_frozen_layers: With --lora_top_layers (or an adapter confined to top layers): compute the frozen layers below once per example before training and start every later forward from their cached output (same loss, less compute per pass after the first; needs memory for tokens x hidden size numbers per example; LLaMA-architecture models).
        load_in_4bit: QLoRA: load the base model in 4-bit NF4 through bitsandbytes.
        dtype: auto (bf16 on a capable GPU, else fp32), float32, bfloat16 or float16; bf16 also turns on bf16 autocast.
        gradient_checkpointing: Recompute activations in the backward pass to save memory (slower).
        logging_steps: Log the training loss every this many optimizer steps.
        eval_steps: Compute the validation loss every this many optimizer steps, or, below 1, every this fraction of the run, as well as at the end (0: only at the end).
        save_steps: Save a checkpoint every this many optimizer steps, or, below 1, every this fraction of the run (0: only the final adapter); a run killed and started again with the same flags continues from the last one.
        select_best: Keep the adapter of the evaluation with the lowest validation loss instead of the last weights (the S-DPO authors' choice); needs --eval_steps, and saves a checkpoint at every evaluation.
    """
    config = dict(locals())
    if max_valid_samples is not None and max_valid_samples < 0:
        raise InputError(f"--max_valid_samples must be 0 or more, got {max_valid_samples}")
    validates = max_valid_samples != 0
    check_output_dir(output_dir)
    torch_dtype = resolve_dtype(dtype)
    training_arguments = trainer_arguments(config, torch_dtype, evaluates_during_training=validates)
    model_path = resolve_model_path(model_name)
    tokenizer = load_tokenizer(model_path, padding_side="left")

    # Build (and so validate) both datasets before anything is written.
    train_builder = PromptBuilder(domain, tokenizer, max_prompt_tokens, seed=seed, template_index=template_index,
                                  hints=load_hints(hint_file, hint_size, train_file))
    eval_builder = PromptBuilder(domain, tokenizer, max_prompt_tokens, template_index=EVAL_TEMPLATE_INDEX,
                                 hints=load_hints(hint_file, hint_size, valid_file))
    train_dataset = supervised_dataset(train_file, max_train_samples, seed, train_builder, tokenizer)
    eval_dataset = None
    if validates:
        eval_dataset = supervised_dataset(valid_file, max_valid_samples, seed, eval_builder, tokenizer)
    logger.info("SFT on %d training examples (%s), validation loss on %s", len(train_dataset), train_file,
                f"{len(eval_dataset)} ({valid_file})" if validates else "none (--max_valid_samples 0)")

    trainer_checkpoint = None
    if resume_from_checkpoint:
        if os.path.isfile(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME)):
            trainer_checkpoint = resume_from_checkpoint
        elif not is_adapter_folder(resume_from_checkpoint):
            raise InputError(f"--resume_from_checkpoint {resume_from_checkpoint!r}: "
                             "neither a Trainer checkpoint nor a LoRA adapter folder")

    model = load_model_for_training(model_path, torch_dtype, load_in_4bit, gradient_checkpointing)
    # A fresh adapter's random weights come from --seed, so a run repeats in any process.
    set_seed(seed)
    if resume_from_checkpoint and trainer_checkpoint is None:
        model = PeftModel.from_pretrained(model, resume_from_checkpoint, is_trainable=True)
    else:
        layers = None
        if lora_top_layers is not None:
            layers = top_lora_layers(model, lora_top_layers)
        model = get_peft_model(model, lora_config(lora_r, lora_alpha, lora_dropout, lora_target_modules, layers))
    if is_main_process():
        model.print_trainable_parameters()

    first_cached_layer, frozen_cache = None, None
    if cache_frozen_layers:
        try:
            first_cached_layer = first_trainable_layer(model)
        except ValueError as error:
            raise InputError(f"--cache_frozen_layers: {error}") from None
        if first_cached_layer == 0:
            raise InputError("--cache_frozen_layers: the lowest layer trains, so no layer is frozen below it; "
                             "give --lora_top_layers")
        # Computed where training will run; every example of both datasets, once.
        model.to(PartialState().device)
        sequences = list(train_dataset["input_ids"]) + (list(eval_dataset["input_ids"]) if validates else [])
        frozen_cache = frozen_hidden_states(model, sequences, first_cached_layer, tokenizer.pad_token_id)
        train_dataset = train_dataset.add_column(CACHE_INDEX_COLUMN, list(range(len(train_dataset))))
        if validates:
            eval_dataset = eval_dataset.add_column(CACHE_INDEX_COLUMN,
                                                   list(range(len(train_dataset), len(sequences))))
        logger.info("Cached the hidden states entering layer %d of %d examples", first_cached_layer, len(sequences))

    args = SFTConfig(
        **training_arguments,
        activation_checkpointing=gradient_checkpointing,
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
        callbacks=[LearningCurveCallback()],
        first_cached_layer=first_cached_layer,
    )
    resolved_config = config | {"resolved_model_path": model_path} | batch_layout(config)
    # Rerun after a kill: continue from the last checkpoint the same flags wrote.
    trainer_checkpoint = trainer_checkpoint or checkpoint_to_resume(output_dir, resolved_config)
    if trainer_checkpoint and is_main_process():
        logger.info("Continuing from %s", trainer_checkpoint)
    if is_main_process():
        start_run(resolved_config, output_dir, TRAIN_RESULTS_FILE)
    train_result = trainer.train(resume_from_checkpoint=trainer_checkpoint)
    example_tokens = [len(input_ids) for input_ids in train_dataset["input_ids"]]
    results = (dict(train_result.metrics) | token_throughput(train_result.metrics, example_tokens)
               | (trainer.evaluate() if validates else {}))
    results |= best_checkpoint_results(trainer.state)
    results |= {"train_examples": len(train_dataset), "valid_examples": len(eval_dataset) if validates else 0}

    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        trainer.save_state()
        write_json_atomically(results, os.path.join(output_dir, TRAIN_RESULTS_FILE))
        logger.info("Saved the adapter to %s (%s)%s", output_dir, kept_weights(results),
                    f"; validation loss {results['eval_loss']:.4f}" if validates else "")


if __name__ == "__main__":
    run(sft)
