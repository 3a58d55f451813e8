"""One shutdown path for SIGINT, SIGTERM and SIGHUP (Ctrl-C, ``docker stop``/systemd/``timeout``,
a dropped ssh session).

:class:`Shutdown` is a context manager that installs handlers for these signals, records the
first one and restores the previous handlers on exit. Two modes:

- ``mode="flag"`` (loops that can stop cleanly: ``rtseg stream``, ``rtseg predict``): the first
  signal only sets :attr:`Shutdown.requested` (and calls ``on_signal``); the loop polls it, stops
  reading, finishes and finalises what it writes. A *second* signal raises :class:`Interrupted`
  at once (an impatient user is never stuck).
- ``mode="raise"`` (everything else): the first signal raises :class:`Interrupted` in the main
  thread, so atomic writers drop their temporary files and nothing half-written stays.

``rtseg.cli.main`` enters one for the whole command (flag mode for ``stream`` and ``predict``,
which take it over with :func:`loop_shutdown`, so a signal during start-up is not lost);
:meth:`Shutdown.abort_on_signal` makes a flag-mode block (loading a model) stop at once.

:class:`Interrupted` is a ``BaseException`` like ``KeyboardInterrupt`` (``except Exception`` does
not swallow it; it is deliberately not a KeyboardInterrupt, which typer turns into a silent exit
130) carrying the signal; the CLI prints one line and exits ``128 + signum`` (130 SIGINT,
143 SIGTERM, 129 SIGHUP). Catch ``(KeyboardInterrupt, Interrupted)`` to handle both. A signal that is ignored when the context is entered (``nohup``
ignores SIGHUP) stays ignored. Outside the main thread the context does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
_ACTIVE: list["Shutdown"] = []  # entered Shutdowns of the main thread, outermost first


def signal_name(signum: int | None) -> str:
    if signum is None:
        return "SIGINT"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int | None) -> int:
    """The shell's convention: 128 + the signal number (130 for a plain KeyboardInterrupt)."""
    return 128 + int(signal.SIGINT if signum is None else signum)


class Interrupted(BaseException):
    """Raised for SIGINT/SIGTERM/SIGHUP; ``signum`` is None for a plain KeyboardInterrupt."""

    def __init__(self, signum: int | None = None) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def name(self) -> str:
        return signal_name(self.signum)

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


def interrupt_info(exc: BaseException | None) -> tuple[str, int]:
    """(signal name, exit code) for an Interrupted or a plain KeyboardInterrupt."""
    signum = getattr(exc, "signum", None)
    return signal_name(signum), exit_code(signum)


def _raise(signum: int) -> None:
    raise Interrupted(signum)


class Shutdown:
    """Install handlers for SIGINT/SIGTERM/SIGHUP for the duration of a ``with`` block."""

    def __init__(self, mode: str = "flag", on_signal: Callable[[int], None] | None = None,
                 signals: tuple[int, ...] = SIGNALS) -> None:
        if mode not in ("flag", "raise"):
            raise ValueError(f"mode must be 'flag' or 'raise', not {mode!r}")
        self.mode = mode
        self.on_signal = on_signal
        self.signals = signals
        self.signum: int | None = None
        self._old: dict[int, object] = {}
        self._depth = 0  # re-entrant: a caller may hand its (entered) Shutdown to a callee

    # --- state the loops poll ----------------------------------------------------------------
    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __bool__(self) -> bool:  # ``if shutdown:`` reads as "a stop was asked for"
        return self.requested

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal_name(self.signum)

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)

    def request(self, signum: int = signal.SIGINT) -> None:
        """Record a stop as if ``signum`` had arrived (a KeyboardInterrupt caught by a loop)."""
        if self.signum is None:
            self.signum = signum

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop was asked for."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextlib.contextmanager
    def abort_on_signal(self) -> Iterator["Shutdown"]:
        """Inside the block a signal raises :class:`Interrupted` at once (work that is simply
        dropped: loading a model); raises at entry if a stop was already asked for."""
        self.check()
        old, self.on_signal = self.on_signal, _raise
        try:
            yield self
        finally:
            self.on_signal = old

    # --- the handler ---------------------------------------------------------------------------
    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if self.mode == "raise" or not first:
            raise Interrupted(signum)
        if self.on_signal is not None:
            try:
                self.on_signal(signum)
            except Exception:  # a callback must never turn a clean stop into a crash
                pass

    def __enter__(self) -> "Shutdown":
        self._depth += 1
        if self._depth > 1 or threading.current_thread() is not threading.main_thread():
            return self
        _ACTIVE.append(self)
        for s in self.signals:
            try:
                old = signal.getsignal(s)
                if old is signal.SIG_IGN:  # nohup & co.: the user asked to ignore it
                    continue
                signal.signal(s, self._handle)
            except (ValueError, OSError):  # not settable here
                continue
            self._old[s] = old
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        for s, old in self._old.items():
            try:
                signal.signal(s, old if old is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass
        self._old.clear()


def loop_shutdown() -> Shutdown:
    """The Shutdown a clean-stopping loop should enter: the innermost active one if it is in
    flag mode (the CLI enters one before parsing the command line, so a signal that arrives
    while the command starts is not lost), else a new ``Shutdown("flag")``."""
    if _ACTIVE and _ACTIVE[-1].mode == "flag":
        return _ACTIVE[-1]
    return Shutdown("flag")


STOP = (KeyboardInterrupt, Interrupted)  # ``except STOP:`` handles Ctrl-C and every signal

__all__ = ["STOP", "loop_shutdown", "Shutdown", "Interrupted", "SIGNALS", "signal_name", "exit_code", "interrupt_info"]
