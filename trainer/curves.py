"""Learning curves: validation metrics of a training run's checkpoints against examples seen and seconds.

A run is a training output folder (sft.py, dpo.py, softmax_dpo.py with --save_steps N) whose
checkpoints, and the folder itself for the final adapter, each hold an evaluation written by
inference.py into `<checkpoint>/<eval_folder>` (metrics.json, predictions.jsonl). The examples seen and
wall seconds of each point come from the checkpoint's trainer_state.json (LearningCurveCallback);
an optional start folder (say, the evaluation of the model before this stage) is the point at 0.
Evaluate every checkpoint on the same validation sample, e.g.

    for checkpoint in output/sft/checkpoint-* output/sft; do
        python inference.py --adapter $checkpoint --test_file data/lastfm/valid.json \
            --max_samples 200 --sample_seed 0 --output_dir $checkpoint/eval_valid
    done
    python -m trainer.curves --runs text=output/sft --output_dir output/curves

Writes curves.json, curves.md and curves.png (HR@1 and ranked HR@1 against examples and against
seconds, one line per run; --references adds evaluated folders, e.g. the rules of trainer.baselines, as
dashed horizontal lines) into --output_dir.
"""

import dataclasses
import glob
import json
import os
import re

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from trainer.cli import run  # noqa: E402
from trainer.commands import Flags, command, flag, required  # noqa: E402
from trainer.errors import InputError  # noqa: E402
from trainer.evaluation import METRICS_FILE  # noqa: E402
from trainer.outputs import write_json_atomically, write_text_atomically  # noqa: E402
from trainer.training import TRAIN_RESULTS_FILE  # noqa: E402

METRICS = (("hit_ratio_at_1", "HR@1 (generated answer)"), ("ranking_hit_ratio_at_1", "ranked HR@1"))


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None


def _progress(folder: str) -> tuple[int, float]:
    """(examples seen, seconds) at a checkpoint or a finished run, from its last timed log entry."""
    state = _read(os.path.join(folder, "trainer_state.json"))
    timed = [entry for entry in state["log_history"] if "elapsed_seconds" in entry]
    if not timed:
        raise InputError(f"{folder}/trainer_state.json: no elapsed_seconds in its log; "
                         "train with this toolkit's sft.py, dpo.py or softmax_dpo.py")
    return timed[-1]["examples_seen"], timed[-1]["elapsed_seconds"]


def _final_progress(run_dir: str) -> tuple[int, float]:
    """(examples seen, seconds) of a finished run, on the same clock as its checkpoints."""
    try:
        return _progress(run_dir)
    except InputError:
        # A run trained before LearningCurveCallback existed: its epochs over its examples, its training time.
        results = _read(os.path.join(run_dir, TRAIN_RESULTS_FILE))
        config = _read(os.path.join(run_dir, "run_config.json"))
        if config.get("max_steps", -1) > 0:
            raise
        return round(results["train_examples"] * config["num_train_epochs"]), round(results["train_runtime"], 1)


def _point(folder: str, eval_folder: str, examples: int, seconds: float) -> dict:
    metrics = _read(os.path.join(folder, eval_folder, METRICS_FILE))
    point = {"examples": examples, "seconds": seconds, "n": metrics["n"]}
    return point | {name: metrics[name] for name, _ in METRICS if name in metrics}


def run_curve(run_dir: str, eval_folder: str, start_dir: str | None) -> list[dict]:
    """The evaluated points of one run, ordered by examples seen."""
    points = [_point(start_dir, eval_folder, 0, 0.0)] if start_dir else []
    checkpoints = glob.glob(os.path.join(run_dir, "checkpoint-*"))
    for checkpoint in sorted(checkpoints, key=lambda path: int(re.sub(r"\D", "", os.path.basename(path)) or 0)):
        if os.path.isfile(os.path.join(checkpoint, eval_folder, METRICS_FILE)):
            points.append(_point(checkpoint, eval_folder, *_progress(checkpoint)))
    examples, seconds = _final_progress(run_dir)
    # The last checkpoint may be the final adapter's step: the final folder's point stands for both.
    final = _point(run_dir, eval_folder, examples, seconds)
    points = [point for point in points if point["examples"] != examples] + [final]
    return points


