"""store: choosing a store, Milvus Lite (the real engine) against the exact local store, filters pushed down, recall."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHAPES, draw_shape

from recommender import build_index, load_backbone, look_alikes
from recommender.build import RayExecutor
from recommender.catalog import Item
from recommender.cli import cli
from recommender.errors import IndexLoadError, RecommenderError
from recommender.evaluate import evaluate_queries
from recommender.index import CatalogInfo, Index, write_index
from recommender.index.store import Filters, StoreConfig
from recommender.index.store.milvus import close_clients
from recommender.recommend import identify

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def milvus():
    pytest.importorskip("pymilvus", reason="pip install -r requirements-scale.txt")
    pytest.importorskip("milvus_lite", reason="pip install -r requirements-scale.txt")
    yield
    close_clients()


def test_store_names(tmp_path):
    assert StoreConfig.parse(None) == StoreConfig.parse("local") == StoreConfig()
    assert StoreConfig.parse("milvus-lite") == StoreConfig("milvus-lite", None, "HNSW")
    lite = StoreConfig.parse(f"milvus-lite:{tmp_path}/v.db?index=ivf_flat")
    assert lite == StoreConfig("milvus-lite", str(tmp_path / "v.db"), "IVF_FLAT")
    assert StoreConfig.parse("milvus://db.example:19531").uri == "http://db.example:19531"
    assert StoreConfig.parse("milvus://localhost").uri == "http://localhost:19530"
    for bad, message in [
        ("redis://x", "unknown store"),
        ("milvus-lite:vectors", "ending in .db"),
        ("milvus-lite?index=PQ", "bad store option"),
        ("local?x=1", "bad store option"),
    ]:
        with pytest.raises(RecommenderError, match=message):
            StoreConfig.parse(bad)


def test_filters_become_milvus_expressions():
    filters = Filters.of({"label": ["Red", "blue"], "maker": 'A "B"'}, {"label", "id", "maker"}, "shop")
    assert filters.expression(["label", "id", "maker"]) == (
        'array_contains_any(tags, ["0=blue", "0=red"]) and array_contains_any(tags, ["2=a \\"b\\""])'
    )
    with pytest.raises(RecommenderError, match="cannot filter on 'colour'"):
        Filters.of({"colour": "red"}, {"label", "id"}, "shop")


def _queries(root: Path) -> Path:
    """Held-out pictures of each shape, in class folders, for `evaluate`."""
    for n, (label, (shape, colour)) in enumerate(SHAPES.items()):
        (root / label).mkdir(parents=True)
        for i in range(2):
            draw_shape(shape, colour, seed=7000 + 10 * n + i).save(root / label / f"q{i}.png")
    return root


def test_same_search_identify_and_evaluate_through_either_store(milvus, labeled_catalog, tiny_model, tmp_path):
    backbone = load_backbone(str(tiny_model))
    build_index(labeled_catalog, name="flat", backbone=backbone, progress=False, store="local")
    build_index(labeled_catalog, name="ann", backbone=backbone, progress=False, store="milvus-lite")
    local, ann = Index.load("flat"), Index.load("ann")
    assert local.manifest.format_version == 1 and ann.manifest.format_version == 2
    assert ann.manifest.store.kind == "milvus-lite" and ann.manifest.files.embeddings is None
    assert ann.calibration == local.calibration
    queries = _queries(tmp_path / "queries")
    for query in sorted(queries.rglob("*.png")):
        a, b = look_alikes(query, local, k=12), look_alikes(query, ann, k=12)
        assert [m.id for m in a] == [m.id for m in b]
        np.testing.assert_allclose([m.score for m in a], [m.score for m in b], atol=1e-5)
        x, y = identify(query, local), identify(query, ann)
        assert (x.label, x.in_catalog, x.another_image, x.message) == (
            y.label,
            y.in_catalog,
            y.another_image,
            y.message,
        )
        assert [ls.label for ls in x.labels] == [ls.label for ls in y.labels]
    exact, approximate = (evaluate_queries(i, queries, progress=False).to_dict() for i in (local, ann))
    assert approximate.pop("ann_recall@10") == 1.0 and "ann_recall@10" not in exact
    for key in ("recall@1", "recall@5", "recall@10", "mAP@5", "queries"):
        assert exact[key] == approximate[key]


def test_filters_are_pushed_down_to_milvus(milvus, labeled_catalog, tiny_model, monkeypatch):
    build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False, store="milvus-lite")
    index = Index.load("shapes")
    sent: list[str] = []
    real = index.store.client.search

    def spy(*args, **kwargs):  # the real engine answers; we only note what it was asked
        sent.append(kwargs["filter"])
        return real(*args, **kwargs)

    monkeypatch.setattr(index.store.client, "search", spy)
    query = index.vector("red-circle/0.png")
    found = index.search(
        query, k=12, where={"label": ["GREEN-square", "blue-triangle"]}, exclude=["green-square/0.png"]
    )
    assert sent == [
        'array_contains_any(tags, ["0=blue-triangle", "0=green-square"]) and row not in '
        f"[{index.position('green-square/0.png')}]"
    ]
    assert len(found) == 7 and {m.label for m in found} == {"green-square", "blue-triangle"}
    assert index.search(query, k=3, where={"label": "nothing"}) == []


@pytest.mark.parametrize("kind", ["HNSW", "IVF_FLAT"])
def test_ann_recall_against_exact_search(milvus, tmp_path, kind, record_property):
    # 3000 vectors in 60 tight groups, like a catalog of look-alikes; queries are noisy members.
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((60, 512)).astype(np.float32)
    vectors = centres[rng.integers(0, 60, 3000)] + 0.6 * rng.standard_normal((3000, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [Item(id=f"v{i}", path=f"v{i}.png", label=f"g{i % 7}", sha256=f"{i:064x}") for i in range(3000)]
    write_index(
        tmp_path / "index" / "random",
        embeddings=vectors,
        items=items,
        backbone=load_backbone("colour-histogram"),
        catalog=CatalogInfo(root=str(tmp_path)),
        store=f"milvus-lite?index={kind}",
    )
    index = Index.load("random")
    assert index.manifest.store.index["index_type"] == kind
    queries = vectors[:100] + 0.1 * rng.standard_normal((100, 512)).astype(np.float32)
    recall = index.ann_recall(queries, k=10)
    record_property(f"{kind} recall@10", recall)
    print(f"Milvus Lite {kind}: recall@10 against exact search = {recall:.3f}")
    assert recall >= 0.9
    filtered = index.search(queries[0], k=10, where={"label": "g3"})
    assert len(filtered) == 10 and {m.label for m in filtered} == {"g3"}


def test_a_missing_or_changed_collection_is_reported(milvus, labeled_catalog, tiny_model):
    build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False, store="milvus-lite")
    index = Index.load("shapes")
    index.store.client.delete(index.store.collection, ids=[0])
    with pytest.raises(IndexLoadError, match="holds 11 vectors but the manifest says 12"):
        Index.load("shapes")
    index.store.drop()
    with pytest.raises(IndexLoadError, match="collection .* is missing .*rebuild it with"):
        Index.load("shapes")
    with pytest.raises(RecommenderError, match="load it again"):
        index.search(index.embeddings[0], k=1)


def test_a_shared_database_from_the_command_line(milvus, labeled_catalog, tiny_model, tmp_path):
    db = tmp_path / "shared" / "vectors.db"
    runner = CliRunner()
    for name in ("one", "two"):
        out = runner.invoke(
            cli,
            [
                "index",
                str(labeled_catalog),
                "--name",
                name,
                "--model",
                str(tiny_model),
                "-q",
                "--store",
                f"milvus-lite:{db}",
            ],
        )
        assert out.exit_code == 0, out.output
        assert f"vectors in milvus-lite {db}" in out.stdout
    found = runner.invoke(
        cli, ["search", str(labeled_catalog / "red-circle" / "2.png"), "--index", "two", "--json", "-k", "2"]
    )
    assert json.loads(found.stdout)[0]["id"] == "red-circle/2.png"
    info = runner.invoke(cli, ["info", "--index", "one"])
    assert f"milvus-lite {db} collection rec_one_" in info.stdout
    bad = runner.invoke(cli, ["index", str(labeled_catalog), "--name", "x", "--store", "redis://x"])
    assert bad.exit_code == 1 and "unknown store 'redis://x'" in bad.stderr


def test_missing_optional_packages_say_what_to_install(labeled_catalog, tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RecommenderError, match="pip install pymilvus milvus-lite"):
        build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False, store="milvus-lite")
    with pytest.raises(RecommenderError, match=r"pip install 'ray\[data\]'"):
        build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False, executor=RayExecutor())


def test_the_library_and_app_import_without_the_optional_packages():
    # A fresh interpreter that cannot import them: the default path must not need them.
    code = (
        "import sys\n"
        "for name in ('pymilvus', 'milvus_lite', 'ray', 'faiss'): sys.modules[name] = None\n"
        "import recommender, recommender.cli, recommender.service, recommender.index.store, recommender.index\n"
        "import recommender.build, recommender.build.checkpoint, recommender.build.distributed\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
