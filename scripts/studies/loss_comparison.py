"""The table of scripts/studies/loss_comparison.sh (docs/losses.md holds its figures): for each hint setting, every loss variant's
validation figures averaged over its preference seeds (each seed's HR@1 too), each shared seed's HR@1 difference
from S-DPO, and the difference from S-DPO on the same prompts pooled over seeds: each prompt counts each arm's
mean over the seeds both arms have (the SFT adapter against all of S-DPO's), and the 95% bootstrap interval
resamples prompts (trainer.metrics.paired_bootstrap_interval).

    python scripts/studies/loss_comparison.py --output_dir output/loss-comparison --train_file data/lastfm/train.json
"""

import json
import os
import re

from trainer.cli import run
from trainer.collaborative import statistics_of
from trainer.errors import InputError
from trainer.metrics import paired_bootstrap_interval
from trainer.outputs import write_text_atomically
from trainer.evaluation import METRICS_FILE
from trainer.results import EVAL_FOLDER, read_predictions, stage_summary

HINT_FOLDER = re.compile(r"hints(?P<hints>True|False)")
RUN_NAME = re.compile(r"(?P<variant>[a-z_]+(\+dynamic)?)-s(?P<seed>\d+)")
SFT_STAGE = "sft"
COMPARED_WITH = "sdpo"
MEASURES = {"HR@1": lambda row: row["hit"], "ranked HR@1": lambda row: row["true_item_rank"] == 1}
# Averaged over seeds, from trainer.results.stage_summary: (column, key, decimals).
COLUMNS = (("HR@1", "hit_ratio_at_1", 3), ("ranked HR@1", "ranking_hit_ratio_at_1", 3),
           ("ValidRatio", "valid_ratio", 3), ("DivRatio", "div_ratio", 3), ("ORRatio", "or_ratio", 3),
           ("popular share", "popular_answer_share", 3), ("coverage", "catalogue_coverage", 4),
           ("popularity rank", "answer_popularity_rank", 2))


def seed_runs(run_dir: str) -> tuple[dict[str, dict[int, str]], list[str]]:
    """{variant: {seed: run folder name}} of one hint setting's evaluated runs, seeds in increasing order, and
    the names of the runs not evaluated yet (the study may still be running them)."""
    runs, unfinished = {}, []
    for name in sorted(os.listdir(run_dir)):
        match = RUN_NAME.fullmatch(name)
        if not match:
            continue
        if os.path.isfile(os.path.join(run_dir, name, EVAL_FOLDER, METRICS_FILE)):
            runs.setdefault(match["variant"], {})[int(match["seed"])] = name
        else:
            unfinished.append(name)
    return {variant: dict(sorted(seeds.items())) for variant, seeds in runs.items()}, unfinished


def pooled(run_dir: str, stages: list[str], measure) -> tuple[list[int], list[float]]:
    """The evaluated prompts' indices and, for each, the mean of `measure` over `stages` (the seeds of one arm)."""
    predictions = [read_predictions(run_dir, stage) for stage in stages]
    indices = [row["index"] for row in predictions[0]]
    for stage, rows in zip(stages, predictions):
        if [row["index"] for row in rows] != indices:
            raise InputError(f"{os.path.join(run_dir, stage)}: evaluated on other prompts than {stages[0]}")
    return indices, [sum(measure(rows[position]) for rows in predictions) / len(predictions)
                     for position in range(len(indices))]


