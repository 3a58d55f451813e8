"""On-disk cache of the global features of image files.

An entry is keyed by the file's absolute path, size and modification time (ns): a file that is
rewritten, touched or replaced misses. One entry per path (a changed file replaces its old
entry). The cache is one ``.npz`` file, loaded on first use and written atomically
(:mod:`rtseg.atomic`) by :meth:`FeatureCache.save`; when saving, entries another process wrote
to the same file meanwhile are merged in. The file records :data:`FEATURES_VERSION` and the
feature count: a cache written by another definition of the features is ignored (and
overwritten on the next save), as is an unreadable one. A cache that cannot be written is
reported with a warning: it never fails the computation.

Default location: ``$RTSEG_CACHE_DIR/features.npz`` if ``RTSEG_CACHE_DIR`` is set, else
``~/.cache/rtseg/features.npz``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from rtseg.atomic import atomic_open
from rtseg.errors import UserError

# Bump when any descriptor's definition changes: older caches are then ignored.
FEATURES_VERSION = "lire-4-v1"
N_FEATURES = 226
CACHE_FILE_NAME = "features.npz"

Key = tuple[str, int, int]  # (absolute path, size in bytes, mtime in ns)


def default_cache_path() -> Path:
    """``$RTSEG_CACHE_DIR/features.npz``, or ``~/.cache/rtseg/features.npz``."""
    env = os.environ.get("RTSEG_CACHE_DIR")
    folder = Path(env).expanduser() if env else Path.home() / ".cache" / "rtseg"
    return folder / CACHE_FILE_NAME


def file_key(path: str | os.PathLike) -> Key | None:
    """Cache key of a file, or None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)


class FeatureCache:
    """Features of image files keyed by (absolute path, size, mtime_ns), persisted as ``.npz``.

    Usage::

        cache = FeatureCache("/tmp/features.npz")  # None: default_cache_path()
        key = file_key("image.jpg")   # or pass the path itself to get/put
        cache.get(key)                # None on a miss
        cache.put(key, vector)        # float32 [226]
        cache.save()                  # atomic; merges what others saved meanwhile

    ``hits`` and ``misses`` count the :meth:`get` answers.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path is not None else default_cache_path()
        self._entries: dict[str, tuple[int, int, np.ndarray]] | None = None
        self._disk_stamp: tuple[int, int] | None = None
        self._dirty = False
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------ access

    def get(self, key: Key | str | os.PathLike | None) -> np.ndarray | None:
        """The cached vector for ``key`` (a copy), or None. A path is keyed by :func:`file_key`."""
        if key is not None and not isinstance(key, tuple):
            key = file_key(key)
        entry = self._load().get(key[0]) if key is not None else None
        if entry is None or entry[0] != key[1] or entry[1] != key[2]:
            self.misses += 1
            return None
        self.hits += 1
        return entry[2].copy()

    def put(self, key: Key | str | os.PathLike | None, features: np.ndarray) -> None:
        """Store a float32 [226] vector for ``key`` (or a path, keyed by :func:`file_key`)."""
        if key is not None and not isinstance(key, tuple):
            key = file_key(key)
        if key is None:
            return
        vec = np.asarray(features, np.float32).reshape(-1)
        if vec.shape != (N_FEATURES,):
            raise ValueError(f"expected {N_FEATURES} features, got {vec.shape}")
        self._load()[key[0]] = (key[1], key[2], vec.copy())
        self._dirty = True

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, path: object) -> bool:
        key = file_key(path) if isinstance(path, (str, os.PathLike)) else None
        if key is None:
            return False
        entry = self._load().get(key[0])
        return entry is not None and entry[:2] == key[1:]

    def clear(self) -> None:
        self._entries = {}
        self._dirty = True

    # ------------------------------------------------------------ persistence

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return int(st.st_size), int(st.st_mtime_ns)

    def _read_disk(self) -> dict[str, tuple[int, int, np.ndarray]]:
        if not self.path.exists():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["version"]) != FEATURES_VERSION or int(z["n_features"]) != N_FEATURES:
                    return {}
                names = bytes(z["paths"]).decode("utf-8").split("\0") if len(z["sizes"]) else []
                sizes, mtimes, feats = z["sizes"], z["mtimes"], z["features"]
                if not (len(names) == len(sizes) == len(mtimes) == len(feats)):
                    raise ValueError("inconsistent arrays")
                return {n: (int(s), int(m), f) for n, s, m, f in
                        zip(names, sizes.tolist(), mtimes.tolist(), feats.astype(np.float32))}
        except Exception as exc:  # noqa: BLE001 - any unreadable cache is just ignored
            warnings.warn(f"ignoring unreadable feature cache {self.path}: {exc}", stacklevel=3)
            return {}

    def _load(self) -> dict[str, tuple[int, int, np.ndarray]]:
        if self._entries is None:
            self._disk_stamp = self._stamp()
            self._entries = self._read_disk()
        return self._entries

    def save(self) -> bool:
        """Write the cache if it changed; returns True if written. Never raises for I/O."""
        entries = self._load()
        if not self._dirty:
            return False
        stamp = self._stamp()
        if stamp is not None and stamp != self._disk_stamp:  # someone else saved meanwhile
            for name, entry in self._read_disk().items():
                entries.setdefault(name, entry)
        names = list(entries)
        try:
            with atomic_open(self.path, "wb") as fh:
                np.savez(
                    fh,
                    version=np.array(FEATURES_VERSION),
                    n_features=np.array(N_FEATURES),
                    paths=np.frombuffer("\0".join(names).encode("utf-8"), np.uint8),
                    sizes=np.array([entries[n][0] for n in names], np.int64),
                    mtimes=np.array([entries[n][1] for n in names], np.int64),
                    features=(np.stack([entries[n][2] for n in names]) if names
                              else np.zeros((0, N_FEATURES), np.float32)),
                )
        except (OSError, UserError) as exc:
            warnings.warn(f"cannot save the feature cache {self.path}: {exc}", stacklevel=2)
            return False
        self._dirty = False
        self._disk_stamp = self._stamp()
        return True
