"""One exception type for every user-facing failure.

Raise :class:`UserError` with a one-line message for bad input (missing file, corrupt bundle,
out-of-range option...). The CLI prints it as ``error: <message>`` on stderr and exits with
code 2, without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit code 2."""

    exit_code = 2


def brief(text: object, limit: int = 200) -> str:
    """One readable line of a library's error message for a ``UserError``.

    Drops ANSI colour codes, takes the first non-empty line (torch's weights-only failure: the
    line that names the problem), and shortens a long line at a sentence end, else at a word,
    so a message is never cut mid-word ("...your checkpoint file is").
    """
    import re

    s = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(text))
    lines = [ln.strip() for ln in s.splitlines() if ln.strip()]
    line = next((ln for ln in lines if "WeightsUnpickler error:" in ln), lines[0] if lines else "")
    if len(line) <= limit:
        return line
    cut = line[:limit]
    end = max(cut.rfind(". "), cut.rfind("; "))
    if end >= 30:
        return cut[:end + 1]
    space = cut.rfind(" ")
    return (cut[:space] if space >= 30 else cut).rstrip(" ,:;") + "..."


def first_line(exc: BaseException, limit: int = 200, default: str | None = None) -> str:
    """The first line of an exception's message, cut at ``limit`` characters, for one-line
    reports; an empty message gives ``default`` (None: the exception's type name)."""
    lines = str(exc).strip().splitlines()
    if lines:
        return lines[0][:limit]
    return type(exc).__name__ if default is None else default


def run_script(work):
    """Run a script's ``work()`` and return its result; a :class:`UserError` becomes one
    ``error:`` line on stderr and exit code 2 (the CLI's rule, for benchmarks and experiments)."""
    import sys

    try:
        return work()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