def cell(value, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def difference_cell(difference) -> str:
    """(difference, (low, high)) as the table shows it; None where the arms share no seed."""
    if difference is None:
        return "- (no seed in common)"
    value, (low, high) = difference
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def tables(output_dir: str = "output/loss-comparison", train_file: str | None = None, bootstrap_seed: int = 0) -> None:
    """Print and write OUTPUT_DIR/comparison.md and comparison.json (per hint setting, each variant's row and the
    runs left out as not evaluated yet).

    Args:
        output_dir: The study's folder (loss_comparison.sh's OUT).
        train_file: Training records; with them, the popularity columns (share of answers among the
            catalogue's most popular tenth, coverage, mean popularity rank of the answers).
        bootstrap_seed: Seeds the paired bootstrap.
    """
    statistics = statistics_of(train_file) if train_file else None
    lines, report = [], {}
    settings = sorted(name for name in os.listdir(output_dir) if HINT_FOLDER.fullmatch(name))
    if not settings:
        raise InputError(f"{output_dir}: no hintsTrue or hintsFalse folder; has loss_comparison.sh run?")
    for setting in settings:
        run_dir = os.path.join(output_dir, setting)
        runs, unfinished = seed_runs(run_dir)
        if COMPARED_WITH not in runs:
            raise InputError(f"{run_dir}: no {COMPARED_WITH}-s<seed> run to compare the others with")
        # The starting adapter, the loss compared with, then the others by name.
        arms = {SFT_STAGE: {None: SFT_STAGE}, COMPARED_WITH: runs[COMPARED_WITH]} | runs
        baseline_hits = {seed: stage_summary(run_dir, stage)["hit_ratio_at_1"]
                         for seed, stage in runs[COMPARED_WITH].items()}
        rows = {}
        for variant, seeds in arms.items():
            summaries = [stage_summary(run_dir, stage, statistics) for stage in seeds.values()]
            averages = {key: (None if any(summary.get(key) is None for summary in summaries)
                              else sum(summary[key] for summary in summaries) / len(summaries))
                        for _, key, _ in COLUMNS}
            rows[variant] = {"seeds": {str(seed): summary["hit_ratio_at_1"] for seed, summary in zip(seeds, summaries)},
                             "evaluated_prompts": summaries[0]["evaluated_prompts"]} | averages
            # Paired by seed as well as by prompt: against S-DPO's runs of the seeds this variant has (all of
            # them for the SFT adapter), so that a study still running compares like with like.
            baseline_seeds = runs[COMPARED_WITH]
            shared = [seed for seed in baseline_seeds if seed in seeds or variant == SFT_STAGE]
            compared = [baseline_seeds[seed] for seed in shared]
            mine_stages = list(seeds.values()) if variant == SFT_STAGE else [seeds[seed] for seed in shared]
            # Each shared seed's HR@1 difference, so a lead held on every seed reads apart from one seed's luck.
            hits = {seed: summary["hit_ratio_at_1"] for seed, summary in zip(seeds, summaries)}
            rows[variant][f"HR@1 - {COMPARED_WITH} by seed"] = {
                str(seed): hits[None if variant == SFT_STAGE else seed] - baseline_hits[seed] for seed in shared}
            for name, measure in MEASURES.items():
                if not compared:
                    rows[variant][f"{name} - {COMPARED_WITH}"] = None
                    continue
                _, mine = pooled(run_dir, mine_stages, measure)
                indices, theirs = pooled(run_dir, compared, measure)
                if len(mine) != len(theirs):
                    raise InputError(f"{run_dir}: {variant} and {COMPARED_WITH} were evaluated on other prompts")
                rows[variant][f"{name} - {COMPARED_WITH}"] = (
                    (sum(mine) - sum(theirs)) / len(mine), paired_bootstrap_interval(mine, theirs, bootstrap_seed))
        report[setting] = {"variants": rows, "unfinished": unfinished}
        lines += [f"## {setting.replace('hints', 'hints ')}", "",
                  "| variant | seeds (HR@1 each) | " + " | ".join(column for column, _, _ in COLUMNS)
                  + f" | HR@1 - {COMPARED_WITH} by seed | HR@1 - {COMPARED_WITH}, same seeds [95% CI]"
                  + f" | ranked HR@1 - {COMPARED_WITH}, same seeds [95% CI] |",
                  "|---" * (len(COLUMNS) + 5) + "|"]
        for variant, row in rows.items():
            seeds = ", ".join(f"{seed}: {value:.3f}" for seed, value in row["seeds"].items()) if variant != SFT_STAGE \
                else "(the starting adapter)"
            by_seed = ", ".join(f"{seed}: {value:+.3f}" for seed, value in row[f"HR@1 - {COMPARED_WITH} by seed"].items())
            differences = [by_seed or "-"] + [difference_cell(row[f"{name} - {COMPARED_WITH}"]) for name in MEASURES]
            lines.append(f"| {variant} | {seeds} | " + " | ".join(cell(row[key], decimals) for _, key, decimals in COLUMNS)
                         + " | " + " | ".join(differences) + " |")
        if unfinished:
            lines += ["", f"Not evaluated yet, left out: {', '.join(unfinished)}."]
        lines.append("")
    text = "\n".join(lines)
    write_text_atomically(text, os.path.join(output_dir, "comparison.md"))
    write_text_atomically(json.dumps(report, indent=2), os.path.join(output_dir, "comparison.json"))
    print(text)


if __name__ == "__main__":
    run(tables)
