"""Collects a comparison run into results.json, results.md and results.png.

A run folder holds one folder per stage: the stage's training outputs (adapter, train_results.json,
trainer_state.json; none for the base model) and, in its `eval/` subfolder, what inference.py wrote
(metrics.json, predictions.jsonl). For each stage this reports HR@1 and ValidRatio with the 95%
Wilson intervals inference.py writes in metrics.json (trainer.metrics), the ranking metrics when present,
the number of evaluated prompts, training examples and steps, and wall times; the picture shows
the metrics with their intervals and every trained stage's learning curves (training loss against
examples seen and against seconds; the preference stages' reward margin). Stages evaluated on
the same prompts are also compared in pairs (by default each stage with the one listed before it):
the paired 95% bootstrap interval of their difference in HR@1 and in ranked HR@1, resampling
prompts, so that what both got right or wrong on the same prompt cancels. Given the training file,
it also reports where the named candidates sit by popularity (trainer.baselines): whether a model has
learned which candidates the data makes likely.

    python -m trainer.results --run_dir output/reproduce --stages base,sft,dpo,softmax_dpo,dmpo \
        --train_file data/lastfm/train.json
"""

import dataclasses
import json
import os
import typing

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from trainer import audit  # noqa: E402
from trainer.baselines import TRAINING_LOG_FILE  # noqa: E402
from trainer.collaborative import ItemStatistics, popularity_rank, statistics_of  # noqa: E402
from trainer.cli import run  # noqa: E402
from trainer.commands import Flags, command, flag, required  # noqa: E402
from trainer.errors import InputError  # noqa: E402
from trainer.evaluation import METRICS_FILE, PREDICTIONS_FILE  # noqa: E402
from trainer.metrics import paired_bootstrap_interval, summarize, summarize_diversity  # noqa: E402
from trainer.outputs import write_json_atomically, write_text_atomically  # noqa: E402
from trainer.training import TRAIN_RESULTS_FILE  # noqa: E402

EVAL_FOLDER = "eval"
# Logged by the trainers (LearningCurveCallback adds examples and seconds to each entry); drawn as curves.
# The preference stages also log the reward margin, beta * (r_chosen - r_rejected) averaged over negatives.
CURVE_KEYS = ("examples_seen", "elapsed_seconds", "loss", "rewards/margins")


