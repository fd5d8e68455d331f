"""checkpoint: a build interrupted at any point is resumed by the next one, which embeds only what is missing."""

from __future__ import annotations

import numpy as np
import pytest

from recommender import build_index, load_backbone
from recommender.build import Checkpoint
from recommender.index import Index


@pytest.fixture
def backbone(tiny_model):
    return load_backbone(str(tiny_model), precision="fp32")


def _build(catalog, backbone, name="shapes", **options):
    return build_index(
        catalog, name=name, backbone=backbone, progress=False, batch_size=4, checkpoint_seconds=0, **options
    )


def _interrupt_embedding_after(backbone, batches, monkeypatch):
    """Make the model fail, like a Ctrl-C, when asked for batch number `batches + 1`."""
    real, calls = backbone.embed_prepared, []

    def embed(batch):
        calls.append(len(batch))
        if len(calls) > batches:
            raise KeyboardInterrupt("interrupted")
        return real(batch)

    monkeypatch.setattr(backbone, "embed_prepared", embed)
    return calls


def test_an_interrupted_build_resumes_where_it_stopped(labeled_catalog, backbone, monkeypatch):
    reference = _build(labeled_catalog, backbone, name="reference")
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        _interrupt_embedding_after(backbone, 2, patch)
        _build(labeled_catalog, backbone)
    folder = reference.folder.parent / "shapes"
    assert not (folder / "manifest.json").exists()  # nothing committed ...
    assert len(list(folder.glob(".build/*/shard-*.safetensors"))) == 2  # ... but two batches checkpointed
    calls = _interrupt_embedding_after(backbone, 99, monkeypatch)
    report = _build(labeled_catalog, backbone)
    assert (report.embedded, report.reused, report.resumed) == (4, 8, 8) and calls == [4]
    assert any("resuming an interrupted build: 8 pictures" in note for note in report.notes)
    assert not (folder / ".build").exists()
    resumed, whole = Index.load("shapes"), Index.load("reference")
    assert [i.id for i in resumed.items] == [i.id for i in whole.items]
    np.testing.assert_array_equal(resumed.embeddings, whole.embeddings)  # float32 checkpoints: bit for bit


def test_a_crash_after_the_commit_leaves_nothing_to_redo(labeled_catalog, backbone, monkeypatch):
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(Checkpoint, "clear", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
        _build(labeled_catalog, backbone)
    assert len(Index.load("shapes")) == 12  # committed; the checkpoint is still there
    report = _build(labeled_catalog, backbone)
    assert (report.embedded, report.reused) == (0, 12)
    assert not (Index.load("shapes").folder / ".build").exists()


def test_a_crash_while_a_shard_is_written_costs_only_that_shard(labeled_catalog, backbone, monkeypatch, tmp_path):
    import recommender.build.checkpoint as checkpoint_module

    real, written = checkpoint_module.write_atomic, []

    def crash_on_second(path, data):
        if written:
            path.with_name(f".{path.name}.123.abc.tmp").write_bytes(data[: len(data) // 2])  # as a kill leaves it
            raise KeyboardInterrupt("killed while writing")
        written.append(path)
        return real(path, data)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(checkpoint_module, "write_atomic", crash_on_second)
        _build(labeled_catalog, backbone)
    shards = list((tmp_path / "index" / "shapes").glob(".build/*/shard-*"))
    assert len(shards) == 1
    (shards[0].parent / "shard-damaged.safetensors").write_bytes(b"not a shard")  # e.g. a damaged disk
    report = _build(labeled_catalog, backbone)
    assert (report.embedded, report.resumed) == (8, 4)


def test_checkpoints_of_another_backbone_or_dtype_are_not_used(labeled_catalog, backbone, tiny_model, monkeypatch):
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        _interrupt_embedding_after(backbone, 2, patch)
        _build(labeled_catalog, backbone)
    other = load_backbone(str(tiny_model), pooling="mean", precision="fp32")
    assert _build(labeled_catalog, other).resumed == 0
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        _interrupt_embedding_after(backbone, 2, patch)
        _build(labeled_catalog, backbone)
    assert _build(labeled_catalog, backbone, dtype="float32").resumed == 0
