"""Tables of the 2x2 leak study (scripts/studies/leak_2x2.sh; docs/leak.md): models trained on the authors'
or the clean LastFM split, each evaluated on the same validation prompts of both.

For every hint setting it prints HR@1 (generated answer) and ranked HR@1 (top-scored candidate) of
each model on each split, and paired differences on the same prompts (95% bootstrap intervals):
  measured on the authors' split - on the clean split, the same model;
  trained on the authors' split - on the clean split, the same evaluation;
  S-DPO - DPO, trained and evaluated on each split;
and how often a model's top-scored candidate is the candidate-list rule's answer on the authors'
prompts (trainer/audit.py, counts from the authors' training split), against how often the rule is right.

    python scripts/studies/leak_2x2.py --output_dir output/leak-2x2 --authors_dir data/lastfm-llara
"""

import collections
import json
import os

from trainer.audit import TrainingCounts, rule_keys
from trainer.cli import run
from trainer.data import load_records
from trainer.errors import InputError
from trainer.metrics import paired_bootstrap_interval
from trainer.outputs import write_text_atomically

SPLITS = ("authors", "clean")
HINT_RECENCY = 0.5  # leak_2x2.sh's, the cpu profile's
MODELS = ("sft", "dpo", "sdpo")
MEASURES = {"HR@1": lambda row: row["hit"], "ranked HR@1": lambda row: row["true_item_rank"] == 1}


def read_predictions(output_dir: str, trained_on: str, hints: str, model: str, evaluated_on: str) -> list[dict]:
    path = os.path.join(output_dir, f"{trained_on}-hints{hints}", model, f"eval-{evaluated_on}", "predictions.jsonl")
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing; has leak_2x2.sh finished?")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def difference_cell(first: list[dict], second: list[dict], measure, seed: int) -> str:
    if [row["index"] for row in first] != [row["index"] for row in second]:
        raise InputError("a paired difference needs the same prompts")
    a, b = [measure(row) for row in first], [measure(row) for row in second]
    low, high = paired_bootstrap_interval(a, b, seed)
    return f"{(sum(a) - sum(b)) / len(a):+.3f} [{low:+.3f}, {high:+.3f}]"


def rule_answers(data_dir: str, indices: list[int], rule: str) -> list[str]:
    """A rule's answer (trainer/audit.py: candidate_list, or transitions at the hints' recency 0.5, the hint's
    first title) on the validation records of `indices`, with counts from the folder's training split."""
    counts = TrainingCounts(load_records(os.path.join(data_dir, "train.json")), recency=HINT_RECENCY)
    records = load_records(os.path.join(data_dir, "valid.json"))
    answers = []
    for index in indices:
        keys = rule_keys(counts, records[index], collections.Counter())[rule]
        answers.append(records[index].candidates[max(range(len(keys)), key=keys.__getitem__)])
    return answers


