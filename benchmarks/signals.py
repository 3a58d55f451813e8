"""Stress check of the shutdown path: SIGTERM, SIGHUP and SIGINT at a random moment.

Each run starts ``python -m rtseg stream --source CLIP --loop --headless --save out.mp4 --json
s.json`` as a real process (umask 022) on a generated synthetic clip (384 x 288, 25 fps; no
data folder needed), sends one signal at a moment drawn uniformly from ``[--min-delay,
--duration]`` seconds after the start, and checks:

- the exit code is 128 + the signal number (143 SIGTERM, 129 SIGHUP, 130 SIGINT);
- ``s.json`` exists, says ``interrupted`` and names the signal;
- the saved video decodes with OpenCV to exactly ``frames_written`` frames (a signal during
  start-up, before the first frame: ``frames_written`` 0 and no video);
- no temporary file (``.NAME.tmp.*``) is left, no traceback is printed, and every output is
  mode 644.

It prints a rich table (one row per signal) and writes every run to ``--json``. The default is
the full check (20 runs per signal, 30 s runs: ~20 min of wall time on 2 CPU cores); use
fewer/shorter runs for a quick check. ``--min-delay`` (default 1 s) keeps the signal after the
Python interpreter has started rtseg (before that the interpreter's defaults apply, not rtseg's).

Example::

    python benchmarks/signals.py --runs 20 --duration 30 --json signals.json
    python benchmarks/signals.py --runs 3 --duration 8 --signals TERM --json quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def count_frames(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        return -1
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _pump(pipe, q: queue.Queue, sink: list[str]) -> None:
    for line in pipe:
        sink.append(line)
        q.put((time.monotonic(), line))


def one_run(args, clip: Path, work: Path, sig: int, delay: float, env: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    out, js = work / "out.mp4", work / "s.json"
    cmd = [sys.executable, "-m", "rtseg", "stream", "--source", str(clip), "--loop", "--headless",
           "--save", str(out), "--json", str(js), "--backend", args.backend,
           "--threads", str(args.threads), "--log-every", "0.5"]
    if args.model:
        cmd += ["--model", args.model]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: os.umask(0o022))
    q: queue.Queue = queue.Queue()
    so: list[str] = []
    se: list[str] = []
    threads = [threading.Thread(target=_pump, args=(p.stdout, q, so), daemon=True),
               threading.Thread(target=_pump, args=(p.stderr, queue.Queue(), se), daemon=True)]
    for t in threads:
        t.start()
    first_frame = None
    while time.monotonic() - t0 < delay and p.poll() is None:
        try:
            ts, line = q.get(timeout=min(0.05, max(0.0, delay - (time.monotonic() - t0))))
        except queue.Empty:
            continue
        if first_frame is None and line.startswith("frames "):
            first_frame = ts - t0
    sent_at = time.monotonic() - t0
    early_exit = p.poll() is not None
    if not early_exit:
        p.send_signal(sig)
    try:
        rc = p.wait(timeout=args.grace)
        hung = False
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
        hung = True
    stop_s = time.monotonic() - t0 - sent_at
    for t in threads:
        t.join(timeout=5)
    stderr = "".join(se)
    problems = []
    if early_exit:
        problems.append(f"exited before the signal (rc {rc})")
    if hung:
        problems.append(f"still running {args.grace:.0f} s after the signal")
    if rc != 128 + sig:
        problems.append(f"exit code {rc}, expected {128 + sig}")
    if "Traceback" in stderr:
        problems.append("traceback on stderr")
    stats = None
    if js.is_file():
        try:
            stats = json.loads(js.read_text())
        except json.JSONDecodeError:
            problems.append("s.json is not valid JSON")
    else:
        problems.append("no s.json")
    written = decoded = None
    if stats is not None:
        written = stats.get("frames_written")
        if not stats.get("interrupted") or stats.get("signal") != signal.Signals(sig).name:
            problems.append(f"JSON says interrupted={stats.get('interrupted')} "
                            f"signal={stats.get('signal')}")
        if out.exists():
            decoded = count_frames(out)
            if decoded != written:
                problems.append(f"video decodes to {decoded} frames, JSON says {written}")
        elif written:
            problems.append(f"no video, JSON says {written} frames written")
    temps = sorted(p.name for p in work.iterdir() if ".tmp." in p.name)
    if temps:
        problems.append(f"temporary files left: {', '.join(temps)}")
    modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in work.iterdir() if f.is_file()}
    bad_modes = {k: v for k, v in modes.items() if v != oct(0o644)}
    if bad_modes:
        problems.append(f"modes {bad_modes}")
    return {
        "signal": signal.Signals(sig).name, "delay_s": round(delay, 3),
        "sent_at_s": round(sent_at, 3), "first_progress_line_s": first_frame,
        "before_first_frame": not written, "exit_code": rc, "stop_s": round(stop_s, 3),
        "frames_written": written, "frames_decoded": decoded, "modes": modes,
        "ok": not problems, "problems": problems,
        "stderr_tail": stderr.strip().splitlines()[-3:],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="Runs per signal.")
    ap.add_argument("--duration", type=float, default=30.0,
                    help="Length of a run in seconds; the signal comes at a random moment of it.")
    ap.add_argument("--min-delay", type=float, default=1.0,
                    help="Earliest moment of the signal (seconds after the process starts).")
    ap.add_argument("--signals", default="TERM,HUP,INT", help="Comma-separated: TERM, HUP, INT.")
    ap.add_argument("--model", default=None, help="Bundle folder (default: the shipped model).")
    ap.add_argument("--backend", default="auto", help="Segmenter backend (default auto).")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of the segmenter.")
    ap.add_argument("--grace", type=float, default=60.0,
                    help="Seconds a run may take to stop after the signal.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="Keep the runs here (default: a temp folder).")
    ap.add_argument("--json", default="signals.json", help="Write every run here.")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from rtseg.atomic import check_out_file, write_json
    from rtseg.synthetic import write_video

    check_out_file(args.json, "--json")
    sigs = [getattr(signal, "SIG" + s.strip().upper().removeprefix("SIG"))
            for s in args.signals.split(",") if s.strip()]
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    rng = random.Random(args.seed)
    tmp = tempfile.TemporaryDirectory(prefix="rtseg-signals-") if args.workdir is None else None
    root = Path(args.workdir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    clip = root / "clip.mp4"
    write_video(clip, n=250, size=(288, 384))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(args.threads),
               COLUMNS="160", RTSEG_CACHE=str(root / "cache"))
    # one short run first, so the export cache (onnxruntime backend) is built before timing
    subprocess.run([sys.executable, "-m", "rtseg", "stream", "--source", str(clip), "--headless",
                    "--max-frames", "3", "--backend", args.backend, "--threads", str(args.threads)]
                   + (["--model", args.model] if args.model else []),
                   env=env, capture_output=True, check=False)
    runs = []
    t_all = time.monotonic()
    for sig in sigs:
        for i in range(args.runs):
            delay = rng.uniform(args.min_delay, args.duration)
            r = one_run(args, clip, root / f"{signal.Signals(sig).name}-{i:02d}", sig, delay, env)
            runs.append(r)
            console.print(f"{r['signal']} run {i + 1}/{args.runs} at {r['sent_at_s']:.1f} s: "
                          f"exit {r['exit_code']}, {r['frames_written']} frames written, "
                          f"{r['frames_decoded']} decoded, stopped in {r['stop_s']:.2f} s"
                          + ("" if r["ok"] else f"  FAILED: {'; '.join(r['problems'])}"),
                          markup=False)
    t = Table(title=f"SIGTERM/SIGHUP/SIGINT during `rtseg stream --save --json` "
                    f"({args.runs} runs each, signal at U({args.min_delay:g}, {args.duration:g}) s)")
    for c in ("signal", "runs", "failures", "before the 1st frame", "exit code",
              "frames written (median, min-max)", "stop time, s (median, max)"):
        t.add_column(c, justify="left" if c == "signal" else "right")
    summary = {}
    for sig in sigs:
        name = signal.Signals(sig).name
        rs = [r for r in runs if r["signal"] == name]
        fw = [r["frames_written"] or 0 for r in rs]
        st = [r["stop_s"] for r in rs]
        fails = sum(not r["ok"] for r in rs)
        codes = sorted({r["exit_code"] for r in rs})
        summary[name] = {"runs": len(rs), "failures": fails,
                         "before_first_frame": sum(r["before_first_frame"] for r in rs),
                         "exit_codes": codes, "frames_written_median": statistics.median(fw),
                         "stop_s_median": statistics.median(st), "stop_s_max": max(st)}
        t.add_row(name, str(len(rs)), str(fails), str(summary[name]["before_first_frame"]),
                  ", ".join(map(str, codes)),
                  f"{statistics.median(fw):g} ({min(fw)}-{max(fw)})",
                  f"{statistics.median(st):.2f} ({max(st):.2f})")
    console.print(t)
    total_fail = sum(not r["ok"] for r in runs)
    console.print(f"{len(runs)} runs, {total_fail} failure(s), "
                  f"{time.monotonic() - t_all:.0f} s wall; every check: exit 128+signal, JSON "
                  "interrupted+signal, video frames == frames_written, no temp file, mode 644",
                  markup=False)
    write_json(args.json, {"runs_per_signal": args.runs, "duration_s": args.duration,
                           "min_delay_s": args.min_delay, "backend": args.backend,
                           "model": args.model, "threads": args.threads, "summary": summary,
                           "failures": total_fail, "runs": runs})
    if tmp is not None:
        tmp.cleanup()
    return 1 if total_fail else 0


if __name__ == "__main__":
    sys.exit(main())
