"""What every entry script shares on the command line: flag checking before any work, and rank-0 logging.

The stages' flags, with their help and their own checks, are defined in trainer/flags.py; the files
a run writes, in trainer/outputs.py."""

import contextlib
import difflib
import functools
import gc
import inspect
import logging
import os
import sys
import types
import typing

import fire

from trainer.errors import InputError, TrainingDiverged

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
    renamed = getattr(entry, "renamed_flags", {})
    for argument in arguments:
        if argument == "--":  # fire's own flags follow
            return
        if not argument.startswith("--") or argument in HELP_FLAGS:
            continue
        name = argument[2:].split("=", 1)[0].replace("-", "_")
        # fire also reads --noNAME as NAME=False
        if name in names or (name.startswith("no") and name[2:] in names):
            continue
        if name in renamed:
            raise InputError(f"--{name} is now called --{renamed[name]}")
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
    succeeded = False
    try:
        check_flag_names(entry, sys.argv[1:])
        with contextlib.redirect_stderr(sys.stdout) if help_requested else contextlib.nullcontext():
            fire.Fire(checked_entry, serialize=lambda result: None)
        succeeded = True
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    finally:
        end_process_group(wait_for_the_others=succeeded)


def end_process_group(wait_for_the_others: bool) -> None:
    """End the process group of a run with several processes, before the interpreter exits.

    Left to the interpreter's exit, or ended by one process while another still works (rank 0 saving the
    adapter), gloo can abort the process that finished first ("terminate called without an active
    exception", SIGABRT), failing a run that succeeded. So: free the run's objects (a trainer's DDP model
    holds gloo work) while the interpreter is whole, wait until every process is done, then end the group.
    A failed process does not wait: the others may never arrive, and the launcher ends them."""
    # Looked up, not imported: an entry that never loaded torch has no group to end.
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return
    gc.collect()
    if wait_for_the_others:
        distributed.barrier()
    distributed.destroy_process_group()
