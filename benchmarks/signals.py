"""Stress check of the shutdown path: SIGTERM, SIGHUP, SIGINT and SIGKILL at a random moment,
and a full disk.

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

SIGKILL (``--signals KILL``) cannot be handled: each KILL run first saves a good 5-frame video
and stats (the earlier outputs), kills the looping run (at its random moment, but not before
its temporary video file exists), and checks that the earlier video and
stats are unchanged; then the next run (the same command, 5 frames) must exit 0, decode to its
frames and leave no temporary file (it removes the killed run's) and no stray process.

``--full-disk N`` (needs ``mount -t tmpfs``, i.e. root; skipped with a note otherwise): N runs
on a fresh 400 kB tmpfs: a good 10-frame video first, then a looping run that fills the disk
must exit 2 with one ``error: no space left on device writing ...`` line, no traceback, the
earlier video and stats unchanged and no temporary file; the next 5-frame run exits 0.

It prints a rich table (one row per case) and writes every run to ``--json``. The default is
the full check (20 runs per signal, 30 s runs: ~20 min of wall time on 2 CPU cores); use
fewer/shorter runs for a quick check. ``--min-delay`` (default 1 s) keeps the signal after the
Python interpreter has started rtseg (before that the interpreter's defaults apply, not rtseg's).

Example::

    python benchmarks/signals.py --runs 20 --duration 30 --json signals.json
    python benchmarks/signals.py --runs 3 --duration 8 --signals TERM --json quick.json
    python benchmarks/signals.py --runs 3 --duration 8 --signals TERM,KILL --full-disk 3
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


def stream_cmd(args, clip: Path, work: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "rtseg", "stream", "--source", str(clip), "--headless",
           "--save", str(work / "out.mp4"), "--json", str(work / "s.json"),
           "--backend", args.backend, "--threads", str(args.threads), "--log-every", "0.5", *extra]
    return cmd + (["--model", args.model] if args.model else [])


def short_run(args, clip: Path, work: Path, env: dict, frames: int) -> tuple[int, str]:
    """A run of ``frames`` frames into ``work``: (exit code, stderr)."""
    r = subprocess.run(stream_cmd(args, clip, work, "--max-frames", str(frames)), env=env,
                       capture_output=True, text=True, preexec_fn=lambda: os.umask(0o022))
    return r.returncode, r.stderr


def stray_processes(work: Path) -> list[int]:
    """Processes whose command line names ``work`` (none may outlive their run)."""
    found = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            if str(work).encode() in cmdline:
                found.append(int(name))
    return found


def next_run_problems(args, clip: Path, work: Path, env: dict, frames: int = 5) -> list[str]:
    """The next run after a kill or a full disk: exit 0, its frames, no temp file, no stray."""
    rc, err = short_run(args, clip, work, env, frames)
    problems = [] if rc == 0 else [f"next run: exit code {rc} ({err.strip()[-200:]})"]
    if (work / "out.mp4").exists() and count_frames(work / "out.mp4") != frames:
        problems.append("next run: its video does not decode to its frames")
    temps = sorted(p.name for p in work.iterdir() if ".tmp." in p.name)
    if temps:
        problems.append(f"next run: temporary files left: {', '.join(temps)}")
    if stray_processes(work):
        problems.append(f"stray processes: {stray_processes(work)}")
    return problems


def earlier(work: Path) -> dict[str, bytes]:
    return {n: (work / n).read_bytes() for n in ("out.mp4", "s.json") if (work / n).exists()}


def one_run(args, clip: Path, work: Path, sig: int, delay: float, env: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    out, js = work / "out.mp4", work / "s.json"
    before: dict[str, bytes] = {}
    if sig == signal.SIGKILL:  # earlier outputs that the killed run must not touch
        short_run(args, clip, work, env, 5)
        before = earlier(work)
    cmd = stream_cmd(args, clip, work, "--loop")
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
    while sig == signal.SIGKILL and p.poll() is None and time.monotonic() - t0 < args.grace:
        if any(".tmp." in f.name for f in work.iterdir()):  # kill while the video is written
            time.sleep(0.3)
            break
        time.sleep(0.02)
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
    if sig == signal.SIGKILL:
        return kill_result(args, clip, work, env, rc, before, problems,
                           {"signal": "SIGKILL", "delay_s": round(delay, 3),
                            "sent_at_s": round(sent_at, 3), "stop_s": round(stop_s, 3)})
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


def kill_result(args, clip, work, env, rc, before, problems, row) -> dict:
    if rc != -signal.SIGKILL:
        problems.append(f"exit code {rc}, expected -9 (killed)")
    if earlier(work) != before:
        problems.append("the earlier video or stats changed")
    left = sorted(p.name for p in work.iterdir() if ".tmp." in p.name)  # expected after a kill
    problems += next_run_problems(args, clip, work, env)
    return {**row, "first_progress_line_s": None, "before_first_frame": False, "exit_code": rc,
            "frames_written": None, "frames_decoded": None, "temp_files_after_kill": left,
            "modes": {}, "ok": not problems, "problems": problems, "stderr_tail": []}


def full_disk_run(args, clip: Path, work: Path, env: dict) -> dict:
    """A looping run on a 400 kB tmpfs that already holds a good video: it must fail cleanly."""
    work.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(work)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return {"signal": "full disk", "skipped": mounted.stderr.strip()[:200], "ok": True}
    try:
        rc0, err0 = short_run(args, clip, work, env, 10)
        before = earlier(work)
        t0 = time.monotonic()
        r = subprocess.run(stream_cmd(args, clip, work, "--loop", "--max-frames", "5000"),
                           env=env, capture_output=True, text=True, timeout=args.grace * 5)
        stop_s = time.monotonic() - t0
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        problems = [] if rc0 == 0 else [f"the first run failed: {err0.strip()[-200:]}"]
        if r.returncode != 2:
            problems.append(f"exit code {r.returncode}, expected 2")
        if len(lines) != 1 or not lines[0].startswith("error: no space left on device writing"):
            problems.append(f"stderr is not one 'no space left' line: {lines[-3:]}")
        if "Traceback" in r.stderr:
            problems.append("traceback on stderr")
        if earlier(work) != before or count_frames(work / "out.mp4") != 10:
            problems.append("the earlier video or stats changed")
        temps = sorted(p.name for p in work.iterdir() if ".tmp." in p.name)
        if temps:
            problems.append(f"temporary files left: {', '.join(temps)}")
        problems += next_run_problems(args, clip, work, env)
    finally:
        subprocess.run(["umount", str(work)], capture_output=True)
    return {"signal": "full disk", "exit_code": r.returncode, "stop_s": round(stop_s, 3),
            "sent_at_s": None, "before_first_frame": False, "frames_written": None,
            "error_line": lines[-1] if lines else None, "ok": not problems,
            "problems": problems}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="Runs per signal.")
    ap.add_argument("--duration", type=float, default=30.0,
                    help="Length of a run in seconds; the signal comes at a random moment of it.")
    ap.add_argument("--min-delay", type=float, default=1.0,
                    help="Earliest moment of the signal (seconds after the process starts).")
    ap.add_argument("--signals", default="TERM,HUP,INT,KILL",
                    help="Comma-separated: TERM, HUP, INT, KILL.")
    ap.add_argument("--full-disk", type=int, default=3,
                    help="Runs on a full disk (a small tmpfs; needs root; 0: none).")
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
            console.print(f"{r['signal']} run {i + 1}/{args.runs}: {describe(r)}", markup=False)
    for i in range(args.full_disk):
        r = full_disk_run(args, clip, root / f"full-{i:02d}", env)
        runs.append(r)
        console.print(f"full disk run {i + 1}/{args.full_disk}: {describe(r)}", markup=False)
        if "skipped" in r:
            break
    summary = summarize(runs, [signal.Signals(s).name for s in sigs] + ["full disk"])
    console.print(summary_table(summary, args))
    total_fail = sum(not r["ok"] for r in runs)
    console.print(f"{len(runs)} runs, {total_fail} failure(s), "
                  f"{time.monotonic() - t_all:.0f} s wall; every check: exit 128+signal (KILL: "
                  "-9, earlier outputs unchanged; full disk: 2 and one error line), JSON "
                  "interrupted+signal, video frames == frames_written, no temp file or stray "
                  "process after the next run, mode 644", markup=False)
    write_json(args.json, {"runs_per_signal": args.runs, "duration_s": args.duration,
                           "min_delay_s": args.min_delay, "backend": args.backend,
                           "model": args.model, "threads": args.threads, "summary": summary,
                           "failures": total_fail, "runs": runs})
    if tmp is not None:
        tmp.cleanup()
    return 1 if total_fail else 0


def describe(r: dict) -> str:
    if "skipped" in r:
        return f"skipped (cannot mount a tmpfs: {r['skipped']})"
    at = f" at {r['sent_at_s']:.1f} s" if r.get("sent_at_s") is not None else ""
    frames = (f", {r['frames_written']} frames written, {r['frames_decoded']} decoded"
              if r.get("frames_written") is not None else "")
    return (f"exit {r['exit_code']}{at}{frames}, stopped in {r['stop_s']:.2f} s"
            + ("" if r["ok"] else f"  FAILED: {'; '.join(r['problems'])}"))


def summarize(runs: list[dict], cases: list[str]) -> dict:
    summary = {}
    for name in cases:
        rs = [r for r in runs if r["signal"] == name and "skipped" not in r]
        if not rs:
            continue
        fw = [r.get("frames_written") or 0 for r in rs]
        st = [r["stop_s"] for r in rs]
        summary[name] = {"runs": len(rs), "failures": sum(not r["ok"] for r in rs),
                         "before_first_frame": sum(bool(r["before_first_frame"]) for r in rs),
                         "exit_codes": sorted({r["exit_code"] for r in rs}),
                         "frames_written_median": statistics.median(fw),
                         "frames_written_min": min(fw), "frames_written_max": max(fw),
                         "stop_s_median": statistics.median(st), "stop_s_max": max(st)}
    return summary


def summary_table(summary: dict, args):
    from rich.table import Table

    t = Table(title=f"signals and a full disk during `rtseg stream --save --json` "
                    f"({args.runs} runs per signal, signal at U({args.min_delay:g}, "
                    f"{args.duration:g}) s)")
    for c in ("case", "runs", "failures", "before the 1st frame", "exit code",
              "frames written (median, min-max)", "stop time, s (median, max)"):
        t.add_column(c, justify="left" if c == "case" else "right")
    for name, v in summary.items():
        t.add_row(name, str(v["runs"]), str(v["failures"]), str(v["before_first_frame"]),
                  ", ".join(map(str, v["exit_codes"])),
                  f"{v['frames_written_median']:g} ({v['frames_written_min']}-"
                  f"{v['frames_written_max']})",
                  f"{v['stop_s_median']:.2f} ({v['stop_s_max']:.2f})")
    return t


if __name__ == "__main__":
    sys.exit(main())
