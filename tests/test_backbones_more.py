"""DINOv3, SigLIP 2 and CLIP image towers through the one loader; hub revisions pinned in the manifest."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import draw_shape, make_labeled_catalog
from PIL import Image

import recommender.backbones.hub as hub
from recommender.backbones import HUB_MODELS, HubRevision, load_backbone
from recommender.backbones.vision import load_vision, processor_stats
from recommender.build import build_index
from recommender.cli import cli
from recommender.errors import IndexLoadError, IndexMismatchError, ModelError
from recommender.evaluate import ModelSpec, Plan, compare_models
from recommender.index import Index
from recommender.recommend import look_alikes

TOWER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TEXT = {**TOWER, "num_hidden_layers": 1, "vocab_size": 64, "max_position_embeddings": 16}
#: kind -> (family name, patch size, register tokens, the class that holds only the image tower)
KINDS = {
    "dinov3": ("DINOv3", 16, 4, "DINOv3ViTModel"),
    "siglip2": ("SigLIP / SigLIP 2", 16, 0, "SiglipVisionModel"),
    "siglip2-naflex": ("SigLIP 2 NaFlex", 16, 0, "Siglip2VisionModel"),
    "clip": ("CLIP", 32, 0, "CLIPVisionModel"),
}


def save_tiny(kind: str, folder: Path) -> Path:
    """A random tiny model of `kind` saved as the hub has it: full CLIP / SigLIP checkpoints with their text
    towers, and each with its image processor's config (DINOv3's written as JSON: its class needs torchvision)."""
    import torch
    import transformers as t

    torch.manual_seed(0)
    if kind == "dinov3":
        config = t.DINOv3ViTConfig(**TOWER, patch_size=16, image_size=224, num_register_tokens=4, initializer_range=0.5)
        t.DINOv3ViTModel(config).save_pretrained(folder)
        stats = {"image_processor_type": "DINOv3ViTImageProcessor", "image_mean": [0.4, 0.45, 0.5]}
        (folder / "preprocessor_config.json").write_text(json.dumps({**stats, "image_std": [0.2, 0.25, 0.3]}))
    elif kind == "siglip2":  # the fixed-resolution SigLIP 2 checkpoints are SiglipModel ones
        vision = {**TOWER, "patch_size": 16, "image_size": 224}
        t.SiglipModel(t.SiglipConfig(text_config=TEXT, vision_config=vision)).save_pretrained(folder)
        t.SiglipImageProcessorPil().save_pretrained(folder)
    elif kind == "siglip2-naflex":
        vision = {**TOWER, "patch_size": 16, "num_patches": 196}
        t.Siglip2Model(t.Siglip2Config(text_config=TEXT, vision_config=vision)).save_pretrained(folder)
        t.Siglip2ImageProcessorPil(patch_size=16, max_num_patches=196).save_pretrained(folder)
    else:
        vision = {**TOWER, "patch_size": 32, "image_size": 224, "initializer_factor": 10.0}
        t.CLIPModel(t.CLIPConfig(text_config=TEXT, vision_config=vision, projection_dim=16)).save_pretrained(folder)
        t.CLIPImageProcessorPil().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {kind: save_tiny(kind, tmp_path_factory.mktemp(kind)) for kind in KINDS}


def pictures() -> list[Image.Image]:
    return [
        draw_shape(shape, colour, seed=seed, size=(90, 60))
        for seed, (shape, colour) in enumerate([("circle", (220, 30, 30)), ("square", (30, 180, 60))] * 2)
    ]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_tower_loads_through_the_one_loader_and_declares_itself(towers, kind):
    family, patch, registers, tower = KINDS[kind]
    backbone = load_backbone(str(towers[kind]))
    assert backbone.family.name == family and type(backbone.model).__name__ == tower
    assert not hasattr(backbone.model, "text_model")  # a full checkpoint: only the image tower is built
    assert (backbone.patch_size, backbone.registers, backbone.spatial, backbone.hub) == (patch, registers, True, None)
    assert backbone.forward == f"transformers-{backbone.precision}"  # the lean forward is DINOv2's only
    x = backbone.embed(pictures(), batch_size=3)
    assert x.shape == (4, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(x, backbone.embed(pictures()), atol=2e-3)  # batch-independent
    grid = backbone.patch_features(pictures()[:1])  # CLS and registers are not patches
    assert grid.shape == (1, 224 // patch, 224 // patch, 32)


@pytest.mark.parametrize("kind", list(KINDS))
def test_poolings_and_other_image_sizes(towers, kind):
    patch = KINDS[kind][1]
    both = load_backbone(str(towers[kind]), pooling="cls+mean", precision="fp32")
    cls = load_backbone(str(towers[kind]), pooling="cls", precision="fp32").embed(pictures())
    mean = load_backbone(str(towers[kind]), pooling="mean", precision="fp32").embed(pictures())
    x = both.embed(pictures())
    assert both.dim == 64
    np.testing.assert_allclose(x * np.sqrt(2), np.concatenate([cls, mean], axis=1), atol=1e-5)
    small = load_backbone(str(towers[kind]), image_size=4 * patch)  # position embeddings interpolated
    assert small.patch_features(pictures()[:1]).shape == (1, 4, 4, 32)
    with pytest.raises(ModelError, match=f"multiple of {patch}"):
        load_backbone(str(towers[kind]), image_size=4 * patch + 2)


@pytest.mark.parametrize("kind", ["siglip2", "clip"])
def test_cls_pooling_is_the_models_pooled_output(towers, kind):
    import torch

    backbone = load_backbone(str(towers[kind]), precision="fp32")
    pixels = backbone._pixels([backbone.prepare(img) for img in pictures()])
    with torch.inference_mode():
        pooled = backbone.model(pixel_values=pixels).pooler_output  # CLIP: the normed CLS; SigLIP: the MAP head
    want = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    np.testing.assert_allclose(backbone.embed(pictures()), want, atol=1e-5)


def test_naflex_patches_are_its_image_processors(towers):
    """SigLIP 2 NaFlex takes patches, not pixels: a square picture cut as its own processor cuts it."""
    from transformers import AutoImageProcessor

    backbone = load_backbone(str(towers["siglip2-naflex"]), precision="fp32")
    square = Image.fromarray(backbone.prepare(pictures()[0]))
    theirs = AutoImageProcessor.from_pretrained(towers["siglip2-naflex"])(images=[square], return_tensors="pt")
    mine = backbone._inputs(backbone._pixels([np.asarray(square)]))
    assert mine["spatial_shapes"].tolist() == theirs["spatial_shapes"].tolist() == [[14, 14]]
    np.testing.assert_allclose(mine["pixel_values"].numpy(), theirs["pixel_values"].numpy(), atol=1e-5)
    assert mine["pixel_attention_mask"].tolist() == theirs["pixel_attention_mask"].tolist()


def test_normalisation_comes_from_the_image_processor(towers, tmp_path):
    clip, naflex = (load_backbone(str(towers[k])) for k in ("clip", "siglip2-naflex"))
    np.testing.assert_allclose(clip._mean.flatten().numpy() / 255, [0.48145466, 0.4578275, 0.40821073], atol=1e-6)
    np.testing.assert_allclose(naflex._std.flatten().numpy() / 255, [0.5, 0.5, 0.5])
    dinov3 = load_vision(str(towers["dinov3"]), "cpu")  # its processor class needs torchvision: the file is read
    assert (dinov3.mean, dinov3.std) == ((0.4, 0.45, 0.5), (0.2, 0.25, 0.3))
    bare = tmp_path / "bare"
    bare.mkdir()
    assert processor_stats(bare, dinov3.family) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert processor_stats(bare, clip.family)[0][0] == pytest.approx(0.48145466)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_tower_indexes_searches_and_evaluates(towers, kind, tmp_path):
    from recommender.evaluate import evaluate_leave_one_out

    catalog = make_labeled_catalog(tmp_path / "shapes", per_label=3)
    backbone = load_backbone(str(towers[kind]))
    report = build_index(catalog, name=kind, backbone=backbone, progress=False)
    assert report.count == 9 and report.forward == backbone.forward
    index = Index.load(kind)
    assert index.manifest.stats.forward == backbone.forward and index.manifest.hub == ()
    assert "hub" not in json.loads((index.folder / "manifest.json").read_text())  # a local folder pins nothing
    again = index.backbone()  # rebuilt from the manifest's spec, checked to be the same weights
    assert again.identity == backbone.identity
    first = index.items[0]
    top = look_alikes(catalog / first.path, index, k=3)  # a picture in, embedded by the index's own backbone
    assert top[0].score == pytest.approx(1.0, abs=1e-2) and first.id in {m.id for m in top}
    result = evaluate_leave_one_out(index)
    assert result.queries == 9 and 0.0 <= result.recall[1] <= 1.0


def test_evaluate_models_runs_them_or_says_not_run_here(towers, tmp_path):
    catalog = make_labeled_catalog(tmp_path / "shapes", per_label=2)
    specs = [ModelSpec(kind, str(towers[kind])) for kind in ("dinov3", "clip")] + [
        ModelSpec("siglip2-base", "siglip2-base")
    ]
    report = compare_models(catalog, specs, Plan(leave_one_out=True), progress=False)
    runs = {run.model: run for run in report.runs}
    assert runs["dinov3"].status == runs["clip"].status == "ok"
    assert runs["clip"].leave_one_out.queries == 6
    assert runs["siglip2-base"].status.startswith("not run here: google/siglip2-base-patch16-224 is not in the local")


def test_short_names_stand_for_the_common_hub_ids():
    names = {name: repo for family in HUB_MODELS.values() for name, repo in family.items()}
    assert names["dinov3-small"] == "facebook/dinov3-vits16-pretrain-lvd1689m"
    assert names["dinov3-huge-plus"] == "facebook/dinov3-vith16plus-pretrain-lvd1689m"
    assert names["siglip2-so400m"] == "google/siglip2-so400m-patch14-224"
    assert names["siglip2-base-naflex"] == "google/siglip2-base-patch16-naflex"
    assert names["clip-large"] == "openai/clip-vit-large-patch14"
    for name in ("dinov3-base", "siglip2-large", "clip-base-16"):
        with pytest.raises(ModelError, match=f"{names[name]} is not in the local cache"):
            load_backbone(name)


def test_unknown_names_list_the_supported_model_types():
    with pytest.raises(ModelError, match=r"unknown model 'vit-9000'.*dinov3-small.*model types: dinov2, .*clip"):
        load_backbone("vit-9000")


# ------------------------------------------------------------------------- the lean forward says so


def test_the_lean_forward_never_switches_off_silently(tiny_model, labeled_catalog, monkeypatch, caplog):
    import recommender.backbones.vision as vision

    assert load_backbone(str(tiny_model)).forward.startswith("lean-")
    monkeypatch.setattr(vision, "supports", lambda model: False)  # e.g. another transformers' module names
    with caplog.at_level(logging.WARNING, logger=vision.__name__):
        backbone = load_backbone(str(tiny_model))
        assert backbone.forward == f"transformers-{backbone.precision}"
    assert "lean CPU forward does not fit" in caplog.text
    build_index(labeled_catalog, name="shapes", backbone=backbone, progress=False)
    result = CliRunner().invoke(cli, ["info", "--index", "shapes"])
    assert f"forward transformers-{backbone.precision}" in result.output


# ------------------------------------------------------------------------- hub revisions


class FakeHub:
    """The hub and its local cache for one repository, behind `hub.fetch_snapshot` (no network).

    `main` is the commit the branch points at now; `remote` what the hub could send; snapshots
    land in a cache laid out as huggingface_hub's (`models--OWNER--NAME/snapshots/<commit>`).
    """

    def __init__(self, root: Path, repo: str, remote: dict[str, Path], main: str) -> None:
        self.repo, self.remote, self.main = repo, remote, main
        self.snapshots = root / f"models--{repo.replace('/', '--')}" / "snapshots"
        self.snapshots.mkdir(parents=True)
        self.downloads: list[str] = []

    def __call__(self, repo: str, *, revision: str | None, local_only: bool) -> Path:
        assert repo == self.repo
        commit = self.main if revision in (None, "main") else revision
        folder = self.snapshots / commit
        if folder.is_dir():
            return folder
        if local_only or commit not in self.remote:
            raise FileNotFoundError(f"{repo}@{commit} is not cached")
        shutil.copytree(self.remote[commit], folder)
        self.downloads.append(commit)
        return folder

    def cache(self, commit: str) -> None:
        shutil.copytree(self.remote[commit], self.snapshots / commit)


A, B = "a" * 40, "b" * 40


@pytest.fixture
def fake_hub(tmp_path, tiny_model, tiny_model_registers, monkeypatch) -> FakeHub:
    fake = FakeHub(tmp_path / "hf", "someone/tiny", {A: tiny_model, B: tiny_model_registers}, main=A)
    fake.cache(A)
    monkeypatch.setattr(hub, "fetch_snapshot", fake)
    load_vision.cache_clear()  # models are kept per (source, device, revision): these are other "machines"
    yield fake
    load_vision.cache_clear()


def other_machine(fake: FakeHub, *, main: str, cached: tuple[str, ...]) -> None:
    """The same index read where the hub's main has moved on and the cache holds other snapshots."""
    shutil.rmtree(fake.snapshots)
    fake.snapshots.mkdir()
    for commit in cached:
        fake.cache(commit)
    fake.main = main
    load_vision.cache_clear()


