"""Catalog adaptation: a head learnt from the catalog's own pictures, saved beside the index, used by every query."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_labeled_catalog
from PIL import Image

from recommender import build_index
from recommender.adapt import adapt_index, augment, train_head
from recommender.backbones.adapted import Adapted, AdapterHead
from recommender.cli import cli
from recommender.errors import IndexLoadError, RecommenderError
from recommender.index import MANIFEST, Index
from recommender.recommend import identify


def test_augment_gives_rgb_views_of_any_picture():
    rng = np.random.default_rng(0)
    picture = Image.new("RGB", (40, 30), (255, 255, 255))
    picture.paste((200, 40, 40), (10, 5, 30, 25))
    views = [augment(picture, rng) for _ in range(30)]
    assert all(v.mode == "RGB" and min(v.size) >= 1 for v in views)
    assert len({v.tobytes() for v in views}) > 20  # every view differs


def test_head_starts_as_identity_and_learns_to_pull_views_to_their_picture():
    rng = np.random.default_rng(0)
    anchors = rng.normal(size=(12, 16)).astype(np.float32)
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    rows = np.repeat(np.arange(12), 3)
    views = anchors[rows] + 0.8 * rng.normal(size=(36, 16)).astype(np.float32)
    views /= np.linalg.norm(views, axis=1, keepdims=True)
    codes = np.arange(12) // 2  # pairs share a label
    untrained, _ = train_head(anchors, views, rows, codes, epochs=0, rank=8)
    np.testing.assert_allclose(untrained.apply(anchors), anchors, atol=1e-6)
    head, losses = train_head(anchors, views, rows, codes, epochs=40, rank=8)
    assert losses[-1] < losses[0]

    def hits(f):
        keys, q = f(anchors), f(views)
        return ((q @ keys.T).argmax(1) // 2 == rows // 2).mean()

    assert hits(head.apply) >= hits(lambda x: x)
    data = head.to_bytes()
    again = AdapterHead.from_bytes(data, dim=16, label="head")
    np.testing.assert_array_equal(again.apply(views), head.apply(views))
    with pytest.raises(RecommenderError):
        AdapterHead.from_bytes(data, dim=32, label="head")


@pytest.fixture
def adapted(labeled_catalog, tiny_model):
    build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False)
    report = adapt_index("shapes", epochs=2, views=1)
    return report, Index.load("shapes-adapted")


def test_adapt_writes_an_index_whose_queries_pass_through_the_head(adapted, labeled_catalog):
    report, index = adapted
    plain = Index.load("shapes")
    assert report.name == "shapes-adapted" and report.pictures == len(plain)
    info = index.manifest.adapter
    assert info is not None and (index.folder / info.file).is_file() and info.trained["from"] == "shapes"
    backbone = index.backbone()
    assert isinstance(backbone, Adapted) and index.manifest.weights == backbone.identity
    assert plain.manifest.adapter is None and not isinstance(plain.backbone(), Adapted)
    # the catalog's own pictures, embedded now through the same path, find themselves
    item = index.items[0]
    query = Image.open(index.path_of(item)).convert("RGB")
    vector = backbone.embed([query])[0]
    np.testing.assert_allclose(vector, np.asarray(index.embeddings[0], dtype=np.float32), atol=2e-3)
    assert identify(query, index).label == item.label
    with pytest.raises(RecommenderError, match="adapted already"):
        adapt_index("shapes-adapted", epochs=1, views=1)


def test_a_changed_head_is_refused_and_older_manifests_still_read(adapted):
    _, index = adapted
    head = index.folder / index.manifest.adapter.file
    head.write_bytes(head.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(IndexLoadError, match="checksum"):
        Index.load("shapes-adapted").backbone()
    plain = Index.load("shapes").folder / MANIFEST
    data = json.loads(plain.read_text())
    assert "adapter" not in data  # plain indexes are written as before: older readers read them


def test_adapt_from_the_command_line_with_the_real_cnn(tmp_path):
    catalog = make_labeled_catalog(tmp_path / "cnn", per_label=2)
    build_index(catalog, name="small", model="efficientnet-lite0", progress=False)
    result = CliRunner().invoke(cli, ["adapt", "--index", "small", "--epochs", "2", "--views", "1", "--out", "tuned"])
    assert result.exit_code == 0, result.output
    assert "adapted 'small' -> 'tuned'" in result.output
    index = Index.load("tuned")
    assert index.manifest.backbone.model == "efficientnet-lite0" and index.manifest.adapter.rank > 0
    missing = CliRunner().invoke(cli, ["adapt", "--index", "nothing"])
    assert missing.exit_code == 1 and "no index named" in missing.output


def test_a_small_catalog_leans_on_the_backbone_prior_and_says_it_is_unsure():
    from recommender.calibration import PRIOR_WEIGHT, calibrate

    rng = np.random.default_rng(0)
    few = rng.normal(size=(20, 8)).astype(np.float32)
    few /= np.linalg.norm(few, axis=1, keepdims=True)
    labels = ["a"] * 10 + ["b"] * 10
    alone = calibrate(few, labels)
    leaning = calibrate(few, labels, prior=0.65)
    assert alone.small and leaning.small
    expected = (20 * alone.threshold + PRIOR_WEIGHT * 0.65) / (20 + PRIOR_WEIGHT)
    assert leaning.threshold == pytest.approx(expected, abs=1e-3) and "prior" in leaning.method
    many = rng.normal(size=(600, 8)).astype(np.float32)
    big = calibrate(many / np.linalg.norm(many, axis=1, keepdims=True), [str(i % 50) for i in range(600)], prior=0.65)
    assert not big.small
    assert type(alone).from_json(alone.to_json()).small


def test_the_offline_backbones_declare_their_priors():
    from recommender.backbones import load_backbone

    assert load_backbone("offline").threshold_prior is not None
    assert load_backbone("offline-v1").threshold_prior == pytest.approx(0.654)
