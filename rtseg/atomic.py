"""Atomic file output: write to a temporary file beside the target, then rename.

A crash or a bad input never leaves a half-written file, and what was saved before stays.
The file gets the mode ``open()`` would give it (``0o666 & ~umask``), or keeps the mode of the
file it replaces (``mkstemp`` alone would make every output 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from rtseg.errors import UserError


def ensure_parent(path: str | os.PathLike) -> Path:
    """Create the parent folder of ``path``; raise UserError if that is impossible."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder {path.parent}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot write to {path.parent}: permission denied")
    return path


def check_out_file(path: str | os.PathLike | None, what: str = "output") -> Path | None:
    """An output file option, checked before any work: not a folder, its folder writable."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file name")
    return ensure_parent(path)


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else os.umask."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # set and restore at once (no file is created in between here)
    os.umask(mask)
    return mask


def target_mode(path: str | os.PathLike) -> int:
    """Permission bits for a new file at ``path``: those of the file it replaces, or
    ``0o666 & ~umask`` (what ``open()`` would give; ``mkstemp`` alone gives 0600)."""
    try:
        st = os.stat(path)
    except OSError:
        return 0o666 & ~current_umask()
    import stat

    return (stat.S_IMODE(st.st_mode) & 0o777 if stat.S_ISREG(st.st_mode)
            else 0o666 & ~current_umask())


def _set_mode(tmp: Path, path: Path) -> None:
    try:
        os.chmod(tmp, target_mode(path))
    except OSError:  # a file system without modes (some mounts): keep what mkstemp gave
        pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` defaults to the target's suffix, so libraries that pick a format from the file
    name (OpenCV, torch) still see the right one.
    """
    path = ensure_parent(path)
    suffix = path.suffix if suffix is None else suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _set_mode(tmp_path, path)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open()`` for writing, atomically: the target appears only once the block succeeds."""
    if "r" in mode or "a" in mode:
        raise ValueError("atomic_open is for writing only")
    with atomic_path(path) as tmp:
        try:
            fh = open(tmp, mode, **kwargs)
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        with fh:
            yield fh


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
