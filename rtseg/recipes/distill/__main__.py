"""The recipe of the shipped model: seed masks -> a probe teacher -> the network fine-tuned end to end.

``python -m rtseg.recipes.distill build --data ../shared/data --out rtseg/assets/default_model``
    one fit on all the data, written as a bundle (variant ``finetune`` unless ``--variant``);
    the same build as ``rtseg build-model``.
``python -m rtseg.recipes.distill cv --data ../shared/data --folds 3 --variants finetune --json cv.json``
    K-fold cross-validation that cannot leak (:mod:`rtseg.recipes.distill.cv`); several
    variants share one feature extraction.
``python -m rtseg.recipes.distill holdout --data ../shared/data --variants finetune --json holdout.json``
    the model selection rule: each source (a hospital) held out in turn, everything fitted on
    the others (:mod:`rtseg.recipes.distill.holdout`).
``python -m rtseg.recipes.distill folds --data ../shared/data --folds-dir runs/folds/finetune --json folds.json``
    the folds' models (``holdout --save-folds``) run by the product on their held-out source, and
    the frame-call threshold sweep there (:mod:`rtseg.recipes.distill.folds`).

The frozen network's features are cached under ``--cache`` (default ``runs/lite_features``,
one ``<label>.cpu-resize.npz`` per source and per set of seed tiles), reused by every stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from rtseg.errors import run_script
from rtseg.recipes.distill.data import SIZE
from rtseg.recipes.distill.fit import DEFAULT_VARIANT
from rtseg.recipes.layout import recipe_parser

CACHE = Path("runs/lite_features")  # the feature cache's default folder


def main(argv: list[str] | None = None) -> None:
    from rtseg.recipes.distill.holdout import HOSPITALS

    ap = recipe_parser("python -m rtseg.recipes.distill", __doc__, ["build", "cv", "holdout", "folds"])
    ap.add_argument("--folds", type=int, default=3, help="cv: folds")
    ap.add_argument("--variants", default=DEFAULT_VARIANT, help="cv, holdout: recipe variants, comma-separated")
    ap.add_argument("--variant", default=DEFAULT_VARIANT, help=f"build: the shipped model is '{DEFAULT_VARIANT}'")
    ap.add_argument("--sources", default=None,
                    help=f"holdout: the sources held out in turn (default: {','.join(HOSPITALS)})")
    ap.add_argument("--input-size", type=int, default=SIZE, help="build, cv, holdout: the network's input size")
    ap.add_argument("--cache", type=Path, default=CACHE, help="the feature cache's folder")
    ap.add_argument("--json", type=Path, default=None, help="cv, holdout: the results (holdout: written "
                    "after each held-out source)")
    ap.add_argument("--save-folds", type=Path, default=None,
                    help="holdout: also write each fold's model as a bundle, DIR/<variant>/<held-out source>")
    ap.add_argument("--folds-dir", type=Path, default=None, help="folds: the fold bundles of one variant (holdout --save-folds)")
    ap.add_argument("--out", type=Path, default=Path("runs/lite_model"), help="build: the bundle folder")
    a = ap.parse_args(argv)
    run_script(lambda: _run(a))


def _run(a) -> None:
    import torch

    from rtseg.atomic import write_json
    from rtseg.errors import UserError

    if not (128 <= a.input_size <= 512 and a.input_size % 32 == 0):
        raise UserError(f"--input-size must be a multiple of 32 from 128 to 512, not {a.input_size}")

    if a.stage == "build":
        from rtseg.recipes.distill.build import build

        print(build(a.data, a.out, a.cache, a.variant, a.input_size))
        return
    torch.set_flush_denormal(True)
    if a.stage == "folds":
        from rtseg.recipes.distill.folds import score_folds

        if a.folds_dir is None:
            raise UserError("folds needs --folds-dir (the fold bundles of holdout --save-folds)")
        score_folds(a.data, a.folds_dir, log=lambda *x: print(*x, flush=True),
                    save=(lambda r: write_json(a.json, r)) if a.json else None)
        return
    if a.stage == "cv":
        from rtseg.recipes.distill.cv import cross_validate

        res = cross_validate(a.data, a.folds, a.variants.split(","), a.cache, a.input_size)
        print(json.dumps(res["summary"], indent=2))
        if a.json:
            write_json(a.json, res)
    else:
        from rtseg.recipes.distill.holdout import hold_out, table

        res = hold_out(a.data, a.variants.split(","), a.cache, a.sources.split(",") if a.sources else None,
                       log=lambda *x: print(*x, flush=True), save=(lambda r: write_json(a.json, r)) if a.json else None,
                       folds_dir=a.save_folds, size=a.input_size)
        table(res)
        print(json.dumps(res["summary"], indent=2))


if __name__ == "__main__":
    main()
