"""Atomic file output: write to a temporary file beside the target, then rename.

A crash or a bad input never leaves a half-written file, and what was saved before stays.
The file gets the mode ``open()`` would give it (``0o666 & ~umask``), or keeps the mode of the
file it replaces (``mkstemp`` alone would make every output 0600).

Every output goes through here, so the rules live here once:

- a full disk (ENOSPC, EDQUOT, EFBIG), an I/O error (EIO) or a read-only file system while
  writing becomes one ``UserError`` line naming the file ("no space left on device writing
  X"), the temporary file is removed and the earlier file stays (:func:`write_error`);
- a library that reports a failed write only as ``False`` (OpenCV) gets the same line when
  the disk is the cause (:func:`failed_write`);
- an output that is one of the command's inputs is refused before any work
  (:func:`refuse_inputs`);
- temporary files are named ``.NAME.tmp.<pid>@<host>.*``; the first write into a folder removes
  those of processes that no longer run (a SIGKILLed earlier run), :func:`sweep_stale`;
- an output folder written as a whole (a model bundle) is built beside its target and replaces
  it only once complete (:func:`atomic_dir`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
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


# --- a full disk, a failing device ---------------------------------------------------------
DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file too large for its file system", errno.EIO: "I/O error",
               errno.EROFS: "read-only file system"}
LOW_SPACE = 1 << 16  # bytes: below this a failed write is put down to a full disk


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def write_error(path: str | os.PathLike, exc: OSError) -> UserError:
    """The one line for an OSError while writing ``path``."""
    why = DISK_ERRNOS.get(exc.errno) or exc.strerror or str(exc)
    return UserError(f"{why} writing {path}")


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes the current user may still write below ``folder`` (None: unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def check_free_space(path: str | os.PathLike, need: int) -> None:
    """UserError before any work when the file system of ``path`` lacks ``need`` bytes."""
    folder = Path(path).parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    free = free_bytes(folder)
    if free is not None and need > free:
        raise UserError(f"no space left on device writing {path} (it needs {_size(need)}, "
                        f"{_size(free)} free)")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _nearly_full(folder: str | os.PathLike) -> bool:
    free = free_bytes(folder)
    return free is not None and free < LOW_SPACE


def failed_write(path: str | os.PathLike, tmp: str | os.PathLike, what: str) -> UserError:
    """A library said "not written" (OpenCV's ``False``): the disk's line when it is full,
    else ``what`` (the cause the library can have: a format, a frame size)."""
    if _nearly_full(Path(tmp).parent):
        return UserError(f"no space left on device writing {path}")
    return UserError(what)


# --- outputs that are inputs ------------------------------------------------------------------
def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def refuse_inputs(out: str | os.PathLike | None, what: str, *inputs: str | os.PathLike | None,
                  folder_kinds: tuple[str, ...] = ()) -> None:
    """UserError if the output ``out`` is one of ``inputs`` (the same file: same path, a link,
    a hard link). An input folder refuses a file inside it whose extension is in
    ``folder_kinds``: it is, or would next time be, one of its inputs."""
    if out is None:
        return
    out = Path(out)
    for inp in inputs:
        if inp is None or (isinstance(inp, str) and "://" in inp):
            continue
        inp = Path(inp)
        if not inp.exists():
            continue
        if inp.is_dir():
            if out.suffix.lower() in folder_kinds and _inside(out, inp):
                raise UserError(f"{what} {out} is inside the input folder {inp}: "
                                "choose a file outside it")
        elif out.exists() and _same(out, inp):
            raise UserError(f"{what} {out} is the input {inp}: it would be overwritten; "
                            "choose another file name")


# --- temporary files --------------------------------------------------------------------------
_TMP = re.compile(r"^\..+\.tmp\.(\d+)@([A-Za-z0-9-]*)\.")
_swept: set[str] = set()


def _host() -> str:
    """This machine's short name, in temporary file names: a process id means something only
    on its own machine (a shared output folder of a Ray cluster)."""
    import socket

    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname().split(".")[0])[:32]


def temp_prefix(name: str) -> str:
    return f".{name}.tmp.{os.getpid()}@{_host()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def sweep_stale(folder: str | os.PathLike) -> int:
    """Remove ``.NAME.tmp.<pid>.*`` files in ``folder`` whose process no longer runs; once per
    folder and process. Returns how many were removed."""
    key = os.path.abspath(folder)
    if key in _swept:
        return 0
    _swept.add(key)
    n, host = 0, _host()
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        m = _TMP.match(name)
        if m and m.group(2) == host and not _alive(int(m.group(1))):
            p = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if os.path.isdir(p) and not os.path.islink(p):  # an atomic_dir's unfinished folder
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
                n += 1
    return n


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` defaults to the target's suffix, so libraries that pick a format from the file
    name (OpenCV, torch) still see the right one. A disk error in the block (or the rename)
    becomes one ``UserError`` line; the temporary file is removed either way.
    """
    path = ensure_parent(path)
    suffix = path.suffix if suffix is None else suffix
    sweep_stale(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=suffix,
                                   dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _set_mode(tmp_path, path)
        os.replace(tmp_path, path)
    except BaseException as exc:
        # a library's own words for ENOSPC (torch...): judged while the temporary file still
        # fills the disk
        full = (isinstance(exc, Exception) and not isinstance(exc, UserError)
                and not is_disk_error(exc) and _nearly_full(path.parent))
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if is_disk_error(exc):
            raise write_error(path, exc) from None
        if full:
            raise UserError(f"no space left on device writing {path}") from None
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
            raise write_error(path, exc) from None
        with fh:  # a full disk raises in a write, the flush or the close: all inside atomic_path
            yield fh


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; when the block succeeds it replaces ``path`` as a
    whole, so an existing folder is never half-overwritten: readers see the old files or the
    new ones. Files of an existing ``path`` that the block did not write (a model card beside a
    bundle) are kept (hard links, else copies). If the block fails, the new folder is removed
    and ``path`` is as it was; a disk error is one ``UserError`` line."""
    path = ensure_parent(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder is a file: {path}")
    sweep_stale(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), dir=path.parent))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the output from others
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        yield tmp
        if path.is_dir():
            _carry_over(path, tmp)
        _publish(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_error(exc):
            raise write_error(path, exc) from None
        raise


def _carry_over(old: Path, new: Path) -> None:
    """Entries of ``old`` that ``new`` lacks, linked (or copied) into ``new``; ``old`` is untouched."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in os.scandir(old):
        dst = new / entry.name
        if dst.exists() or dst.is_symlink():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=link)
        else:
            link(entry.path, str(dst))


def _publish(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path``; an existing ``path`` is moved aside first and removed after
    (``.NAME.old.<pid>@<host>``: if the process dies between the two renames, the old folder is
    there, never swept)."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}.old.{os.getpid()}@{_host()}"
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


LOCK_NAMES = (".lock",)  # a lock file alone is no output


@contextlib.contextmanager
def removed_if_failed(folder: str | os.PathLike) -> Iterator[None]:
    """An output folder the block may create: if the block fails (bad input, a signal, a full
    disk) and the folder did not exist before, it is removed again when nothing was saved in
    it (only empty folders and a lock file): no empty folder or lone ``.lock`` is left."""
    top = Path(os.path.abspath(folder))
    if top.exists():
        yield
        return
    while not top.parent.exists() and top.parent != top:
        top = top.parent  # the first folder the block would create (mkdir parents=True)
    try:
        yield
    except BaseException:
        if top.is_dir():
            remove_if_empty(top)
        raise


def remove_if_empty(folder: Path) -> bool:
    """Remove ``folder`` if it holds only empty folders and lock files; True if removed."""
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    if any(p.name not in LOCK_NAMES for p in files):
        return False
    for p in files:
        with contextlib.suppress(OSError):
            p.unlink()
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()
    return not folder.exists()


def write_text(path: str | os.PathLike, text: str) -> None:
    data = text.encode("utf-8")
    check_free_space(path, len(data))
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    check_free_space(path, len(data))
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
