"""What every entry script shares: flag checking, rank-0 logging, and writing outputs safely.

The stages' flags, with their help and their own checks, are defined in trainer/flags.py."""

import contextlib
import difflib
import functools
import inspect
import json
import logging
import os
import sys
import tempfile
import types
import typing

import fire

from trainer.errors import InputError

RUN_CONFIG_FILE = "run_config.json"
HELP_FLAGS = ("-h", "--help")


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def use_cpu_processes_without_accelerator() -> None:
    """Several processes (accelerate launch, torchrun) on a machine without a GPU: train as CPU
    processes talking through gloo. accelerate does so only when told (ACCELERATE_USE_CPU); left
    alone, each process would train by itself on the whole data."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "ACCELERATE_USE_CPU" not in os.environ:
        import torch  # here, not at the top: data scripts use this module without torch

        if not torch.accelerator.is_available():
            os.environ["ACCELERATE_USE_CPU"] = "true"


def setup_logging() -> None:
    """INFO logs on rank 0 only; other ranks log warnings and errors."""
    logging.basicConfig(
        level=logging.INFO if is_main_process() else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def accepts(annotation, value) -> bool:
    """Whether a flag's value, as fire parsed it, has the type its annotation declares."""
    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(accepts(option, value) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(annotation) or annotation
    return isinstance(value, origin)


def check_flags(entry, values: dict) -> None:
    """Fire passes a flag through as a string when it cannot parse it; name the flag instead."""
    for name, parameter in inspect.signature(entry).parameters.items():
        if name in values and not accepts(parameter.annotation, values[name]):
            expected = getattr(parameter.annotation, "__name__", str(parameter.annotation))
            raise InputError(f"--{name}: expected {expected}, got {values[name]!r}")


def check_flag_names(entry, arguments: list[str]) -> None:
    """Refuse a flag the entry does not have before anything runs.

    Fire would call the entry with the flags it knows and complain about the rest only after the
    entry returned: a mistyped flag would mean a whole run at the default, its outputs overwritten.
    """
    names = set(inspect.signature(entry).parameters)
    for argument in arguments:
        if argument == "--":  # fire's own flags follow
            return
        if not argument.startswith("--") or argument in HELP_FLAGS:
            continue
        name = argument[2:].split("=", 1)[0].replace("-", "_")
        # fire also reads --noNAME as NAME=False
        if name in names or (name.startswith("no") and name[2:] in names):
            continue
        close = difflib.get_close_matches(name, names, n=1)
        suggestion = f"; did you mean --{close[0]}?" if close else ""
        raise InputError(f"--{name}: no such flag{suggestion} (--help lists them)")


def run(entry) -> None:
    """Run an entry function as a command line program; bad input ends in one line and exit code 2."""
    setup_logging()
    use_cpu_processes_without_accelerator()

    @functools.wraps(entry)
    def checked_entry(*args, **kwargs):
        check_flags(entry, inspect.signature(entry).bind(*args, **kwargs).arguments)
        return entry(*args, **kwargs)

    # Fire prints help on stderr; help belongs on stdout, so `--help | less` works.
    help_requested = any(flag in sys.argv[1:] for flag in HELP_FLAGS)
    try:
        check_flag_names(entry, sys.argv[1:])
        with contextlib.redirect_stderr(sys.stdout) if help_requested else contextlib.nullcontext():
            fire.Fire(checked_entry, serialize=lambda result: None)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def readable_as_if_created(path: str) -> None:
    """Temporary files and folders are made for their owner only (0600, 0700); before one is renamed
    into place, give it the mode any new file or folder gets, so a group sharing the outputs can read them."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def write_text_atomically(text: str, path: str) -> None:
    """Write beside `path` and rename, so an interrupted run never leaves a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, suffix=".tmp", delete=False) as handle:
        handle.write(text)
    readable_as_if_created(handle.name)
    os.replace(handle.name, path)


def write_json_atomically(value, path: str) -> None:
    write_text_atomically(json.dumps(value, ensure_ascii=False, indent=2) + "\n", path)


def stage_json_list(json_texts, folder: str) -> tuple[str, int]:
    """Writes already JSON-encoded elements, as they come, into a new temporary file in `folder` as a
    JSON list with one element per line; returns (its path, the number of elements). The caller
    renames it into place, or removes it if anything failed.

    Streaming keeps memory flat for a million records.
    """
    count = 0
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, suffix=".tmp", delete=False) as handle:
        try:
            handle.write("[")
            for count, text in enumerate(json_texts, start=1):
                handle.write(("\n" if count == 1 else ",\n") + text)
            handle.write("\n]\n")
        except BaseException:
            handle.close()
            os.remove(handle.name)
            raise
    readable_as_if_created(handle.name)
    return handle.name, count


def write_jsonl_atomically(rows, path: str) -> None:
    """One JSON object per line."""
    write_text_atomically("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), path)


def check_output_dir(output_dir: str) -> None:
    """Refuse, before any work, an --output_dir that cannot be written: a file, or under a folder
    this process may not write to (nothing is created here)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise InputError(f"--output_dir {output_dir}: a file, not a folder")
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"--output_dir {output_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--output_dir {output_dir}: {existing} is not writable")


def save_run_config(config: dict, output_dir: str) -> None:
    """The resolved flags of a run, next to its outputs, so the run can be repeated."""
    write_json_atomically(config, os.path.join(output_dir, RUN_CONFIG_FILE))


def start_run(config: dict, output_dir: str, completion_file: str) -> None:
    """Saves a run's flags as its first write, after taking back an earlier run's claim to be complete.

    A finished run writes `completion_file` last (train_results.json, metrics.json: reproduce.sh skips
    a stage that has it). A run started in the folder of a finished one removes that file first, so
    if it is killed midway the folder never passes for complete with the earlier run's figures.
    """
    try:
        os.remove(os.path.join(output_dir, completion_file))
    except FileNotFoundError:
        pass
    save_run_config(config, output_dir)
