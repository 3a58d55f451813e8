"""Model selection that holds out whole hospitals: the recipe fitted on all sources but one and
scored on the one left out, for each source in turn.

``python -m rtseg.recipes.distill holdout --data ../shared/data --variants finetune --json holdout.json``

The sources (:data:`HOSPITALS`): Kvasir-SEG, CVC-ClinicDB, PolypGen centre A (Paris), PolypGen
centre B (Padova) and BKAI-IGH NeoPolyp (Hanoi). Everything fitted comes from the training
sources only: the seed masks (at most 100 in all: a held-out source's share goes to the other
masked source), the classifier, the head, the fine-tuned network, the call smoothing, the
mask threshold and clean-up and the constant ellipse's radius. The held-out source is scored as a
user would meet it:

- its polyp frames: full-frame Dice and Jaccard of the product's mask (PolypGen: the
  evaluation-only masks of ``polypgen/positive-masks/``, read here and nowhere in training;
  BKAI-IGH has no masks, so only its call), beside the constant ellipse and all-foreground
  masks, and the fraction called polyp (as the live loop shows it where frames are a video);
- a held-out PolypGen centre's frames of polyp sequences whose evaluation mask is empty
  (:data:`NO_POLYP`: the polyp has left the view or been removed; the resection site, often
  blue from the lifting injection, remains): no polyp to outline or to call, so they are not
  polyp frames; reported apart, as the fraction called non-polyp. Scored as polyp frames they
  would add a Dice of 0 whatever the model does (0/0 is 0, as in the Medico scorer) and reward
  calling a resection site a polyp;
- a held-out PolypGen centre's polyp-free sequences: the fraction called non-polyp as the live
  loop shows them (played in frame order through the call smoothing) and each frame alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from rtseg.model.call import is_polyp
from rtseg.recipes.layout import Item
from rtseg.recipes.distill.data import NO_POLYP, SIZE, set_apart
from rtseg.recipes.distill.fit import Fit, clip_probs, maps_of

HOSPITALS = ("pg-A", "pg-B", "kvasir", "cvc", "bkai")  # the PolypGen centres first: the most telling


def split(items: dict[str, list[Item]], hospital: str, root: Path
          ) -> tuple[dict[str, list[Item]], dict[str, list[Item]]]:
    """(training selection, held-out selection) for ``hospital``. The held-out PolypGen polyp
    frames carry their evaluation-only masks, and those whose mask is empty are set apart
    (``test[NO_POLYP]``); the training side never sees a mask."""
    train = {s: [it for it in its if it.hospital != hospital] for s, its in items.items()}
    test = {s: [it for it in its if it.hospital == hospital] for s, its in items.items()}
    test["pg_pos"], test[NO_POLYP] = set_apart(test.get("pg_pos", []), root)
    assert not any(it.mask is not None for it in train.get("pg_pos", [])), "no PolypGen mask is trained on"
    return train, test


def score_hospital(store, f: Fit, test: dict[str, list[Item]]) -> dict:
    """The held-out source's scores (see the module's text)."""
    from rtseg.recipes.distill.call_smoothing import VIDEO_SOURCES, stream_calls
    from rtseg.recipes.distill.cv import polyp_scores

    vid = {s: clip_probs(f, store, test[s]) for s in VIDEO_SOURCES if test.get(s)}
    shown = {k: z for p in vid.values() for k, z in stream_calls(p, f.call_smoothing).items()}
    out: dict = {"call_smoothing": f.call_smoothing, "tune": f.tune}
    polyp = [it for s in ("kvasir", "cvc", "pg_pos", "bkai") for it in test.get(s, [])]
    if polyp:
        masked = [it for it in polyp if it.mask is not None]
        out["polyp"] = polyp_scores(store, f, masked, shown) if masked else {}
        # the call over every polyp frame, masked or not (BKAI-IGH has no masks)
        prob, _ = maps_of(f, store.get([str(it.image) for it in polyp]), False, True)
        called = is_polyp(prob)
        out["polyp"].update({"n": len(polyp), "n_masked": len(masked),
                             "called_polyp": round(float(np.mean(called)), 4),
                             "stream_called_polyp": round(float(np.mean(
                                 [shown.get(str(it.image), z) for it, z in zip(polyp, called)])), 4)})
    if test.get(NO_POLYP):  # single frames: no call smoothing
        prob, _ = maps_of(f, store.get([str(it.image) for it in test[NO_POLYP]]), False, True)
        out["no_visible_polyp"] = {"n": len(prob), "called_non_polyp": round(float((~is_polyp(prob)).mean()), 4)}
    neg = test.get("pg_neg", [])
    if neg:
        prob, _ = maps_of(f, store.get([str(it.image) for it in neg]), False, True)
        groups = np.array([it.group for it in neg])
        sok = np.array([not shown[str(it.image)] for it in neg])
        out["polyp_free"] = {"n": len(neg), "called_non_polyp": round(float((~is_polyp(prob)).mean()), 4),
                             "stream_called_non_polyp": round(float(sok.mean()), 4),
                             "stream_per_sequence": {g: round(float(sok[groups == g].mean()), 4)
                                                     for g in sorted(set(groups))}}
    return out


def summarize(per: dict[str, dict]) -> dict:
    """Mean and worst over the held-out sources: Dice on polyp frames (sources with masks),
    polyp frames called polyp as the live loop shows them, polyp-free frames called non-polyp."""
    dice = {h: r["polyp"]["model"]["dice"] for h, r in per.items() if "model" in r.get("polyp", {})}
    called = {h: r["polyp"]["stream_called_polyp"] for h, r in per.items() if "polyp" in r}
    free = {h: r["polyp_free"]["stream_called_non_polyp"] for h, r in per.items() if "polyp_free" in r}
    out: dict = {}
    for name, vals in (("dice", dice), ("polyp_called_polyp", called), ("polyp_free_called_non_polyp", free)):
        if vals:
            worst = min(vals, key=vals.get)
            out[name] = {"mean": round(float(np.mean(list(vals.values()))), 4), "worst": vals[worst],
                         "worst_source": worst}
    return out


def hold_out(data: Path, variants: list[str], cache: Path | None, hospitals: list[str] | None = None,
             log=print, save=None, folds_dir: Path | None = None, size: int = SIZE) -> dict:
    """Every variant fitted and scored once per held-out hospital (one feature extraction);
    ``save(result so far)`` after each held-out source; ``folds_dir``: each fold's model also
    written as a bundle, ``<folds_dir>/<variant>/<held-out source>`` (to run the product on the
    source it never saw); ``size``: the network's input size."""
    from rtseg.errors import UserError
    from rtseg.recipes.distill.build import bundle_of, write_bundle
    from rtseg.recipes.distill.data import load_all, open_store
    from rtseg.recipes.distill.fit import fit, variant_named

    chosen = {name: variant_named(name) for name in variants}  # checked before any work
    hospitals = hospitals or list(HOSPITALS)
    bad = [h for h in hospitals if h not in HOSPITALS]
    if bad:
        raise UserError(f"unknown source {bad[0]!r}; known: {', '.join(HOSPITALS)}")
    if folds_dir is not None:
        from rtseg.evaluate.predict import check_out_dir

        check_out_dir(Path(folds_dir))  # before any work
    items = load_all(data)
    here = {it.hospital for its in items.values() for it in its}
    hospitals = [h for h in hospitals if h in here]
    if not hospitals:
        raise UserError(f"{data} has none of the sources {', '.join(HOSPITALS)}")
    store = open_store(items, cache, size)
    per: dict = {name: {} for name in variants}
    for h in hospitals:
        train, test = split(items, h, Path(data))
        for name, v in chosen.items():
            t = time.time()
            f = fit(store, train, v, store.m, log=log)
            r = per[name][h] = score_hospital(store, f, test)
            r["fit_seconds"] = round(time.time() - t, 1)
            log(f"held out {h} [{name}]: {line_of(r)} [{r['fit_seconds']:.0f} s]")
            if folds_dir is not None:
                write_bundle(bundle_of(f, v, name), Path(folds_dir) / name / h)
        res = {"hospitals": hospitals, "arch": store.m.arch, "input_size": size,
               "variants": {n: chosen[n].__dict__ for n in variants},
               "per_source": per, "summary": {n: summarize(p) for n, p in per.items()}}
        if save is not None:
            save(res)
    return res


