"""The one error type a user sees: the CLI prints its message, with no traceback, and exits non-zero."""


class GenloopError(Exception):
    """A problem the user can fix (bad parameter, bad data, unreachable source)."""
