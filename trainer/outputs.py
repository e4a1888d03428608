"""Writing a run's outputs safely: whole files or none, readable by the group that shares them,
and the run's flags saved first so a half-finished run never passes for a finished one; and reading
back the flags a run recorded (run_config.json), apart from the flags' definitions."""

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import time

from trainer.cli import is_main_process
from trainer.errors import InputError

RUN_CONFIG_FILE = "run_config.json"
# Held (flock) by the run writing into a folder; it names that run while it lasts.
LOCK_FILE = "run.lock"

logger = logging.getLogger("outputs")


def readable_as_if_created(path: str) -> None:
    """Temporary files and folders are made for their owner only (0600, 0700); before one is renamed
    into place, give it the mode any new file or folder gets, so a group sharing the outputs can read them."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def follow_umask(folder: str) -> None:
    """Gives every file under `folder` that a library wrote for its owner only (0600: safetensors writes its
    files so, whatever the umask) the mode a new file gets, like every other output."""
    umask = os.umask(0)
    os.umask(umask)
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            if os.stat(path).st_mode & 0o777 == 0o600:
                os.chmod(path, 0o666 & ~umask)


def write_text_atomically(text: str, path: str) -> None:
    """Write beside `path` and rename, so an interrupted run never leaves a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, suffix=".tmp", delete=False) as handle:
        handle.write(text)
    readable_as_if_created(handle.name)
    os.replace(handle.name, path)


def write_json_atomically(value, path: str) -> None:
    """JSON as the standard has it: a NaN or infinity raises ValueError instead of writing a bare NaN."""
    write_text_atomically(json.dumps(value, ensure_ascii=False, indent=2, allow_nan=False) + "\n", path)


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
    """One JSON object per line; a NaN or infinity raises ValueError, as in write_json_atomically."""
    write_text_atomically("".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows), path)


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


def adapter_run_config(adapter: str) -> dict | None:
    """The flags an adapter was trained with: the run_config.json of its folder, or of the run a checkpoint
    folder belongs to; None for an adapter that no stage of this toolkit wrote."""
    path = os.path.join(adapter, RUN_CONFIG_FILE)
    if not os.path.isfile(path) and os.path.basename(os.path.normpath(adapter)).startswith("checkpoint-"):
        path = os.path.join(os.path.dirname(os.path.normpath(adapter)), RUN_CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def start_run(config: dict, output_dir: str, completion_file: str, earlier_outputs: tuple[str, ...] = ()) -> None:
    """Saves a run's flags as its first write, after taking back an earlier run's claim to be complete.

    A finished run writes `completion_file` last (train_results.json, metrics.json: reproduce.sh skips
    a stage that has it). A run started in the folder of a finished one removes that file first, and
    the `earlier_outputs` that go with it (an evaluation's predictions.jsonl), so that if it is killed
    midway the folder never passes for complete nor holds another run's figures beside its flags.
    """
    for name in (completion_file, *earlier_outputs):
        try:
            os.remove(os.path.join(output_dir, name))
        except FileNotFoundError:
            pass
    save_run_config(config, output_dir)


@contextlib.contextmanager
def claimed_output_dir(output_dir: str):
    """Holds `output_dir` for one run: a second run started on it is refused, naming the first.

    The claim is an exclusive flock on OUTPUT_DIR/run.lock, which names the holder (process, host,
    start, command) while it runs and is emptied when it ends. The operating system drops the flock
    of a process that dies, even by kill -9, so its claim is taken over, with a warning naming it.
    Under several processes the first one claims for all. A folder this claim created and nothing
    else wrote into is removed again, so a run refused before its first output leaves nothing behind.
    """
    if not is_main_process():
        yield
        return
    check_output_dir(output_dir)
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a run that has not named itself yet"
        handle.close()
        raise InputError(f"--output_dir {output_dir}: another run is writing into it ({holder}); wait for it to "
                         "end or choose another folder") from None
    try:
        handle.seek(0)
        left = handle.read().strip()
        if left:
            logger.warning("%s: taking over from a run that ended without releasing it (%s)", path, left)
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{' '.join(sys.argv)}\n")
        handle.flush()
        yield
    finally:
        handle.seek(0)
        handle.truncate()
        handle.close()  # drops the flock
        if created and os.listdir(output_dir) == [LOCK_FILE]:
            os.remove(path)
            os.rmdir(output_dir)
