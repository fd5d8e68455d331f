"""Embedding a catalog on Ray Data: read, hash and decode in CPU tasks, embed in model actors on CPUs or GPUs.

The pipeline is `from_items(rows)` -> `map_batches(read)` (CPU tasks: read, hash, skip pictures
already embedded, decode, prepare) -> `map_batches(_Embedder)` (an actor pool, one model each, on
GPUs when the cluster has them) -> the driver, which checkpoints each batch and hands the vectors
to the store. Decoding runs in tasks rather than in the model actors because on a GPU node it is
the bottleneck (about 1.9k JPEGs/s on 16 cores against 15k images/s for ViT-S/14 on one H100):
tasks spread it over every CPU in the cluster. Pictures are read where the tasks run, so on a
cluster the catalog must be on storage every node sees under the same path.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones import Backbone, load_backbone
from ..catalog import Item
from ..errors import ModelError, RecommenderError
from ..images import Fit
from .pipeline import OnEmbedded, Outcome, ShouldStop, read_item

#: Pictures per read-and-decode task.
READ_BATCH = 32
#: Memory a read-and-decode task asks for (a batch of decoded pictures of up to 1024 px a side).
# Asking for it also keeps Ray from fusing decoding into the model actors, which would serialise it.
READ_MEMORY = 256 << 20
#: CPUs a CPU-only cluster gives each model actor, at most (the rest decode).
CPU_ACTOR_CPUS = 8


def _ray() -> Any:
    try:
        import ray
        import ray.data  # Ray Data is the `ray[data]` extra
    except ImportError:
        raise RecommenderError(
            "--ray needs Ray Data, which is not installed: pip install 'ray[data]' "
            "(or: pip install -r requirements-scale.txt)"
        ) from None
    return ray


class RayExecutor:
    """The pipeline on Ray Data: read, hash and decode in CPU tasks, embed in model actors (GPUs when there are).

    `address` is a cluster's (e.g. `ray://head:10001`); None joins an already initialised Ray,
    else the cluster in RAY_ADDRESS, else starts a local one for the duration of the run.
    `actors` model replicas (default: one per GPU, else one per 4 CPUs).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, actors: int | None = None) -> None:
        self.address = address
        self.actors = actors

    def run(
        self,
        items: Sequence[Item],
        root: Path,
        backbone: Backbone,
        *,
        known: Collection[str],
        batch_size: int,
        on_embedded: OnEmbedded | None,
        should_stop: ShouldStop | None,
        bar: Any,
    ) -> Iterator[Outcome]:
        if should_stop is not None:
            raise RecommenderError("a build on Ray cannot be bounded by should_stop; build locally")
        ray = _ray()
        started_here = _connect(ray, self.address, not bar.disable)
        try:
            yield from _run(
                ray,
                items,
                root,
                backbone,
                actors=self.actors,
                known=_HashSet(known),
                batch_size=batch_size,
                on_embedded=on_embedded,
                bar=bar,
            )
        finally:
            if started_here:
                ray.shutdown()