def read_json(path: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: missing; has this stage finished?") from None


def read_predictions(run_dir: str, stage: str) -> list[dict]:
    path = os.path.join(run_dir, stage, EVAL_FOLDER, PREDICTIONS_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]
    except FileNotFoundError:
        raise InputError(f"{path}: missing; has this stage finished?") from None


def stage_summary(run_dir: str, stage: str, statistics: ItemStatistics | None = None) -> dict:
    """One stage's row of results.json: its metrics and how spread its answers are (summarize_diversity);
    with the training split's counts, the mean popularity rank of the named candidates (valid answers)
    and of the true items, the share of answers naming one of the catalogue's most popular tenth, and
    the catalogue's coverage (the share of its items named at least once)."""
    stage_dir = os.path.join(run_dir, stage)
    metrics = read_json(os.path.join(stage_dir, EVAL_FOLDER, METRICS_FILE))
    predictions = read_predictions(run_dir, stage)
    row = {"stage": stage, "evaluated_prompts": len(predictions)}
    # From the predictions, by the function that wrote metrics.json: the same values and intervals.
    summary = summarize([prediction["hit"] for prediction in predictions],
                        [prediction["valid"] for prediction in predictions])
    row |= {name: value for name, value in summary.items() if name != "n"}
    row |= {name: value for name, value in metrics.items() if name.startswith("ranking_")}
    named_items = [prediction["matched_candidate"] for prediction in predictions if prediction["valid"]]
    row |= summarize_diversity(named_items)
    if statistics is not None:
        counts = statistics.popularity
        popular = statistics.popular_items()
        row["popular_answer_share"] = (sum(item in popular for item in named_items) / len(named_items)
                                       if named_items else None)
        row["catalogue_coverage"] = len(set(named_items) & statistics.catalogue) / len(statistics.catalogue)
        named = [popularity_rank(prediction["matched_candidate"], prediction["candidates"], counts)
                 for prediction in predictions if prediction["valid"]]
        row["answer_popularity_rank"] = round(sum(named) / len(named), 2) if named else None
        truths = [popularity_rank(prediction["true_item"], prediction["candidates"], counts)
                  for prediction in predictions]
        row["true_item_popularity_rank"] = round(sum(truths) / len(truths), 2)
        chance = [(len(prediction["candidates"]) + 1) / 2 for prediction in predictions]
        row["random_pick_popularity_rank"] = round(sum(chance) / len(chance), 2)
    row["eval_seconds"] = metrics.get("seconds")
    baseline_log = os.path.join(stage_dir, EVAL_FOLDER, TRAINING_LOG_FILE)
    if os.path.isfile(baseline_log):  # a sequential baseline trained inside its evaluation (trainer.baselines)
        row["train_seconds"] = read_json(baseline_log)[-1]["seconds"]
    train_results = os.path.join(stage_dir, TRAIN_RESULTS_FILE)
    if os.path.isfile(train_results):
        training = read_json(train_results)
        state = read_json(os.path.join(stage_dir, "trainer_state.json"))
        row |= {"train_examples": training["train_examples"], "train_steps": state["global_step"],
                "train_seconds": round(training["train_runtime"], 1)}
    return row


def paired_comparison(run_dir: str, better: str, worse: str, seed: int) -> dict:
    """`better` minus `worse` on the same prompts: HR@1 (and ranked HR@1 where both scored the
    candidates), each with its paired 95% bootstrap interval; how often both name the same candidate,
    and on how many prompts only one of them is right (what the difference rests on)."""
    first, second = read_predictions(run_dir, better), read_predictions(run_dir, worse)
    if [row["index"] for row in first] != [row["index"] for row in second]:
        raise InputError(f"{better} and {worse} were not evaluated on the same prompts; "
                         "a paired comparison needs the same test sample")
    pairs = list(zip(first, second))
    comparison = {"stages": [better, worse],
                  # An invalid answer names no candidate, so two invalid answers are not the same answer.
                  "same_answer": sum(a["matched_candidate"] is not None
                                     and a["matched_candidate"] == b["matched_candidate"] for a, b in pairs) / len(pairs),
                  "only_first_right": sum(a["hit"] and not b["hit"] for a, b in pairs),
                  "only_second_right": sum(b["hit"] and not a["hit"] for a, b in pairs)}
    measures = {"hit_ratio_at_1": lambda row: row["hit"]}
    if all("true_item_rank" in row for row in first + second):
        measures["ranking_hit_ratio_at_1"] = lambda row: row["true_item_rank"] == 1
    for name, measure in measures.items():
        a, b = [measure(row) for row in first], [measure(row) for row in second]
        comparison[f"{name}_difference"] = (sum(a) - sum(b)) / len(a)
        comparison[f"{name}_difference_ci95"] = paired_bootstrap_interval(a, b, seed)
    return comparison


def parse_pairs(pairs: str | tuple | None, names: list[str]) -> list[tuple[str, str]]:
    """'a:b,c:d' (a minus b, c minus d); by default each stage minus the one listed before it."""
    if pairs is None:
        return list(zip(names[1:], names[:-1]))
    items = pairs.split(",") if isinstance(pairs, str) else list(pairs)
    parsed = []
    for item in items:
        parts = item.split(":")
        if len(parts) != 2 or not all(part in names for part in parts):
            raise InputError(f"--pairs: {item!r} is not 'stage:stage' with both among --stages {names}")
        parsed.append((parts[0], parts[1]))
    return parsed


def curves(run_dir: str, stage: str) -> dict[str, list[float]] | None:
    """A trained stage's logged training curve (one list per CURVE_KEYS entry, an item per logged
    step; the reward lists only for preference stages), or None for a stage without one."""
    state_path = os.path.join(run_dir, stage, "trainer_state.json")
    if not os.path.isfile(state_path):
        return None
    history = [entry for entry in read_json(state_path)["log_history"]
               if "loss" in entry and "examples_seen" in entry]
    if not history:
        return None
    return {key: [entry[key] for entry in history] for key in CURVE_KEYS if key in history[0]}


def markdown_table(rows: list[dict], comparisons: list[dict]) -> str:
    def interval(row, name):
        low, high = row[f"{name}_ci95"]
        return f"{row[name]:.3f} [{low:.3f}, {high:.3f}]"

    def optional(row, name, digits):
        return "" if row.get(name) is None else f"{row[name]:.{digits}f}"

    lines = ["| stage | HR@1 [95% CI] | ValidRatio [95% CI] | ranked HR@1 | MRR | "
             "prompts | train examples | steps | train s | eval s |", "|---" * 10 + "|"]
    for row in rows:
        lines.append(f"| {row['stage']} | {interval(row, 'hit_ratio_at_1')} | {interval(row, 'valid_ratio')} | "
                     f"{optional(row, 'ranking_hit_ratio_at_1', 3)} | {optional(row, 'ranking_mrr', 3)} | "
                     f"{row['evaluated_prompts']} | "
                     f"{row.get('train_examples', '')} | {row.get('train_steps', '')} | "
                     f"{row.get('train_seconds', '')} | {optional(row, 'eval_seconds', 1)} |")
    table = "\n".join(lines) + "\n"
    table += ("\nBeyond accuracy, over the answers that name a candidate: how many different items they name, "
              "DivRatio (different items / answers) and ORRatio (the share of the 3 items named most often), as "
              "SPRec reports them; with the training split's counts, where the named candidate sits among its "
              "prompt's candidates by popularity (1 = most often a training true item), the share of answers "
              "among the catalogue's most popular tenth, and the share of the catalogue named at least once:\n\n"
              "| stage | different items | DivRatio | ORRatio | popularity rank | most popular tenth | "
              "catalogue coverage |\n|---|---|---|---|---|---|---|\n")
    for row in rows:
        table += (f"| {row['stage']} | {row['distinct_answers']} | {optional(row, 'div_ratio', 3)} | "
                  f"{optional(row, 'or_ratio', 3)} | {optional(row, 'answer_popularity_rank', 2)} | "
                  f"{optional(row, 'popular_answer_share', 3)} | {optional(row, 'catalogue_coverage', 4)} |\n")
    if comparisons:
        table += ("\nPaired differences on the same prompts, with 95% paired bootstrap intervals "
                  "(an interval above 0 means the first stage is better); how often both name the same candidate, "
                  "and on how many prompts only one of the two is right:\n\n"
                  "| comparison | HR@1 difference [95% CI] | ranked HR@1 difference [95% CI] | same answer | "
                  "only the first right | only the second right |\n|---|---|---|---|---|---|\n")
        for comparison in comparisons:
            cells = []
            for name in ("hit_ratio_at_1", "ranking_hit_ratio_at_1"):
                if f"{name}_difference" in comparison:
                    low, high = comparison[f"{name}_difference_ci95"]
                    cells.append(f"{comparison[f'{name}_difference']:+.3f} [{low:+.3f}, {high:+.3f}]")
                else:
                    cells.append("")
            table += (f"| {' - '.join(comparison['stages'])} | {cells[0]} | {cells[1]} | "
                      f"{comparison['same_answer']:.3f} | {comparison['only_first_right']} | "
                      f"{comparison['only_second_right']} |\n")
    if "true_item_popularity_rank" in rows[0]:
        table += ("\nPopularity rank: where the named candidate sits among its prompt's candidates by how often "
                  "each was the true item of a training record (1 = most often; ties share the mean place). "
                  f"A random pick averages {rows[0]['random_pick_popularity_rank']}; "
                  f"the true items average {rows[0]['true_item_popularity_rank']}.\n")
    return table


def draw(rows: list[dict], stage_curves: dict[str, dict], path: str) -> None:
    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    names = [row["stage"] for row in rows]
    for axis, metric, title in ((axes[0, 0], "hit_ratio_at_1", "HR@1"), (axes[0, 1], "valid_ratio", "ValidRatio")):
        values = [row[metric] for row in rows]
        errors = [[value - row[f"{metric}_ci95"][0] for value, row in zip(values, rows)],
                  [row[f"{metric}_ci95"][1] - value for value, row in zip(values, rows)]]
        axis.bar(names, values, yerr=errors, capsize=4, color="tab:blue")
        axis.set_title(f"{title} (95% Wilson interval)")
        axis.tick_params(axis="x", rotation=30)
    if any("ranking_hit_ratio_at_1" in row for row in rows):
        ranked = [row.get("ranking_hit_ratio_at_1", float("nan")) for row in rows]
        axes[0, 2].bar(names, ranked, color="tab:gray")
        axes[0, 2].tick_params(axis="x", rotation=30)
    else:
        axes[0, 2].text(0.5, 0.5, "not measured\n(inference.py --score_candidates False)", ha="center", va="center")
        axes[0, 2].set_axis_off()
    axes[0, 2].set_title("HR@1 of the candidate ranking")
    # The SFT loss (answer tokens' NLL) and the preference losses are different quantities: each
    # curve is read for its own trend, on one axis to save room.
    panels = ((axes[1, 0], "examples_seen", "loss", "training loss against training examples"),
              (axes[1, 1], "elapsed_seconds", "loss", "training loss against seconds"),
              (axes[1, 2], "examples_seen", "rewards/margins", "preference stages: reward margin"))
    # One colour per stage in every panel: the reward-margin panel lacks SFT, which would shift the cycle.
    colours = {stage: f"C{index}" for index, stage in enumerate(stage_curves)}
    for axis, x_key, y_key, title in panels:
        for stage, values in stage_curves.items():
            if y_key in values:
                axis.plot(values[x_key], values[y_key], label=stage, color=colours[stage])
        axis.set_title(title)
        axis.set_xlabel("seconds" if x_key == "elapsed_seconds" else "training examples")
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, ".results.png.tmp")
    figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


