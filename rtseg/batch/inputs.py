"""What ``rtseg batch`` has to do: the input -> work units and where their outputs go.

The input is a folder (searched recursively; hidden folders and the output folder skipped), one
video or image file, or a glob (``'archive/**/*.mp4'``, quoted so the shell leaves it alone).
Files are videos (by suffix, :data:`VIDEO_EXTENSIONS`) or images
(:data:`rtseg.imageio.IMAGE_EXTENSIONS`); anything else is ignored (counted in the manifest).

A file's *key* is its path relative to the parent of the input root (the folder itself, a
file's folder, or a glob's fixed leading folders), so ``rtseg batch --input archive`` writes
``OUT/videos/archive/day1/clip.mp4/`` for ``archive/day1/clip.mp4``. Units:

- one per video: ``OUT/videos/<key>/`` (``frames.parquet``, ``overlay.mp4``, ``masks/``,
  ``done.json``);
- one per chunk of ``chunk`` images of one folder (natural order): the chunk's table and
  done-marker in ``OUT/images/<folder key>/parts/<NNNNN>/``, its masks in
  ``OUT/images/<folder key>/masks/``; the folder's one table ``OUT/images/<folder key>/images.parquet``
  is written when all its chunks are done.

Each unit has a *signature* (its files' paths, sizes and modification times and the options
that change outputs): a unit whose done-marker carries the same signature is skipped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from rtseg.errors import UserError
from rtseg.imageio import IMAGE_EXTENSIONS, natural_key

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm",
                    ".ts", ".mts", ".flv", ".3gp", ".ogv")
GLOB_CHARS = set("*?[")
VIDEOS_DIR, IMAGES_DIR, PARTS_DIR, MASKS_DIR = "videos", "images", "parts", "masks"
DONE = "done.json"
WORK_DIR = ".work"  # staging folders: everything half-written lives here only
MANIFEST = "manifest.json"


@dataclass
class Inputs:
    root: Path  # keys are relative to root.parent
    videos: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    ignored: int = 0


def _is_glob(s: str) -> bool:
    return any(c in s for c in GLOB_CHARS)


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = []
    for p in parts:
        if _is_glob(p):
            break
        fixed.append(p)
    return Path(*fixed) if fixed else Path(".")


def _walk(folder: Path, skip: set[str]) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")
                       and os.path.realpath(os.path.join(dirpath, d)) not in skip]
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return out


def discover(spec: str, out: Path | None = None) -> Inputs:
    """The videos and images of ``spec`` (folder, file or glob); UserError if none."""
    s = str(spec).strip()
    if not s:
        raise UserError("--input is empty")
    skip = {os.path.realpath(out)} if out is not None else set()
    p = Path(s).expanduser()
    if p.is_dir():
        root, files = p, _walk(p, skip)
    elif p.is_file():
        root, files = p.parent, [p]
    elif _is_glob(s):
        root = _glob_root(s)
        files = []
        for m in sorted(glob.glob(os.path.expanduser(s), recursive=True)):
            mp = Path(m)
            if mp.is_dir():
                files += _walk(mp, skip)
            elif mp.is_file():
                files.append(mp)
        if not files:
            raise UserError(f"no file matches --input {s}")
    else:
        raise UserError(f"input not found: {s}")
    inp = Inputs(root=Path(os.path.abspath(root)))
    seen = set()
    for f in sorted(files, key=lambda q: natural_key(str(q))):
        a = Path(os.path.abspath(f))
        if a in seen or any(str(a).startswith(k + os.sep) for k in skip):
            continue
        seen.add(a)
        suf = a.suffix.lower()
        if suf in VIDEO_EXTENSIONS:
            inp.videos.append(a)
        elif suf in IMAGE_EXTENSIONS:
            inp.images.append(a)
        else:
            inp.ignored += 1
    if not inp.videos and not inp.images:
        what = "folder" if p.is_dir() else "input"
        raise UserError(f"no video or image file in {what} {s} "
                        f"(videos: {', '.join(VIDEO_EXTENSIONS[:5])}...; images: "
                        f"{', '.join(IMAGE_EXTENSIONS)})")
    return inp


def key_of(path: Path, root: Path) -> str:
    """``path`` relative to the parent of ``root``, with forward slashes."""
    base = root.parent if root.parent != root else root
    try:
        rel = path.relative_to(base)
    except ValueError:
        rel = Path(path.name)
    return rel.as_posix()


def file_stamp(path: Path) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [str(path), -1, -1]
    return [str(path), int(st.st_size), int(st.st_mtime_ns)]


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def mask_names(images: list[Path]) -> list[str]:
    """Mask file names in one folder: ``<stem>.png``, ``<name>.png`` where stems collide."""
    names, used = [], set()
    for p in images:
        n = p.stem + ".png"
        if n in used:
            n = p.name + ".png"
        k = 2
        while n in used:
            n = f"{p.stem}-{k}.png"
            k += 1
        used.add(n)
        names.append(n)
    return names


def plan_units(inp: Inputs, out: Path, options_sig: str, chunk: int) -> list[dict]:
    """Work units (plain JSON-able dicts) for ``inp``; see the module doc."""
    units: list[dict] = []
    for v in inp.videos:
        key = key_of(v, inp.root)
        st = file_stamp(v)
        units.append({
            "kind": "video", "id": f"{VIDEOS_DIR}/{key}", "source": str(v), "key": key,
            "out": str(out),
            "final": str(out / VIDEOS_DIR / key), "weight": max(1, st[1]),
            "signature": digest([st, options_sig]),
        })
    by_folder: dict[Path, list[Path]] = {}
    for im in inp.images:
        by_folder.setdefault(im.parent, []).append(im)
    for folder, files in by_folder.items():
        fkey = key_of(folder, inp.root)
        names = mask_names(files)
        fdir = out / IMAGES_DIR / fkey
        n_parts = (len(files) + chunk - 1) // chunk
        for k in range(n_parts):
            fs, ns = files[k * chunk:(k + 1) * chunk], names[k * chunk:(k + 1) * chunk]
            units.append({
                "kind": "images", "id": f"{IMAGES_DIR}/{fkey}/{PARTS_DIR}/{k:05d}",
                "source": str(folder), "key": fkey, "part": k, "parts": n_parts, "out": str(out),
                "files": [str(f) for f in fs], "names": ns,
                "final": str(fdir / PARTS_DIR / f"{k:05d}"), "folder_out": str(fdir),
                "weight": sum(max(1, file_stamp(f)[1]) for f in fs),
                "signature": digest([[file_stamp(f) for f in fs], ns, options_sig]),
            })
    return units


def read_done(final: str | Path) -> dict | None:
    """The done-marker of a unit's output folder, or None (missing or unreadable)."""
    try:
        return json.loads((Path(final) / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
