"""index and build: building, searching, filtering, incremental updates, atomic writes, corrupt indexes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import draw_shape

from recommender import build_index, load_backbone, look_alikes
from recommender.backbones import normalise
from recommender.errors import (
    CatalogError,
    IndexLoadError,
    IndexMismatchError,
    IndexNotFoundError,
    RecommenderError,
)
from recommender.index import FORMAT_VERSION, CatalogInfo, Index, list_indexes, write_index


@pytest.fixture
def built(labeled_catalog, tiny_model):
    report = build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False)
    return report, Index.load("shapes")


@pytest.fixture
def built_any(store, labeled_catalog, tiny_model):
    """`built`, once with each vector store (see conftest's `store`)."""
    report = build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False)
    index = Index.load("shapes")
    assert index.store.kind == store == index.manifest.store.kind
    return report, index


def test_build_and_search_finds_the_picture_itself(built_any, labeled_catalog):
    report, index = built_any
    assert report.count == len(index) == 12 and report.embedded == 12 and report.reused == 0
    assert index.labeled and index.dim == 32
    assert index.embeddings.dtype == (np.float16 if index.store.exact else np.float32)  # Milvus: float16-rounded
    np.testing.assert_allclose(np.linalg.norm(index.embeddings.astype(np.float32), axis=1), 1.0, atol=2e-3)
    for item in index.items:
        matches = look_alikes(labeled_catalog / item.path, index, k=3)
        assert matches[0].item.id == item.id and matches[0].score == pytest.approx(1.0, abs=2e-3)
        assert matches[0].label == item.label and matches[0].path == labeled_catalog / item.path
        assert [m.rank for m in matches] == [1, 2, 3]
        assert matches[0].score >= matches[1].score >= matches[2].score


def test_match_as_dict(built_any, labeled_catalog):
    _, index = built_any
    match = look_alikes(labeled_catalog / "red-circle" / "1.png", index, k=1)[0]
    d = match.to_dict()
    assert set(d) >= {"rank", "id", "label", "score", "path"}
    assert d["rank"] == 1 and d["label"] == "red-circle" and d["id"] == "red-circle/1.png"
    json.dumps(d)


def test_where_filters_and_k(built_any, labeled_catalog):
    _, index = built_any
    query = labeled_catalog / "red-circle" / "0.png"
    only_green = look_alikes(query, index, k=20, where={"label": "GREEN-square"})
    assert len(only_green) == 4 and {m.label for m in only_green} == {"green-square"}
    two = look_alikes(query, index, k=20, where={"label": ["green-square", "blue-triangle"]})
    assert {m.label for m in two} == {"green-square", "blue-triangle"}
    assert look_alikes(query, index, k=20, where={"label": "nothing"}) == []
    assert len(look_alikes(query, index, k=100)) == 12
    with pytest.raises(RecommenderError, match="cannot filter on 'colour'"):
        look_alikes(query, index, where={"colour": "red"})
    with pytest.raises(RecommenderError, match="k must be at least 1"):
        index.search(index.vector("red-circle/0.png"), k=0)


def test_search_many_exclude_and_chunked_scoring(built_any):
    _, index = built_any
    vectors = np.stack([index.vector(item.id) for item in index.items[:3]])
    results = index.search_many(vectors, k=2, exclude=[index.items[0].id])
    assert len(results) == 3 and results[0][0].item.id != index.items[0].id
    assert all(m.item.id != index.items[0].id for row in results for m in row)
    dense = index.scores(vectors)
    exact = normalise(vectors) @ index.embeddings.astype(np.float32).T
    np.testing.assert_allclose(dense, exact, atol=1e-5)  # every store scores the same stored vectors
    if index.store.exact:
        index.store.__dict__["_dense"] = None  # force the chunked path used by very large indexes
        np.testing.assert_allclose(index.scores(vectors), dense, atol=1e-6)


def test_metadata_filters_on_csv_catalogs(store, tmp_path, tiny_model):
    rows = ["image,category,label,maker"]
    for i, (cat, colour) in enumerate([("shoes", (200, 0, 0)), ("Bags", (0, 0, 200))] * 3):
        draw_shape("circle", colour, seed=i).save(tmp_path / f"{i}.png")
        maker = "" if i == 5 else 'A "&" B'
        rows.append(f"{i}.png,{cat},item{i},{maker}")
    (tmp_path / "products.csv").write_text("\n".join(rows) + "\n")
    build_index(tmp_path / "products.csv", name="shop", model=str(tiny_model), progress=False)
    index = Index.load("shop")
    matches = index.search(index.vector("0.png"), k=10, where={"category": "bags"})
    assert len(matches) == 3 and all(m.item.metadata["category"] == "Bags" for m in matches)
    both = index.search(index.vector("0.png"), k=10, where={"category": "BAGS", "maker": 'a "&" b'})
    assert sorted(m.id for m in both) == ["1.png", "3.png"]  # keys AND-ed; quotes survive the pushdown
    missing = index.search(index.vector("0.png"), k=10, where={"maker": ["", "nobody"]})
    assert [m.id for m in missing] == ["5.png"]  # a missing value matches the empty string