def _parse(spec: str | tuple | None, flag: str) -> dict[str, str]:
    if not spec:
        return {}
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    parsed = {}
    for item in items:
        label, separator, folder = item.partition("=")
        if not separator or not label or not folder:
            raise InputError(f"{flag}: {item!r} is not label=folder")
        parsed[label] = folder
    return parsed


def draw(curves: dict[str, list[dict]], references: dict[str, float], path: str) -> None:
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    for row, (metric, title) in enumerate(METRICS):
        for column, (axis_key, axis_title) in enumerate((("examples", "training examples"), ("seconds", "seconds"))):
            axis = axes[row, column]
            for label, points in curves.items():
                kept = [point for point in points if metric in point]
                axis.plot([point[axis_key] for point in kept], [point[metric] for point in kept], marker="o", label=label)
            # A rule names one candidate: its HR@1 is also its ranked HR@1.
            for (label, value), color in zip(references.items(), ("gray", "black", "tab:brown", "tab:pink")):
                axis.axhline(value, linestyle="--", color=color, label=label)
            axis.set_xlabel(axis_title)
            axis.set_title(f"validation {title}")
            axis.legend()
    figure.tight_layout()
    temporary = os.path.join(os.path.dirname(os.path.abspath(path)), ".curves.png.tmp")
    figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


@dataclasses.dataclass
class CurvesFlags(Flags):
    runs: str | tuple = required("Comma-separated label=run_folder pairs, one curve each.")
    output_dir: str = flag("output/curves", "Folder for curves.json, curves.md and curves.png.")
    starts: str | tuple | None = flag(None, "Comma-separated label=folder pairs: an evaluated folder that is a run's "
                                            "point at 0 examples (e.g. the model before this stage).")
    references: str | tuple | None = flag(None, "Comma-separated label=folder pairs of evaluated folders without "
                                                "training (e.g. rules), drawn as horizontal lines at their HR@1.")
    eval_folder: str = flag("eval_valid", "Subfolder of each checkpoint that holds its evaluation.")


@command(CurvesFlags)
def curves(flags: CurvesFlags) -> None:
    """Collect the evaluated checkpoints of training runs into learning curves."""
    run_dirs, start_dirs = _parse(flags.runs, "--runs"), _parse(flags.starts, "--starts")
    if not run_dirs:
        raise InputError("--runs: name at least one label=run_folder")
    unknown = sorted(set(start_dirs) - set(run_dirs))
    if unknown:
        raise InputError(f"--starts: {unknown} name no run of --runs")
    collected = {label: run_curve(folder, flags.eval_folder, start_dirs.get(label))
                 for label, folder in run_dirs.items()}
    levels = {label: _read(os.path.join(folder, flags.eval_folder, METRICS_FILE))["hit_ratio_at_1"]
              for label, folder in _parse(flags.references, "--references").items()}
    lines = ["| run | examples | seconds | HR@1 | ranked HR@1 | prompts |", "|---|---|---|---|---|---|"]
    for label, points in collected.items():
        for point in points:
            ranked = f"{point['ranking_hit_ratio_at_1']:.3f}" if "ranking_hit_ratio_at_1" in point else ""
            lines.append(f"| {label} | {point['examples']} | {point['seconds']:.0f} | {point['hit_ratio_at_1']:.3f} | "
                         f"{ranked} | {point['n']} |")
    for label, value in levels.items():
        lines.append(f"| {label} (no training) | | | {value:.3f} | | |")
    os.makedirs(flags.output_dir, exist_ok=True)
    write_json_atomically({"runs": collected, "references": levels}, os.path.join(flags.output_dir, "curves.json"))
    write_text_atomically("\n".join(lines) + "\n", os.path.join(flags.output_dir, "curves.md"))
    draw(collected, levels, os.path.join(flags.output_dir, "curves.png"))
    print("\n".join(lines))


if __name__ == "__main__":
    run(curves)