def test_the_manifest_pins_the_hub_commit_and_a_later_load_uses_it(fake_hub, labeled_catalog):
    backbone = load_backbone("someone/tiny")
    assert backbone.hub == HubRevision("someone/tiny", A) and backbone.hub_revisions == (backbone.hub,)
    build_index(labeled_catalog, name="pinned", backbone=backbone, progress=False)
    index = Index.load("pinned")
    assert index.manifest.hub == (HubRevision("someone/tiny", A),) and index.manifest.revisions == {"someone/tiny": A}
    assert json.loads((index.folder / "manifest.json").read_text())["hub"] == [{"repo": "someone/tiny", "revision": A}]
    # Elsewhere main now points at other weights, but commit A is cached: the index loads its own.
    other_machine(fake_hub, main=B, cached=(A, B))
    assert Index.load("pinned").backbone().identity == backbone.identity
    latest = load_backbone("someone/tiny")
    with pytest.raises(IndexMismatchError, match=f"at revision {A}, not {B}; load that revision .*--revision {A}"):
        Index.load("pinned").check_backbone(latest)


def test_a_pinned_revision_is_fetched_or_the_error_says_why_not(fake_hub, labeled_catalog, monkeypatch):
    build_index(labeled_catalog, name="pinned", model="someone/tiny", progress=False)
    identity = Index.load("pinned").manifest.weights
    other_machine(fake_hub, main=B, cached=(B,))  # commit A is not here, and the hub is not reachable
    with pytest.raises(ModelError) as err:
        Index.load("pinned").backbone()
    message = str(err.value)
    assert f"index 'pinned' was built with someone/tiny at revision {A}:" in message
    assert "not in the local cache" in message and f"hf download someone/tiny --revision {A}" in message
    assert "other weights" not in message
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    assert Index.load("pinned").backbone().identity == identity  # fetched at that commit
    assert fake_hub.downloads == [A]


