"""Helpers shared by the test modules (import as ``from helpers import run_cli``)."""

from __future__ import annotations

import warnings
from pathlib import Path


def _run_main(main, argv, capsys):
    """Run an entry point in-process: (exit code, stdout, stderr); warnings' hook restored."""
    saved = warnings.showwarning
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        warnings.showwarning = saved
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def run_cli(argv, capsys):
    """Run ``rtseg ARGV`` in-process the way ``python -m rtseg`` does: (exit code, stdout, stderr)."""
    from rtseg.cli import main

    return _run_main(main, argv, capsys)


def run_recipe(argv, capsys):
    """Run ``python -m rtseg.recipes.distill ARGV`` in-process: (exit code, stdout, stderr lines)."""
    from rtseg.recipes.distill.__main__ import main

    code, out, err = _run_main(main, argv, capsys)
    return code, out, err.strip().splitlines()


def count_frames(path) -> int:
    """Frames OpenCV decodes from a video file (the file must open)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cannot reopen {path}"
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def make_data_folder(root, centres=("A",), bkai: int = 0, evaluation_masks: bool = False, seed: int = 0):
    """The data README's layout, generated under ``root``: Kvasir-SEG (8), CVC-ClinicDB (3
    sequences of 3 frames), old crops (6), PolypGen per centre 8 polyp-free frames (4 sequences)
    and 8 polyp frames (16:9 with black margins; ``evaluation_masks``: their masks in
    ``polypgen/positive-masks/``), ``bkai`` BKAI-IGH frames."""
    import csv

    import cv2
    import numpy as np

    from rtseg.synthetic import make_sample

    rng = np.random.default_rng(seed)

    def write(path, img):
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)

    def table(path, rows):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    for i in range(8):
        s = make_sample(rng, (100, 120), polyp=True)
        write(root / "kvasir-seg/images" / f"k{i}.jpg", s.image[..., ::-1])
        write(root / "kvasir-seg/masks" / f"k{i}.jpg", s.mask.astype(np.uint8) * 255)
    rows = []
    for i in range(9):
        s = make_sample(rng, (96, 128), polyp=True)
        write(root / "cvc-clinicdb/images" / f"{i + 1}.png", s.image[..., ::-1])
        write(root / "cvc-clinicdb/masks" / f"{i + 1}.png", s.mask.astype(np.uint8) * 255)
        rows.append({"image": f"images/{i + 1}.png", "mask": f"masks/{i + 1}.png", "sequence": i // 3 + 1})
    table(root / "cvc-clinicdb/sequences.csv", rows)
    for i in range(6):
        write(root / "non-polyp" / f"{i}.jpg", make_sample(rng, (64, 64), polyp=False, border=False).image)
    for kind, polyp in (("negative", False), ("positive", True)):
        rows = []
        for centre in centres:
            for i in range(8):
                frame = np.full((90, 160, 3), 16, np.uint8)  # 16:9 with black margins
                s = make_sample(rng, (90, 90), polyp=polyp)
                frame[:, 40:130] = s.image[..., ::-1]
                name = f"{centre}_{kind}{i}.jpg"
                write(root / "polypgen" / kind / name, frame)
                if polyp and evaluation_masks:
                    full = np.zeros((90, 160), np.uint8)
                    full[:, 40:130] = s.mask.astype(np.uint8) * 255
                    write(root / "polypgen/positive-masks" / f"{Path(name).stem}.png", full)
                rows.append({"image": name, "centre": centre, "sequence": f"seq{i // 2}" if not polyp else "",
                             "frame": i, "orig_w": 160, "orig_h": 90})
        table(root / "polypgen" / f"{kind}.csv", rows)
    for i in range(bkai):
        write(root / "bkai-neopolyp/images" / f"b{i}.jpg", make_sample(rng, (80, 100), polyp=True).image[..., ::-1])
    return root
