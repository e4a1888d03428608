"""Bench: what a stage spends on the host before its trainer exists.

Each stage of reproduce.sh is a new process. Timed here, with no model loaded:
  imports    a fresh Python process importing each entry script (sft, softmax_dpo, inference), as
             a stage starts; one process per script, the median of --repeats
  tokenizer  loading the tokenizer of --model_name
  hints      counting the collaborative hints over --train_file (trainer.collaborative.load_hints,
             the first call in the process, as each stage makes it)
  examples   building SFT's training examples as sft.py does (sft.supervised_dataset: the hint
             ranking, the prompt built and tokenized, the answer appended), with the cpu and gpu
             profiles' prompt settings (hints, hint recency 0.5, every other flag at sft.py's default)
Prints seconds for each, and examples per second.

    python bench/stage_startup.py                         # every LastFM training prompt (47,872)
    python bench/stage_startup.py --max_samples 1000
"""

import os
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from trainer.cli import run
from trainer.collaborative import load_hints
from trainer.modeling import EMBEDDED_MODEL_NAME, load_tokenizer, resolve_model_path
from trainer.prompts import PromptBuilder

ENTRY_SCRIPTS = ("sft", "softmax_dpo", "inference")


def import_seconds(module: str, repeats: int) -> float:
    """Median wall time of a fresh interpreter importing an entry script from the repository root."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO_ROOT, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench(model_name: str = EMBEDDED_MODEL_NAME, train_file: str = "data/lastfm/train.json",
          max_samples: int | None = None, hint_recency: float = 0.5, repeats: int = 3):
    """Print the host-side seconds of a stage's start: imports, tokenizer, hints and SFT's examples.

    Args:
        model_name: Base model whose tokenizer is loaded ('embedded-smollm2', a folder or a hub id).
        train_file: The training records (and the hint counts' source, as the profiles pass --hint_file).
        max_samples: SFT examples built, a seeded sample as --max_train_samples takes (unset: every record).
        hint_recency: --hint_recency of the hints (the cpu and gpu profiles': 0.5).
        repeats: Fresh processes per entry script's import time (the median is printed).
    """
    sys.path.insert(0, REPO_ROOT)  # the entry scripts lie at the repository root, outside the installed package
    from trainer.sft_stage import SFTFlags, supervised_dataset

    rows = [(f"import {module} (fresh process)", import_seconds(module, repeats), None) for module in ENTRY_SCRIPTS]
    started = time.perf_counter()
    tokenizer = load_tokenizer(resolve_model_path(model_name), padding_side="left")
    rows.append(("tokenizer", time.perf_counter() - started, None))
    started = time.perf_counter()
    hints = load_hints(train_file, SFTFlags.hint_size, train_file, hint_recency)
    rows.append((f"hints counted over {train_file}", time.perf_counter() - started, None))
    builder = PromptBuilder(SFTFlags.domain, tokenizer, SFTFlags.max_prompt_tokens, seed=SFTFlags.seed,
                            template_index=SFTFlags.template_index, hints=hints, source=train_file)
    started = time.perf_counter()
    dataset = supervised_dataset(train_file, max_samples, SFTFlags.seed, builder, tokenizer)
    rows.append((f"{len(dataset):,} SFT examples built", time.perf_counter() - started, len(dataset)))
    print("what | seconds | per second")
    for name, seconds, count in rows:
        print(f"{name} | {seconds:.2f} | {f'{count / seconds:,.0f}' if count else ''}")


if __name__ == "__main__":
    run(bench)
