"""Evaluate a model (optionally with a LoRA adapter) on a test file: HitRatio@1 and ValidRatio.

Writes metrics.json, predictions.jsonl and run_config.json to --output_dir and prints the metrics.
"""

import dataclasses
import json
import logging
import time

from accelerate import PartialState

from trainer.cli import run
from trainer.data import load_records, select_indices
from trainer.errors import InputError
from trainer.evaluation import (ANSWER_TOKENS, METRICS_FILE, PREDICTIONS_FILE, NonFiniteScores, answer_and_score_shared,
                                score_answers, write_evaluation)
from trainer.commands import OutputFlags, command, flag
from trainer.flags import EvaluationDataFlags, ModelFlags, PromptFlags, check_adapter_folder
from trainer.modeling import (BASE_FINGERPRINT_KEY, base_model_fingerprint, load_model_for_evaluation, load_tokenizer,
                              resolve_dtype, resolve_model_path)
from trainer.outputs import check_output_dir, start_run
from trainer.prompts import PromptBuilder, evaluation_template

logger = logging.getLogger("inference")


@dataclasses.dataclass
class InferenceFlags(ModelFlags, PromptFlags, EvaluationDataFlags, OutputFlags):
    output_dir: str = "output/eval"
    adapter: str | None = flag(
        None, "LoRA adapter folder to evaluate, its weights merged into the base model's (not in 4-bit); unset: "
              "the base model alone.")
    batch_size: int = flag(16, "Prompts generated (and their candidates scored) together.")
    max_new_tokens: int = flag(ANSWER_TOKENS, "Longest answer generated, in tokens.")
    score_candidates: bool = flag(
        True, "Also rank every prompt's candidates by the model's log-probability of answering with each (HR@1, "
              "HR@5, NDCG@5, NDCG@10, MRR); generation then reuses the prompt computation of the scoring pass.")

    def check(self) -> None:
        super().check()
        if self.max_new_tokens < 1:
            raise InputError(f"--max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.adapter:
            check_adapter_folder(self.adapter)


@command(InferenceFlags)
def inference(flags: InferenceFlags) -> None:
    """Generate one greedy answer per test prompt and score it against the candidates."""
    config = dataclasses.asdict(flags)
    records = load_records(flags.test_file)
    indices = select_indices(len(records), flags.max_samples, flags.sample_seed)
    records = [records[index] for index in indices]

    check_output_dir(flags.output_dir)
    if flags.adapter and (difference := flags.hint_difference(flags.adapter)):
        logger.warning("%s: set the same hint flags as in training", difference)
    dtype = resolve_dtype(flags.dtype)
    model_path = resolve_model_path(flags.model_name)
    tokenizer = load_tokenizer(model_path, padding_side="left")
    # Under accelerate launch each process loads the model on its own device.
    state = PartialState()
    model = load_model_for_evaluation(model_path, dtype, flags.load_in_4bit, {"": state.device}, flags.adapter)
    # LoRA leaves the embeddings alone, so the merged model's are the base model's.
    fingerprint = base_model_fingerprint(model)
    flags.check_adapter_base(flags.adapter, model_path, fingerprint)

    builder = PromptBuilder(flags.domain, tokenizer, flags.max_prompt_tokens,
                            template_index=evaluation_template(flags.template_index),
                            hints=flags.hints_for(flags.test_file), source=flags.test_file)
    prompts = [builder.build(record, index) for record, index in zip(records, indices)]

    if state.is_main_process:
        start_run(config | {"resolved_model_path": model_path, BASE_FINGERPRINT_KEY: fingerprint}, flags.output_dir,
                  METRICS_FILE, (PREDICTIONS_FILE,))
    logger.info("Evaluating %d prompts from %s on %s%s", len(prompts), flags.test_file, model_path,
                f" + {flags.adapter}" if flags.adapter else "")
    started = time.perf_counter()
    answers, candidate_scores = answer_and_score_shared(model, tokenizer, prompts, records, flags.batch_size,
                                                        flags.max_new_tokens, flags.score_candidates)
    if not state.is_main_process:
        return
    try:
        predictions, metrics = score_answers(indices, records, answers, candidate_scores)
    except NonFiniteScores as error:
        raise NonFiniteScores(f"{flags.test_file}: {error} (model {model_path}"
                              f"{', adapter ' + flags.adapter if flags.adapter else ''})") from None
    seconds = time.perf_counter() - started
    metrics["seconds"] = round(seconds, 1)
    metrics["prompts_per_second"] = round(len(prompts) / seconds, 3)

    write_evaluation(flags.output_dir, predictions, metrics)
    print(json.dumps(metrics))


if __name__ == "__main__":
    run(inference)
