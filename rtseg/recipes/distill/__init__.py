"""The recipe of the shipped model: a probe teacher distilled into the network that runs.

1. The teacher (a probe): ImageNet EfficientNet-Lite1, frozen; a linear polyp classifier on its
   pooled features (image labels of every source) and a segmentation head that refines the
   classifier's Grad-CAM, trained on 100 seed masks (the only pixel labels) and empty maps of
   polyp-free views, then once more on its own confident maps (self-training).
2. The student: the same network fine-tuned end to end through augmented views
   (:mod:`rtseg.train.finetune`), the seed masks and the teacher's confident maps of every
   polyp frame without a mask as its targets; it is what the bundle ships.

Why "distill": what sets this recipe apart is the teacher -> student step (the paper's
recipe, :mod:`rtseg.recipes.paper`, starts from 100 seed images too). Variant ``video-bkai``
is the teacher alone (the reference "probe" row of the results).

Modules: :mod:`.data` (the data folder's items, in-domain negative views, the cached
features), :mod:`.fit` (the variants and one fit), :mod:`.finetune` (the end-to-end step),
:mod:`.call_smoothing` (the video call as the live loop shows it, its factor chosen without
held-out data), :mod:`.cv` (cross-validation), :mod:`.holdout` (each source held out in turn:
the model selection rule), :mod:`.build` (the bundle). Command line:
``python -m rtseg.recipes.distill build|cv|holdout`` (:mod:`.__main__`), and
``rtseg build-model`` for the build.
"""
