"""Everything long-lived one process holds: pooled backbones, caches with byte budgets, clients of services.

A `Runtime` is owned by whoever serves many requests (the app's `Service`); library calls made
without one share `default_runtime()`, the one process-wide instance, so that no module keeps a
cache of its own. What lives here, and nowhere else:

* `backbone(spec)`: a pool of loaded backbones keyed by spec, device and precision, so that an
  index built with another backbone is not re-loaded (and its weights not re-packed) per request;
* `patches`, `pca` and `figures`: the explanations' patch features, the catalogs' principal
  components, and pictures an app shows again (thumbnails, similarity matrices), each a
  least-recently-used cache with a budget in bytes;
* `one(key, make)`: objects of which a process wants exactly one per key: a client per Milvus
  database or server (Milvus Lite allows one per process), the web-search client with its cache.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .backbones import Backbone, BackboneSpec

T = TypeVar("T")

#: Byte budgets of the caches (patch grids are float16: a 16 x 16 x 384 grid is 200 KB).
PATCH_CACHE_BYTES = 96 << 20
PCA_CACHE_BYTES = 64 << 20
#: ... and of the pictures an app draws and shows again (thumbnails, similarity matrices).
FIGURE_CACHE_BYTES = 64 << 20


class ByteLRU:
    """A thread-safe least-recently-used cache with a budget in bytes (Gradio calls from many threads)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any, *, nbytes: int | None = None) -> None:
        size = nbytes if nbytes is not None else int(getattr(value, "nbytes", 1024))
        with self._lock:
            if key in self._data:
                self._bytes -= self._sizes.pop(key)
                del self._data[key]
            self._data[key] = value
            self._sizes[key] = size
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._data) > 1:
                old, _ = self._data.popitem(last=False)
                self._bytes -= self._sizes.pop(old)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """`compute()` once per key (None answers are remembered too, as a sentinel)."""
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, _NONE if value is None else value)
        return None if value is _NONE else value

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self._bytes = 0


class _Missing:
    nbytes = 0


_NONE = _Missing()


class Runtime:
    """The long-lived state of one process (see the module docstring); thread-safe."""

    def __init__(
        self,
        *,
        patch_bytes: int = PATCH_CACHE_BYTES,
        pca_bytes: int = PCA_CACHE_BYTES,
        figure_bytes: int = FIGURE_CACHE_BYTES,
    ) -> None:
        self.patches = ByteLRU(patch_bytes)
        self.pca = ByteLRU(pca_bytes)
        self.figures = ByteLRU(figure_bytes)
        self._backbones: dict[str, Backbone] = {}
        self._shared: dict[Hashable, Any] = {}
        self._lock = threading.RLock()

    def backbone(
        self,
        spec: BackboneSpec,
        *,
        device: str | None = None,
        precision: str | None = None,
        revision: Mapping[str, str] | None = None,
    ) -> Backbone:
        """The backbone `spec` describes, loaded once per spec, device, precision and pinned hub revisions."""
        from .backbones import load_backbone

        key = json.dumps([spec.to_json(), device, precision, revision], sort_keys=True, default=str)
        with self._lock:
            found = self._backbones.get(key)
            if found is None:
                found = load_backbone(**spec.as_kwargs(), device=device, precision=precision, revision=revision)
                self._backbones[key] = found
            return found

    def one(self, key: Hashable, make: Callable[[], T]) -> T:
        """The object kept under `key` (e.g. `("milvus", uri)`), made by `make()` the first time it is asked for."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = make()
            return self._shared[key]

    def replace(self, key: Hashable, value: Any) -> None:
        """Keep `value` under `key` from now on (None forgets it: the next `one` makes it afresh)."""
        with self._lock:
            if value is None:
                self._shared.pop(key, None)
            else:
                self._shared[key] = value

    def pop_all(self, kind: str) -> dict[Hashable, Any]:
        """Every object kept under a key `(kind, ...)`, forgotten here (the caller closes them)."""
        with self._lock:
            found = {k: v for k, v in self._shared.items() if isinstance(k, tuple) and k and k[0] == kind}
            for key in found:
                del self._shared[key]
        return found

    def clear_caches(self) -> None:
        """Forget every cached patch feature and principal component (the on-disk caches stay)."""
        self.patches.clear()
        self.pca.clear()
        self.figures.clear()


_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """The process-wide runtime that library calls made without one share."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Runtime()
        return _default
