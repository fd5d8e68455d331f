"""backbones: names, options and errors; unit-length embeddings of the right size; real CNN weights."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import SHAPES, draw_shape
from PIL import Image

from recommender.backbones import (
    DINOV2_MODELS,
    HUB_MODELS,
    Hybrid,
    load_backbone,
    parse_weights,
    registered_backbones,
)
from recommender.errors import ModelError


def pictures(n_each: int = 2) -> tuple[list[Image.Image], list[str]]:
    images, labels = [], []
    for k, (label, (shape, colour)) in enumerate(SHAPES.items()):
        for i in range(n_each):
            images.append(draw_shape(shape, colour, seed=1000 + 10 * k + i))
            labels.append(label)
    return images, labels


def assert_unit_rows(x: np.ndarray, n: int, dim: int) -> None:
    assert x.shape == (n, dim) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("pooling", "factor"), [("cls", 1), ("mean", 1), ("cls+mean", 2)])
def test_dinov2_from_a_local_folder(tiny_model, pooling, factor):
    backbone = load_backbone(str(tiny_model), pooling=pooling)
    assert backbone.dim == 32 * factor
    images, _ = pictures()
    out = backbone.embed(images, batch_size=4)  # two batches
    assert_unit_rows(out, len(images), 32 * factor)
    assert backbone.spec.to_json() == {
        "model": str(tiny_model.resolve()),
        "pooling": pooling,
        "image_size": 224,
        "fit": "pad",
    }
    assert backbone.identity.startswith("sha256:")


def test_dinov2_is_deterministic_and_batch_independent(tiny_model):
    backbone = load_backbone(str(tiny_model))
    images, _ = pictures()
    together = backbone.embed(images)
    alone = np.concatenate([backbone.embed([img]) for img in images])
    np.testing.assert_allclose(together, alone, atol=1e-4)  # bf16 matmuls block differently per batch size


def test_same_picture_scores_one_and_shapes_group(tiny_model):
    backbone = load_backbone(str(tiny_model))
    images, labels = pictures(3)
    x = backbone.embed(images)
    sims = x @ x.T
    np.testing.assert_allclose(np.diag(sims), 1.0, atol=1e-5)
    same = np.equal.outer(labels, labels) & ~np.eye(len(labels), dtype=bool)
    assert sims[same].mean() > sims[~np.equal.outer(labels, labels)].mean()


def test_registers_variant_and_missing_processor_config(tiny_model_registers):
    backbone = load_backbone(str(tiny_model_registers), pooling="mean")
    assert backbone.registers == 4
    images, _ = pictures(1)
    assert_unit_rows(backbone.embed(images), 3, 32)
    grid = backbone.patch_features(images[:1])
    assert grid.shape == (1, 16, 16, 32)  # register tokens are not patches


@pytest.mark.parametrize("size", [112, 336])
def test_dinov2_image_sizes_and_patch_grid(tiny_model, size):
    backbone = load_backbone(str(tiny_model), image_size=size)
    grid = backbone.patch_features(pictures(1)[0][:2])
    side = size // 14
    assert grid.shape == (2, side, side, 32)
    np.testing.assert_allclose(np.linalg.norm(grid, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("size", [225, 230, 14, 2000])
def test_bad_image_sizes_are_refused(tiny_model, size):
    with pytest.raises(ModelError, match="multiple of 14"):
        load_backbone(str(tiny_model), image_size=size)


def test_fit_crop_differs_from_pad(tiny_model):
    wide = Image.new("RGB", (300, 100), "white")
    wide.paste((200, 0, 0), (0, 0, 60, 100))  # red only at the far left: cropped away
    pad = load_backbone(str(tiny_model), fit="pad").embed([wide])
    crop = load_backbone(str(tiny_model), fit="crop").embed([wide])
    assert float((pad @ crop.T)[0, 0]) < 0.999


def test_model_loaded_once(tiny_model):
    a = load_backbone(str(tiny_model))
    b = load_backbone(str(tiny_model), pooling="mean")
    assert a.model is b.model


def test_colour_histogram_ignores_the_background():
    hist = load_backbone("colour-histogram")
    assert hist.dim == 512 and hist.spec.to_json() == {"model": "colour-histogram"}
    red_on_white = draw_shape("circle", (220, 30, 30), seed=1)
    red_on_grey = draw_shape("square", (220, 30, 30), seed=2, background=(128, 128, 128))
    blue_on_white = draw_shape("circle", (30, 30, 220), seed=1)
    x = hist.embed([red_on_white, red_on_grey, blue_on_white])
    assert_unit_rows(x, 3, 512)
    assert x[0] @ x[1] > 0.95  # same colour, whatever the background
    assert x[0] @ x[2] < 0.05
    blank = hist.embed([Image.new("RGB", (10, 10), "white")])
    assert_unit_rows(blank, 1, 512)  # a blank picture keeps its only bin


def test_hybrid_cosine_is_the_weighted_mean_of_its_parts(tiny_model):
    images, _ = pictures(1)
    spec = f"{tiny_model}+colour-histogram"
    hybrid = load_backbone(spec, weights="3,1")
    assert isinstance(hybrid, Hybrid) and hybrid.dim == 32 + 512
    assert hybrid.weights == [0.75, 0.25]
    x = hybrid.embed(images)
    assert_unit_rows(x, 3, 544)
    a = load_backbone(str(tiny_model)).embed(images)
    b = load_backbone("colour-histogram").embed(images)
    np.testing.assert_allclose(x @ x.T, 0.75 * (a @ a.T) + 0.25 * (b @ b.T), atol=1e-5)
    rebuilt = load_backbone(**hybrid.spec.as_kwargs())
    assert rebuilt.spec == hybrid.spec and rebuilt.identity == hybrid.identity
    assert hybrid.patch_features(images[:1]).shape == (1, 16, 16, 32)
    # JPEGs are decoded large enough for every part: the model's 224 px square, the histogram's 128.
    assert a.shape and hybrid.decode_size == (224, "pad") == load_backbone(str(tiny_model)).decode_size
    assert load_backbone(str(tiny_model), fit="crop").decode_size == (224, "crop")
    assert load_backbone(spec, fit="crop").decode_size == (224, "crop")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "resnet-9000"}, "unknown model 'resnet-9000'"),
        ({"model": "colour-histogram", "weights": "1,2"}, "only applies to hybrids"),
        ({"model": "colour-histogram+efficientnet-lite0", "weights": "1"}, "2 parts .* but 1 weights"),
        ({"model": "colour-histogram+", "weights": None}, "bad hybrid"),
        ({"model": "offline+colour-histogram"}, "bad hybrid"),
        ({"model": "offline", "weights": "1,1"}, "fixed weights"),
        ({"model": "colour-histogram", "pooling": "max"}, "unknown pooling"),
        ({"model": "colour-histogram", "fit": "stretch"}, "unknown fit"),
    ],
)
def test_bad_names_and_options(kwargs, message):
    with pytest.raises(ModelError, match=message):
        load_backbone(**kwargs)


def test_bad_weights():
    assert parse_weights("0.7, 0.3") == [0.7, 0.3]
    assert parse_weights(None) == []
    for bad in ("a,b", "-1,2", "0,0", "nan,1"):
        with pytest.raises(ModelError):
            parse_weights(bad)


def test_folder_of_an_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelError, match=r"'bert' is not supported; supported: DINOv2 .*dinov3_vit.*siglip2.*CLIP"):
        load_backbone(str(tmp_path))
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ModelError, match="config.json"):
        load_backbone(str(tmp_path))


def test_uncached_hub_model_fails_fast_with_a_way_out(monkeypatch):
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    for name in ("dinov2-small", "facebook/dinov2-base", "someone/some-model"):
        started = time.perf_counter()
        with pytest.raises(ModelError) as err:
            load_backbone(name)
        assert time.perf_counter() - started < 5
        assert "RECOMMENDER_MODEL" in str(err.value) and "--model offline" in str(err.value)


def test_unreachable_hub_is_detected_quickly(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    started = time.perf_counter()
    with pytest.raises(ModelError, match="cannot be reached"):
        load_backbone("dinov2-small")
    assert time.perf_counter() - started < 5


def test_environment_picks_the_default_model(tiny_model, monkeypatch):
    monkeypatch.setenv("RECOMMENDER_MODEL", str(tiny_model))
    assert load_backbone().name == str(tiny_model.resolve())
    assert load_backbone("colour-histogram").name == "colour-histogram"  # the argument wins


def test_every_documented_name_is_accepted_or_explains_itself():
    hub_names = {name for names in HUB_MODELS.values() for name in names}
    assert set(DINOV2_MODELS) <= hub_names <= set(registered_backbones())
    for name in registered_backbones():
        try:
            load_backbone(name)
        except ModelError as exc:  # hub names: not cached here
            assert name in hub_names and "RECOMMENDER_MODEL" in str(exc)


def test_efficientnet_with_real_weights():
    cnn = load_backbone("efficientnet-lite0")
    assert cnn.dim == 1280 and cnn.identity.startswith("sha256:")
    images, labels = pictures(2)
    x = cnn.embed(images)
    assert_unit_rows(x, len(images), 1280)
    grid = cnn.patch_features(images[:1])
    assert grid.shape == (1, 7, 7, 1280)
    sims = x @ x.T
    same = np.equal.outer(labels, labels) & ~np.eye(len(labels), dtype=bool)
    assert sims[same].min() > sims[~np.equal.outer(labels, labels)].max()  # real features group the shapes


def test_offline_alias():
    offline = load_backbone("offline")
    assert offline.name == "offline" and offline.dim == 1280 + 112 + 512
    assert offline.spec.model == "offline"
    assert_unit_rows(offline.embed(pictures(1)[0]), 3, 1904)
    earlier = load_backbone("offline-v1")
    assert earlier.dim == 1280 + 512 and earlier.spec.model == "offline-v1"
    mirror = load_backbone("efficientnet-lite0-stages-mirror")
    flipped = [im.transpose(0) for im in pictures(1)[0]]  # FLIP_LEFT_RIGHT
    np.testing.assert_allclose(mirror.embed(pictures(1)[0]), mirror.embed(flipped), atol=1e-4)


def test_bf16_agrees_with_fp32(tiny_model):
    images, _ = pictures(2)
    exact = load_backbone(str(tiny_model), precision="fp32")
    fast = load_backbone(str(tiny_model), precision="bf16")
    assert exact.precision == "fp32" and fast.precision == "bf16"
    cosine = (exact.embed(images) * fast.embed(images)).sum(axis=1)
    assert cosine.min() > 0.999


def test_precision_choices(monkeypatch):
    assert load_backbone("efficientnet-lite0").precision == "fp32"  # auto: bf16 would cost the CNN 0.008 cosine
    assert load_backbone("efficientnet-lite0", precision="bf16").precision == "bf16"
    with pytest.raises(ModelError, match="unknown precision"):
        load_backbone("colour-histogram", precision="fp8")
    monkeypatch.setenv("RECOMMENDER_PRECISION", "fp8")
    with pytest.raises(ModelError, match="unknown precision"):
        load_backbone("colour-histogram")


def test_preparer_is_prepare_without_the_model(tiny_model):
    # Ray's decoding tasks get `preparer()`: it must prepare exactly as `prepare` does.
    picture = draw_shape("triangle", (10, 200, 30), seed=3, size=(90, 40))
    for backbone in (
        load_backbone(str(tiny_model)),
        load_backbone("colour-histogram"),
        load_backbone(f"{tiny_model}+colour-histogram"),
    ):
        mine, theirs = backbone.prepare(picture), backbone.preparer()(picture)
        for a, b in zip(*((m if isinstance(m, tuple) else (m,)) for m in (mine, theirs))):
            np.testing.assert_array_equal(a, b)
        assert getattr(backbone.preparer(), "__self__", None) is not backbone or not hasattr(backbone, "model")


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_registers"])
def test_the_lean_cpu_forward_matches_transformers(fixture, request):
    """Fused QKV, folded layer scales and the CLS-only last block change nothing but speed."""
    import torch

    from recommender.backbones.lean import LeanDinov2, can_pack, supports

    backbone = load_backbone(str(request.getfixturevalue(fixture)), precision="fp32")
    model = backbone.model
    assert supports(model) and backbone._lean is not None  # the path CPU embedding takes
    scales = [(layer.layer_scale1.lambda1.clone(), layer.layer_scale2.lambda1.clone()) for layer in model.encoder.layer]
    torch.manual_seed(0)  # the same scales and pixels every run: the bf16 bound is checked, not sampled
    try:
        with torch.no_grad():  # layer scales of 1 would hide a folding mistake
            for layer in model.encoder.layer:
                layer.layer_scale1.lambda1.uniform_(0.3, 1.7)
                layer.layer_scale2.lambda1.uniform_(0.3, 1.7)
        pixels = torch.randn(3, 3, 224, 224)
        with torch.inference_mode():
            reference = model(pixel_values=pixels).last_hidden_state  # (N, T, D)
            full = LeanDinov2(model, torch.float32)(pixels)
            cls = LeanDinov2(model, torch.float32)(pixels, cls_only=True)
            bf16 = LeanDinov2(model, torch.bfloat16)(pixels, cls_only=True)
            unpacked = LeanDinov2(model, torch.float32, pack=False)(pixels, cls_only=True)
    finally:
        with torch.no_grad():
            for layer, (s1, s2) in zip(model.encoder.layer, scales):
                layer.layer_scale1.lambda1.copy_(s1)
                layer.layer_scale2.lambda1.copy_(s2)
    assert full.shape == reference.shape and cls.shape == (3, 1, reference.shape[-1])
    torch.testing.assert_close(full, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cls[:, 0], reference[:, 0], atol=1e-4, rtol=1e-4)
    assert torch.nn.functional.cosine_similarity(bf16[:, 0], reference[:, 0]).min() > 0.999
    torch.testing.assert_close(unpacked, cls, atol=1e-4, rtol=1e-4)  # oneDNN's packed weights, or F.linear
    assert backbone._lean.packed == can_pack(torch.float32)