def test_incremental_rebuild_embeds_only_new_and_changed(built_any, labeled_catalog, tiny_model):
    _, before = built_any
    # Read before rebuilding: an open local index keeps its memory-mapped (unlinked) file, but a
    # rebuild drops the previous Milvus collection, so open Milvus-backed indexes must be loaded again.
    old = {item.id: before.vector(item.id) for item in before.items}
    (labeled_catalog / "red-circle" / "0.png").unlink()  # removed
    draw_shape("circle", (220, 30, 30), seed=999).save(labeled_catalog / "red-circle" / "1.png")  # changed
    draw_shape("square", (30, 180, 60), seed=998).save(labeled_catalog / "green-square" / "9.png")  # new
    report = build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False)
    assert (report.count, report.embedded, report.reused, report.removed) == (12, 2, 10, 2)
    after = Index.load("shapes")
    for item in after.items:
        if item.id in ("red-circle/1.png", "green-square/9.png"):
            continue
        np.testing.assert_array_equal(after.vector(item.id), old[item.id])
    # the old version's files are gone: one manifest, one embeddings file (or database), one items file,
    # one list of skipped pictures
    names = sorted(p.name for p in after.folder.iterdir() if not p.name.startswith("."))
    assert len(names) == 4 and "manifest.json" in names
    assert [n for n in names if n.startswith("skipped-")] == [after.manifest.files.skipped]
    assert not (after.folder / ".build").exists()  # the checkpoint went with the commit
    if not after.store.exact:  # and the previous version's collection went with it
        from recommender.index.store.milvus import collection_prefix

        mine = [c for c in after.store.client.list_collections() if c.startswith(collection_prefix(after.folder))]
        assert mine == [after.manifest.store.collection]


def test_other_backbone_rebuilds_everything(built, labeled_catalog, tiny_model):
    report = build_index(
        labeled_catalog, name="shapes", backbone=load_backbone(str(tiny_model), pooling="mean"), progress=False
    )
    assert report.embedded == 12 and report.reused == 0
    assert any("not re-used" in note for note in report.notes)
    assert Index.load("shapes").manifest.backbone.pooling == "mean"


def test_broken_pictures_are_skipped_and_duplicates_reported(labeled_catalog, tiny_model):
    (labeled_catalog / "red-circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (labeled_catalog / "red-circle" / "empty.jpg").write_bytes(b"")
    shutil.copy(labeled_catalog / "red-circle" / "0.png", labeled_catalog / "red-circle" / "copy.png")
    report = build_index(labeled_catalog, name="shapes", model=str(tiny_model), progress=False)
    assert report.count == 12
    reasons = {s.where: s.reason for s in report.skipped}
    assert reasons["red-circle/broken.png"].startswith(("not a recognised image", "broken"))
    assert reasons["red-circle/empty.jpg"] == "empty file"
    assert reasons["red-circle/copy.png"] == "same picture as red-circle/0.png"


def test_catalog_of_only_broken_pictures_is_an_error(tmp_path, tiny_model):
    (tmp_path / "a.png").write_bytes(b"nope")
    with pytest.raises(CatalogError, match="none of its 1 pictures could be read"):
        build_index(tmp_path, name="bad", model=str(tiny_model), progress=False)
    assert list_indexes() == []


def test_float32_storage_and_info(labeled_catalog, tiny_model):
    build_index(labeled_catalog, name="exact", model=str(tiny_model), dtype="float32", progress=False)
    index = Index.load("exact")
    assert index.embeddings.dtype == np.float32 and index.manifest.dtype == "float32"
    assert list_indexes() == ["exact"]


def test_unknown_and_incomplete_indexes(tmp_path, built):
    with pytest.raises(IndexNotFoundError, match=r"no index named 'nope'.*available: shapes.*index SOURCE"):
        Index.load("nope")
    (tmp_path / "index" / "half").mkdir()
    with pytest.raises(IndexLoadError, match="incomplete"):
        Index.load("half")
    with pytest.raises(RecommenderError, match="bad index name"):
        Index.load("../escape")


def _emb_file(index: Index):
    return index.folder / index.manifest.files.embeddings


@pytest.mark.parametrize("cut", [0, 5, 100, -2])
def test_truncated_embeddings_are_detected(built, cut):
    _, index = built
    path = _emb_file(index)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(IndexLoadError, match="corrupt.*rebuild it with"):
        Index.load("shapes")
    with pytest.raises(IndexLoadError, match="truncated"):
        Index.load("shapes", verify=False)  # even without the checksum, the size check notices


def test_changed_bytes_and_broken_files_are_detected(built):
    _, index = built
    path = _emb_file(index)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="does not match its checksum"):
        Index.load("shapes")
    items = index.folder / index.manifest.files.items
    items.write_text("{not json")
    with pytest.raises(IndexLoadError, match="corrupt"):
        Index.load("shapes", verify=False)
    (index.folder / "manifest.json").write_text("[]")
    with pytest.raises(IndexLoadError, match="malformed manifest"):
        Index.load("shapes")


