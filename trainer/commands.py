"""Command lines from flag classes: a flag is a dataclass field with its default and help, a command a
function of one flags object. `command` turns it into a function of keyword flags, which fire runs
as a command line and tests call directly; building the object checks every flag (types, ranges,
flags that need each other) before any work. Light to import: the data tools use it too; the
stages' shared flag groups are in trainer/flags.py.

Help text lives in each field's metadata; a class that only changes a default redeclares the field
with the plain value and keeps the group's help. Dataclasses collect fields from the last base
class to the first, so stages list their groups last-shown first.
"""

import contextlib
import dataclasses
import functools
import inspect
import typing

from trainer.cli import accepts
from trainer.errors import InputError
from trainer.outputs import claimed_output_dir


def flag(default, help: str):
    """A flag with its default and the sentence --help shows for it."""
    return dataclasses.field(default=default, metadata={"help": help})


def required(help: str):
    """A flag without a default, which every call gives (declared before the flags that have one)."""
    return dataclasses.field(metadata={"help": help})


def flag_help(flags_class: type, name: str) -> str:
    """The help of flag `name`: from the nearest class that declared it with help."""
    for klass in flags_class.__mro__:
        field = getattr(klass, "__dataclass_fields__", {}).get(name)
        if field is not None and "help" in field.metadata:
            return field.metadata["help"]
    raise ValueError(f"{flags_class.__name__}.{name} has no help text")


@dataclasses.dataclass
class Flags:
    """Base of every command's flags: checks them all when built. `renamed` maps a flag's old name to its
    new one: given on the command line, the old name is refused with a pointer to the new one
    (trainer.cli.check_flag_names), unless the command has a flag of that name now."""

    renamed: typing.ClassVar[dict[str, str]] = {}

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            # fire passes a value it cannot parse through as a string: name the flag instead.
            if not accepts(field.type, value):
                expected = getattr(field.type, "__name__", str(field.type))
                raise InputError(f"--{field.name}: expected {expected}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Raise InputError for a value out of range or flags that contradict each other; runs after
        the type checks. Groups and stages extend it, each calling super().check() first."""


@dataclasses.dataclass
class OutputFlags(Flags):
    output_dir: str = flag("output", "Folder for this stage's outputs (docs/stages.md, \"Outputs\") and "
                                     "run_config.json, the flags it ran with.")


def _docstring(summary: str, flags_class: type) -> str:
    """A Google-style docstring, which fire shows as --help."""
    lines = [summary, "", "Args:"]
    lines += [f"    {field.name}: {flag_help(flags_class, field.name)}" for field in dataclasses.fields(flags_class)]
    return "\n".join(lines) + "\n"


def command(flags_class: type, summary: str | None = None):
    """Decorator: a stage function of one `flags_class` object becomes a function of keyword flags.

    The result's signature is the flags with their defaults (what fire reads) and its docstring the
    stage's first line (or `summary`) with every flag's help; calling it builds and checks the flags
    object, claims the output folder when the flags have one (trainer.outputs.claimed_output_dir: one
    run per folder), then runs the stage.
    """
    parameters = [inspect.Parameter(field.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=field.type,
                                    default=(inspect.Parameter.empty if field.default is dataclasses.MISSING
                                             else field.default))
                  for field in dataclasses.fields(flags_class)]

    def decorate(stage):
        @functools.wraps(stage)
        def entry(*args, **kwargs):
            bound = entry.__signature__.bind(*args, **kwargs)
            bound.apply_defaults()
            flags = flags_class(**bound.arguments)
            # One run per output folder, claimed once the flags are checked and before any work.
            with claimed_output_dir(flags.output_dir) if isinstance(flags, OutputFlags) else contextlib.nullcontext():
                return stage(flags)

        entry.__signature__ = inspect.Signature(parameters)
        entry.renamed_flags = {old: new for klass in reversed(flags_class.__mro__)
                               for old, new in getattr(klass, "renamed", {}).items()
                               if old not in entry.__signature__.parameters}
        entry.__doc__ = _docstring(summary or stage.__doc__.strip().split("\n", 1)[0], flags_class)
        return entry

    return decorate
