"""Evaluate a model (optionally with a LoRA adapter) on a test file: HitRatio@1 and ValidRatio.

Writes metrics.json, predictions.jsonl and run_config.json to --output_dir and prints the metrics.
"""

import json
import logging
import time

from accelerate import PartialState

from trainer.cli import check_output_dir, run, start_run
from trainer.collaborative import load_hints
from trainer.data_interface import EVAL_TEMPLATE_INDEX, PromptBuilder, load_records, select_indices
from trainer.errors import InputError
from trainer.evaluation import METRICS_FILE, answer_and_score_shared, score_answers, write_evaluation
from trainer.modeling import (EMBEDDED_MODEL_NAME, load_model_for_evaluation, load_tokenizer, resolve_dtype,
                              resolve_model_path)

logger = logging.getLogger("inference")


def inference(
    test_file: str = "data/lastfm/test.json",
    output_dir: str = "output/eval",
    model_name: str = EMBEDDED_MODEL_NAME,
    adapter: str | None = None,
    resume_from_checkpoint: str | None = None,
    domain: str = "music",
    template_index: int = EVAL_TEMPLATE_INDEX,
    max_prompt_tokens: int = 512,
    hint_file: str | None = None,
    hint_size: int = 3,
    max_samples: int | None = None,
    sample_seed: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 20,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    score_candidates: bool = True,
):
    """Generate one greedy answer per test prompt and score it against the candidates.

    Args:
        test_file: JSON records to evaluate (see data/README.md).
        output_dir: Folder for metrics.json, predictions.jsonl and run_config.json.
        model_name: Base model: 'embedded-smollm2' (the bundled SmolLM2-135M-Instruct), a local folder or a hub id.
        adapter: LoRA adapter folder to apply to the base model, its weights merged into the base's (not in 4-bit); none evaluates the base model alone.
        resume_from_checkpoint: Same as --adapter (the name the S-DPO authors' scripts use).
        domain: Prompt wording: music, movie, book or game.
        template_index: Which of the domain's prompt templates to use (0-4); fixed for every prompt.
        max_prompt_tokens: Token budget of a prompt; longer prompts drop their oldest history titles.
        hint_file: Training records whose counts add a hint to every prompt: the candidates that other users with the same history titles chose next most often (trainer.collaborative); pass the same file when training and evaluating. Unset: the text-only prompts of the paper.
        hint_size: Most candidates a hint names.
        max_samples: Evaluate only this many records: the first ones, or a seeded sample with --sample_seed.
        sample_seed: With --max_samples, draw a fixed random sample with this seed instead of a prefix.
        batch_size: Prompts generated (and their candidates scored) together.
        max_new_tokens: Longest answer generated, in tokens.
        dtype: auto (bf16 on a capable GPU, else fp32), float32, bfloat16 or float16.
        load_in_4bit: Load the base model in 4-bit NF4 through bitsandbytes.
        score_candidates: Also rank every prompt's candidates by the model's log-probability of answering with each (HR@1, HR@5, NDCG@5, NDCG@10, MRR); generation then reuses the prompt computation of the scoring pass.
    """
    config = dict(locals())
    if adapter and resume_from_checkpoint and adapter != resume_from_checkpoint:
        raise InputError("--adapter and --resume_from_checkpoint name different folders; give one")
    adapter = adapter or resume_from_checkpoint
    if max_new_tokens < 1:
        raise InputError(f"--max_new_tokens must be at least 1, got {max_new_tokens}")

    records = load_records(test_file)
    indices = select_indices(len(records), max_samples, sample_seed)
    records = [records[index] for index in indices]

    check_output_dir(output_dir)
    dtype = resolve_dtype(dtype)
    model_path = resolve_model_path(model_name)
    tokenizer = load_tokenizer(model_path, padding_side="left")
    # Under accelerate launch each process loads the model on its own device.
    state = PartialState()
    model = load_model_for_evaluation(model_path, dtype, load_in_4bit, {"": state.device}, adapter)

    builder = PromptBuilder(domain, tokenizer, max_prompt_tokens, template_index=template_index,
                            hints=load_hints(hint_file, hint_size, test_file))
    prompts = [builder.build(record, index) for record, index in zip(records, indices)]

    if state.is_main_process:
        start_run(config | {"resolved_model_path": model_path, "resolved_adapter": adapter}, output_dir, METRICS_FILE)
    logger.info("Evaluating %d prompts from %s on %s%s", len(prompts), test_file, model_path,
                f" + {adapter}" if adapter else "")
    started = time.perf_counter()
    answers, candidate_scores = answer_and_score_shared(model, tokenizer, prompts, records, batch_size,
                                                        max_new_tokens, score_candidates)
    if not state.is_main_process:
        return
    predictions, metrics = score_answers(indices, records, answers, candidate_scores)
    seconds = time.perf_counter() - started
    metrics["seconds"] = round(seconds, 1)
    metrics["prompts_per_second"] = round(len(prompts) / seconds, 3)

    write_evaluation(output_dir, predictions, metrics)
    print(json.dumps(metrics))


if __name__ == "__main__":
    run(inference)
