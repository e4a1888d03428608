"""Writing a run's outputs safely: whole files or none, readable by the group that shares them,
and the run's flags saved first so a half-finished run never passes for a finished one."""

import json
import os
import tempfile

from trainer.errors import InputError

RUN_CONFIG_FILE = "run_config.json"


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
