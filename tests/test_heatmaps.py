"""Heatmaps: the catalog similarity matrix and patch-correspondence overlays, with the tiny model and shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHAPES, draw_shape, make_labeled_catalog
from PIL import Image

from recommender.backbones import load_backbone
from recommender.build import build_index
from recommender.cli import cli
from recommender.errors import ModelError, RecommenderError
from recommender.explain import catalog_heatmap, explain, similarity_matrix
from recommender.index import Index
from recommender.runtime import default_runtime

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("heatmap-indexes")


@pytest.fixture(scope="module")
def labeled(tiny_model: Path, index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Index:
    """3 labels x 4 generated shapes on white, indexed with the tiny DINOv2."""
    root = make_labeled_catalog(tmp_path_factory.mktemp("labeled"))
    build_index(root, name="labeled", model=str(tiny_model), index_dir=index_dir, progress=False)
    return Index.load("labeled", index_dir=index_dir)


@pytest.fixture(scope="module")
def unlabeled(tiny_model: Path, index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Index:
    """A flat folder of shapes in three picture shapes (square, wide, tall): no labels."""
    root = tmp_path_factory.mktemp("flat")
    sizes = [(96, 96), (160, 80), (70, 140)]
    for n, (shape, colour) in enumerate(SHAPES.values()):
        for i in range(4):
            draw_shape(shape, colour, seed=500 + 10 * n + i, size=sizes[(n + i) % 3]).save(root / f"{shape}-{i}.png")
    build_index(root, name="flat", model=str(tiny_model), index_dir=index_dir, progress=False)
    return Index.load("flat", index_dir=index_dir)


def object_mask(picture: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the generated shape's pixels (not white) at the panel size (w, h)."""
    return (np.asarray(picture.resize(size, Image.Resampling.NEAREST)) < 250).any(axis=-1)


# --------------------------------------------------------------------------- similarity matrix


def test_matrix_shape_values_and_clustering_order(labeled: Index) -> None:
    sim = similarity_matrix(labeled)
    m = len(labeled)
    assert sim.matrix.shape == (m, m) and sim.matrix.dtype == np.float32
    assert np.allclose(sim.matrix, sim.matrix.T, atol=1e-6)
    assert np.allclose(np.diag(sim.matrix), 1.0, atol=1e-3)
    assert sim.matrix.min() >= -1.0 and sim.matrix.max() <= 1.0
    assert sorted(sim.order.tolist()) == list(range(m))  # a permutation
    assert sorted(sim.ids) == sorted(item.id for item in labeled.items)
    assert sorted(set(sim.labels)) == sorted(SHAPES)
    # The drawn order is the clustering of the unordered matrix.
    plain = similarity_matrix(labeled, cluster=False)
    assert np.array_equal(plain.order, np.arange(m))
    assert np.allclose(plain.matrix[np.ix_(sim.order, sim.order)], sim.matrix, atol=1e-6)
    assert [plain.labels[i] for i in sim.order] == sim.labels


def test_principal_component_counts(labeled: Index) -> None:
    one, five, every = (similarity_matrix(labeled, features=f) for f in (1, "5", "all"))
    assert (one.features, five.features, every.features) == (1, 5, None)
    assert np.allclose(np.abs(one.matrix), 1.0, atol=1e-4)  # one axis: same side (+1) or not (-1)
    assert 0 < one.explained < five.explained <= 1.0
    assert every.explained is None and every.description == f"all {labeled.dim} dimensions"
    assert "first 5 principal components" in five.description
    # More components than the catalog has: as many as there are.
    assert similarity_matrix(labeled, features=1000).features <= len(labeled)
    for bad in (0, -3, "ten"):
        with pytest.raises(RecommenderError, match="features"):
            similarity_matrix(labeled, features=bad)


def test_choosing_items_by_label(labeled: Index) -> None:
    sim = similarity_matrix(labeled, labels=["red-circle", "BLUE-TRIANGLE"])
    assert sorted(sim.labels) == ["blue-triangle"] * 4 + ["red-circle"] * 4
    # The limit takes the labels in turn, so each one is shown.
    few = similarity_matrix(labeled, limit=6)
    assert sorted(few.labels) == sorted([*SHAPES] * 2)
    with pytest.raises(RecommenderError, match=r"unknown label.*'red-circel'.*did you mean red-circle"):
        similarity_matrix(labeled, labels=["red-circel"])
    ids = [labeled.items[0].id, labeled.items[5].id]
    assert sorted(similarity_matrix(labeled, ids=ids).ids) == sorted(ids)


