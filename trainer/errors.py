"""The one error type for bad user input (data files, flags, model paths)."""


class InputError(ValueError):
    """Bad input that the user must fix; entry scripts print it as one line and exit non-zero.

    The message names where the problem is: a file, a record index and a field, or a flag.
    """
