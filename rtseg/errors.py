"""One exception type for every user-facing failure.

Raise :class:`UserError` with a one-line message for bad input (missing file, corrupt bundle,
out-of-range option...). The CLI prints it as ``error: <message>`` on stderr and exits with
code 2, without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit code 2."""

    exit_code = 2
