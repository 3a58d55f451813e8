"""What an ``rtseg batch`` run knows while it runs: the state behind ``OUT/manifest.json``
(written atomically every few seconds and at the end), earlier runs' failures, and the merge of
image-folder tables at the end."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from rtseg.atomic import write_json
from rtseg.batch.inputs import MANIFEST, PARTS_DIR

MANIFEST_EVERY = 3.0  # seconds between manifest updates while running


class RunState:
    """What the manifest says; updated as results arrive."""

    def __init__(self, cfg, out: Path, payload: dict, inp, units: list[dict]) -> None:
        self.cfg, self.out, self.payload, self.inp = cfg, out, payload, inp
        self.units = units
        self.results: dict[str, dict] = {}  # unit id -> result (done this run, skipped, failed)
        self.this_run: set[str] = set()
        self.t0 = time.time()
        self.t_work: float | None = None
        self.t_work_end: float | None = None
        self.ray: dict[str, Any] = {}
        self.folder_tables: dict[str, str] = {}
        self._last_write = 0.0
        self.lock = threading.Lock()

    def manifest(self, complete: bool) -> dict:
        done, failed = [], []
        frames_run = frames_all = files_done = files_run = 0
        folders: dict[str, list[dict]] = {}
        for u in self.units:
            r = self.results.get(u["id"])
            if u["kind"] == "images":
                folders.setdefault(u["folder_out"], []).append(u)
                continue
            if r is None:
                continue
            if r["status"] != "done":
                failed.append({"source": u["source"], "reason": r.get("reason", "failed")})
                continue
            run = u["id"] in self.this_run
            frames_all += r["frames"]
            frames_run += r["frames"] if run else 0
            files_done += 1
            files_run += 1 if run else 0
            done.append({"source": u["source"], "kind": "video",
                         "output": os.path.relpath(u["final"], self.out),
                         "frames": r["frames"], "unreadable_frames": r.get("unreadable", 0),
                         "fps": r.get("fps"), "frame_wh": r.get("frame_wh"),
                         "polyp_frames": r.get("polyp_frames"), **r.get("outputs", {}),
                         "this_run": run})
        for folder_out, parts in folders.items():
            rs = [self.results.get(p["id"]) for p in parts]
            ok = [r for r in rs if r is not None and r["status"] == "done"]
            for p, r in zip(parts, rs):
                if r is not None and r["status"] != "done":
                    failed.append({"source": f"{p['source']} (images {p['files'][0]} .. "
                                             f"{p['files'][-1]})",
                                   "reason": r.get("reason", "failed")})
            for r in ok:
                failed += r.get("failed_files", [])
                run = r["id"] in self.this_run
                n_img = r["frames"]
                frames_all += n_img
                frames_run += n_img if run else 0
                files_done += n_img
                files_run += n_img if run else 0
            if len(ok) == len(parts) and folder_out in self.folder_tables:
                done.append({"source": parts[0]["source"], "kind": "images",
                             "output": os.path.relpath(folder_out, self.out),
                             "images": sum(r["frames"] for r in ok),
                             "unreadable_images": sum(len(r.get("failed_files", [])) for r in ok),
                             "table": self.folder_tables[folder_out], "masks": "masks",
                             "this_run": any(r["id"] in self.this_run for r in ok)})
        now = time.time()
        t_end = self.t_work_end or now
        work_s = (t_end - self.t_work) if self.t_work else 0.0
        ran = [self.results[i] for i in self.this_run if "t_end" in self.results[i]]
        busy_s = (max(r["t_end"] for r in ran) - min(r["t_start"] for r in ran)) if ran else 0.0
        n_files = len(self.inp.videos) + len(self.inp.images)
        return {
            "rtseg_batch": 1,
            "input": self.cfg.input, "out": str(self.out),
            "model": {"spec": self.payload["spec"], "runtime": self.payload["describe"],
                      "sha256": self.payload["sha256"], "input_size": self.payload["input_size"]},
            "options": {**self.cfg.output_options(), "workers": self.cfg.workers,
                        "threads": self.cfg.threads, "chunk": self.cfg.chunk},
            "ray": self.ray,
            "started_at": _iso(self.t0), "finished_at": _iso(now) if complete else None,
            "complete": complete,
            "totals": {"files": n_files, "files_done": files_done, "files_this_run": files_run,
                       "files_already_done": files_done - files_run, "failed": len(failed),
                       "ignored_files": self.inp.ignored, "frames": frames_all,
                       "frames_this_run": frames_run, "wall_s": round(now - self.t0, 3),
                       "processing_s": round(work_s, 3),
                       "frames_per_s": round(frames_run / work_s, 3) if work_s > 0 else None,
                       # from the first unit's start to the last one's end: without the start-up
                       # of Ray and of the workers (model loading)
                       "units_s": round(busy_s, 3),
                       "frames_per_s_units": round(frames_run / busy_s, 3) if busy_s > 0 else None},
            "done": done, "failed": failed,
            # for the next run: units that failed for their input are not retried while the
            # file is unchanged (same signature)
            "failed_units": [{"id": r["id"], "source": r["source"], "kind": r["kind"],
                              "status": "failed", "frames": 0, "files": r.get("files", 1),
                              "signature": r.get("signature"), "reason": r.get("reason"),
                              "bad_input": r.get("bad_input", False)}
                             for r in self.results.values() if r.get("status") != "done"],
        }

    def collect_finished(self) -> int:
        """Units finished on disk (done-marker with this run's signature) whose result had not
        reached the driver yet (a signal stopped it first): counted as done this run, so the
        manifest of a stopped run says what is on disk. Returns how many."""
        from rtseg.batch.inputs import read_done

        n = 0
        for u in self.units:
            if u["id"] in self.results:
                continue
            d = read_done(u["final"])
            if d is not None and d.get("status") == "done" and d.get("signature") == u["signature"]:
                self.results[u["id"]] = d
                self.this_run.add(u["id"])
                n += 1
        return n

    def write(self, complete: bool = False, force: bool = False) -> dict | None:
        now = time.time()
        if not force and now - self._last_write < MANIFEST_EVERY:
            return None
        self._last_write = now
        m = self.manifest(complete)
        write_json(self.out / MANIFEST, m)
        return m


def known_failures(out: Path) -> dict[str, dict]:
    """Units of the last run that failed for their input (unchanged file: same failure)."""
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        return {f["id"]: f for f in m.get("failed_units", [])
                if isinstance(f, dict) and f.get("bad_input") and "id" in f}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def merge_folders(state: RunState) -> None:
    """Write each image folder's table once all its chunks are done (and something changed)."""
    from rtseg.batch.work import merge_image_tables, table_name

    fmt = state.cfg.table
    folders: dict[str, list[dict]] = {}
    for u in state.units:
        if u["kind"] == "images":
            folders.setdefault(u["folder_out"], []).append(u)
    for folder_out, parts in folders.items():
        rs = [state.results.get(p["id"]) for p in parts]
        if not all(r is not None and r["status"] == "done" for r in rs):
            continue
        fo = Path(folder_out)
        target = fo / table_name("images", fmt)
        # chunks of another chunking (an earlier --chunk, or a folder that shrank) go
        with contextlib.suppress(OSError):
            wanted = {Path(p["final"]).name for p in parts}
            for d in (fo / PARTS_DIR).iterdir():
                if d.name not in wanted:
                    shutil.rmtree(d, ignore_errors=True)
        if not target.is_file() or any(p["id"] in state.this_run for p in parts):
            merge_image_tables(fo, len(parts), fmt, PARTS_DIR)
        state.folder_tables[folder_out] = target.name