def tables(output_dir: str = "output/leak-2x2", authors_dir: str = "data/lastfm-llara", clean_dir: str = "data/lastfm",
           seed: int = 0) -> None:
    """Print the study's tables and write them to OUTPUT_DIR/leak_2x2.md.

    Args:
        output_dir: The study's folder (leak_2x2.sh's OUT).
        authors_dir: The authors' split, whose training counts the candidate-list rule reads.
        clean_dir: The clean split (for the transitions rule, the hint's first title, on its prompts).
        seed: Seeds the bootstrap.
    """
    lines = []
    answers = None
    for hints in ("True", "False"):
        try:
            found = {(trained, model, evaluated): read_predictions(output_dir, trained, hints, model, evaluated)
                     for trained in SPLITS for model in MODELS for evaluated in SPLITS}
        except InputError as missing:
            lines += [f"## Hints {hints}: not finished ({missing})", ""]
            continue
        if answers is None:
            indices = [row["index"] for row in found[("authors", "sft", "authors")]]
            answers = rule_answers(authors_dir, indices, "candidate_list")
            rule_right = sum(answer == row["true_item"] for answer, row in
                             zip(answers, found[("authors", "sft", "authors")])) / len(answers)
            # The transitions rule as a stage: what the hint's first title gets on each split's prompts.
            hinted = {split: rule_answers(folder, indices, "transitions")
                      for split, folder in zip(SPLITS, (authors_dir, clean_dir))}
            hint_rows = {split: [{"index": row["index"], "true_item": row["true_item"],
                                  "hit": answer == row["true_item"], "true_item_rank": 1 if answer == row["true_item"] else 2,
                                  "top_scored_candidate": answer}
                                 for answer, row in zip(hinted[split], found[("authors", "sft", split)])]
                         for split in SPLITS}
        lines += [f"## Hints {hints}", "", "| model | trained on | HR@1 on authors' | on clean | ranked HR@1 on authors' "
                  "| on clean | top-scored = candidate-list rule's answer (authors') |", "|---|---|---|---|---|---|---|"]
        for model in MODELS:
            for trained in SPLITS:
                rows = {evaluated: found[(trained, model, evaluated)] for evaluated in SPLITS}
                cells = [f"{sum(measure(row) for row in rows[evaluated]) / len(rows[evaluated]):.3f}"
                         for measure in MEASURES.values() for evaluated in SPLITS]
                agreement = sum(row["top_scored_candidate"] == answer
                                for row, answer in zip(rows["authors"], answers)) / len(answers)
                lines.append(f"| {model} | {trained} | " + " | ".join(cells) + f" | {agreement:.3f} |")
        rows = {evaluated: hint_rows[evaluated] for evaluated in SPLITS}
        cells = [f"{sum(row['hit'] for row in rows[evaluated]) / len(rows[evaluated]):.3f}" for evaluated in SPLITS]
        lines.append(f"| transitions rule (the hint's first title) | | {cells[0]} | {cells[1]} | | | |")
        agreement = {f"{model} trained on {trained}": sum(
            row["top_scored_candidate"] == hint["top_scored_candidate"]
            for row, hint in zip(found[(trained, model, "authors")], hint_rows["authors"])) / len(answers)
            for model in MODELS for trained in SPLITS}
        lines += ["", f"The candidate-list rule is right on {rule_right:.3f} of these authors' prompts. "
                  "Top-scored candidate = the transitions rule's answer, on the authors' prompts: "
                  + ", ".join(f"{model} {value:.3f}" for model, value in agreement.items()) + ".", "",
                  "| paired difference (same prompts) | HR@1 [95% CI] | ranked HR@1 [95% CI] |", "|---|---|---|"]
        cells = [difference_cell(hint_rows["authors"], hint_rows["clean"], measure, seed) for measure in MEASURES.values()]
        lines.append("| transitions rule: on authors' - on clean | " + " | ".join(cells) + " |")
        for model in MODELS:
            for trained in SPLITS:
                cells = [difference_cell(found[(trained, model, "authors")], found[(trained, model, "clean")],
                                         measure, seed) for measure in MEASURES.values()]
                lines.append(f"| {model} trained on {trained}: measured on authors' - on clean | " + " | ".join(cells) + " |")
        for model in MODELS:
            for evaluated in SPLITS:
                cells = [difference_cell(found[("authors", model, evaluated)], found[("clean", model, evaluated)],
                                         measure, seed) for measure in MEASURES.values()]
                lines.append(f"| {model} measured on {evaluated}: trained on authors' - on clean | " + " | ".join(cells) + " |")
        for split in SPLITS:
            cells = [difference_cell(found[(split, "sdpo", split)], found[(split, "dpo", split)], measure, seed)
                     for measure in MEASURES.values()]
            lines.append(f"| S-DPO - DPO, trained and measured on {split} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    write_text_atomically(text, os.path.join(output_dir, "leak_2x2.md"))
    print(text)


if __name__ == "__main__":
    run(tables)
