"""Shared by the benchmark scripts (run as ``python benchmarks/NAME.py``: this folder is on sys.path)."""

from __future__ import annotations

import csv
from pathlib import Path

from rtseg.errors import UserError


def run_cli(main) -> None:
    """Run a benchmark's ``main()``: bad input is one ``error:`` line and exit 2, no traceback."""
    import sys

    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def cvc_frames(data_dir: Path) -> list[tuple[int, Path]]:
    """(sequence, image path) of every CVC-ClinicDB frame, in sequence and frame order."""
    root = data_dir / "cvc-clinicdb"
    table = root / "sequences.csv"
    if not table.is_file():
        raise UserError(f"{table} not found (DATA_DIR should hold cvc-clinicdb/, see "
                        "../shared/data/README.md)")
    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows.sort(key=lambda r: (int(r["sequence"]), int(r["frame"])))
    return [(int(r["sequence"]), root / r["image"]) for r in rows]
