"""trainer/results.py on a made-up run folder: the three files, the intervals, a missing stage."""

import collections
import importlib.util
import json
import os
import shutil

import matplotlib.pyplot as plt
import numpy as np
import pytest

from trainer import results as results_module
from tests.conftest import REPO_ROOT
from tests.test_audit import synthetic_folder
from trainer.audit import audit, markdown_table, write_audit
from trainer.collaborative import popularity_rank
from trainer.errors import InputError
from trainer.metrics import wilson_interval
from trainer.metrics import paired_bootstrap_interval
from trainer.results import curves, results


def write_stage(run_dir, stage, hits, trained: bool, ranked: bool = True, ranks=None, first_index: int = 0,
                answers=None):
    """A stage's evaluation; `answers` are the named candidates (by default the true item "T" on a hit, "W" on
    a miss)."""
    eval_dir = run_dir / stage / "eval"
    eval_dir.mkdir(parents=True)
    answers = answers or ["T" if hit else "W" for hit in hits]
    rows = [{"index": first_index + index, "hit": hit, "valid": answer is not None, "matched_candidate": answer}
            for index, (hit, answer) in enumerate(zip(hits, answers))]
    for row, rank in zip(rows, ranks or []):
        row["true_item_rank"] = rank
    (eval_dir / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    ranking = {"ranking_hit_ratio_at_1": 0.5, "ranking_mrr": 0.6} if ranked else {}
    (eval_dir / "metrics.json").write_text(json.dumps({"n": len(rows), "seconds": 12.0} | ranking))
    if trained:
        (run_dir / stage / "train_results.json").write_text(json.dumps({"train_examples": 8, "train_runtime": 3.21}))
        history = [{"step": step, "loss": 1.0 / step, "rewards/margins": 0.1 * step, "examples_seen": 4 * step,
                    "elapsed_seconds": 1.5 * step} for step in (1, 2)]
        (run_dir / stage / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": history}))


def test_a_stages_intervals_are_the_wilson_intervals_metrics_json_holds(tmp_path):
    write_stage(tmp_path, "sft", [True] * 3 + [False] * 7, trained=True)
    results(run_dir=str(tmp_path), stages="sft")
    row = json.loads((tmp_path / "results.json").read_text())["stages"][0]
    # Wilson, 3 of 10, z = 1.96: centre (0.3 + 0.19208) / 1.38415 = 0.35551, half-width
    # 1.96 * sqrt(0.021 + 0.009604) / 1.38415 = 0.24772.
    assert row["hit_ratio_at_1_ci95"] == pytest.approx([0.10779, 0.60323], abs=1e-5)
    assert row["valid_ratio_ci95"] == pytest.approx([0.72247, 1.0], abs=1e-5)
    assert "| sft | 0.300 [0.108, 0.603] |" in (tmp_path / "results.md").read_text()


def test_paired_bootstrap_interval_by_hand():
    # The same difference on every prompt: every resample has that mean.
    assert paired_bootstrap_interval([True] * 6, [False] * 6, seed=0) == [1.0, 1.0]
    # Agreement on every prompt cancels however the rows vary, where unpaired intervals stay wide.
    varied = [True, False] * 20
    assert paired_bootstrap_interval(varied, varied, seed=0) == [0.0, 0.0]
    low, high = wilson_interval(sum(varied), len(varied))
    assert high - low > 0.2
    # Two prompts with differences 1 and 0: a resample's mean is 0 (p 1/4), 0.5 (1/2) or 1 (1/4), so
    # 1000 resamples put the 2.5% point at 0 and the 97.5% point at 1.
    assert paired_bootstrap_interval([True, True], [False, True], seed=0) == [0.0, 1.0]
    # Differences -1, 0, 0, 0 and +1 twice: mean (2 - 1) / 6, inside the interval.
    low, high = paired_bootstrap_interval([False, True, True, False, True, True], [True, True, True, False, False, False], 0)
    assert low < 1 / 6 < high and low >= -1 and high <= 1
    with pytest.raises(ValueError, match="differ in number"):
        paired_bootstrap_interval([True], [True, False], seed=0)


def test_paired_bootstrap_interval_equals_its_definition_one_resample_at_a_time():
    """Resample r draws n row indices from the seeded generator, in turn; the interval is the 2.5% point and the
    97.5% point of the sorted `samples` means, also for a count of resamples that the chunks do not divide
    (breaks caught: one chunk too many or one resample too few, either end's index moved by one)."""
    generator = np.random.default_rng(11)
    first, second = generator.random(60).round(2), generator.random(60).round(2)
    differences = first - second
    for samples in (75, 1000):
        draws = np.random.default_rng(3)
        means = sorted(float(differences[draws.integers(0, 60, size=60)].mean()) for _ in range(samples))
        expected = [means[int(0.025 * samples)], means[int(0.975 * samples) - 1]]
        assert paired_bootstrap_interval(first.tolist(), second.tolist(), 3, samples=samples) == expected


def test_paired_bootstrap_interval_is_95_percent_and_takes_fractions():
    """Differences of +1 and -1 on 200 prompts each: mean 0, standard deviation 1, so the 95% interval of the
    mean is about +-1.96 / 20 = +-0.098 (an 80% interval would be +-0.064, a 99% one +-0.129)."""
    first = [True] * 200 + [False] * 200
    low, high = paired_bootstrap_interval(first, first[::-1], seed=0)
    assert -0.110 < low < -0.088 and 0.088 < high < 0.110
    # Expected hits (fractions): the same differences of +-0.5 halve the interval.
    halves = [0.5] * 200 + [0.0] * 200
    assert paired_bootstrap_interval(halves, halves[::-1], seed=0) == pytest.approx([low / 2, high / 2])


def test_results_compare_stages_in_pairs_on_the_same_prompts(tmp_path):
    write_stage(tmp_path, "base", [False] * 4, trained=False, ranks=[3, 2, 5, 1])
    write_stage(tmp_path, "sft", [True, True, False, True], trained=True, ranks=[1, 1, 1, 1])
    write_stage(tmp_path, "dpo", [True, True, False, True], trained=True, ranks=[1, 2, 1, 1])
    results(run_dir=str(tmp_path), stages="base,sft,dpo")
    comparisons = json.loads((tmp_path / "results.json").read_text())["paired_differences"]
    assert [comparison["stages"] for comparison in comparisons] == [["sft", "base"], ["dpo", "sft"]]
    assert comparisons[0]["hit_ratio_at_1_difference"] == 0.75
    assert comparisons[0]["ranking_hit_ratio_at_1_difference"] == 0.75
    assert comparisons[1]["hit_ratio_at_1_difference_ci95"] == [0.0, 0.0]
    assert comparisons[1]["ranking_hit_ratio_at_1_difference"] == -0.25
    table = (tmp_path / "results.md").read_text()
    assert "| dpo - sft | +0.000 [+0.000, +0.000] | -0.250 [" in table
    results(run_dir=str(tmp_path), stages="base,sft,dpo", pairs="dpo:base")
    comparisons = json.loads((tmp_path / "results.json").read_text())["paired_differences"]
    assert [comparison["stages"] for comparison in comparisons] == [["dpo", "base"]]
    with pytest.raises(InputError, match="--pairs: 'dpo:dmpo'"):
        results(run_dir=str(tmp_path), stages="base,sft,dpo", pairs="dpo:dmpo")


def test_a_paired_comparison_counts_same_answers_and_who_alone_is_right(tmp_path):
    """By hand: prompts 1-2 both right (same answer T), 3 only the first right, 4 only the second, 5 both wrong
    with different answers, 6 both invalid (no answer is not the same answer): same 2 of 6, 1 and 1 alone."""
    write_stage(tmp_path, "rule", [True, True, False, True, False, False], trained=False,
                answers=["T", "T", "A", "T", "B", None])
    write_stage(tmp_path, "model", [True, True, True, False, False, False], trained=False,
                answers=["T", "T", "T", "C", "D", None])
    results(run_dir=str(tmp_path), stages="rule,model", pairs="model:rule")
    comparison = json.loads((tmp_path / "results.json").read_text())["paired_differences"][0]
    assert comparison["same_answer"] == pytest.approx(2 / 6)
    assert (comparison["only_first_right"], comparison["only_second_right"]) == (1, 1)
    assert "| model - rule | +0.000 [" in (tmp_path / "results.md").read_text()
    assert "| 0.333 | 1 | 1 |" in (tmp_path / "results.md").read_text()


def test_a_pair_evaluated_on_different_prompts_is_refused(tmp_path):
    write_stage(tmp_path, "sft", [True, False], trained=True)
    write_stage(tmp_path, "dpo", [True, False], trained=True, first_index=5)
    with pytest.raises(InputError, match="not evaluated on the same prompts"):
        results(run_dir=str(tmp_path), stages="sft,dpo")


def test_results_writes_json_markdown_and_picture(tmp_path):
    write_stage(tmp_path, "base", [False] * 4, trained=False)
    write_stage(tmp_path, "softmax_dpo", [True, False, True, True], trained=True)
    results(run_dir=str(tmp_path), stages="base,softmax_dpo")
    rows = json.loads((tmp_path / "results.json").read_text())["stages"]
    assert [row["stage"] for row in rows] == ["base", "softmax_dpo"]
    assert rows[1]["hit_ratio_at_1"] == 0.75 and rows[1]["evaluated_prompts"] == 4
    assert rows[1]["train_steps"] == 2 and rows[1]["train_examples"] == 8 and "train_steps" not in rows[0]
    assert rows[0]["hit_ratio_at_1_ci95"] == [0.0, pytest.approx(3.8415 / 7.8415, abs=1e-4)]  # Wilson at 0 of 4
    table = (tmp_path / "results.md").read_text()
    assert "| softmax_dpo | 0.750 [" in table
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")


def test_results_without_candidate_scoring_leave_the_ranking_out(tmp_path):
    write_stage(tmp_path, "base", [False, True], trained=False, ranked=False)
    write_stage(tmp_path, "sft", [True, True], trained=True, ranked=False)
    results(run_dir=str(tmp_path), stages="base,sft")
    rows = json.loads((tmp_path / "results.json").read_text())["stages"]
    assert not any(name.startswith("ranking_") for row in rows for name in row)
    # Wilson at 2 of 2: [1 - 3.8415 / 5.8415, 1] = [0.342, 1].
    assert "| sft | 1.000 [0.342, 1.000] | 1.000 [0.342, 1.000] |  |  | 2 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")


def test_popularity_rank_shares_places_among_ties():
    counts = collections.Counter({"A": 3, "B": 1, "C": 1})
    ranks = [popularity_rank(title, "ABCD", counts) for title in "ABCD"]
    assert ranks == [1, 2.5, 2.5, 4]
    assert sum(ranks) / 4 == (4 + 1) / 2, "a random pick averages the middle place"


def test_results_rank_the_answers_by_training_popularity(tmp_path):
    train = [{"historyList": "X", "itemList": ["A", "B", "C", "D"], "trueSelection": title} for title in "AAABC"]
    train_file = tmp_path / "train.json"
    train_file.write_text(json.dumps(train))
    eval_dir = tmp_path / "run" / "sft" / "eval"
    eval_dir.mkdir(parents=True)
    predictions = [  # named A (place 1), named D (place 4), named nothing; true items B and C (2.5 each) and A
        {"candidates": list("ABCD"), "true_item": "B", "matched_candidate": "A", "valid": True, "hit": False},
        {"candidates": list("ABCD"), "true_item": "C", "matched_candidate": "D", "valid": True, "hit": False},
        {"candidates": list("ABCD"), "true_item": "A", "matched_candidate": None, "valid": False, "hit": False},
    ]
    (eval_dir / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in predictions))
    (eval_dir / "metrics.json").write_text(json.dumps({"n": 3, "seconds": 1.0}))
    results(run_dir=str(tmp_path / "run"), stages="sft", train_file=str(train_file))
    row = json.loads((tmp_path / "run" / "results.json").read_text())["stages"][0]
    assert row["answer_popularity_rank"] == 2.5 and row["true_item_popularity_rank"] == 2.0
    assert row["random_pick_popularity_rank"] == 2.5
    # Catalogue A, B, C, D, X (5 titles; counts 3, 1, 1, 0, 0): its most popular tenth is A alone (place
    # ceil(0.5) = 1); the valid answers A and D are 2 different items of 2, one of them A.
    assert (row["distinct_answers"], row["div_ratio"], row["or_ratio"]) == (2, 1.0, 1.0)
    assert (row["popular_answer_share"], row["catalogue_coverage"]) == (0.5, 2 / 5)
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| sft | 2 | 1.000 | 1.000 | 2.50 | 0.500 | 0.4000 |" in table and "the true items average 2.0" in table


