"""Where model files come from (a local folder, the hub's cache, or a download) and what they are (a hash)."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from .. import settings
from ..errors import ModelError

#: The backbone that needs no download; named in every "cannot be had" message.
OFFLINE = "offline"


def local_model_folder(source: str) -> Path:
    """A folder holding the model's files: the source itself, the hub cache, or a fresh download."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors"]
    try:
        return Path(snapshot_download(source, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass  # not cached: try the hub below, if it can be reached at all
    how = (
        f"download it on a machine with network (it is cached for later), point RECOMMENDER_MODEL at a folder "
        f"saved with save_pretrained, or use --model {OFFLINE} (no download needed)"
    )
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        raise ModelError(f"{source} is not in the local cache and HF_HUB_OFFLINE is set; {how}")
    if not hub_reachable():
        raise ModelError(f"{source} is not in the local cache and the Hugging Face hub cannot be reached; {how}")
    try:
        return Path(snapshot_download(source, allow_patterns=patterns))
    except Exception as exc:
        raise ModelError(f"{source}: download failed ({str(exc).splitlines()[0][:200]}); {how}") from None


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
