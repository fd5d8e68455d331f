"""Where settings come from: CLI flag > environment variable > default, in one place."""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import RecommenderError

#: Environment variables the library reads; the README documents each.
ENV_INDEX_DIR = "RECOMMENDER_INDEX_DIR"
ENV_CACHE_DIR = "RECOMMENDER_CACHE_DIR"
ENV_DATA_DIR = "RECOMMENDER_DATA_DIR"
ENV_MODEL = "RECOMMENDER_MODEL"
ENV_MODEL_REVISION = "RECOMMENDER_MODEL_REVISION"
ENV_INDEX = "RECOMMENDER_INDEX"
ENV_DEVICE = "RECOMMENDER_DEVICE"
ENV_PRECISION = "RECOMMENDER_PRECISION"
ENV_STORE = "RECOMMENDER_STORE"
ENV_MAX_DECODE_MB = "RECOMMENDER_MAX_DECODE_MB"
#: What a visitor of the app may upload and build (see `uploads.UploadLimits`); the CLI has no such limits.
ENV_UPLOAD_PICTURES = "RECOMMENDER_UPLOAD_PICTURES"
ENV_UPLOAD_ROWS = "RECOMMENDER_UPLOAD_ROWS"
ENV_UPLOAD_SECONDS = "RECOMMENDER_UPLOAD_SECONDS"
ENV_UNPACKED_MB = "RECOMMENDER_UNPACKED_MB"
ENV_SESSION_MB = "RECOMMENDER_SESSION_MB"
ENV_UPLOADS_TOTAL_MB = "RECOMMENDER_UPLOADS_TOTAL_MB"
ENV_UPLOAD_TTL = "RECOMMENDER_UPLOAD_TTL"
ENV_BUILD_THREADS = "RECOMMENDER_BUILD_THREADS"
ENV_GRADIO_CACHE_TTL = "RECOMMENDER_GRADIO_CACHE_TTL"
#: A folder that survives restarts (a Hugging Face Space's persistent storage is mounted at /data).
ENV_PERSISTENT_DIR = "RECOMMENDER_PERSISTENT_DIR"
DEFAULT_PERSISTENT_DIR = "/data"
#: `1`: the app prepares the default index before it serves its page (the old start; benchmarks/coldstart.py).
ENV_BUILD_BEFORE_SERVING = "RECOMMENDER_BUILD_BEFORE_SERVING"

DEFAULT_MODEL = "dinov2-small"
DEFAULT_INDEX = "pokemon"
#: Memory, in MB, that all pictures being decoded at once may hold (`images.DECODE_BUDGET`): a 16-bit
#: grey 9400x9400 PNG read as a query reserves about 250 MB (and uses 200), a 24-megapixel JPEG
#: decoded whole 190, a 9400x9400 lossless WebP 1,450 (refused).
DEFAULT_MAX_DECODE_MB = 512

#: The repository root (the folder holding app.py, assets/ and index/) when running from a checkout.
ROOT = Path(__file__).resolve().parent.parent
#: Whether the package runs from a source checkout (`pip install -e .` or in place), not from an
#: installed wheel: only a checkout has the app, the embedded catalog and its own `index/` folder.
IN_CHECKOUT = (ROOT / "pyproject.toml").is_file() and (ROOT / "app.py").is_file()


def _pick(flag: str | None, env: str, default: str) -> str:
    if flag:
        return flag
    return os.environ.get(env) or default


def index_dir(flag: str | Path | None = None) -> Path:
    """The folder that holds one sub-folder per built index.

    By default `index/` in the persistent storage when there is some (`persistent_dir`), so that
    a Space builds its index once, not at every restart; else the checkout's `index/`, or, for an
    installed package, `index/` in the user's data folder: never inside site-packages.
    """
    persistent = persistent_dir()
    if persistent is not None:
        default = persistent / "index"
    else:
        default = ROOT / "index" if IN_CHECKOUT else data_dir() / "index"
    return Path(_pick(str(flag) if flag else None, ENV_INDEX_DIR, str(default)))


def persistent_dir() -> Path | None:
    """Storage that outlives the process: RECOMMENDER_PERSISTENT_DIR (default /data) if it is a writable folder.

    A Space's own disk is wiped at every restart; its persistent storage, when bought, is /data.
    Elsewhere /data rarely exists, and an unwritable one (another user's) is not used.
    """
    folder = Path(os.environ.get(ENV_PERSISTENT_DIR) or DEFAULT_PERSISTENT_DIR)
    return folder if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK) else None


def cache_dir(flag: str | Path | None = None) -> Path:
    """The folder for small derived files (weight hashes, cached patch features)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recommender"
    return Path(_pick(str(flag) if flag else None, ENV_CACHE_DIR, str(default)))


def data_dir(flag: str | Path | None = None) -> Path:
    """The folder for catalogs uploaded through the app (unpacked pictures) and pictures taken out of datasets."""
    default = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "recommender"
    return Path(_pick(str(flag) if flag else None, ENV_DATA_DIR, str(default)))


def model_name(flag: str | None = None) -> str:
    """The backbone to build indexes with when none is named."""
    return _pick(flag, ENV_MODEL, DEFAULT_MODEL)


def model_revision(flag: str | None = None) -> str | None:
    """The hub commit, branch or tag to build with (hub models only); None: what the cache or hub has now."""
    return _pick(flag, ENV_MODEL_REVISION, "") or None


def index_name(flag: str | None = None) -> str:
    """The index to search when none is named."""
    return _pick(flag, ENV_INDEX, DEFAULT_INDEX)


def device(flag: str | None = None) -> str:
    """`cuda` when a GPU is present, else `cpu`, unless set explicitly."""
    chosen = _pick(flag, ENV_DEVICE, "auto")
    if chosen != "auto":
        return chosen
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def precision(flag: str | None = None) -> str:
    """`auto` (bf16 where the hardware has it), `bf16` or `fp32`."""
    return _pick(flag, ENV_PRECISION, "auto")


def store(flag: str | None = None) -> str:
    """Where builds put the vectors: `local` (files), `milvus-lite[:PATH.db]` or `milvus://HOST:PORT`."""
    return _pick(flag, ENV_STORE, "local")


def max_decode_mb(flag: float | None = None) -> float:
    """Megabytes that all pictures being decoded at once may hold; a picture that needs more is refused."""
    raw = _pick(str(flag) if flag is not None else None, ENV_MAX_DECODE_MB, str(DEFAULT_MAX_DECODE_MB))
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise RecommenderError(
            f"the decoding memory limit ({ENV_MAX_DECODE_MB} or --max-decode-mb) must be a "
            f"positive number of megabytes, not {raw!r}"
        )
    return value


def number(env: str, default: float, *, minimum: float = 0) -> float:
    """A number from the environment variable `env` (unset or empty: `default`), at least `minimum`."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RecommenderError(f"{env}={raw!r}: not a number") from None
    if not minimum <= value < float("inf"):  # also refuses NaN
        raise RecommenderError(f"{env}={raw!r}: must be a finite number, at least {minimum:g}")
    return value


def build_before_serving() -> bool:
    """Whether the app waits for the default index before serving (by default it serves at once, building behind)."""
    return os.environ.get(ENV_BUILD_BEFORE_SERVING, "").strip().lower() in ("1", "true", "yes")


def gradio_cache_seconds() -> int:
    """How long the app keeps the files Gradio stored for requests (uploads, pictures it served)."""
    return max(1, int(number(ENV_GRADIO_CACHE_TTL, 3600, minimum=1)))