def test_unlabeled_catalog_and_query_neighbours(unlabeled: Index) -> None:
    sim = similarity_matrix(unlabeled, limit=7, features=5)
    assert len(sim.labels) == 7 and set(sim.labels) <= {item.id for item in unlabeled.items}
    assert sorted(sim.order.tolist()) == list(range(7))
    with pytest.raises(RecommenderError, match="has no labels"):
        similarity_matrix(unlabeled, labels=["red-circle"])
    query = draw_shape("circle", (220, 30, 30), seed=7)
    near = similarity_matrix(unlabeled, query=query, limit=5)
    assert len(near.labels) == 5 and near.labels.count("query") == 1 and near.ids.count(None) == 1
    vector = unlabeled.vector(unlabeled.items[0].id)
    assert similarity_matrix(unlabeled, query=vector, limit=3).matrix.shape == (3, 3)


def test_catalog_heatmap_draws_and_writes(labeled: Index, tmp_path: Path) -> None:
    out = tmp_path / "heatmap.png"
    sim = catalog_heatmap(labeled, features=5, out=out)
    assert isinstance(sim.image, Image.Image) and sim.image.mode == "RGB"
    assert min(sim.image.size) >= 400
    assert out.read_bytes().startswith(PNG)
    data = sim.to_dict()
    assert data["features"] == 5 and len(data["matrix"]) == len(data["labels"]) == len(labeled)


# --------------------------------------------------------------------------- patch correspondence


def test_explain_shapes_and_ranges(labeled: Index, tmp_path: Path) -> None:
    query = draw_shape("square", (30, 180, 60), seed=42, size=(120, 90))
    match = labeled.search(labeled.vector(labeled.items[4].id), k=1)[0]
    out = tmp_path / "explain.png"
    e = explain(query, match, labeled, size=200, pairs=5, out=out)
    assert out.read_bytes().startswith(PNG)
    grid = 224 // 14
    assert e.query_map.shape == e.match_map.shape == (grid, grid)
    for array in (e.query_map, e.match_map, e.query_heat, e.match_heat):
        assert array.dtype == np.float32 and array.min() >= 0.0 and array.max() <= 1.0
    # Panels keep each picture's aspect ratio (padding removed) at the asked height.
    assert e.query_overlay.size == (round(200 * 120 / 90), 200) == e.query_heat.shape[::-1]
    assert e.match_overlay.size == (200, 200) == e.match_heat.shape[::-1]
    assert e.image.width >= e.query_overlay.width + e.match_overlay.width and e.image.height > 200
    assert e.rank == 1 and e.item == match.item and e.peak >= 0
    # detail=2: the model sees pictures twice as large, for a grid twice as fine; the panels do not change.
    fine = explain(query, match.item, labeled, size=200, detail=2, pairs=0)
    assert fine.query_map.shape == (2 * grid, 2 * grid) and fine.query_overlay.size == e.query_overlay.size
    assert fine.pairs == [] and fine.rank is None
    assert len(e.pairs) <= 5 and len(e.to_dict()["pairs"]) == len(e.pairs)
    for pair in e.pairs:
        assert 0 <= pair.query_xy[0] <= 120 and 0 <= pair.query_xy[1] <= 90
        assert 0 <= pair.match_xy[0] <= 96 and 0 <= pair.match_xy[1] <= 96
        assert -1.0 <= pair.similarity <= 1.0


@pytest.mark.parametrize("mask_background", [False, True])
def test_overlay_of_a_picture_against_itself_peaks_on_its_object(unlabeled: Index, mask_background: bool) -> None:
    # Square, wide and tall pictures: the overlay must line up with the object through the padding.
    for item in unlabeled.items[:3]:
        picture = Image.open(unlabeled.path_of(item)).convert("RGB")
        e = explain(picture, item, unlabeled, mask_background=mask_background, size=160)
        for heat in (e.query_heat, e.match_heat):
            inside = object_mask(picture, heat.shape[::-1])
            assert heat[inside].mean() > heat[~inside].mean() + 0.2, item.id
        # On the patch grid too, without any pixel mask: where the features say the object is.
        assert e.query_map.max() == pytest.approx(1.0)


