"""trainer/results.py on a made-up run folder: the three files, the intervals, a missing stage."""

import json

import pytest

from trainer.errors import InputError
from trainer.results import bootstrap_interval, results


def write_stage(run_dir, stage, hits, trained: bool):
    eval_dir = run_dir / stage / "eval"
    eval_dir.mkdir(parents=True)
    rows = [{"index": index, "hit": hit, "valid": True} for index, hit in enumerate(hits)]
    (eval_dir / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (eval_dir / "metrics.json").write_text(json.dumps({"n": len(rows), "ranking_hit_ratio_at_1": 0.5,
                                                       "ranking_mrr": 0.6, "seconds": 12.0}))
    if trained:
        (run_dir / stage / "train_results.json").write_text(json.dumps({"train_examples": 8, "train_runtime": 3.21}))
        history = [{"step": step, "loss": 1.0 / step, "rewards/margins": 0.1 * step, "rewards/chosen": -0.01 * step}
                   for step in (1, 2)]
        (run_dir / stage / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": history}))


def test_bootstrap_interval_brackets_the_mean_and_repeats():
    flags = [True] * 30 + [False] * 70
    low, high = bootstrap_interval(flags, seed=0)
    assert low < 0.3 < high and high - low < 0.25
    assert bootstrap_interval(flags, seed=0) == [low, high]
    assert bootstrap_interval([True] * 10, seed=0) == [1.0, 1.0]


def test_results_writes_json_markdown_and_picture(tmp_path):
    write_stage(tmp_path, "base", [False] * 4, trained=False)
    write_stage(tmp_path, "softmax_dpo", [True, False, True, True], trained=True)
    results(run_dir=str(tmp_path), stages="base,softmax_dpo")
    rows = json.loads((tmp_path / "results.json").read_text())["stages"]
    assert [row["stage"] for row in rows] == ["base", "softmax_dpo"]
    assert rows[1]["hit_ratio_at_1"] == 0.75 and rows[1]["evaluated_prompts"] == 4
    assert rows[1]["train_steps"] == 2 and rows[1]["train_examples"] == 8 and "train_steps" not in rows[0]
    assert rows[0]["hit_ratio_at_1_ci95"] == [0.0, 0.0]
    table = (tmp_path / "results.md").read_text()
    assert "| softmax_dpo | 0.750 [" in table
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")


def test_a_stage_without_its_evaluation_is_named(tmp_path):
    write_stage(tmp_path, "base", [False], trained=False)
    with pytest.raises(InputError, match=r"sft/eval/metrics\.json: missing"):
        results(run_dir=str(tmp_path), stages="base,sft")
