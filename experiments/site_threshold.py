"""Would a frame-call threshold set on a site's own polyp-free video carry over to the rest of it?

    python experiments/site_threshold.py --data ../shared/data --folds-dir runs/folds/finetune [--json t.json]

The fold bundles of ``python -m rtseg.recipes.distill holdout --save-folds`` for the PolypGen
centres, each run by the product on the centre it never saw (:mod:`rtseg.recipes.distill.folds`).
The centre's polyp-free sequences are split in two halves (every other sequence, in name order);
on one half the threshold is set so that a share ``q`` of its frames (live-loop probabilities,
call smoothing as shipped) is called non-polyp, never below the product's 0.5; the other half's
polyp-free frames and the centre's frames with a visible polyp are then scored at it, and the
halves swapped. Also each sequence's 95th percentile of the shown probability (where its false
calls sit).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rtseg.atomic import write_text
from rtseg.errors import UserError, run_script

SHARES = (0.9, 0.95, 1.0)  # the share q of the calibration half called non-polyp
CENTRES = ("pg-A", "pg-B")


def calibrate(pos: np.ndarray, neg: dict[str, np.ndarray], q: float) -> list[dict]:
    """Per half: the threshold set on it, and the other half's polyp-free rate and the polyp
    frames' call rate at that threshold."""
    seqs = sorted(neg)
    out = []
    for k in range(2):
        cal = [g for i, g in enumerate(seqs) if i % 2 == k]
        rest = np.concatenate([neg[g] for g in seqs if g not in cal])
        t = max(0.5, float(np.quantile(np.concatenate([neg[g] for g in cal]), q)))
        out.append({"calibrated_on": cal, "threshold": round(t, 3),
                    "polyp_called_polyp": round(float((pos > t).mean()), 3),
                    "other_half_called_non_polyp": round(float((rest <= t).mean()), 3)})
    return out


def main(argv: list[str] | None = None) -> None:
    from rtseg.model.bundle import load_bundle
    from rtseg.recipes.distill.data import load_all
    from rtseg.recipes.distill.folds import predictions, shown_probs
    from rtseg.recipes.distill.holdout import split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--folds-dir", type=Path, required=True, help="<save-folds>/<variant>")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    dirs = [a.folds_dir / c for c in CENTRES if (a.folds_dir / c / "manifest.json").is_file()]
    if not dirs:
        raise UserError(f"{a.folds_dir} holds no PolypGen fold bundle (pg-A/ or pg-B/ with manifest.json)")
    items = load_all(a.data)
    res = {}
    for d in dirs:
        _, test = split(items, d.name, a.data)
        if not test.get("pg_neg") or not test.get("pg_pos"):
            raise UserError(f"{a.data} has no polyp-free or polyp frames of centre {d.name}")
        b = load_bundle(d)
        shown = shown_probs(predictions(b, test), test, float(b.manifest.call_smoothing or 0.0))
        pos = np.array([shown[str(it.image)] for it in test["pg_pos"]])
        neg: dict[str, list[float]] = {}
        for it in test["pg_neg"]:
            neg.setdefault(it.group, []).append(shown[str(it.image)])
        neg_a = {g: np.array(v) for g, v in neg.items()}
        r = res[d.name] = {"p95_per_sequence": {g: round(float(np.quantile(v, 0.95)), 3) for g, v in sorted(neg_a.items())},
                           "by_share": {str(q): calibrate(pos, neg_a, q) for q in SHARES}}
        print(f"{d.name}: 95th percentile per sequence {r['p95_per_sequence']}")
        for q, halves in r["by_share"].items():
            print(f"  q {q}: " + "; ".join(f"threshold {h['threshold']}: polyp {h['polyp_called_polyp']}, other half "
                                          f"polyp-free {h['other_half_called_non_polyp']}" for h in halves))
    if a.json:
        write_text(a.json, json.dumps(res, indent=2))


if __name__ == "__main__":
    run_script(main)
