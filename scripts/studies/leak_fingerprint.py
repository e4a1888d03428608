"""Does a language model pick up the authors' candidate-list fingerprint, and how fast? (docs/leak.md)

LLaRA's draw seeds each record's negatives with its true item, so records sharing a true item share
much of their list. Whether a model can learn that is measured on probes where the fingerprint is
the only way to the answer:

- training records: the authors' split's records of the --items most frequent true items, a seeded
  --per_item of each, text-only prompts (build writes them to OUT/data/train.json);
- probes: every validation record whose true item is one of those items, with --distractors of its
  negatives replaced by other frequent items (none of its history), so that several candidates are
  items the model has learned to answer. In the authors' probe the other negatives are the authors'
  (the fingerprint of the true item); in the clean probe the same distractors replace negatives of
  the clean list (no fingerprint). A model that learned only which items are answers picks among the
  frequent ones alike in both; one that learned the fingerprint does better on the authors' probe.

    python scripts/studies/leak_fingerprint.py build --authors_dir data/lastfm-llara --clean_dir data/lastfm \
        --output_dir output/leak-fingerprint
    (train with sft.py on OUT/data, evaluate each checkpoint on both probes: leak_fingerprint.sh)
    python scripts/studies/leak_fingerprint.py analyse --output_dir output/leak-fingerprint

analyse prints, for every evaluated checkpoint, ranked HR@1 (the top-scored candidate) on both probes,
their paired difference with its 95% bootstrap interval, and how often the model's top candidate is
the candidate-list rule's answer (trainer/audit.py, counts from the whole authors' training split).
"""

import collections
import json
import os
import random
import re
import sys

from trainer.audit import TrainingCounts, rule_keys
from trainer.cli import run
from trainer.data import load_records
from trainer.errors import InputError
from trainer.metrics import paired_bootstrap_interval
from trainer.outputs import write_json_atomically, write_text_atomically

PROBES = ("authors", "clean")
CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


def as_json(record, candidates) -> dict:
    return {"historyList": list(record.history), "itemList": list(candidates), "trueSelection": record.target}


def with_distractors(candidates, target: str, distractors: list[str], generator: random.Random) -> list[str]:
    """`candidates` with negatives at seeded places replaced by `distractors`."""
    places = generator.sample([index for index, title in enumerate(candidates) if title != target], len(distractors))
    replaced = list(candidates)
    for place, title in zip(places, distractors):
        replaced[place] = title
    return replaced


def build(authors_dir: str = "data/lastfm-llara", clean_dir: str = "data/lastfm",
          output_dir: str = "output/leak-fingerprint", items: int = 16, per_item: int = 48, distractors: int = 3,
          seed: int = 0) -> dict:
    """Write OUT/data/{train,valid}.json (the frequent items' authors' records) and OUT/probes/{authors,clean}.json.

    Args:
        authors_dir: The authors' split (data/prepare.py --negative_draw llara).
        clean_dir: The clean split of the same records (data/prepare.py).
        output_dir: Where data/ and probes/ go.
        items: How many of the most frequent training true items.
        per_item: Training records per item, a seeded sample.
        distractors: Negatives of each probe replaced by other frequent items.
        seed: Seeds the samples and the distractors.
    """
    if distractors >= items:
        raise InputError(f"--distractors {distractors}: needs fewer than --items {items}")
    train = load_records(os.path.join(authors_dir, "train.json"))
    counts = collections.Counter(record.target for record in train)
    frequent = [title for title, _ in counts.most_common(items)]
    generator = random.Random(seed)
    by_item = collections.defaultdict(list)
    for record in train:
        by_item[record.target].append(record)
    chosen = [record for title in frequent
              for record in generator.sample(by_item[title], min(per_item, len(by_item[title])))]
    generator.shuffle(chosen)
    valid = {probe: load_records(os.path.join(folder, "valid.json"))
             for probe, folder in zip(PROBES, (authors_dir, clean_dir))}
    if [(r.history, r.target) for r in valid["authors"]] != [(r.history, r.target) for r in valid["clean"]]:
        raise InputError(f"{authors_dir} and {clean_dir}: the validation records differ in history or true item")
    probes = {probe: [] for probe in PROBES}
    for authors, clean in zip(valid["authors"], valid["clean"]):
        if authors.target not in frequent:
            continue
        allowed = [title for title in frequent if title != authors.target and title not in authors.history
                   and title not in authors.candidates and title not in clean.candidates]
        picked = generator.sample(allowed, distractors)
        for probe, record in (("authors", authors), ("clean", clean)):
            probes[probe].append(as_json(record, with_distractors(record.candidates, record.target, picked, generator)))
    write_json_atomically([as_json(record, record.candidates) for record in chosen],
                          os.path.join(output_dir, "data", "train.json"))
    write_json_atomically(probes["authors"], os.path.join(output_dir, "data", "valid.json"))
    for probe, records in probes.items():
        write_json_atomically(records, os.path.join(output_dir, "probes", f"{probe}.json"))
    summary = {"items": frequent, "training_records": len(chosen), "probes": len(probes["authors"])}
    write_json_atomically(summary, os.path.join(output_dir, "build.json"))
    print(json.dumps(summary))
    return summary


