"""The table of scripts/studies/baselines_search.sh: per model and setting, the best epoch's validation HR@1 of
each seed, their mean, the epoch it came at and the seconds to get there (docs/baselines.md).

    python scripts/studies/baselines_search.py --output_dir output/baselines-search
"""

import collections
import json
import os
import re

from trainer.cli import run
from trainer.outputs import write_text_atomically

RUN_NAME = re.compile(r"(?P<model>\w+)-h(?P<hidden>\d+)-d(?P<dropout>[\d.]+)-lr(?P<rate>[\d.e-]+)-s(?P<seed>\d+)")


def table(output_dir: str = "output/baselines-search") -> None:
    """Print and write OUTPUT_DIR/search.md.

    Args:
        output_dir: The search's folder (baselines_search.sh's OUT).
    """
    runs = collections.defaultdict(list)
    for name in sorted(os.listdir(output_dir)):
        match = RUN_NAME.fullmatch(name)
        log_path = os.path.join(output_dir, name, "training_log.json")
        if not match or not os.path.isfile(log_path):
            continue
        with open(log_path, encoding="utf-8") as handle:
            log = json.load(handle)
        best = max(log, key=lambda entry: entry["valid_hr_at_1"])
        runs[(match["model"], int(match["hidden"]), float(match["dropout"]), float(match["rate"]))].append(
            (int(match["seed"]), best["valid_hr_at_1"], best["epoch"], best["seconds"], log[-1]["seconds"]))
    lines = ["| model | hidden | dropout | learning rate | validation HR@1 per seed (best epoch) | mean | seconds to the "
             "best epoch / in all |", "|---|---|---|---|---|---|---|"]
    for (model, hidden, dropout, rate), found in sorted(runs.items()):
        seeds = ", ".join(f"{ratio:.4f} (seed {seed}, epoch {epoch})" for seed, ratio, epoch, _, _ in sorted(found))
        mean = sum(ratio for _, ratio, _, _, _ in found) / len(found)
        seconds = ", ".join(f"{best:.0f} / {total:.0f}" for _, _, _, best, total in sorted(found))
        lines.append(f"| {model} | {hidden} | {dropout} | {rate:g} | {seeds} | {mean:.4f} | {seconds} |")
    text = "\n".join(lines) + "\n"
    write_text_atomically(text, os.path.join(output_dir, "search.md"))
    print(text)


if __name__ == "__main__":
    run(table)
