"""The Ray back end of ``rtseg features`` / ``rtseg propagate`` (``--workers N``, ``--address``).

:class:`RayMapper` is a drop-in for ``map(fn, items)`` in :func:`rtseg.features.extract_paths`
and :func:`rtseg.propagate.kmeans.tile_features`: the same per-file function (decode + the four LIRE
descriptors) runs on Ray Data tasks over chunks of paths, and the results come back in the
order of the paths. The caller keeps everything else (the cache lookups before, the cache
writes after, the progress bar), so the cache file and the features are the single-process
path's, value for value.
"""

from __future__ import annotations

import pickle
from typing import Callable, Iterable, Iterator, Sequence


def _chunks(n: int, workers: int, most: int = 64) -> int:
    """Paths per Ray task: a few tasks per worker (balance), at most ``most`` (progress)."""
    return max(1, min(most, -(-n // (4 * max(1, workers)))))


class _Apply:
    """A Ray Data row function: ``fn`` over the row's paths, results pickled."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, row: dict) -> dict:
        import cv2

        cv2.setNumThreads(1)  # one core per task: the workers are the parallelism
        from pathlib import Path

        out = [self.fn(Path(p)) for p in row["paths"]]
        return {"i": row["i"], "blob": pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)}


class RayMapper:
    """``mapper(fn, items)`` -> iterator of ``fn(item)`` in order, computed on Ray Data.

    ``workers``: tasks at once (a local Ray of that many CPUs when ``address`` is None);
    ``address``: an existing cluster (see :mod:`rtseg.batch.raysession`), where the files must
    be at the same paths (a shared file system) and rtseg installed.
    """

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        from rtseg.batch.raysession import check_address
        from rtseg.errors import UserError

        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        if address is not None:
            check_address(address)  # bad address: one error line before any work
        self.workers = workers
        self.address = address

    def __call__(self, fn: Callable, items: Sequence) -> Iterator:
        items = [str(p) for p in items]
        if not items:
            return iter(())
        return self._run(fn, items)

    def _run(self, fn: Callable, items: list[str]) -> Iterable:
        from rtseg.batch.raysession import import_ray, ray_session
        from rtseg.batch.run import cpu_cores

        import_ray()
        local = self.workers or cpu_cores()
        with ray_session(local, 1, self.address) as info:
            import ray.data

            workers = self.workers or (local if self.address is None else max(1, int(info["cpus"])))
            size = _chunks(len(items), workers)
            rows = [{"i": k, "paths": items[s:s + size]}
                    for k, s in enumerate(range(0, len(items), size))]
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            ds = ds.map(_Apply(fn), num_cpus=1,
                        compute=ray.data.TaskPoolStrategy(size=min(workers, len(rows))))
            pending: dict[int, list] = {}
            nxt = 0
            for row in ds.iter_rows():
                pending[int(row["i"])] = pickle.loads(row["blob"])
                while nxt in pending:
                    yield from pending.pop(nxt)
                    nxt += 1
            if nxt != len(rows):
                from rtseg.errors import UserError

                raise UserError(f"Ray returned {nxt} of {len(rows)} feature chunks (a worker died?)")