@dataclasses.dataclass
class ResultsFlags(Flags):
    renamed: typing.ClassVar[dict[str, str]] = {"seed": "bootstrap_seed"}

    run_dir: str = required("The run folder; each stage is a subfolder with its evaluation in eval/.")
    stages: str | tuple = flag("base,sft,dpo,softmax_dpo,dmpo", "Comma-separated stage folders, in the order to "
                                                                 "report them.")
    title: str = flag("", "What the run was (data, sizes, profile), written above the table and into results.json.")
    bootstrap_seed: int = flag(0, "Seeds the paired bootstrap resampling of the differences.")
    train_file: str | None = flag(None, "Training records; with them, each stage also gets the popularity of its "
                                        "answers and the catalogue's coverage.")
    pairs: str | tuple | None = flag(None, "Comma-separated 'first:second' stage pairs to compare on the same prompts "
                                           "(first minus second); by default each stage with the one listed before it.")
    audit_file: str | None = flag(None, "The data's leak audit (audit.json, data/audit.py); with it, results.md ends "
                                        "with the audit's table and verdicts and results.json lists the leaks it "
                                        "flagged.")


@command(ResultsFlags)
def results(flags: ResultsFlags) -> None:
    """Write results.json, results.md and results.png into --run_dir from its finished stages."""
    names = flags.stages.split(",") if isinstance(flags.stages, str) else list(flags.stages)
    statistics = statistics_of(flags.train_file) if flags.train_file else None
    rows = [stage_summary(flags.run_dir, stage, statistics) for stage in names]
    comparisons = [paired_comparison(flags.run_dir, better, worse, flags.bootstrap_seed)
                   for better, worse in parse_pairs(flags.pairs, names)]
    stage_curves = {stage: found for stage in names if (found := curves(flags.run_dir, stage))}
    table = (f"{flags.title}\n\n" if flags.title else "") + markdown_table(rows, comparisons)
    summary = {"title": flags.title, "stages": rows, "paired_differences": comparisons}
    if flags.audit_file:
        report = read_json(flags.audit_file)
        table += (f"\nLeak audit of {report['data_dir']}: rules without a model, counts from its training split "
                  "(data/audit.py):\n\n" + audit.markdown_table(report) + "\n" + "\n".join(audit.verdicts(report)) + "\n")
        summary["audit"] = {"file": flags.audit_file, "data_dir": report["data_dir"], "leaks": report["leaks"]}
    write_json_atomically(summary, os.path.join(flags.run_dir, "results.json"))
    write_text_atomically(table, os.path.join(flags.run_dir, "results.md"))
    draw(rows, stage_curves, os.path.join(flags.run_dir, "results.png"))
    print(table)


if __name__ == "__main__":
    run(results)
