"""Each hold-out fold's model (``holdout --save-folds``) run by the product on the source it
never saw: the hold-out's figures as the product computes them, and what any frame-call
threshold could do there.

``python -m rtseg.recipes.distill folds --data ../shared/data --folds-dir runs/folds/finetune --json folds.json``

Per held-out source, through the product's predictor (:func:`rtseg.evaluate.predict.iter_predictions`,
the mask every command makes) and, for video sequences, the live loop's call smoothing:
Dice on its polyp frames, polyp frames called polyp, polyp-free frames called non-polyp (the
hold-out's scores, :mod:`rtseg.recipes.distill.holdout`). Then the **threshold sweep**: the same
two call rates with the (smoothed) frame probability compared with thresholds other than the
product's 0.5. A threshold picked on the held-out source is not a model selection (nothing may
be chosen there); the sweep says whether *any* operating point of this model meets a pair of
targets on that source, i.e. whether the model or only its operating point falls short.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtseg.model.call import is_polyp
from rtseg.recipes.layout import Item

POLYP = ("kvasir", "cvc", "pg_pos", "bkai")
SWEEP = tuple(round(float(t), 3) for t in (*np.arange(0.05, 0.951, 0.05), 0.97, 0.98, 0.99, 0.995, 0.999))


def predictions(bundle, test: dict[str, list[Item]]) -> dict[str, tuple[float, np.ndarray]]:
    """Image path -> (polyp probability, mask) of every held-out frame, by the product; an
    unreadable frame is one error line (every frame must be scored, as the hold-out scored it)."""
    from rtseg.errors import UserError
    from rtseg.evaluate.predict import iter_predictions

    from rtseg.recipes.distill.data import NO_POLYP

    everything = [it for s in (*POLYP, "pg_neg", NO_POLYP) for it in test.get(s, [])]
    skipped: list = []
    out = {str(p.path): (p.prob, p.mask)
           for p in iter_predictions(bundle, [it.image for it in everything], skipped=skipped)}
    if skipped:
        raise UserError(f"{len(skipped)} held-out frame(s) could not be read, e.g. {skipped[0]}")
    return out


def shown_probs(pred, test: dict[str, list[Item]], a: float) -> dict[str, float]:
    """Image path -> the probability the live loop's call compares (video sequences through the
    call smoothing at ``a``, in frame order; single images as they are)."""
    from rtseg.recipes.distill.call_smoothing import VIDEO_SOURCES, clips, stream_probs

    vids = [(c, np.array([pred[str(it.image)][0] for it in c], np.float32))
            for s in VIDEO_SOURCES for c in clips(test.get(s, []))]
    return {**{k: float(p) for k, (p, _) in pred.items()}, **stream_probs(vids, a)}


def score(bundle, test: dict[str, list[Item]]) -> dict:
    """The held-out source's scores and threshold sweep (see the module's text)."""
    from rtseg.evaluate.metrics import image_scores
    from rtseg.imageio import read_mask
    from rtseg.recipes.distill.data import NO_POLYP

    pred = predictions(bundle, test)
    shown = shown_probs(pred, test, float(bundle.manifest.call_smoothing or 0.0))
    out: dict = {}
    polyp = [it for s in POLYP for it in test.get(s, [])]
    neg = test.get("pg_neg", [])
    if polyp:
        called = np.array([bool(is_polyp(pred[str(it.image)][0])) for it in polyp])
        dice = [image_scores(pred[str(it.image)][1] if z else np.zeros_like(pred[str(it.image)][1]),
                             read_mask(it.mask))["dice"] for it, z in zip(polyp, called) if it.mask is not None]
        out["polyp"] = {"n": len(polyp), "dice": round(float(np.mean(dice)), 4) if dice else None,
                        "called_polyp": round(float(called.mean()), 4),
                        "stream_called_polyp": round(float(np.mean(
                            [is_polyp(shown[str(it.image)]) for it in polyp])), 4)}
    if test.get(NO_POLYP):
        out["no_visible_polyp"] = {"n": len(test[NO_POLYP]), "called_non_polyp": round(float(np.mean(
            [not is_polyp(pred[str(it.image)][0]) for it in test[NO_POLYP]])), 4)}
    if neg:
        groups = np.array([it.group for it in neg])
        ok = np.array([not is_polyp(shown[str(it.image)]) for it in neg])
        out["polyp_free"] = {"n": len(neg), "stream_called_non_polyp": round(float(ok.mean()), 4),
                             "stream_per_sequence": {g: round(float(ok[groups == g].mean()), 4)
                                                     for g in sorted(set(groups))}}
    pp = np.array([shown[str(it.image)] for it in polyp])
    pn = np.array([shown[str(it.image)] for it in neg])
    out["sweep"] = {str(t): [round(float((pp > t).mean()), 4) if len(pp) else None,
                             round(float((pn <= t).mean()), 4) if len(pn) else None] for t in SWEEP}
    return out


def best_pair(sweep: dict[str, list], polyp_target: float = 0.90) -> tuple[str, list] | None:
    """The threshold of the sweep with the most polyp-free frames called non-polyp among those
    that keep polyp frames called polyp >= ``polyp_target`` (None: no such threshold)."""
    ok = [(t, r) for t, r in sweep.items() if r[0] is not None and r[1] is not None and r[0] >= polyp_target]
    return max(ok, key=lambda tr: (tr[1][1], tr[1][0])) if ok else None


def score_folds(data: Path, folds: Path, log=print, save=None) -> dict:
    """Every fold bundle under ``folds`` (one folder per held-out source) scored."""
    from rtseg.errors import UserError
    from rtseg.model.bundle import load_bundle
    from rtseg.recipes.distill.data import load_all
    from rtseg.recipes.distill.holdout import HOSPITALS, split

    dirs = [Path(folds) / h for h in HOSPITALS if (Path(folds) / h / "manifest.json").is_file()]
    if not dirs:
        raise UserError(f"{folds} holds no fold bundle (<source>/manifest.json, from holdout --save-folds)")
    items = load_all(data)
    res: dict = {"per_source": {}}
    for d in dirs:
        _, test = split(items, d.name, Path(data))
        r = res["per_source"][d.name] = score(load_bundle(d), test)
        parts = []
        if "polyp" in r:
            parts.append(f"Dice {r['polyp']['dice']}; polyp called polyp {r['polyp']['stream_called_polyp']}")
        if "no_visible_polyp" in r:
            parts.append(f"{r['no_visible_polyp']['n']} frames without a visible polyp called non-polyp "
                         f"{r['no_visible_polyp']['called_non_polyp']}")
        if "polyp_free" in r:
            parts.append(f"polyp-free called non-polyp {r['polyp_free']['stream_called_non_polyp']}")
            b = best_pair(r["sweep"])
            parts.append("no threshold keeps polyp frames called polyp >= 0.90" if b is None else
                         f"best threshold keeping polyp >= 0.90: {b[0]} (polyp {b[1][0]}, polyp-free {b[1][1]})")
        log(f"{d.name}: " + "; ".join(parts))
        if save is not None:
            save(res)
    return res