def test_revision_from_the_flag_or_the_environment(fake_hub, labeled_catalog, monkeypatch, tiny_model):
    fake_hub.cache(B)
    result = CliRunner().invoke(
        cli, ["index", str(labeled_catalog), "--name", "b", "--model", "someone/tiny", "--revision", B, "-q"]
    )
    assert result.exit_code == 0, result.output
    assert Index.load("b").manifest.revisions == {"someone/tiny": B}
    monkeypatch.setenv("RECOMMENDER_MODEL_REVISION", A)
    result = CliRunner().invoke(cli, ["index", str(labeled_catalog), "--name", "a", "--model", "someone/tiny", "-q"])
    assert result.exit_code == 0, result.output
    info = CliRunner().invoke(cli, ["info", "--index", "a"]).output
    assert f"(someone/tiny at revision {A})" in info
    result = CliRunner().invoke(cli, ["index", str(labeled_catalog), "--name", "c", "--model", str(tiny_model), "-q"])
    assert result.exit_code == 1 and "a revision applies to hub models" in result.output
    monkeypatch.delenv("RECOMMENDER_MODEL_REVISION")
    for bad in ("../etc", "-rf", "a b"):
        with pytest.raises(ModelError, match="bad revision"):
            load_backbone("someone/tiny", revision=bad)
    with pytest.raises(ModelError, match="loads nothing from the hub"):
        load_backbone("colour-histogram", revision=A)


def test_a_hybrid_pins_its_hub_part(fake_hub, labeled_catalog):
    hybrid = load_backbone("someone/tiny+colour-histogram", revision=A)
    assert hybrid.hub_revisions == (HubRevision("someone/tiny", A),)
    again = load_backbone("someone/tiny+colour-histogram", revision={"someone/tiny": A})
    assert again.identity == hybrid.identity


def test_older_manifests_without_pins_still_load_and_bad_pins_are_refused(fake_hub, labeled_catalog):
    build_index(labeled_catalog, name="pinned", model="someone/tiny", progress=False)
    path = Index.load("pinned").folder / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "hub"}))
    assert Index.load("pinned").manifest.hub == ()  # written before revisions were pinned
    for bad in ([{"repo": "/etc/passwd", "revision": A}], [{"repo": "someone/tiny", "revision": "../x"}], "main"):
        path.write_text(json.dumps({**data, "hub": bad}))
        with pytest.raises(IndexLoadError, match="malformed manifest .*'hub'"):
            Index.load("pinned")