def test_a_stage_without_its_evaluation_is_named(tmp_path):
    write_stage(tmp_path, "base", [False], trained=False)
    with pytest.raises(InputError, match=r"sft/eval/metrics\.json: missing"):
        results(run_dir=str(tmp_path), stages="base,sft")


def test_training_curves_against_examples_and_seconds(tmp_path):
    write_stage(tmp_path, "dpo", [True], trained=True)
    assert curves(str(tmp_path), "dpo") == {"examples_seen": [4, 8], "elapsed_seconds": [1.5, 3.0],
                                            "loss": [1.0, 0.5], "rewards/margins": [0.1, 0.2]}
    # SFT logs no rewards; the final summary and evaluation entries carry no "loss" and are left out.
    history = [{"step": 1, "loss": 2.0, "examples_seen": 4, "elapsed_seconds": 2.0},
               {"step": 1, "train_loss": 2.0, "examples_seen": 4, "elapsed_seconds": 2.1},
               {"step": 1, "eval_loss": 1.9, "examples_seen": 4, "elapsed_seconds": 3.0}]
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert curves(str(tmp_path), "sft") == {"examples_seen": [4], "elapsed_seconds": [2.0], "loss": [2.0]}
    # A log written before examples and seconds were logged, and an untrained stage: no curve.
    (tmp_path / "sft" / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 1, "loss": 2.0}]}))
    assert curves(str(tmp_path), "sft") is None
    assert curves(str(tmp_path), "base") is None


