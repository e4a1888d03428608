"""Bench: data/prepare_log.py on a made-up log of a million interactions, and on the real HetRec log.

The made-up log has --users users with --per_user interactions each on --items items drawn with
Zipf-like popularity (seeded), one timestamp per interaction, and a title table. It is converted
once per negative draw (independent, the default, and LLaRA's own), each in its own process, so its wall
time and peak resident memory are its own; the time is printed against the one-minute target of
the raw-log issue.

    python bench/prepare_log.py                               # 1,000,000 interactions
    python bench/prepare_log.py --users 2000 --per_user 50    # a quick check
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from trainer.cli import run

TARGET_SECONDS = 60


def write_log(folder: str, users: int, per_user: int, items: int, seed: int) -> tuple[str, str]:
    """A tab-separated log with a header (user, item, time) and a title table (id, title)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    item_ids = rng.choice(items, size=users * per_user, p=popularity / popularity.sum())
    log = pd.DataFrame({"user": np.repeat(np.arange(users), per_user), "item": item_ids,
                        "time": rng.integers(1_000_000_000, 1_600_000_000, size=users * per_user)})
    log_path = os.path.join(folder, "log.tsv")
    log.to_csv(log_path, sep="\t", index=False)
    titles_path = os.path.join(folder, "items.tsv")
    pd.DataFrame({"id": np.arange(items), "title": [f"Item number {index}" for index in range(items)]}).to_csv(
        titles_path, sep="\t", index=False)
    return log_path, titles_path


# The child runs the converter's command line, then reports its own peak resident memory (kB) last.
CHILD = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def convert(arguments: list[str]) -> tuple[float, float, dict]:
    """Runs data/prepare_log.py in a child process: (seconds, peak resident MB, counts)."""
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", CHILD, os.path.join(REPO_ROOT, "data", "prepare_log.py"),
                                *arguments], capture_output=True, text=True, cwd=REPO_ROOT)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"prepare_log.py failed:\n{completed.stderr[-2000:]}")
    peak_mb = int(completed.stdout.split()[-1]) / 1024
    output_dir = arguments[arguments.index("--output_dir") + 1]
    with open(os.path.join(output_dir, "run_config.json"), encoding="utf-8") as handle:
        return seconds, peak_mb, json.load(handle)["counts"]


def bench(users: int = 20_000, per_user: int = 50, items: int = 20_000, seed: int = 0,
          draws: str | tuple[str, ...] = ("independent", "llara"), hetrec_dir: str | None = None):
    """Print the conversion's seconds, peak memory and records for the made-up log and the HetRec log.

    Args:
        users: Users of the made-up log.
        per_user: Interactions per user.
        items: Items of the made-up log.
        seed: Seeds the made-up log.
        draws: The --negative_draw ways to convert the made-up log with, each in its own run.
        hetrec_dir: The HetRec Last.fm folder (default: $SHARED_DATA_DIR/hetrec-lastfm-2k, if it exists).
    """
    hetrec_dir = hetrec_dir or os.path.join(os.environ.get("SHARED_DATA_DIR", "../shared/data"), "hetrec-lastfm-2k")
    draws = draws.split(",") if isinstance(draws, str) else list(draws)
    with tempfile.TemporaryDirectory() as folder:
        log_path, titles_path = write_log(folder, users, per_user, items, seed)
        rows = [(f"made-up, --negative_draw {draw}", users * per_user,
                 *convert(["--interactions", log_path, "--items", titles_path, "--negative_draw", draw,
                           "--output_dir", f"{folder}/made-up-{draw}"])) for draw in draws]
        if os.path.isdir(hetrec_dir):
            rows.append(("HetRec Last.fm tagging log, independent", 186_479, *convert([
                "--interactions", f"{hetrec_dir}/user_taggedartists.dat", "--items", f"{hetrec_dir}/artists.dat",
                "--user_column", "userID", "--item_column", "artistID", "--time_column", "year,month,day",
                "--title_column", "name", "--unknown_items", "drop", "--output_dir", f"{folder}/hetrec"])))
    print("log | interactions read | kept | records (train/valid/test) | seconds | x 60 s target | peak MB")
    for name, read, seconds, peak_mb, counts in rows:
        records = counts["records"]
        print(f"{name} | {read:,} | {counts['interactions']:,} | {records['train']:,}/{records['valid']:,}/"
              f"{records['test']:,} | {seconds:.1f} | {seconds / TARGET_SECONDS:.2f} | {peak_mb:.0f}")


if __name__ == "__main__":
    run(bench)
