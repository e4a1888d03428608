"""inference.py on a tiny random LLaMA: outputs, batching, and bad input from the command line."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, checkout_environment, make_record, write_records

from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from inference import inference
from trainer.audit import audit_command
from trainer.baselines import rules
from trainer.cli import check_flag_names
from trainer.data import parse_record
from trainer.errors import InputError
from dataprep.interaction_log import prepare_log
from trainer.evaluation import answer_and_score, score_answers
from dataprep.llara_layout import prepare
from trainer.modeling import load_model, load_model_for_evaluation, load_tokenizer
from trainer.outputs import check_output_dir, stage_json_list, write_json_atomically
from trainer.prompts import PromptBuilder, encode_answer, encode_prompt
from trainer.results import results


def test_inference_writes_metrics_and_predictions(tiny_model_dir, small_data_dir, tmp_path):
    output_dir = str(tmp_path / "eval")
    inference(test_file=f"{small_data_dir}/test.json", output_dir=output_dir, model_name=tiny_model_dir,
              max_samples=3, sample_seed=0, batch_size=2, max_new_tokens=4)
    with open(os.path.join(output_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert metrics["n"] == 3
    assert 0 <= metrics["hit_ratio_at_1"] <= metrics["valid_ratio"] <= 1
    with open(os.path.join(output_dir, "predictions.jsonl")) as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == 3
    assert set(rows[0]) == {"index", "candidates", "true_item", "answer", "matched_candidate", "valid", "hit",
                            "candidate_logps", "top_scored_candidate", "true_item_rank"}
    assert all(row["hit"] == (row["matched_candidate"] == row["true_item"]) for row in rows)
    ranks = [row["true_item_rank"] for row in rows]
    assert metrics["ranking_hit_ratio_at_1"] == sum(rank == 1 for rank in ranks) / 3
    assert metrics["ranking_mrr"] == pytest.approx(sum(1 / rank for rank in ranks) / 3)
    assert os.path.isfile(os.path.join(output_dir, "run_config.json"))


def test_candidate_scores_match_one_title_at_a_time(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir, padding_side="left")
    model = load_model(tiny_model_dir, dtype=torch.float32).eval()
    records = [parse_record(make_record(index, num_candidates=4 + 3 * index), "made-up", index) for index in range(3)]
    builder = PromptBuilder("music", template_index=0)
    prompts = [builder.build(record, index) for index, record in enumerate(records)]
    _, scores = answer_and_score(model, tokenizer, prompts, records, batch_size=2, max_new_tokens=0,
                                 score_candidates=True)
    for prompt, record, row in zip(prompts, records, scores):
        assert len(row) == len(record.candidates)
        prompt_ids = encode_prompt(tokenizer, prompt)
        for title, score in zip(record.candidates, row):
            input_ids = torch.tensor([prompt_ids + encode_answer(tokenizer, title)])
            with torch.no_grad():
                logps = model(input_ids=input_ids).logits[0, :-1].log_softmax(-1)
            expected = logps.gather(-1, input_ids[0, 1:, None])[len(prompt_ids) - 1 :].sum()
            assert score == pytest.approx(expected.item(), abs=1e-4)
    predictions, metrics = score_answers([0, 1, 2], records, ["", "", ""], scores)
    slow_top = [max(record.candidates, key=lambda title, row=row, record=record: row[record.candidates.index(title)])
                for record, row in zip(records, scores)]
    assert [row["top_scored_candidate"] for row in predictions] == slow_top
    assert metrics["ranking_hit_ratio_at_1"] == sum(top == record.target for top, record in zip(slow_top, records)) / 3


def test_batched_generation_matches_one_prompt_at_a_time(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir, padding_side="left")
    model = load_model(tiny_model_dir, dtype=torch.float32).eval()
    prompts = ["Short prompt. Answer:", "A much longer prompt with many more words in it. Answer:", "Mid one. Answer:"]
    records = [parse_record(make_record(index), "made-up", index) for index in range(3)]

    def answers(batch_size):
        return answer_and_score(model, tokenizer, prompts, records, batch_size, max_new_tokens=5,
                                score_candidates=False)[0]

    assert answers(3) == answers(1)


def test_generation_from_the_scoring_cache_matches_plain_generation(tiny_model_dir):
    """Scoring leaves the prompts' keys and values in a cache; greedy answers from it are unchanged."""
    tokenizer = load_tokenizer(tiny_model_dir, padding_side="left")
    # Large random weights make every next token depend on the whole context, so a cache holding
    # the wrong keys and values would change the answers.
    config = AutoConfig.from_pretrained(tiny_model_dir, initializer_range=1.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    records = [parse_record(make_record(index, num_candidates=4 + 3 * index), "made-up", index) for index in range(5)]
    prompts = [PromptBuilder("music", seed=0).build(record, index) for index, record in enumerate(records)]
    plain, _ = answer_and_score(model, tokenizer, prompts, records, batch_size=3, max_new_tokens=6,
                                score_candidates=False)
    from_cache, scores = answer_and_score(model, tokenizer, prompts, records, batch_size=3, max_new_tokens=6,
                                          score_candidates=True)
    _, scores_alone = answer_and_score(model, tokenizer, prompts, records, batch_size=3, max_new_tokens=0,
                                       score_candidates=True)
    assert from_cache == plain and any(answer for answer in plain)
    for row, row_alone in zip(scores, scores_alone):
        assert row == pytest.approx(row_alone, abs=1e-4)


def test_merged_adapter_answers_and_scores_as_the_unmerged_one(tiny_model_dir, tmp_path):
    """inference.py folds the adapter into the base weights: the same answers and scores, no LoRA left."""
    torch.manual_seed(0)
    adapter_dir = str(tmp_path / "adapter")
    # init_lora_weights=False draws B at random too, so the adapter changes what the model computes.
    peft_model = get_peft_model(load_model(tiny_model_dir, dtype=torch.float32),
                                LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                           init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(adapter_dir)
    tokenizer = load_tokenizer(tiny_model_dir, padding_side="left")
    records = [parse_record(make_record(index), "made-up", index) for index in range(4)]
    prompts = [PromptBuilder("music", seed=0).build(record, index) for index, record in enumerate(records)]

    def evaluate(adapter, merge_adapter):
        model = load_model_for_evaluation(tiny_model_dir, torch.float32, False, None, adapter, merge_adapter)
        return model, answer_and_score(model, tokenizer, prompts, records, batch_size=2, max_new_tokens=6,
                                       score_candidates=True)

    merged_model, (merged_answers, merged_scores) = evaluate(adapter_dir, merge_adapter=True)
    _, (lora_answers, lora_scores) = evaluate(adapter_dir, merge_adapter=False)
    _, (_, base_scores) = evaluate(None, merge_adapter=True)
    assert not any("lora" in name for name, _ in merged_model.named_parameters())
    assert merged_answers == lora_answers
    for merged_row, lora_row, base_row in zip(merged_scores, lora_scores, base_scores):
        assert merged_row == pytest.approx(lora_row, abs=1e-4)
        assert merged_row != pytest.approx(base_row, abs=1e-2)


def run_cli(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=checkout_environment(), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(
    "bad_record, message",
    [
        ({"trueSelection": "Nobody"}, "record 1: field 'trueSelection'"),
        ({"itemList": ["Same", "Same"], "trueSelection": "Same"}, "record 1: field 'itemList': duplicate candidate"),
    ],
)
def test_bad_test_file_fails_with_one_line_and_writes_nothing(tmp_path, tiny_model_dir, bad_record, message):
    test_file = write_records(tmp_path / "test.json", [make_record(0), make_record(1) | bad_record])
    output_dir = tmp_path / "eval"
    result = run_cli("inference.py", "--test_file", test_file, "--output_dir", str(output_dir),
                     "--model_name", tiny_model_dir)
    assert result.returncode == 2
    error_line = result.stderr.strip().splitlines()[-1]
    assert error_line == f"error: {test_file}: " + error_line.split(f"{test_file}: ", 1)[1]
    assert message in error_line
    assert not output_dir.exists()


def test_not_json_and_unknown_model_fail_cleanly(tmp_path, small_data_dir):
    (tmp_path / "broken.json").write_text("this is not json")
    result = run_cli("inference.py", "--test_file", str(tmp_path / "broken.json"), "--output_dir", str(tmp_path / "a"))
    assert result.returncode == 2 and "broken.json: not a JSON file" in result.stderr
    result = run_cli("inference.py", "--test_file", f"{small_data_dir}/test.json", "--output_dir",
                     str(tmp_path / "b"), "--model_name", str(tmp_path / "no-such-model"))
    assert result.returncode == 2 and "error: --model_name" in result.stderr and "folder not found" in result.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_output_dir_that_cannot_be_a_folder_is_refused_before_any_work(tmp_path):
    (tmp_path / "taken").write_text("a file")
    for output_dir, message in ((tmp_path / "taken", "a file, not a folder"),
                                (tmp_path / "taken" / "eval", f"{tmp_path / 'taken'} is a file, not a folder")):
        with pytest.raises(InputError, match=f"--output_dir {output_dir}: {message}"):
            check_output_dir(str(output_dir))
    check_output_dir(str(tmp_path / "new" / "eval"))
    assert not (tmp_path / "new").exists(), "checking creates nothing"


def test_sft_cli_rejects_a_bad_flag_value(tmp_path):
    result = run_cli("sft.py", "--batch_size", "four", "--output_dir", str(tmp_path / "s"))
    assert result.returncode == 2 and "error: --batch_size: expected int, got 'four'" in result.stderr
    assert not (tmp_path / "s").exists()


def test_a_mistyped_flag_is_refused_before_any_work(tmp_path):
    result = run_cli("inference.py", "--max_sample", "2", "--output_dir", str(tmp_path / "e"))
    assert result.returncode == 2
    assert "error: --max_sample: no such flag; did you mean --max_samples? (--help lists them)" in result.stderr
    assert not (tmp_path / "e").exists()


def test_check_flag_names_accepts_fire_spellings_and_names_the_wrong_one():
    def entry(learning_rate: float = 1.0, packed: bool = True):
        return learning_rate, packed

    check_flag_names(entry, ["--learning-rate", "2", "--learning_rate=3", "--nopacked", "value", "--help",
                             "--", "--verbose"])
    with pytest.raises(InputError, match="--learning_rat: no such flag; did you mean --learning_rate"):
        check_flag_names(entry, ["--packed", "--learning_rat", "1e-4"])
    with pytest.raises(InputError, match=r"--seed: no such flag \(--help lists them\)"):
        check_flag_names(entry, ["--seed=3"])


@pytest.mark.parametrize("command, old, new", [
    (inference, "seed", "sample_seed"), (rules, "training_seed", "seed"), (rules, "recency", "hint_recency"),
    (audit_command, "recency", "hint_recency"), (audit_command, "seed", "bootstrap_seed"),
    (results, "seed", "bootstrap_seed"), (prepare, "num_negatives", "negatives_per_list"),
    (prepare_log, "num_negatives", "negatives_per_list")])
def test_a_renamed_flag_is_refused_with_its_new_name(command, old, new):
    """One name per concept: --seed seeds training, --sample_seed the test sample, --bootstrap_seed the intervals."""
    with pytest.raises(InputError, match=f"^--{old} is now called --{new}$"):
        check_flag_names(command, [f"--{old}=3"])
    check_flag_names(command, [f"--{new}=3"])


def test_outputs_get_the_mode_of_any_new_file(tmp_path):
    previous = os.umask(0o022)
    try:
        write_json_atomically({"a": 1}, str(tmp_path / "out.json"))
        staged, _ = stage_json_list(["1"], str(tmp_path))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "out.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(staged).st_mode) == 0o644


def test_popularity_answers_the_candidate_most_often_true_in_training(tmp_path):
    train = [make_record(0), make_record(1)]
    train[0]["trueSelection"] = train[1]["trueSelection"] = "Band 9-3"
    for record in train:
        record["itemList"][3] = "Band 9-3"
    test = [make_record(5), make_record(6)]
    test[0]["itemList"][7] = "Band 9-3"  # the popular title is a candidate here, not the true item
    paths = write_records(tmp_path / "train.json", train), write_records(tmp_path / "test.json", test)
    rules(train_file=paths[0], test_file=paths[1], output_dir=str(tmp_path / "out"))
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["answer"] == "Band 9-3" and not rows[0]["hit"]
    # Without a popular candidate every count is 0: the first listed candidate is answered.
    assert rows[1]["answer"] == test[1]["itemList"][0] and rows[1]["valid"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["valid_ratio"] == 1.0
