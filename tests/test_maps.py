"""maps: the catalog's 2-D map, cached beside the index, as HTML (hover thumbnails) or PNG, from the CLI too."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from recommender import build_index
from recommender.cli import cli
from recommender.errors import RecommenderError
from recommender.explain import catalog_map, map_figure, write_map
from recommender.index import Index


@pytest.fixture
def shapes(labeled_catalog, tiny_model):
    build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False)
    return Index.load("shapes")


def test_map_is_the_catalogs_first_two_principal_axes_and_is_cached(shapes):
    first = catalog_map(shapes)
    assert first.coords.shape == (12, 2) and 0 < first.explained <= 1
    x = np.asarray(shapes.embeddings, dtype=np.float32)
    np.testing.assert_allclose(first.coords, (x - x.mean(0)) @ first.axes.T, atol=1e-4)
    assert abs(float(first.axes[0] @ first.axes[1])) < 1e-4  # orthogonal axes
    assert first.coords[:, 0].var() >= first.coords[:, 1].var()  # the first holds the most variance
    cached = shapes.derived_file("map", ".npz")
    assert cached.exists()
    again = catalog_map(Index.load("shapes"))
    np.testing.assert_array_equal(again.coords, first.coords)
    np.testing.assert_allclose(first.project(x[3]), first.coords[3], atol=1e-4)


def test_rebuilding_the_index_drops_the_stale_map(shapes, labeled_catalog, tiny_model):
    catalog_map(shapes)
    old = shapes.derived_file("map", ".npz")
    Image.new("RGB", (40, 40), (0, 0, 255)).save(labeled_catalog / "blue-triangle" / "new.png")
    build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False)
    assert not old.exists()
    assert catalog_map(Index.load("shapes")).coords.shape == (13, 2)


def test_figure_colours_groups_places_the_query_and_carries_thumbnails(shapes):
    fig = map_figure(shapes, query=shapes.vector("red-circle/0.png"))
    names = [trace.name for trace in fig.data]
    assert names == ["blue-triangle", "green-square", "red-circle", "your picture"]
    assert all(d.startswith("data:image/png;base64,") for d in fig.data[0].customdata)
    star = fig.data[-1]
    assert star.marker.symbol == "star"
    with pytest.raises(RecommenderError, match="cannot colour by 'brand'"):
        map_figure(shapes, color_by="brand")


def test_html_and_png_exports(shapes, tmp_path):
    html = write_map(shapes, tmp_path / "map.html").read_text()
    assert "plotly_hover" in html and "data:image/png;base64," in html and '<script src="http' not in html
    png = write_map(shapes, tmp_path / "map.png", query=shapes.vector("green-square/1.png"))
    assert Image.open(png).size[0] > 500
    with pytest.raises(RecommenderError, match=r"\.html \(interactive\) or \.png"):
        write_map(shapes, tmp_path / "map.svg")


def test_map_from_the_command_line(shapes, labeled_catalog, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "map",
            "--index",
            "shapes",
            "--out",
            str(tmp_path / "m.png"),
            "--query",
            str(labeled_catalog / "red-circle" / "2.png"),
        ],
    )
    assert result.exit_code == 0 and (tmp_path / "m.png").exists()
    bad = CliRunner().invoke(cli, ["map", "--index", "shapes", "--out", str(tmp_path / "m.png"), "--color-by", "x"])
    assert bad.exit_code == 1 and "cannot colour by 'x'" in bad.stderr


def test_heatmap_map_and_explain_work_the_same_on_every_store(store, labeled_catalog, tiny_model, tmp_path):
    """A Milvus index has no embeddings file: everything derived from it keys on the index version instead."""
    from recommender.explain import catalog_heatmap, explain

    build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False)
    index = Index.load("shapes")
    assert index.store.kind == store
    assert catalog_map(index).coords.shape == (12, 2) and index.derived_file("map", ".npz").exists()
    assert write_map(index, tmp_path / "map.png").stat().st_size > 1000
    matrix = catalog_heatmap(index, features=5, out=tmp_path / "matrix.png")
    assert matrix.features == 5 and len(matrix.labels) == 12 and (tmp_path / "matrix.png").exists()
    shown = explain(labeled_catalog / "red-circle" / "0.png", "red-circle/1.png", index)
    assert shown.query_map.shape == (16, 16)
