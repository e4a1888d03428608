"""The preference stage shared by softmax_dpo.py and dpo.py: S-DPO, DPO or DMPO from an SFT adapter.

Each training example is a prompt, its true title as the chosen answer and `neg_num` other
candidates as rejected answers: drawn without replacement from a generator seeded by the run seed
and the example index (`--negatives random`, the paper's), or, with hints, the other candidates that
the training counts rank highest (`--negatives hard`). Writes the trained adapter, the tokenizer,
run_config.json and the training log (trainer_state.json with the per-step rewards and chosen
log-probs, train_results.json).
"""

import logging
import os
from collections.abc import Mapping

from datasets import Dataset
from peft import PeftModel
from transformers import set_seed
from transformers.trainer import TRAINER_STATE_NAME

from trainer.cli import check_output_dir, is_main_process, start_run, write_json_atomically
from trainer.collaborative import load_hints
from trainer.data_interface import (
    EVAL_TEMPLATE_INDEX,
    PromptBuilder,
    Record,
    load_records,
    preference_example,
    select_indices,
)
from trainer.errors import InputError
from trainer.losses import LOSS_TYPES
from trainer.modeling import (
    EMBEDDED_MODEL_NAME,
    LLAMA_PROJECTIONS,
    check_attn_implementation,
    is_adapter_folder,
    load_model_for_training,
    load_tokenizer,
    lora_config,
    resolve_dtype,
    resolve_model_path,
)
from trainer.negatives import NEGATIVE_SAMPLING, rejected_titles, starting_model_scores
from trainer.preference_trainer import (LENGTH_COLUMN, REFERENCE_ADAPTER_NAME, MultiNegativeDPOConfig,
                                        MultiNegativeDPOTrainer)
from trainer.rules import target_counts
from trainer.training import (TRAIN_RESULTS_FILE, LearningCurveCallback, batch_layout, best_checkpoint_results,
                              checkpoint_to_resume, kept_weights, token_throughput, trainer_arguments)

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
                       scores: list[list[float]] | None = None) -> Dataset:
    """Tokenized (prompt_ids, completion_ids) preference examples: the true title, then `neg_num`
    rejected ones chosen by `negatives` (trainer.negatives; `scores`, per example, for "hard")."""
    rows = []
    for position, (index, record) in enumerate(examples):
        rejected = rejected_titles(record, index, negatives, neg_num, seed, builder.hints, popularity,
                                   scores[position] if scores is not None else None)
        rows.append(preference_example(tokenizer, builder.build(record, index), record.target, rejected))
    return Dataset.from_list(rows)


def check_start_adapter(path: str, flag: str, output_dir: str) -> None:
    """Refuse, before any work, an adapter to start from that this stage would misread or overwrite.

    A checkpoint of a preference run (a Trainer checkpoint holding DPOTrainer's frozen "ref" copy)
    is not an adapter to start from: taken as one, the run would start at step 0 with that
    checkpoint as its reference. A preference run continues from its own checkpoints when its
    command is run again (trainer.training.checkpoint_to_resume).
    """
    if not is_adapter_folder(path):
        raise InputError(f"{flag} {path!r}: not a LoRA adapter folder (no adapter_config.json); sft.py writes one")
    continue_instead = ("to continue a killed run, run its command again unchanged: it resumes from the last "
                        "checkpoint in its --output_dir")
    output_folder = os.path.abspath(output_dir)
    if os.path.commonpath([os.path.abspath(path), output_folder]) == output_folder:
        raise InputError(f"{flag} {path!r} lies in --output_dir {output_dir!r}, which this run overwrites; "
                         f"{continue_instead}")
    is_trainer_checkpoint = os.path.isfile(os.path.join(path, TRAINER_STATE_NAME))
    if is_trainer_checkpoint and is_adapter_folder(os.path.join(path, REFERENCE_ADAPTER_NAME)):
        raise InputError(f"{flag} {path!r}: a checkpoint of a preference run, not an adapter to start from; "
                         f"{continue_instead}")