def read_predictions(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def analyse(output_dir: str = "output/leak-fingerprint", authors_dir: str = "data/lastfm-llara", seed: int = 0) -> None:
    """Print and write OUT/curve.md, curve.json and curve.png: per checkpoint, ranked HR@1 on both probes, their
    paired difference, and agreement with the candidate-list rule.

    Args:
        output_dir: The study's folder (build's and leak_fingerprint.sh's outputs).
        authors_dir: The authors' split, whose training counts the candidate-list rule reads.
        seed: Seeds the bootstrap.
    """
    counts = TrainingCounts(load_records(os.path.join(authors_dir, "train.json")), recency=1.0)
    rule_answers = {}
    for probe in PROBES:
        records = load_records(os.path.join(output_dir, "probes", f"{probe}.json"))
        answers = []
        for record in records:
            keys = rule_keys(counts, record, collections.Counter())["candidate_list"]
            answers.append(record.candidates[max(range(len(keys)), key=keys.__getitem__)])
        rule_answers[probe] = answers
    evaluations = os.path.join(output_dir, "eval")
    steps = sorted(int(CHECKPOINT.search(name).group(1)) for name in os.listdir(evaluations) if CHECKPOINT.search(name))
    rows = []
    for step in steps:
        found = {probe: read_predictions(os.path.join(evaluations, f"checkpoint-{step}", probe, "predictions.jsonl"))
                 for probe in PROBES}
        hits = {probe: [row["top_scored_candidate"] == row["true_item"] for row in found[probe]] for probe in PROBES}
        agreement = {probe: sum(row["top_scored_candidate"] == answer for row, answer in
                                zip(found[probe], rule_answers[probe])) / len(found[probe]) for probe in PROBES}
        generated = {probe: sum(row["hit"] for row in found[probe]) / len(found[probe]) for probe in PROBES}
        rows.append({"step": step, "ranked_hr_at_1": {probe: sum(hits[probe]) / len(hits[probe]) for probe in PROBES},
                     "hr_at_1": generated, "rule_agreement": agreement,
                     "difference": sum(hits["authors"]) / len(hits["authors"]) - sum(hits["clean"]) / len(hits["clean"]),
                     "difference_ci95": paired_bootstrap_interval(hits["authors"], hits["clean"], seed)})
    rule_hr = {probe: sum(answer == record["trueSelection"] for answer, record in
                          zip(rule_answers[probe], json.load(open(os.path.join(output_dir, "probes", f"{probe}.json")))))
               / len(rule_answers[probe]) for probe in PROBES}
    lines = [f"candidate-list rule on the probes: HR@1 authors {rule_hr['authors']:.3f}, clean {rule_hr['clean']:.3f}",
             "", "| step | ranked HR@1 authors' probe | clean probe | authors - clean [95% CI] | HR@1 (generated) "
             "authors / clean | agreement with the rule, authors / clean |", "|---|---|---|---|---|---|"]
    for row in rows:
        low, high = row["difference_ci95"]
        lines.append(f"| {row['step']} | {row['ranked_hr_at_1']['authors']:.3f} | {row['ranked_hr_at_1']['clean']:.3f} | "
                     f"{row['difference']:+.3f} [{low:+.3f}, {high:+.3f}] | {row['hr_at_1']['authors']:.3f} / "
                     f"{row['hr_at_1']['clean']:.3f} | {row['rule_agreement']['authors']:.3f} / "
                     f"{row['rule_agreement']['clean']:.3f} |")
    text = "\n".join(lines) + "\n"
    write_text_atomically(text, os.path.join(output_dir, "curve.md"))
    write_json_atomically({"rule_hr_at_1": rule_hr, "checkpoints": rows}, os.path.join(output_dir, "curve.json"))
    draw_curve(rows, rule_hr, os.path.join(output_dir, "curve.png"))
    print(text)


def draw_curve(rows: list[dict], rule_hr: dict, path: str) -> None:
    """Ranked HR@1 on both probes against training steps, the paired difference's interval as a band, and
    the candidate-list rule's HR@1 on the authors' probe for scale."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    steps = [row["step"] for row in rows]
    figure, axis = pyplot.subplots(figsize=(7, 4))
    for probe, colour in zip(PROBES, ("tab:red", "tab:blue")):
        axis.plot(steps, [row["ranked_hr_at_1"][probe] for row in rows], marker="o", color=colour,
                  label=f"ranked HR@1, {probe}' probe" if probe == "authors" else f"ranked HR@1, {probe} probe")
    axis.fill_between(steps, [row["ranked_hr_at_1"]["clean"] + row["difference_ci95"][0] for row in rows],
                      [row["ranked_hr_at_1"]["clean"] + row["difference_ci95"][1] for row in rows], color="tab:red",
                      alpha=0.15, label="clean + 95% interval of the paired difference")
    axis.axhline(rule_hr["authors"], color="grey", linestyle="--", label="candidate-list rule, authors' probe")
    axis.set_xlabel("SFT steps (4 records each)")
    axis.set_ylabel("HR@1")
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize=8, loc="center right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


COMMANDS = {"build": build, "analyse": analyse}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python {sys.argv[0]} {'|'.join(COMMANDS)} [--flag value ...] (--help for each)", file=sys.stderr)
        sys.exit(2)
    run(COMMANDS[sys.argv.pop(1)])