def test_patch_features_are_cached_in_memory_and_on_disk(
    labeled: Index, isolated_folders: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default_runtime().clear_caches()
    backbone = labeled.backbone()
    calls: list[int] = []
    original = type(backbone).patch_features

    def counting(self, images):  # type: ignore[no-untyped-def]
        calls.append(len(images))
        return original(self, images)

    monkeypatch.setattr(type(backbone), "patch_features", counting)
    query = draw_shape("circle", (220, 30, 30), seed=3)
    item = labeled.items[0]
    explain(query, item, labeled, backbone=backbone)
    assert calls == [3]  # query, item and a plain white picture in one model call
    explain(query, item, labeled, backbone=backbone, pairs=0)
    assert calls == [3]  # everything from memory
    files = list((isolated_folders / "cache" / "patches" / labeled.name).glob("*.npy"))
    assert len(files) == 1
    saved = np.load(files[0], allow_pickle=False)
    assert saved.dtype == np.float16 and saved.shape == (16, 16, 32)
    default_runtime().clear_caches()
    explain(query, item, labeled, backbone=backbone)
    assert calls == [3, 2]  # the item came from disk; only the query and the plain picture are recomputed


def test_backbone_without_spatial_features(labeled: Index, index_dir: Path) -> None:
    root = labeled.root
    build_index(root, name="histogram", model="colour-histogram", index_dir=index_dir, progress=False)
    index = Index.load("histogram", index_dir=index_dir)
    assert index.backbone().spatial_part is None
    assert labeled.backbone().spatial_part is labeled.backbone()
    hybrid = load_backbone(f"{labeled.manifest.backbone.model}+colour-histogram")
    assert hybrid.spatial and hybrid.spatial_part is hybrid.parts[0]
    with pytest.raises(ModelError, match="no spatial features"):
        explain(draw_shape("circle", (220, 30, 30), seed=3), index.items[0], index)
    # The similarity matrix needs no spatial features.
    assert similarity_matrix(index, limit=4).matrix.shape == (4, 4)


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("name", ["labeled", "flat"])
def test_cli_writes_pngs(labeled: Index, unlabeled: Index, index_dir: Path, tmp_path: Path, name: str) -> None:
    runner = CliRunner()
    heat = tmp_path / "heat.png"
    args = [
        "--index-dir",
        str(index_dir),
        "heatmap",
        "--index",
        name,
        "--features",
        "5",
        "--limit",
        "9",
        "--out",
        str(heat),
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert heat.read_bytes().startswith(PNG) and "9 items" in result.output
    query = tmp_path / "query.png"
    draw_shape("triangle", (40, 60, 220), seed=9).save(query)
    pic = tmp_path / "explain.png"
    result = runner.invoke(
        cli, ["--index-dir", str(index_dir), "explain", str(query), "--index", name, "--rank", "2", "--out", str(pic)]
    )
    assert result.exit_code == 0, result.output
    assert pic.read_bytes().startswith(PNG) and "#2" in result.output


def test_cli_errors_are_one_line(labeled: Index, index_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--index-dir", str(index_dir)]
    result = runner.invoke(
        cli, [*base, "heatmap", "--index", "labeled", "--labels", "nope", "--out", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 1 and "unknown label(s) 'nope'" in result.output
    assert "Traceback" not in result.output
    query = tmp_path / "q.png"
    draw_shape("circle", (220, 30, 30), seed=1).save(query)
    result = runner.invoke(
        cli, [*base, "explain", str(query), "--index", "labeled", "--rank", "99", "--out", str(tmp_path / "y.png")]
    )
    assert result.exit_code == 1 and "--rank 12" in result.output


def test_a_label_with_two_views_is_told_apart_by_its_view(tiny_model: Path, index_dir: Path, tmp_path: Path) -> None:
    rows = ["image,label,view"]
    for n, (shape, colour) in enumerate(list(SHAPES.values())[:2]):
        for view in ("sprite", "artwork"):
            draw_shape(shape, colour, seed=n + len(view)).save(tmp_path / f"{shape}-{view}.png")
            rows.append(f"{shape}-{view}.png,{shape},{view}")
    (tmp_path / "catalog.csv").write_text("\n".join(rows) + "\n")
    build_index(tmp_path / "catalog.csv", name="views", model=str(tiny_model), index_dir=index_dir, progress=False)
    sim = similarity_matrix(Index.load("views", index_dir=index_dir))
    assert sorted(sim.labels) == ["circle · artwork", "circle · sprite", "square · artwork", "square · sprite"]
