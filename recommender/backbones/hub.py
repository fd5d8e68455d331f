"""Where model files come from (a local folder, the hub's cache, or a download) and what they are (a hash)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .. import settings
from ..errors import ModelError

#: The backbone that needs no download; named in every "cannot be had" message.
OFFLINE = "offline"


#: The files a vision model needs: its config, its image processor's, and the weights (not tokenizers).
MODEL_FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]
#: A revision as the hub names one: a commit hash, a branch or a tag.
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


@dataclass(frozen=True)
class HubRevision:
    """Which hub repository a backbone's weights came from, and the commit they were read at."""

    repo: str  # e.g. facebook/dinov2-small
    revision: str  # the commit hash of the snapshot that was loaded

    def to_json(self) -> dict[str, str]:
        return {"repo": self.repo, "revision": self.revision}

    @classmethod
    def from_json(cls, data: Any) -> HubRevision:
        """Parse a manifest's entry; `ValueError` for anything that is not a hub id and a revision."""
        if not isinstance(data, dict) or set(data) != {"repo", "revision"}:
            raise ValueError("not a hub revision")
        repo, revision = data["repo"], data["revision"]
        if not (isinstance(repo, str) and looks_like_hub_id(repo) and len(repo) <= 200):
            raise ValueError("bad hub repo")
        check_revision(revision)
        return cls(repo, revision)


#: What `load_backbone` takes as `revision`: one for every hub part, or one per hub repository.
Revision = str | Mapping[str, str] | None


def check_revision(revision: Any) -> str:
    """`revision` if it looks like a commit hash, branch or tag, else `ModelError` (never a path)."""
    if not isinstance(revision, str) or not _REVISION.match(revision) or ".." in revision:
        raise ModelError(f"bad revision {str(revision)[:80]!r}: give a commit hash, a branch or a tag")
    return revision


def fetch_snapshot(repo: str, *, revision: str | None, local_only: bool) -> Path:
    """The hub boundary: `snapshot_download` of the model's files (tests replace this one function)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, revision=revision, allow_patterns=MODEL_FILES, local_files_only=local_only))


def local_model_folder(source: str, *, revision: str | None = None) -> Path:
    """A folder holding the model's files: the source itself, the hub cache, or a fresh download.

    `revision` (a commit hash, branch or tag; hub ids only) pins which snapshot: the one an index
    was built with is fetched when it is not cached, or the error says plainly that it cannot be.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if revision:
            raise ModelError(f"{source} is a local folder: a revision applies to hub models only")
        return path
    at = f" at revision {revision}" if revision else ""
    try:
        return fetch_snapshot(source, revision=revision, local_only=True)
    except Exception:
        pass  # not cached: try the hub below, if it can be reached at all
    fetch = f"`hf download {source}" + (f" --revision {revision}`" if revision else "`")
    how = (
        f"download it on a machine with network ({fetch}; it is cached for later), point RECOMMENDER_MODEL at a "
        f"folder saved with save_pretrained, or use --model {OFFLINE} (no download needed)"
    )
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        raise ModelError(f"{source}{at} is not in the local cache and HF_HUB_OFFLINE is set; {how}")
    if not hub_reachable():
        raise ModelError(f"{source}{at} is not in the local cache and the Hugging Face hub cannot be reached; {how}")
    try:
        return fetch_snapshot(source, revision=revision, local_only=False)
    except Exception as exc:
        raise ModelError(f"{source}{at}: download failed ({str(exc).splitlines()[0][:200]}); {how}") from None


def hub_revision(source: str, folder: Path) -> HubRevision | None:
    """The repository and commit of a snapshot in the hub's cache (`.../snapshots/<commit>`); None for a folder."""
    if Path(source).expanduser().is_dir() or folder.parent.name != "snapshots":
        return None
    return HubRevision(source, folder.name)


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so that an offline machine learns it in seconds instead of minutes of retries."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def weights_identity(folder: Path) -> str:
    """sha256 over a model folder's weight files: an index built with one never meets other weights."""
    files = sorted(
        p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.name.startswith(("model", "pytorch"))
    )
    if not files:
        raise ModelError(f"{folder}: no model weights (*.safetensors) found")
    digest = hashlib.sha256()
    for path in files:
        digest.update(file_sha256(path).encode())
    return "sha256:" + digest.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """sha256 of a (large) file, remembered in the cache folder by path, size and modification time."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = settings.cache_dir() / "hashes" / key
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(value)
        os.replace(tmp, memo)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return value