def test_a_stage_keeps_its_colour_in_every_curve_panel(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(results_module.plt, "close", figures.append)
    curves_by_stage = {"sft": {"examples_seen": [4, 8], "elapsed_seconds": [1, 2], "loss": [1.0, 0.5]},
                       "dpo": {"examples_seen": [4, 8], "elapsed_seconds": [1, 2], "loss": [0.7, 0.6],
                               "rewards/margins": [0.1, 0.2]}}
    results_module.draw([{"stage": "sft", "hit_ratio_at_1": 0.5, "hit_ratio_at_1_ci95": [0.4, 0.6],
                          "valid_ratio": 1.0, "valid_ratio_ci95": [0.9, 1.0]}], curves_by_stage, str(tmp_path / "r.png"))
    loss_axis, margin_axis = figures[0].axes[3], figures[0].axes[5]
    colours = {line.get_label(): line.get_color() for line in loss_axis.get_lines()}
    assert colours["sft"] != colours["dpo"]
    assert [(line.get_label(), line.get_color()) for line in margin_axis.get_lines()] == [("dpo", colours["dpo"])]
    plt.close("all")


def test_results_end_with_the_data_audit(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    report = audit(synthetic_folder(data, "candidate_list"))
    write_audit(report, str(tmp_path / "audit"))
    write_stage(tmp_path, "sft", [True, False], trained=False)
    results(run_dir=str(tmp_path), stages="sft", audit_file=str(tmp_path / "audit" / "audit.json"))
    table = (tmp_path / "results.md").read_text()
    assert table.index("| sft |") < table.index(f"Leak audit of {data}") < table.index("LEAK candidate_list")
    assert markdown_table(report) in table
    summary = json.loads((tmp_path / "results.json").read_text())
    assert [leak["name"] for leak in summary["audit"]["leaks"]] == ["candidate_list", "candidate_list"]


def test_loss_comparison_pools_each_arms_seeds_per_prompt(tmp_path):
    """scripts/studies/loss_comparison.py on a made-up study: S-DPO's two seeds hit prompts (1, 0, 0, 0) and
    (1, 1, 0, 0), so per prompt (1, 0.5, 0, 0); listwise's (1, 1, 1, 0) and (1, 1, 0, 0) give (1, 1, 0.5, 0).
    The pooled difference is (0 + 0.5 + 0.5 + 0) / 4 = 0.25, not a difference of one seed's runs; each seed's
    HR@1 and the seeds' mean are listed."""
    spec = importlib.util.spec_from_file_location("loss_comparison", os.path.join(REPO_ROOT, "scripts", "studies",
                                                                                  "loss_comparison.py"))
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    setting = tmp_path / "hintsTrue"
    write_stage(setting, "sft", [True, False, False, False], trained=True, ranks=[1, 2, 2, 2])
    for stage, hits in {"sdpo-s42": [True, False, False, False], "sdpo-s7": [True, True, False, False],
                        "listwise-s42": [True, True, True, False], "listwise-s7": [True, True, False, False]}.items():
        write_stage(setting, stage, hits, trained=True, ranks=[1 if hit else 3 for hit in hits])
    study.tables(output_dir=str(tmp_path))
    # A run not evaluated yet (its evaluation folder but no metrics) is left out and named.
    (setting / "dpo-s42" / "eval").mkdir(parents=True)
    study.tables(output_dir=str(tmp_path))
    report = json.loads((tmp_path / "comparison.json").read_text())["hintsTrue"]
    rows = report["variants"]
    assert list(rows) == ["sft", "sdpo", "listwise"] and report["unfinished"] == ["dpo-s42"]
    assert "Not evaluated yet, left out: dpo-s42." in (tmp_path / "comparison.md").read_text()
    assert rows["listwise"]["seeds"] == {"7": 0.5, "42": 0.75} and rows["listwise"]["hit_ratio_at_1"] == 0.625
    difference, (low, high) = rows["listwise"]["HR@1 - sdpo"]
    assert difference == 0.25 and low <= 0.25 <= high
    assert rows["sdpo"]["HR@1 - sdpo"] == [0.0, [0.0, 0.0]]
    assert "| listwise | 7: 0.500, 42: 0.750 | 0.625 |" in (tmp_path / "comparison.md").read_text()
    # Each shared seed's difference: 0.5 - 0.5 with seed 7, 0.75 - 0.25 with seed 42; SFT against each seed.
    assert rows["listwise"]["HR@1 - sdpo by seed"] == {"7": 0.0, "42": 0.5}
    assert rows["sft"]["HR@1 - sdpo by seed"] == {"7": -0.25, "42": 0.0}
    assert "| 7: +0.000, 42: +0.500 | +0.250 [" in (tmp_path / "comparison.md").read_text()
    # A variant run with one seed so far meets S-DPO's run of that seed alone: napo-s42 hits (1, 1, 0, 0) against
    # sdpo-s42's (1, 0, 0, 0), +0.25, where S-DPO pooled over both seeds would give +0.125. One with a seed
    # S-DPO lacks has nothing to pair with.
    write_stage(setting, "napo-s42", [True, True, False, False], trained=True, ranks=[1, 1, 3, 3])
    write_stage(setting, "dpo-s99", [True] * 4, trained=True, ranks=[1] * 4)
    study.tables(output_dir=str(tmp_path))
    rows = json.loads((tmp_path / "comparison.json").read_text())["hintsTrue"]["variants"]
    assert rows["napo"]["HR@1 - sdpo"][0] == 0.25 and rows["dpo"]["HR@1 - sdpo"] is None
    assert rows["napo"]["HR@1 - sdpo by seed"] == {"42": 0.25} and rows["dpo"]["HR@1 - sdpo by seed"] == {}
    assert "| - | - (no seed in common) |" in (tmp_path / "comparison.md").read_text()
    # SFT, one adapter, against every S-DPO seed: (1, 0, 0, 0) - (1, 0.5, 0, 0).
    assert rows["sft"]["HR@1 - sdpo"][0] == -0.125
    for stage in ("napo-s42", "dpo-s99"):
        shutil.rmtree(setting / stage)
    # Seeds evaluated on other prompts than S-DPO's cannot be paired.
    write_stage(setting, "dmpo-s42", [True] * 3, trained=True, ranks=[1, 1, 1])
    with pytest.raises(InputError, match="other prompts"):
        study.tables(output_dir=str(tmp_path))
