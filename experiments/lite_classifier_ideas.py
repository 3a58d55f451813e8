"""Can the default model call more held-out polyp-free frames non-polyp? Ideas measured
by the recipe's leak-free cross-validation (a PolypGen / CVC sequence never spans two folds):

    python experiments/lite_classifier_ideas.py pooling --data ../shared/data
        the frame classifier on richer pooled features than the head's spatial mean (its max,
        the means/max of blocks 14 and 20), logistic regression, standardised features;
    python experiments/lite_classifier_ideas.py pseudo-tiles --data ../shared/data
        extra in-domain negatives without extra masks: 2 x 2 quadrants of the training polyp
        images that the classifier's CAM leaves cold (the image confidently polyp, the
        quadrant's CAM below a fraction of the image's peak), the classifier refitted;
    python experiments/lite_classifier_ideas.py operating-points --data ../shared/data [--variant V]
        the shipped rule (classifier AND the head's most confident pixel) over a grid of the two
        thresholds, on the held-out folds: whether any operating point reaches 90 % / 90 %;
    python experiments/lite_classifier_ideas.py top-finetune --data ../shared/data [--from-block 14]
        the network's last layer (conv_head + BN affine; with --from-block 14 also blocks 15-20)
        fine-tuned with the classifier on the cached block-20 (block-14) features, beside the
        linear probe in the same folds;

A fifth idea measured (head-ensemble: the head trained with 3 seeds, the frame rule on the
mean map) needs recipe options removed from the package since; it runs with this script at
commit df8f72b.

Held-out rates printed per idea: polyp frames called polyp (Kvasir-SEG, CVC-ClinicDB, PolypGen
positives), PolypGen polyp-free frames called non-polyp (per fold), and the PolypGen
pos-vs-neg AUC of the logit. Features come from the recipe's cache (``--cache``), computed once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from rtseg.atomic import write_text
from rtseg.errors import run_script
from rtseg.recipes.layout import group_folds
from rtseg.recipes.distill.data import add_tiles, load_all, open_store, seeds_of, view_tiles
from rtseg.recipes.distill.fit import DEFAULT_VARIANT, VARIANTS, fit
from rtseg.train.probe import fit_classifier, head_cams, head_maps, logits_of
from rtseg.train.top import Top

POS = ("kvasir", "cvc", "pg_pos")


def folds(data: Path, cache: Path, k: int = 3):
    """(store, items, iterator of (fold, train, test, seeds))"""
    items = load_all(data)
    store = open_store(items, cache)
    fold_of = {s: group_folds(i, k) for s, i in items.items()}

    def gen():
        for f in range(k):
            train = {s: [it for j, fl in enumerate(fs) if j != f for it in fl] for s, fs in fold_of.items()}
            test = {s: fs[f] for s, fs in fold_of.items()}
            seeds = seeds_of(train)
            add_tiles(store, seeds)
            yield f, train, test, seeds
    return store, items, gen()


def keys(its) -> list[str]:
    return [str(it.image) for it in its]


def rates(zs: dict[str, np.ndarray]) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    r = {s: float((zs[s] > 0).mean()) for s in POS}
    r["pg_neg"] = float((zs["pg_neg"] <= 0).mean())
    r["auc"] = float(roc_auc_score(np.r_[np.ones(len(zs["pg_pos"])), np.zeros(len(zs["pg_neg"]))],
                                   np.r_[zs["pg_pos"], zs["pg_neg"]]))
    return r


def summary(res: dict[str, list[dict]]) -> dict:
    out = {}
    for name, rs in res.items():
        m = {s: round(float(np.mean([r[s] for r in rs])), 4) for s in rs[0]}
        m["pg_neg_folds"] = [round(r["pg_neg"], 3) for r in rs]
        out[name] = m
        print(f"{name:42s} polyp: kvasir {m['kvasir']:.3f} cvc {m['cvc']:.3f} pg_pos {m['pg_pos']:.3f}"
              f" | polyp-free: {m['pg_neg']:.3f} {m['pg_neg_folds']} | AUC {m['auc']:.3f}", flush=True)
    return out


def training_sets(store, train, seeds):
    pos = keys(train["kvasir"] + train["cvc"] + train["pg_pos"])
    neg = keys(train["pg_neg"]) + [t for it in seeds for t in store.tile_keys.get(str(it.image), [])]
    return pos, neg


# --------------------------------------------------------------------------------------------
def pooled(c, kind: str) -> np.ndarray:
    h = c.head.astype(np.float32)
    parts = [c.gap]
    if "max" in kind.split("+"):
        parts.append(h.max(axis=(2, 3)))
    for blk, name in ((1, "f14"), (2, "f20")):
        f = c.feats[blk].astype(np.float32)
        if name in kind.split("+"):
            parts.append(f.mean(axis=(2, 3)))
        if f"{name}max" in kind.split("+"):
            parts.append(f.max(axis=(2, 3)))
    return np.concatenate(parts, 1)


def run_pooling(data: Path, cache: Path) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    kinds = ["gap", "gap+max", "gap+f20", "gap+f20+f14", "gap+max+f20+f14", "gap+f20+f20max"]
    store, _, gen = folds(data, cache)
    res: dict = {}
    for _, train, test, seeds in gen:
        pos, neg = training_sets(store, train, seeds)
        cp, cn = store.get(pos), store.get(neg)
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        for kind in kinds:
            for c in (0.05, 0.5):
                x = np.concatenate([pooled(cp, kind), pooled(cn, kind)])
                sc = StandardScaler().fit(x) if kind != "gap" else None
                # the standardised features are ~50x the raw scale: C scaled to match
                clf = LogisticRegression(C=c if sc is None else c / 50, class_weight="balanced",
                                         max_iter=5000).fit(sc.transform(x) if sc else x, y)
                zs = {}
                for s in POS + ("pg_neg",):
                    xt = pooled(store.get(keys(test[s])), kind)
                    zs[s] = clf.decision_function(sc.transform(xt) if sc else xt)
                res.setdefault(f"{kind} C={c}", []).append(rates(zs))
    return summary(res)


# --------------------------------------------------------------------------------------------
def add_quadrants(store, items, cache: Path) -> dict[str, list[str]]:
    """Features of the lit 2 x 2 quadrants of every polyp image's active area (key ``image#qN``,
    :func:`rtseg.recipes.distill.data.view_tiles`), cached; image -> its keys. The key list is kept
    beside the features (which quadrants are lit is known only after decoding)."""
    from rtseg.imageio import read_image

    by_img: dict[str, list[str]] = {}
    for src in POS:
        idx = cache / f"quadrants-{src}.json"
        tiles: dict[str, np.ndarray] = {}
        try:
            ks = json.loads(idx.read_text())
        except (OSError, ValueError):  # none yet, or damaged: decode the images (once)
            tiles = {f"{it.image}#q{q}": t for it in items[src]
                     for q, t in view_tiles(read_image(it.image), 2).items()}
            ks = list(tiles)
            write_text(idx, json.dumps(ks))

        def load(k: str) -> np.ndarray:
            if k in tiles:
                return tiles[k]
            image, q = k.rsplit("#q", 1)
            return view_tiles(read_image(image), 2)[int(q)]

        # features from the cache when its keys match, else computed (FeatureStore.add checks)
        store.add(ks, load, f"quadrants-{src}")
        for k in ks:
            by_img.setdefault(k.rsplit("#q", 1)[0], []).append(k)
    return by_img


def run_pseudo_tiles(data: Path, cache: Path) -> dict:
    configs = [("base", None, None, 1.0, "all"), ("z>1 cam<0.3", 1, .3, 1.0, "all"),
               ("z>1 cam<0.3 weight 0.5", 1, .3, .5, "all"), ("z>2 cam<0.2", 2, .2, 1.0, "all"),
               ("z>1 cam<0.3 PolypGen only", 1, .3, 1.0, "pg_pos"), ("z>0 cam<0.5", 0, .5, 1.0, "all")]
    store, items, gen = folds(data, cache)
    by_img = add_quadrants(store, items, cache)
    res: dict = {}
    for _, train, test, seeds in gen:
        pos_items = train["kvasir"] + train["cvc"] + train["pg_pos"]
        pos, neg = training_sets(store, train, seeds)
        cp, cn = store.get(pos), store.get(neg)
        x0, y0 = np.concatenate([cp.gap, cn.gap]), np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        w, b = fit_classifier(x0, y0, 0.5)
        z_tr, cams = logits_of(cp.gap, w, b), head_cams(cp.head, w)
        for name, zmin, frac, wt, srcs in configs:
            w2, b2, sel = w, b, []
            if zmin is not None:
                for it, z, cam in zip(pos_items, z_tr, cams):
                    if z < zmin or (srcs != "all" and it.source != srcs):
                        continue
                    c14 = cv2.resize(cam, (14, 14), interpolation=cv2.INTER_LINEAR)
                    for k in by_img.get(str(it.image), []):
                        i, j = divmod(int(k.rsplit("#q", 1)[1]), 2)
                        if c14[i * 7:(i + 1) * 7, j * 7:(j + 1) * 7].max() < frac * (c14.max() + 1e-9):
                            sel.append(k)
                x = np.concatenate([x0, store.get(sel).gap]) if sel else x0
                sw = np.r_[np.ones(len(y0)), np.full(len(sel), wt)]
                w2, b2 = fit_classifier(x, np.r_[y0, np.zeros(len(sel))], 0.5, sample_weight=sw)
            r = rates({s: logits_of(store.get(keys(test[s])).gap, w2, b2) for s in POS + ("pg_neg",)})
            r["n_tiles"] = len(sel)
            res.setdefault(name, []).append(r)
    return summary(res)


# --------------------------------------------------------------------------------------------
def run_operating_points(data: Path, cache: Path, variant: str = DEFAULT_VARIANT) -> dict:
    store, _, gen = folds(data, cache)
    held = []
    for f, train, test, _ in gen:
        ft = fit(store, train, VARIANTS[variant], store.m, log=lambda *a: None)
        rec = {}
        for s in POS + ("pg_neg",):
            c = ft.view(store.get(keys(test[s])))  # through a fine-tuned top, if any
            rec[s] = (logits_of(c.gap, ft.w, ft.b),
                      head_maps(ft.head, c, head_cams(c.head, ft.w)).reshape(len(c.gap), -1).max(1))
        held.append(rec)
        print(f"fold {f} fitted", flush=True)
    grid = {}
    for tz in (0, 0.5, 1, 1.5, 2, 3):
        for th in (0.5, 0.6, 0.7, 0.8):
            neg = [float(np.mean((r["pg_neg"][0] <= tz) | (r["pg_neg"][1] <= th))) for r in held]
            pos = [sum(int(((r[s][0] > tz) & (r[s][1] > th)).sum()) for s in POS) /
                   sum(len(r[s][0]) for s in POS) for r in held]
            grid[f"logit>{tz} head>{th}"] = {"polyp_called_polyp": round(float(np.mean(pos)), 4),
                                             "pg_neg_called_non_polyp": round(float(np.mean(neg)), 4),
                                             "pg_neg_folds": [round(v, 3) for v in neg]}
            print(f"classifier logit > {tz:<3} head max > {th}: polyp frames {np.mean(pos):.3f} | "
                  f"polyp-free {np.mean(neg):.3f} {[round(v, 2) for v in neg]}", flush=True)
    return grid


# --------------------------------------------------------------------------------------------
def finetune_top(model, x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, from_block: int,
                 epochs: int = 12, seed: int = 0, lr: float = 1e-4, batch: int = 64
                 ) -> tuple[Top, np.ndarray, float]:
    """Fine-tune the top of ``model`` and a linear classifier (from ``w``, ``b``) on the cached
    block-``from_block`` features ``x`` [N, C, g, g] with labels ``y`` (balanced BCE, horizontal
    flips). Returns (top, classifier weights, bias)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    top = Top(model, from_block)
    fc = nn.Linear(int(w.size), 1)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(np.asarray(w, np.float32))[None])
        fc.bias.fill_(float(b))
    opt = torch.optim.Adam([{"params": list(top.parameters()), "lr": lr},
                            {"params": fc.parameters(), "lr": 10 * lr}], weight_decay=1e-4)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, np.float32))
    pw = torch.tensor(float((yt == 0).sum()) / max(1.0, float((yt == 1).sum())))  # balanced classes
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(yt), generator=g)
        for s in range(0, len(perm), batch):
            i = perm[s:s + batch]
            xb = xt[i].float()
            flip = torch.rand(len(i), generator=g) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            z = fc(top(xb)[0].mean(dim=(2, 3)))[:, 0]
            loss = F.binary_cross_entropy_with_logits(z, yt[i], pos_weight=pw)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return top, fc.weight.detach()[0].numpy().copy(), float(fc.bias.detach())


