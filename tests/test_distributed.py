"""distributed: `--ray` builds on a local Ray (2 CPUs) give the plain build's index, and resume when interrupted."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from recommender import build_index, load_backbone
from recommender.build import Checkpoint, RayExecutor
from recommender.cli import cli
from recommender.index import Index

ROOT = Path(__file__).resolve().parent.parent
# Ray is an optional dependency (requirements-scale.txt): without it these tests are skipped.
ray = pytest.importorskip("ray", reason="pip install -r requirements-scale.txt")
pytest.importorskip("ray.data", reason="pip install -r requirements-scale.txt")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray for the module (starting one takes seconds): 2 CPUs, a small object store.

    Ray gives its raylet 30 s to register, which a loaded 2-core CI machine has been seen to miss
    once; a second try follows, and if that fails too the module is skipped with Ray's own logs.
    """
    error: Exception | None = None
    for _ in range(2):
        # A short folder of its own: Ray's Unix socket paths inside it must stay under 108 bytes.
        temp = Path(tempfile.mkdtemp(prefix="ray"))
        try:
            ray.init(
                address="local",
                num_cpus=2,
                object_store_memory=256 << 20,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                _temp_dir=str(temp),
                runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ["PYTHONPATH"]])}},
            )  # workers import recommender from here
            break
        except Exception as exc:  # Ray raises a bare Exception when its node times out
            error = exc
            ray.shutdown()
    else:
        logs = sorted(p.name for p in temp.glob("session_*/logs/*"))
        pytest.skip(f"a local Ray did not start twice here ({error}); its logs: {logs}")
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def catalog(labeled_catalog):
    """The shapes, plus a broken picture and a duplicate, so that skips are compared too."""
    (labeled_catalog / "red-circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    shutil.copy(labeled_catalog / "red-circle" / "0.png", labeled_catalog / "red-circle" / "copy.png")
    return labeled_catalog


@pytest.fixture
def backbone(tiny_model):
    return load_backbone(str(tiny_model), precision="fp32")


def _same_index(a: Index, b: Index) -> None:
    assert [i.id for i in a.items] == [i.id for i in b.items]
    assert [i.sha256 for i in a.items] == [i.sha256 for i in b.items]
    np.testing.assert_allclose(a.embeddings.astype(np.float32), b.embeddings.astype(np.float32), atol=1e-3)


def test_a_ray_build_equals_the_plain_build(catalog, backbone):
    plain = build_index(catalog, name="plain", backbone=backbone, progress=False)
    distributed = build_index(
        catalog, name="ray", backbone=backbone, progress=False, executor=RayExecutor(), batch_size=4
    )
    assert (distributed.count, distributed.embedded, distributed.reused) == (plain.count, plain.embedded, 0)
    assert [str(s) for s in distributed.skipped] == [str(s) for s in plain.skipped]
    assert {s.reason for s in distributed.skipped} >= {"same picture as red-circle/0.png"}
    _same_index(Index.load("plain"), Index.load("ray"))
    assert Index.load("ray").manifest.stats.ray is True


def test_an_interrupted_ray_build_resumes(catalog, monkeypatch):
    # The colour histogram: its actors start in a moment, where a model's take seconds to import torch.
    backbone = load_backbone("colour-histogram")
    build_index(catalog, name="plain", backbone=backbone, progress=False)
    real, calls = Checkpoint.add, []

    def add_then_die(self, hashes, vectors):
        calls.append(len(hashes))
        if len(calls) > 1:
            raise KeyboardInterrupt("interrupted")  # the driver dies with one batch checkpointed
        real(self, hashes, vectors)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(Checkpoint, "add", add_then_die)
        build_index(
            catalog,
            name="ray",
            backbone=backbone,
            progress=False,
            executor=RayExecutor(),
            batch_size=4,
            checkpoint_seconds=0,
        )
    report = build_index(
        catalog,
        name="ray",
        backbone=backbone,
        progress=False,
        executor=RayExecutor(),
        batch_size=4,
        checkpoint_seconds=0,
    )
    # What was checkpointed is hashed, not decoded or embedded again.
    assert report.resumed == calls[0] >= 1 and report.embedded + report.resumed == 12 and report.reused == calls[0]
    _same_index(Index.load("plain"), Index.load("ray"))


def test_ray_into_milvus_from_the_command_line(catalog):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from recommender.index.store.milvus import close_clients

    runner = CliRunner()
    try:
        out = runner.invoke(
            cli,
            [
                "index",
                str(catalog),
                "--name",
                "shapes",
                "--model",
                "colour-histogram",
                "-q",
                "--ray",
                "--actors",
                "1",
                "--store",
                "milvus-lite",
            ],
        )
        assert out.exit_code == 0, out.output
        assert "indexed 12 pictures" in out.stdout and "vectors in milvus-lite" in out.stdout
        found = runner.invoke(
            cli, ["search", str(catalog / "blue-triangle" / "3.png"), "--index", "shapes", "--json", "-k", "1"]
        )
        assert json.loads(found.stdout)[0]["id"] == "blue-triangle/3.png"
        lonely = runner.invoke(cli, ["index", str(catalog), "--name", "x", "--actors", "2"])
        assert lonely.exit_code == 2 and "only applies with --ray" in lonely.stderr
    finally:
        close_clients()