def line_of(r: dict) -> str:
    """One held-out source's scores in a line."""
    parts = []
    if "model" in r.get("polyp", {}):
        p = r["polyp"]
        parts.append(f"Dice {p['model']['dice']:.3f} (ungated {p['ungated']['dice']:.3f}, ellipse "
                     f"{p['ellipse']['dice']:.3f}, all-foreground {p['all_foreground']['dice']:.3f})")
    if "polyp" in r:
        parts.append(f"polyp called polyp {r['polyp']['stream_called_polyp']:.3f}")
    if "polyp_free" in r:
        parts.append(f"polyp-free called non-polyp {r['polyp_free']['stream_called_non_polyp']:.3f} "
                     f"(each frame alone {r['polyp_free']['called_non_polyp']:.3f})")
    if "no_visible_polyp" in r:
        q = r["no_visible_polyp"]
        parts.append(f"{q['n']} polyp-sequence frames without a visible polyp called non-polyp {q['called_non_polyp']:.3f}")
    return "; ".join(parts)


def table(res: dict) -> None:
    """The hold-out results as a rich table per variant."""
    from rich.table import Table

    from rtseg.ui import make_console

    console = make_console()
    for name, per in res["per_source"].items():
        t = Table(title=f"held out, one source at a time: {name}")
        for col in ("held out", "polyp frames", "Dice", "Jaccard", "ellipse", "all-fg", "called polyp",
                    "polyp-free called non-polyp"):
            t.add_column(col)
        for h, r in per.items():
            p, m = r.get("polyp", {}), r.get("polyp", {}).get("model")
            t.add_row(h, str(p.get("n", 0)), f"{m['dice']:.3f}" if m else "-", f"{m['jaccard']:.3f}" if m else "-",
                      f"{p['ellipse']['dice']:.3f}" if m else "-", f"{p['all_foreground']['dice']:.3f}" if m else "-",
                      f"{p['stream_called_polyp']:.3f}" if p else "-",
                      f"{r['polyp_free']['stream_called_non_polyp']:.3f}" if "polyp_free" in r else "-")
        console.print(t)
