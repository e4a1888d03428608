"""The errors an entry script reports as one line: bad user input, and a training run that diverged."""


class InputError(ValueError):
    """Bad input that the user must fix; entry scripts print it as one line and exit non-zero.

    The message names where the problem is: a file, a record index and a field, or a flag.
    """


class TrainingDiverged(RuntimeError):
    """The training loss or a trained weight turned non-finite: the run stopped at that step without saving an
    adapter as finished. Entry scripts print it as one line and exit 1."""