def run_top_finetune(data: Path, cache: Path, epochs: int = 12, from_block: int = 20) -> dict:
    """The network's top fine-tuned with the classifier (:func:`finetune_top`):
    conv_head 320 -> 1280 + its BN affine (``from_block`` 20, on the cached block-20 features)
    or also blocks 15-20 (``from_block`` 14, on the cached block-14 features); BN statistics
    frozen; started from the ImageNet weights and the linear probe; beside it, in the same
    folds, the linear probe alone (the shipped classifier until variant agree-allneg-top)."""
    import torch

    from rtseg.model.bundle import build_model
    from rtseg.recipes.distill.data import ARCH
    from rtseg.train.top import retop

    torch.manual_seed(0)
    base = build_model(ARCH, pretrained=True).eval()
    fi = {20: 2, 14: 1}[from_block]
    res: dict = {}
    store, _, gen = folds(data, cache)
    for f, train, test, seeds in gen:
        pos, neg = training_sets(store, train, seeds)
        cp, cn = store.get(pos), store.get(neg)
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(np.float32)
        w, b = fit_classifier(np.concatenate([cp.gap, cn.gap]), y, 0.5)
        zs = {s: logits_of(store.get(keys(test[s])).gap, w, b) for s in POS + ("pg_neg",)}
        res.setdefault("linear probe (shipped), C=0.5", []).append(rates(zs))
        top, w2, b2 = finetune_top(base, np.concatenate([cp.feats[fi], cn.feats[fi]]), y, w, b, from_block,
                                   epochs=epochs, seed=f)
        # the cached features reproduce the cached pooled activations through the ImageNet top
        err = float(np.abs(retop(type(top)(base, from_block), cp.take(range(64)), fi, None).gap
                           - cp.gap[:64]).max())
        zs = {s: logits_of(retop(top, store.get(keys(test[s])), fi, None).gap, w2, b2) for s in POS + ("pg_neg",)}
        r = rates(zs)
        r["gap_check_max_abs"] = err
        name = f"{'blocks 15-20 + ' if from_block == 14 else ''}conv_head + BN affine fine-tuned, {epochs} epochs"
        res.setdefault(name, []).append(r)
        print(f"  fold {f}: probe pg_neg {res['linear probe (shipped), C=0.5'][-1]['pg_neg']:.3f} "
              f"AUC {res['linear probe (shipped), C=0.5'][-1]['auc']:.3f}; fine-tuned pg_neg {r['pg_neg']:.3f} "
              f"AUC {r['auc']:.3f} (cached-feature check {err:.3g})", flush=True)
    return summary(res)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("idea", choices=["pooling", "pseudo-tiles", "operating-points", "top-finetune"])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--cache", type=Path, default=Path("runs/lite_features"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--from-block", type=int, default=20, choices=[14, 20],
                    help="top-finetune: fine-tune what follows this block (its cached features)")
    ap.add_argument("--variant", default=DEFAULT_VARIANT, choices=sorted(VARIANTS),
                    help="operating-points: the recipe variant fitted per fold")
    a = ap.parse_args(argv)

    def work() -> dict:
        a.cache.mkdir(parents=True, exist_ok=True)
        if a.idea == "operating-points":
            return run_operating_points(a.data, a.cache, a.variant)
        if a.idea == "top-finetune":
            return run_top_finetune(a.data, a.cache, from_block=a.from_block)
        return {"pooling": run_pooling, "pseudo-tiles": run_pseudo_tiles}[a.idea](a.data, a.cache)

    res = run_script(work)
    if a.json:
        from rtseg.atomic import write_json

        write_json(a.json, res)


if __name__ == "__main__":
    main()