def _connect(ray: Any, address: str | None, progress: bool) -> bool:
    """Join or start Ray; True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    package = str(Path(__file__).resolve().parent.parent)  # the recommender package
    # A remote cluster gets this package shipped to its workers; a local one imports it from here.
    runtime_env = (
        {"py_modules": [package]}
        if address and address.startswith("ray://")
        else {
            "env_vars": {
                "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(package).parent), os.environ.get("PYTHONPATH")]))
            }
        }
    )
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=progress,
            runtime_env=runtime_env,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise RecommenderError(f"cannot start or reach Ray at {address or 'a local instance'}: {exc}") from None
    return True


def _run(
    ray: Any,
    items: Sequence[Item],
    root: Path,
    backbone: Backbone,
    *,
    actors: int | None,
    known: _HashSet,
    batch_size: int,
    on_embedded: OnEmbedded | None,
    bar: Any,
) -> Iterator[Outcome]:
    """Every item's `Outcome`, streamed back from the cluster."""
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # one bar, ours, counts what reached the driver
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    count, resources, device, threads = _actor_plan(ray, actors)
    blocks = max(1, min(1000, len(items) // READ_BATCH))
    dataset = ray.data.from_items(
        [{"row": i, "path": item.path} for i, item in enumerate(items)], override_num_blocks=blocks
    )
    dataset = dataset.map_batches(
        _read_batch,
        batch_size=READ_BATCH,
        num_cpus=1,
        memory=READ_MEMORY,
        fn_kwargs={"root": str(root), "prepare": backbone.preparer(), "known": known, "fit_to": backbone.decode_size},
    )
    dataset = dataset.map_batches(
        _Embedder,
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=count),
        **resources,
        fn_constructor_kwargs={
            # The driver's hub revisions: every node loads the same commit, or says why it cannot.
            "spec": {**backbone.spec.as_kwargs(), "revision": backbone.revisions},
            "identity": backbone.identity,
            "device": device,
            "precision": None if backbone.precision == "mixed" else backbone.precision,
            "threads": threads,
        },
    )
    # Model-batch sized pieces: each one checkpointed as soon as it arrives.
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        fresh = batch["embedded"].astype(bool)
        if on_embedded is not None and fresh.any():
            on_embedded([str(h) for h in batch["sha256"][fresh]], batch["vector"][fresh])
        for row, sha, error, new, vector in zip(batch["row"], batch["sha256"], batch["error"], fresh, batch["vector"]):
            yield Outcome(
                int(row), str(sha) or None, str(error) or None, np.array(vector, dtype=np.float32) if new else None
            )
        bar.update(len(batch["row"]))


def _actor_plan(ray: Any, actors: int | None) -> tuple[int, dict[str, Any], str, int]:
    """How many model actors, the resources of each, their device and torch threads."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:
        return actors or gpus, {"num_gpus": 1, "num_cpus": 1}, "cuda", 0
    count = actors or max(1, cpus // 4)
    # Half the CPUs to the models, half to decoding: on CPUs the model is the slower side, but a
    # starved decoder stalls it as surely.
    per_actor = max(1, min(CPU_ACTOR_CPUS, cpus // (2 * count)))
    return count, {"num_cpus": per_actor}, "cpu", per_actor


class _HashSet:
    """Content hashes (hex) as a sorted array of 32-byte digests: compact to ship to every task."""

    def __init__(self, hashes: Iterable[str]) -> None:
        self._sorted = np.sort(np.array([bytes.fromhex(h) for h in hashes], dtype="S32"))

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, str) or not len(self._sorted):
            return False
        key = np.array(bytes.fromhex(digest), dtype="S32")
        i = int(np.searchsorted(self._sorted, key))
        return i < len(self._sorted) and self._sorted[i] == key


def _read_batch(
    batch: dict[str, np.ndarray],
    *,
    root: str,
    prepare: Callable[[Any], Any],
    known: _HashSet,
    fit_to: tuple[int, Fit] | None,
) -> dict[str, np.ndarray]:
    """Read, hash, and (unless already embedded) decode and prepare a batch of pictures; runs in a CPU task."""
    folder = Path(root)
    reads = [read_item(Item(id=str(path), path=str(path)), folder, prepare, known, fit_to) for path in batch["path"]]
    return {
        "row": np.asarray(batch["row"], dtype=np.int64),
        "sha256": np.array([r.item.sha256 or "" for r in reads], dtype=object),
        "error": np.array([r.error or "" for r in reads], dtype=object),
        "prepared": np.array([_pack(r.prepared) for r in reads], dtype=object),
    }


def _pack(prepared: Any) -> bytes:
    """Prepared pixels (an array, or a hybrid's tuple of them) as .npz bytes; b"" for nothing to embed.

    Ray Data stores columns as Arrow, which turns object columns of arrays into other types
    (uint8 into int64, None into NaN); bytes cross unchanged, and .npz needs no pickle.
    """
    if prepared is None:
        return b""
    parts = prepared if isinstance(prepared, tuple) else (prepared,)
    buffer = io.BytesIO()
    np.savez(buffer, *parts, tuple=np.array(isinstance(prepared, tuple)))
    return buffer.getvalue()


def _unpack(data: bytes) -> Any:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        parts = tuple(npz[f"arr_{i}"] for i in range(len(npz.files) - 1))
        return parts if bool(npz["tuple"]) else parts[0]


class _Embedder:
    """A Ray actor holding one model: embeds the prepared pictures of each batch, passes the others through."""

    def __init__(self, spec: dict[str, Any], identity: str, device: str, precision: str | None, threads: int) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.backbone = load_backbone(**spec, device=device, precision=precision)
        if self.backbone.identity != identity:  # another node holds other weights under that name
            raise ModelError(
                f"{self.backbone.name} on this Ray node has other weights ({self.backbone.identity}, "
                f"the driver's are {identity})"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prepared = batch["prepared"]
        todo = [i for i, p in enumerate(prepared) if len(p)]
        vectors = np.zeros((len(prepared), self.backbone.dim), dtype=np.float32)
        if todo:
            vectors[todo] = self.backbone.embed_prepared([_unpack(prepared[i]) for i in todo])
        embedded = np.zeros(len(prepared), dtype=bool)
        embedded[todo] = True
        return {
            "row": batch["row"],
            "sha256": batch["sha256"],
            "error": batch["error"],
            "embedded": embedded,
            "vector": vectors,
        }