def test_items_that_disagree_with_the_manifest(built):
    _, index = built
    manifest = json.loads((index.folder / "manifest.json").read_text())
    items_path = index.folder / manifest["files"]["items"]
    data = json.loads(items_path.read_text())
    data["id"] = data["id"][:-1]
    items_path.write_text(json.dumps(data))
    manifest["files"]["items_sha256"] = None
    (index.folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match="malformed items file"):
        Index.load("shapes")


def test_manifest_from_another_format_version(built):
    _, index = built
    manifest = json.loads((index.folder / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (index.folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="newer version"):
        Index.load("shapes")


def test_manifest_cannot_point_outside_its_folder(built):
    _, index = built
    manifest = json.loads((index.folder / "manifest.json").read_text())
    manifest["files"]["embeddings"] = "../../etc/passwd"
    (index.folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match="bad file"):
        Index.load("shapes")


def test_searching_with_another_backbone_is_refused(built, labeled_catalog, tiny_model_registers):
    _, index = built
    other = load_backbone(str(tiny_model_registers))
    with pytest.raises(IndexMismatchError, match="was built with"):
        look_alikes(labeled_catalog / "red-circle" / "0.png", index, backbone=other)
    with pytest.raises(IndexMismatchError, match="512-d but index 'shapes' holds 32-d"):
        index.search(np.ones(512, dtype=np.float32))


def test_changed_weights_in_the_model_folder_are_noticed(labeled_catalog, tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    build_index(labeled_catalog, name="m", model=str(model), progress=False)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # another model now lives in that folder
    weights.write_bytes(bytes(data))
    from recommender.backbones.vision import load_vision

    load_vision.cache_clear()
    with pytest.raises(IndexMismatchError, match="other weights"):
        Index.load("m").backbone()


def test_a_crash_before_the_manifest_is_written_leaves_the_old_index(built, tiny_model, monkeypatch):
    _, old = built
    import recommender.index.write as index_module

    real = index_module.write_atomic

    def crash_on_manifest(path, data):
        if path.name == "manifest.json":
            raise KeyboardInterrupt("simulated crash")
        return real(path, data)

    backbone = load_backbone(str(tiny_model))
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(index_module, "write_atomic", crash_on_manifest)
        write_index(
            old.folder,
            embeddings=np.zeros((1, 32), np.float32),
            items=old.items[:1],
            backbone=backbone,
            catalog=CatalogInfo(root=str(old.root)),
        )
    again = Index.load("shapes")
    assert len(again) == 12
    np.testing.assert_array_equal(again.embeddings, old.embeddings)


def test_two_pass_bf16_search_is_exact(tmp_path, monkeypatch):
    """Large indexes score in bf16 first, then exactly near the top: the result must equal brute force."""
    import recommender.index.store.local as local
    from recommender.catalog import Item
    from recommender.index.store import Filters, LocalStore

    rng = np.random.default_rng(7)
    base = rng.normal(size=(400, 64)).astype(np.float32)
    # near-duplicates: bf16 alone cannot order these, the exact second pass must
    near = base[:50] + 1e-3 * rng.normal(size=(50, 64)).astype(np.float32)
    rows = np.concatenate([base, near, base[:5]])
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)
    items = [Item(id=f"i{i}", path=f"i{i}.png", label="even" if i % 2 == 0 else "odd") for i in range(len(rows))]
    monkeypatch.setattr(local, "cpu_has_native_bf16", lambda: True)  # the name the store calls
    two_pass = LocalStore(rows, items)
    two_pass.__dict__["_dense"] = None  # as if too large for one float32 matrix
    assert two_pass._coarse is not None
    exact = rows.astype(np.float32)
    queries = np.concatenate([exact[:20], rng.normal(size=(20, 64)).astype(np.float32)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    where = Filters.of({"label": ["odd"]}, {"label"}, "test")
    for q in queries:
        truth = exact @ q
        for k, mask, drop in [(1, None, ()), (10, None, ()), (10, where, ()), (7, None, (3, 4, 5))]:
            allowed = truth.copy()
            if mask is not None:
                allowed[~mask.mask(items)] = -np.inf
            allowed[list(drop)] = -np.inf
            ((found_rows, found_scores),) = two_pass.search(q[None, :], k, where=mask, exclude=drop)
            np.testing.assert_allclose(found_scores, np.sort(allowed)[::-1][:k], atol=1e-5)
            np.testing.assert_allclose(allowed[found_rows], found_scores, atol=1e-5)


def test_large_item_files_are_read_on_first_use(built, monkeypatch):
    import recommender.index.index as index_module

    _, index = built
    monkeypatch.setattr(index_module, "_LAZY_ITEMS", 0)  # every item file counts as large
    lazy = Index.load("shapes")
    assert lazy._items is None  # opened without parsing the items
    assert [i.id for i in lazy.items] == [i.id for i in index.items]
    items_file = index.folder / index.manifest.files.items
    items_file.write_text(items_file.read_text()[:-20])
    broken = Index.load("shapes")  # still opens at once...
    with pytest.raises(IndexLoadError, match="does not match its checksum"):
        broken.search(index.vector("red-circle/0.png"), k=1)  # ...and says what is wrong on first use
