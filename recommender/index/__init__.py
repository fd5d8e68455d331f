"""Built indexes: a folder per index with a manifest, vectors and items; loaded, checked, searched, written.

An index is a folder `<index dir>/<name>/` holding

* `manifest.json` (`manifest`): format version, backbone spec and weights identity (with the hub
  repository and commit of hub weights), dim, count,
  dtype, the catalog it came from, where the vectors live (`store`), the data files and their
  sha256, build statistics and the in-catalog calibration;
* `embeddings-<stamp>.safetensors` (`format`): one `(count, dim)` float16/float32 tensor of unit
  rows, when the vectors are stored locally (the default); with `--store milvus...` they live in
  a Milvus collection the manifest names instead (`store.milvus`);
* `items-<stamp>.json` (`format`): the items, column by column (ids, relative paths, labels,
  hashes, metadata);
* `skipped-<stamp>.json` (`format`): every picture the build left out, with why and its label.

`index` opens one for searching; `write` commits a new version atomically. No pickle anywhere.
"""

from __future__ import annotations

from .index import Index, Match, check_name, index_folder, list_indexes
from .manifest import FORMAT_VERSION, MANIFEST, BuildStats, CatalogInfo, DataFiles, Manifest
from .store import Filters, LocalStore, Store, StoreConfig, StoreLocation
from .write import write_index

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "BuildStats",
    "CatalogInfo",
    "DataFiles",
    "Filters",
    "Index",
    "LocalStore",
    "Manifest",
    "Match",
    "Store",
    "StoreConfig",
    "StoreLocation",
    "check_name",
    "index_folder",
    "list_indexes",
    "write_index",
]