def train_preference(
    train_file: str = "data/lastfm/train.json",
    valid_file: str = "data/lastfm/valid.json",
    output_dir: str = "output/softmax_dpo",
    model_name: str = EMBEDDED_MODEL_NAME,
    sft_adapter: str | None = None,
    resume_from_checkpoint: str | None = None,
    loss_type: str = "sdpo",
    neg_num: int = 3,
    negatives: str = "random",
    beta: float = 1.0,
    domain: str = "music",
    template_index: int | None = None,
    max_prompt_tokens: int = 512,
    hint_file: str | None = None,
    hint_size: int = 3,
    max_train_samples: int | None = None,
    max_valid_samples: int | None = 500,
    seed: int = 42,
    num_train_epochs: float = 3.0,
    max_steps: int = -1,
    batch_size: int = 4,
    gradient_accumulation_steps: int = 8,
    learning_rate: float = 1e-5,
    lr_scheduler_type: str = "cosine",
    warmup_ratio: float = 0.05,
    weight_decay: float = 0.0,
    max_grad_norm: float = 0.3,
    lora_r: int = 8,
    lora_alpha: int = 32,
    lora_dropout: float = 0.1,
    lora_target_modules: str | tuple[str, ...] = ",".join(LLAMA_PROJECTIONS),
    load_in_4bit: bool = False,
    dtype: str = "auto",
    gradient_checkpointing: bool = False,
    packed_forward: bool = True,
    attn_implementation: str = "sdpa",
    precompute_ref_log_probs: bool = True,
    logging_steps: int = 1,
    eval_steps: float = 0,
    save_steps: float = 0,
    select_best: bool = False,
):
    """Preference-train a LoRA adapter: S-DPO (default), DPO or DMPO, one true title against --neg_num others.

    Args:
        train_file: JSON training records (see data/README.md).
        valid_file: JSON validation records; their preference loss and reward accuracy are reported.
        output_dir: Folder for the adapter, tokenizer, run_config.json and training logs.
        model_name: Base model: 'embedded-smollm2' (the bundled SmolLM2-135M-Instruct), a local folder or a hub id.
        sft_adapter: LoRA adapter folder from sft.py to start from; it also serves, frozen, as the reference policy. Without one a fresh adapter is trained against the base model.
        resume_from_checkpoint: The S-DPO authors' name for --sft_adapter (not a checkpoint of a preference run: a killed run continues from its last checkpoint when its command is run again).
        loss_type: sdpo (softmax DPO), dpo (pairwise DPO, averaged over the negatives) or dmpo.
        neg_num: Rejected titles per prompt (k), drawn from the other candidates, seeded by --seed and the example index.
        negatives: random (drawn uniformly from the other candidates, the paper's), popular (drawn in proportion to 1 + how often each was the true item of a training record), hinted (needs --hint_file: the k other candidates that the training counts rank highest, the ones a model following the hint would name wrongly) or hard (the k other candidates the SFT adapter scores highest, scored once before training and cached in its folder).
        beta: Inverse temperature of the implicit reward beta * log(pi / pi_ref).
        domain: Prompt wording: music, movie, book or game.
        template_index: Use this one template (0-4) for every training prompt; by default each example draws one, seeded by --seed and its index.
        max_prompt_tokens: Token budget of a prompt; longer prompts drop their oldest history titles.
        hint_file: Training records whose counts add a hint to every prompt: the candidates that other users with the same history titles chose next most often (trainer.collaborative); pass the same file when training and evaluating. Unset: the text-only prompts of the paper.
        hint_size: Most candidates a hint names.
        max_train_samples: Train on a seeded random sample of this many records (all when unset).
        max_valid_samples: Evaluate on a seeded random sample of this many validation records (all when unset; 0 skips evaluation).
        seed: Seeds the samples, the negatives, the templates, LoRA initialisation and the data order.
        num_train_epochs: Passes over the training sample (ignored when --max_steps is positive).
        max_steps: Stop after this many optimizer steps (-1: run the epochs).
        batch_size: Prompts per device per forward pass (each brings 1 + neg_num sequences).
        gradient_accumulation_steps: Forward passes per optimizer step.
        learning_rate: Peak learning rate of AdamW.
        lr_scheduler_type: Learning rate schedule after warm-up (a transformers scheduler name).
        warmup_ratio: Fraction of the steps spent warming the learning rate up from 0.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping norm.
        lora_r: LoRA rank of a fresh adapter (an SFT adapter keeps its own settings).
        lora_alpha: LoRA scaling numerator of a fresh adapter.
        lora_dropout: Dropout on the LoRA input of a fresh adapter (dropout is turned off while training preferences).
        lora_target_modules: Comma-separated module names that get a fresh adapter.
        load_in_4bit: QLoRA: load the base model in 4-bit NF4 through bitsandbytes.
        dtype: auto (bf16 on a capable GPU, else fp32), float32, bfloat16 or float16; bf16 also turns on bf16 autocast.
        gradient_checkpointing: Recompute activations in the backward pass to save memory (slower).
        packed_forward: Compute each prompt once for all its 1 + neg_num titles; False scores 1 + neg_num padded sequences per prompt (the plain way, slower).
        attn_implementation: Attention kernel: sdpa (PyTorch's scaled-dot-product attention; the packed layout passes it a [B, 1, S, S] mask) or flex_attention (a block mask computed from each token's segment, no dense mask, blocks nobody attends to skipped; GPU only, as it has no backward on a CPU).
        precompute_ref_log_probs: Compute the reference log-probs of every example once before training (and evaluation) instead of in each step: the same numbers, one forward less per step (a third of a step, bench/README.md), paid once instead of once per epoch and per evaluation. False computes them in each step.
        logging_steps: Log loss, rewards, reward accuracy and chosen log-prob every this many optimizer steps.
        eval_steps: Evaluate every this many optimizer steps, or, below 1, every this fraction of the run, as well as at the end (0: only at the end).
        save_steps: Save a checkpoint every this many optimizer steps, or, below 1, every this fraction of the run (0: only the final adapter); a run killed and started again with the same flags continues from the last one.
        select_best: Keep the adapter of the evaluation with the lowest validation preference loss instead of the last weights (the S-DPO authors' choice); needs --eval_steps, and saves a checkpoint at every evaluation.
    """
    config = dict(locals())
    if sft_adapter and resume_from_checkpoint and sft_adapter != resume_from_checkpoint:
        raise InputError("--sft_adapter and --resume_from_checkpoint name the same thing; give one of them")
    start_adapter = sft_adapter or resume_from_checkpoint
    if start_adapter:
        check_start_adapter(start_adapter, "--sft_adapter" if sft_adapter else "--resume_from_checkpoint", output_dir)
    if loss_type not in LOSS_TYPES:
        raise InputError(f"--loss_type: expected one of {list(LOSS_TYPES)}, got {loss_type!r}")
    if neg_num < 1:
        raise InputError(f"--neg_num must be at least 1, got {neg_num}")
    if not beta > 0:
        # beta 0 gives every loss a zero gradient, a negative beta pushes the chosen title down.
        raise InputError(f"--beta must be above 0, got {beta}")
    if negatives not in NEGATIVE_SAMPLING:
        raise InputError(f"--negatives: expected one of {list(NEGATIVE_SAMPLING)}, got {negatives!r}")
    if negatives == "hinted" and not hint_file:
        raise InputError("--negatives hinted ranks the candidates by the counts of --hint_file; give one")
    if max_valid_samples is not None and max_valid_samples < 0:
        raise InputError(f"--max_valid_samples must be 0 or more, got {max_valid_samples}")
    check_attn_implementation(attn_implementation)
    check_output_dir(output_dir)
    torch_dtype = resolve_dtype(dtype)
    training_arguments = trainer_arguments(config, torch_dtype, evaluates_during_training=max_valid_samples != 0)
    model_path = resolve_model_path(model_name)
    tokenizer = load_tokenizer(model_path, padding_side="left")

    # Read and check the records before anything is loaded or written.
    splits = [(sample_records(train_file, max_train_samples, seed, neg_num),
               PromptBuilder(domain, tokenizer, max_prompt_tokens, seed=seed, template_index=template_index,
                             hints=load_hints(hint_file, hint_size, train_file)))]
    if max_valid_samples != 0:
        splits.append((sample_records(valid_file, max_valid_samples, seed, neg_num),
                       PromptBuilder(domain, tokenizer, max_prompt_tokens, template_index=EVAL_TEMPLATE_INDEX,
                                     hints=load_hints(hint_file, hint_size, valid_file))))
    popularity = target_counts(train_file) if negatives == "popular" else None

    model = load_model_for_training(model_path, torch_dtype, load_in_4bit, gradient_checkpointing,
                                    attn_implementation)
    # A fresh adapter's random weights come from --seed, so a run repeats in any process.
    set_seed(seed)
    peft_config = None
    if start_adapter:
        model = PeftModel.from_pretrained(model, start_adapter, is_trainable=True)
    else:
        logger.warning("No --sft_adapter: training a fresh adapter against the base model")
        peft_config = lora_config(lora_r, lora_alpha, lora_dropout, lora_target_modules)

    datasets = []
    for examples, builder in splits:
        scores = None
        if negatives == "hard":  # the starting model's own scores of every candidate
            scores = starting_model_scores(model, tokenizer, [builder.build(record, index) for index, record in examples],
                                           [record for _, record in examples], batch_size, start_adapter)
        datasets.append(preference_dataset(examples, seed, builder, tokenizer, neg_num, negatives, popularity, scores))
    train_dataset, eval_dataset = datasets[0], datasets[1] if len(datasets) > 1 else None
    logger.info("%s with %d %s negatives on %d training prompts (%s)%s", loss_type, neg_num, negatives,
                len(train_dataset), train_file, f", evaluated on {len(eval_dataset)} ({valid_file})" if eval_dataset else "")

    args = MultiNegativeDPOConfig(
        **training_arguments,
        preference_loss=loss_type,
        neg_num=neg_num,
        packed_forward=packed_forward,
        precompute_ref_log_probs=precompute_ref_log_probs,
        beta=beta,
        gradient_checkpointing=gradient_checkpointing,
    )
    trainer = MultiNegativeDPOTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[LearningCurveCallback()],
    )
    if is_main_process():
        trainer.model.print_trainable_parameters()
    resolved_config = (config | {"resolved_model_path": model_path, "resolved_sft_adapter": start_adapter}
                       | batch_layout(config))
    # Rerun after a kill: continue from the last checkpoint the same flags wrote.
    checkpoint = checkpoint_to_resume(output_dir, resolved_config)
    if is_main_process():
        if checkpoint:
            logger.info("Continuing from %s", checkpoint)
        start_run(resolved_config, output_dir, TRAIN_RESULTS_FILE)
    metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics
    results = (dict(metrics) | token_throughput(metrics, trainer.train_dataset[LENGTH_COLUMN])
               | best_checkpoint_results(trainer.state))
    if eval_dataset is not None:
        results |= trainer.evaluate()
    results |= {"train_examples": len(train_dataset), "valid_examples": len(eval_dataset or [])}

    if trainer.is_world_process_zero():
        # Only the trained adapter is saved; the frozen "ref" copy is the SFT adapter, already on disk.
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(output_dir, selected_adapters=["default"])
        tokenizer.save_pretrained(output_dir)
        trainer.save_state()
        write_json_atomically(results, os.path.join(output_dir, TRAIN_RESULTS_FILE))
        logger.info("Saved the adapter to %s (%s)", output_dir, kept_weights(results))
