"""How long ``rtseg --help`` and every command's ``--help`` take (target: under 0.5 s each).

    python benchmarks/cli_help.py [--repeats 5] [--json help.json]

Each help is run as a fresh process (the installed ``rtseg`` script: interpreter start, imports
and rendering, as a user sees it); prints the median, min and max wall time per command and
writes them as JSON.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rtseg.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_cli  # noqa: E402

COMMANDS = ["", "stream", "bench", "export", "eval", "tune", "train", "predict", "batch",
            "propagate", "features"]
TARGET_S = 0.5


def measure(exe: str, repeats: int) -> dict:
    out = {}
    for cmd in COMMANDS:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            r = subprocess.run([exe, *([cmd] if cmd else []), "--help"], capture_output=True)
            times.append(time.perf_counter() - t)
            if r.returncode != 0:
                raise UserError(f"rtseg {cmd} --help exited {r.returncode}")
        out[cmd or "(root)"] = {"median_s": round(statistics.median(times), 3),
                                "min_s": round(min(times), 3), "max_s": round(max(times), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    exe = shutil.which("rtseg")
    if exe is None:
        raise UserError("the rtseg command is not on PATH (pip install -e . first)")
    if a.repeats < 1:
        raise UserError("--repeats must be at least 1")
    res = measure(exe, a.repeats)
    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"rtseg --help wall time, {a.repeats} runs each (target < {TARGET_S} s)")
    for col in ("command", "median s", "min s", "max s", "target"):
        tab.add_column(col)
    for cmd, r in res.items():
        tab.add_row(cmd, f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", f"{r['max_s']:.3f}",
                    "met" if r["median_s"] < TARGET_S else "NOT met")
    Console().print(tab)
    if a.json:
        from rtseg.atomic import write_json

        write_json(a.json, {"target_s": TARGET_S, "repeats": a.repeats, "commands": res})


if __name__ == "__main__":
    run_cli(main)
