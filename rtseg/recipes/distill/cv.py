"""The recipe's cross-validation that cannot leak (``python -m rtseg.recipes.distill cv``): a
CVC-ClinicDB or PolypGen sequence never spans two folds; everything fitted (seeds, classifier,
head, fine-tuning, call smoothing, threshold, clean-up, the constant ellipse's radius) comes
from the training folds only; the held-out fold is scored as the product shows it (full-frame
Medico Dice / Jaccard on Kvasir-SEG and CVC-ClinicDB beside the constant baselines; polyp-free
PolypGen frames called non-polyp, each frame alone and as the live loop shows video; polyp
frames called polyp, PolypGen's counted over the frames whose evaluation-only mask shows a
polyp, the others reported apart). Several variants share one feature extraction."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from rtseg.evaluate.baselines import ellipse_mask
from rtseg.evaluate.metrics import image_scores
from rtseg.imageio import read_mask
from rtseg.model.cam import cam_to_mask
from rtseg.model.call import is_polyp
from rtseg.model.thresholds import ThresholdPolicy
from rtseg.recipes.distill.data import (NO_POLYP, SIZE, FeatureStore, add_tiles, load_all, open_store, seeds_of,
                                        set_apart)
from rtseg.recipes.distill.fit import Fit, fit, maps_of, variant_named
from rtseg.recipes.layout import Item, group_folds


# --------------------------------------------------------------------------------------------
# scoring a held-out fold
# --------------------------------------------------------------------------------------------
def score(store: FeatureStore, f: Fit, test: dict[str, list[Item]]) -> dict:
    from rtseg.recipes.distill.call_smoothing import flips, stream_calls
    from rtseg.recipes.distill.fit import clip_probs

    # the call as the live loop shows it on video (CallSmoother at f.call_smoothing): sequences
    # in frame order; single images are one-frame clips, which it leaves as they are
    vid = {s: clip_probs(f, store, test[s]) for s in ("cvc", "pg_neg") if test.get(s)}
    shown = {k: z for p in vid.values() for k, z in stream_calls(p, f.call_smoothing).items()}
    out: dict = {"stream": {"call_smoothing": f.call_smoothing,
                            "flips": [sum(x) for x in zip(*(flips(p, f.call_smoothing) for p in vid.values()))],
                            "flips_each_frame_alone": [sum(x) for x in zip(*(flips(p, 0.0) for p in vid.values()))]}}
    for src in ("kvasir", "cvc"):
        if test[src]:
            out[src] = polyp_scores(store, f, test[src], shown)
    for src in ("pg_neg", "pg_pos", NO_POLYP, "non_polyp"):
        if test.get(src):
            prob, _ = maps_of(f, store.get([str(it.image) for it in test[src]]), False, True)
            key = "called_polyp" if src == "pg_pos" else "called_non_polyp"
            ok = ~is_polyp(prob) if key == "called_non_polyp" else is_polyp(prob)
            out[src] = {key: round(float(ok.mean()), 4), "n": len(test[src])}
            if src == "pg_neg":  # per held-out sequence: one sequence can carry a fold
                groups = np.array([it.group for it in test[src]])
                out[src]["per_sequence"] = {g: [round(float(ok[groups == g].mean()), 4), int((groups == g).sum())]
                                            for g in sorted(set(groups))}
                sok = np.array([not shown[str(it.image)] for it in test[src]])
                out[src]["stream_called_non_polyp"] = round(float(sok.mean()), 4)
                out[src]["stream_per_sequence"] = {g: round(float(sok[groups == g].mean()), 4)
                                                   for g in sorted(set(groups))}
    return out


def polyp_scores(store: FeatureStore, f: Fit, items: list[Item], shown: dict[str, bool]) -> dict:
    """Scores of polyp frames with masks: full-frame Dice, Jaccard, recall and precision of the
    product's mask (empty where the frame is called polyp-free), of the mask as the live loop
    shows it (``shown``: the averaged call of a frame in a clip), of the ungated map and of the
    constant masks; the fraction called polyp."""
    c = store.get([str(it.image) for it in items])
    prob, _ = maps_of(f, c, False, True)
    _, maps = maps_of(f, c, False, False)  # ungated
    called = is_polyp(prob)
    rows: dict[str, list] = {"model": [], "stream": [], "ungated": [], "ellipse": [], "all_foreground": []}
    policy = ThresholdPolicy("above", f.threshold)
    for it, mp, bx, zi in zip(items, maps, c.boxes, called):
        truth = read_mask(it.mask)
        pred = cam_to_mask(mp, policy, truth.shape, f.steps, bx)  # the mask every command makes
        # the product's mask: empty where the classifier says no polyp (gate)
        rows["model"].append(image_scores(pred if zi else np.zeros_like(pred), truth))
        zs = zi and shown.get(str(it.image), True)  # the live loop: its call must agree too
        rows["stream"].append(image_scores(pred if zs else np.zeros_like(pred), truth))
        rows["ungated"].append(image_scores(pred, truth))
        rows["ellipse"].append(image_scores(ellipse_mask(truth.shape, f.radius), truth))
        rows["all_foreground"].append(image_scores(np.ones_like(truth), truth))
    out: dict = {k: {m_: round(float(np.mean([r[m_] for r in rs])), 4)
                     for m_ in ("dice", "jaccard", "recall", "precision")} for k, rs in rows.items()}
    out["n"] = len(items)
    out["called_polyp"] = round(float(called.mean()), 4)
    out["stream_called_polyp"] = round(float(np.mean([shown.get(str(it.image), z)
                                                      for it, z in zip(items, called)])), 4)
    # the live loop draws a frame's own mask only where its own rule and the averaged call agree
    out["stream_masked"] = round(float(np.mean([z and shown.get(str(it.image), True)
                                                for it, z in zip(items, called)])), 4)
    return out


def _pooled(pairs) -> float:
    """The rate over all frames of (rate, frame count) pairs."""
    pairs = list(pairs)
    return round(sum(a * n for a, n in pairs) / max(1, sum(n for _, n in pairs)), 4)


def _mean_sd(vals: list[float]) -> str:
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


def stream_summary(rs: list[dict]) -> dict:
    """The held-out folds' calls as the live loop shows them on video (``score``'s "stream")."""
    pos = [(r[s]["called_polyp"], r[s]["n"]) for r in rs for s in ("kvasir", "pg_pos")] + \
        [(r["cvc"]["stream_called_polyp"], r["cvc"]["n"]) for r in rs]
    fl = [sum(r["stream"]["flips"][i] for r in rs) for i in (0, 1)]
    fl0 = [sum(r["stream"]["flips_each_frame_alone"][i] for r in rs) for i in (0, 1)]
    return {"call_smoothing_by_fold": [r["stream"]["call_smoothing"] for r in rs],
            "stream_pg_neg_called_non_polyp": _mean_sd([r["pg_neg"]["stream_called_non_polyp"] for r in rs]),
            "stream_pg_neg_called_non_polyp_all_frames": _pooled(
                (r["pg_neg"]["stream_called_non_polyp"], r["pg_neg"]["n"]) for r in rs),
            "stream_pg_neg_called_non_polyp_per_sequence": dict(sorted(
                (g, a) for r in rs for g, a in r["pg_neg"]["stream_per_sequence"].items())),
            "stream_cvc_called_polyp": _mean_sd([r["cvc"]["stream_called_polyp"] for r in rs]),
            "stream_cvc_masked": _mean_sd([r["cvc"]["stream_masked"] for r in rs]),
            "stream_polyp_called_polyp_all_frames": _pooled(pos),
            "stream_flips_per_100_frames": round(100 * fl[0] / max(1, fl[1]), 2),
            "flips_per_100_frames_each_frame_alone": round(100 * fl0[0] / max(1, fl0[1]), 2)}


def cross_validate(data: Path, folds: int, variants: list[str], cache: Path | None, size: int = SIZE) -> dict:
    chosen = {name: variant_named(name) for name in variants}  # checked before any work
    items = load_all(data)
    store = open_store(items, cache, size)
    fold_of = {src: group_folds(its, folds) for src, its in items.items()}
    results: dict = {v: [] for v in variants}
    for k in range(folds):
        train = {src: [it for j, f in enumerate(fl) if j != k for it in f] for src, fl in fold_of.items()}
        test = {src: fl[k] for src, fl in fold_of.items()}
        # held-out PolypGen frames of polyp sequences without a visible polyp (their evaluation
        # mask is empty: the polyp left the view or was removed) are scored apart, not as polyp frames
        test["pg_pos"], test[NO_POLYP] = set_apart(test.get("pg_pos", []), data)
        add_tiles(store, seeds_of(train))
        for name in variants:
            v = chosen[name]
            t = time.time()
            f = fit(store, train, v, store.m)
            sc = score(store, f, test)
            sc["tune"] = f.tune
            results[name].append(sc)
            print(f"fold {k} {name}: kvasir {sc['kvasir']['model']['dice']:.3f} (ellipse "
                  f"{sc['kvasir']['ellipse']['dice']:.3f}) cvc {sc['cvc']['model']['dice']:.3f} "
                  f"(ellipse {sc['cvc']['ellipse']['dice']:.3f}) pg_neg "
                  f"{sc['pg_neg']['called_non_polyp']:.3f} polyp {sc['kvasir']['called_polyp']:.3f}/"
                  f"{sc['cvc']['called_polyp']:.3f} [{time.time() - t:.0f} s] {f.tune}", flush=True)
    summary = {}
    for name, rs in results.items():
        s = {}
        for src in ("kvasir", "cvc"):
            for who in ("model", "stream", "ungated", "ellipse", "all_foreground"):
                for met in ("dice", "jaccard"):
                    s[f"{src}_{who}_{met}"] = _mean_sd([r[src][who][met] for r in rs])
            s[f"{src}_called_polyp"] = _mean_sd([r[src]["called_polyp"] for r in rs])
        s["pg_neg_called_non_polyp"] = _mean_sd([r["pg_neg"]["called_non_polyp"] for r in rs])
        # every PolypGen polyp-free frame is held out once: the rate over all of them, and per sequence
        seqs = {g: v for r in rs for g, v in r["pg_neg"]["per_sequence"].items()}
        s["pg_neg_called_non_polyp_all_frames"] = _pooled(seqs.values())
        s["pg_neg_called_non_polyp_per_sequence"] = {g: a for g, (a, _) in sorted(seqs.items())}
        pos = [(r[src]["called_polyp"], r[src]["n"]) for r in rs for src in ("kvasir", "cvc", "pg_pos")]
        s["polyp_called_polyp_all_frames"] = _pooled(pos)
        s["pg_pos_called_polyp"] = _mean_sd([r["pg_pos"]["called_polyp"] for r in rs])
        apart = [(r[NO_POLYP]["called_non_polyp"], r[NO_POLYP]["n"]) for r in rs if NO_POLYP in r]
        s["pg_no_visible_polyp"] = {"n": sum(n for _, n in apart), "called_non_polyp": _pooled(apart)}
        s.update(stream_summary(rs))
        s["crops_called_non_polyp"] = _mean_sd([r["non_polyp"]["called_non_polyp"] for r in rs])
        summary[name] = s
    return {"folds": folds, "variants": {n: chosen[n].__dict__ for n in variants},
            "per_fold": results, "summary": summary}
