"""Related media on the web (pages, images, videos) for a recognised item, behind a small provider interface."""

from __future__ import annotations

import functools
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import RecommenderError, WebSearchUnavailable
from .runtime import Runtime, default_runtime

Kind = Literal["image", "page", "video"]
KINDS: tuple[Kind, ...] = ("page", "image", "video")
#: Plural spellings (the CLI's --kind) accepted wherever a kind is.
_KIND_ALIASES: dict[str, Kind] = {
    "pages": "page",
    "images": "image",
    "videos": "video",
    "page": "page",
    "image": "image",
    "video": "video",
    "text": "page",
}

#: Environment variables read when a setting is not given in code; the README documents each.
ENV_PROVIDER = "RECOMMENDER_WEB_PROVIDER"
ENV_TIMEOUT = "RECOMMENDER_WEB_TIMEOUT"
ENV_CACHE_TTL = "RECOMMENDER_WEB_CACHE_TTL"
ENV_DOMAIN = "RECOMMENDER_WEB_DOMAIN"
ENV_REGION = "RECOMMENDER_WEB_REGION"
ENV_BACKEND = "RECOMMENDER_WEB_BACKEND"

DEFAULT_PROVIDER = "duckduckgo"
#: Total seconds one search may take, retries included: the page must not wait longer for links.
DEFAULT_TIMEOUT = 4.0
#: Seconds a result list is reused before the provider is asked again.
DEFAULT_CACHE_TTL = 3600.0
#: The default catalog's domain, added to labels so "Pikachu" finds the Pokémon and not a plush toy.
DEFAULT_DOMAIN = "Pokémon"
DEFAULT_LIMIT = 8
MAX_LIMIT = 50
#: Seconds during which a rate-limited provider is not asked again: asking sooner prolongs the block.
RATE_LIMIT_COOLDOWN = 60.0

_MAX_URL = 2048
_MAX_TITLE = 200
_MAX_QUERY = 200
# Tracking parameters dropped before two URLs are compared; they never change the page.
_TRACKING = re.compile(r"^(utm_\w+|fbclid|gclid|msclkid|mc_cid|mc_eid)$", re.IGNORECASE)


@dataclass(frozen=True)
class Link:
    """One related web resource, ready for a list: open `url` in a new tab, show `thumbnail` if any.

    `source` is the domain of `url` (without "www."); `image` is the full-size picture of an image
    result (`url` is then the page it appears on). The UI loads thumbnails in the browser; the
    server never fetches these URLs.
    """

    title: str
    url: str
    source: str
    thumbnail: str | None = None
    kind: Kind = "page"
    image: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "url": self.url,
            "source": self.source,
            "thumbnail": self.thumbnail,
            "kind": self.kind,
            "image": self.image,
        }


class Provider(Protocol):
    """A source of raw links. `fetch` may return unclean, duplicated links; `WebSearch` cleans them.

    It must give up after about `timeout` seconds and raise `WebSearchUnavailable` (with
    `retryable` / `rate_limited` set when they apply) for anything that is not a plain answer.
    """

    name: str

    def fetch(self, query: str, *, kind: Kind, limit: int, timeout: float) -> Sequence[Link]: ...


# --- settings ---------------------------------------------------------------------------------------------------


def _env_seconds(env: str, default: float, *, zero: bool = False) -> float:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        at_least = "zero or more" if zero else "a positive number of"
        raise RecommenderError(f"{env} must be {at_least} seconds, not {raw!r}")
    return value


def _kind(kind: str) -> Kind:
    try:
        return _KIND_ALIASES[str(kind).strip().lower()]
    except KeyError:
        raise RecommenderError(f"unknown link kind {kind!r}: use one of images, pages, videos") from None


# --- queries ----------------------------------------------------------------------------------------------------


def default_domain() -> str:
    """The word added to labels when none is given: $RECOMMENDER_WEB_DOMAIN, else "Pokémon" (may be empty)."""
    return os.environ.get(ENV_DOMAIN, DEFAULT_DOMAIN).strip()


def build_query(name: str, domain: str | None = None) -> str:
    """The search query for a recognised label: "Pikachu" + "Pokémon" -> "Pikachu Pokémon".

    `domain` None takes `default_domain()`; "" searches the name alone. The domain is not added
    twice ("Pokémon Center" stays as it is), and whitespace is collapsed.
    """
    words = " ".join(str(name or "").split())
    if not words:
        raise RecommenderError("nothing to search the web for: the name is empty")
    extra = " ".join((default_domain() if domain is None else domain).split())
    if extra and extra.casefold() not in words.casefold():
        words = f"{words} {extra}"
    return words[:_MAX_QUERY].strip()


def query_for_item(item: Any, *, columns: Sequence[str] = (), domain: str | None = None) -> str:
    """The query for a catalog item: its metadata `columns` joined (e.g. brand + model), else its label.

    Meant for CSV catalogs, whose label is often absent or coarse: `columns=("brand", "model")`,
    `domain="watch"` gives "Rolex Submariner watch". Missing or empty columns are skipped; the
    label is the fallback. `item` is a `catalog.Item` (anything with `.label` and `.metadata`).
    """
    metadata: Mapping[str, str] = getattr(item, "metadata", None) or {}
    parts = [str(metadata[c]).strip() for c in columns if str(metadata.get(c) or "").strip()]
    name = " ".join(parts) or (getattr(item, "label", None) or "")
    if not name.strip():
        wanted = f" or in columns {', '.join(columns)}" if columns else ""
        raise RecommenderError(f"item {getattr(item, 'id', item)!r} has no label{wanted} to search the web for")
    return build_query(name, domain)


# --- cleaning ---------------------------------------------------------------------------------------------------


def clean_url(url: object) -> str | None:
    """`url` if it is an absolute http(s) URL a browser may open safely, else None.

    Refuses other schemes (javascript:, data:, file:), embedded credentials (a classic way to make
    a link look like another site), whitespace or control characters, and very long URLs.
    """
    if not isinstance(url, str):
        return None
    url = url.strip()
    if not url or len(url) > _MAX_URL or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    return url


def domain_of(url: str) -> str:
    """The host of `url` in lower case, without a leading "www."."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


def _url_key(url: str) -> str:
    """What two URLs share when they open the same thing: no scheme, www., fragment, default port, tracking."""
    parts = urlsplit(url)
    host = domain_of(url)
    port = parts.port
    if port and port not in (80, 443):
        host = f"{host}:{port}"
    query = urlencode(
        sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k))
    )
    return urlunsplit(("", host, parts.path.rstrip("/") or "/", query, ""))


def clean_links(links: Iterable[Link], *, kind: Kind, limit: int) -> list[Link]:
    """The first `limit` usable links in the provider's order, duplicates (same page or same image) removed.

    A link without a usable URL is dropped; a bad thumbnail or image URL is blanked, not fatal.
    The provider's order is its ranking, so it is kept: the first of two duplicates wins.
    """
    seen: set[str] = set()
    out: list[Link] = []
    for link in links:
        if len(out) >= limit:
            break
        if not isinstance(link, Link):
            continue
        image = clean_url(link.image)
        url = clean_url(link.url) or image  # an image result with no page still opens the picture
        if url is None:
            continue
        keys = {_url_key(url)} | ({_url_key(image)} if image else set())
        if keys & seen:
            continue
        seen |= keys
        title = " ".join(str(link.title or "").split())[:_MAX_TITLE] or domain_of(url)
        out.append(
            replace(
                link,
                title=title,
                url=url,
                source=domain_of(url),
                thumbnail=clean_url(link.thumbnail),
                image=image,
                kind=kind,
            )
        )
    return out


# --- the service ------------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    expires: float
    asked: int  # how many links the entry was fetched for
    exhausted: bool  # the provider had fewer than asked: a larger limit would get no more
    links: tuple[Link, ...]


@dataclass
class WebSearch:
    """Cleaned, cached, time-bounded searches through one provider. Safe to share between threads.

    `timeout` is the total deadline of one search in seconds, retries included (default
    $RECOMMENDER_WEB_TIMEOUT or 4); `ttl` how long answers are reused (default
    $RECOMMENDER_WEB_CACHE_TTL or 3600; 0 turns caching off). `clock` and `sleep` are injectable for tests.
    """

    provider: Provider
    timeout: float | None = None
    ttl: float | None = None
    max_entries: int = 256
    retries: int = 2
    backoff: float = 0.25
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _cache: OrderedDict[tuple[str, str], _Entry] = field(default_factory=OrderedDict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _cooldown_until: float = field(default=-math.inf, init=False, repr=False)

    def __post_init__(self) -> None:
        self.timeout = _env_seconds(ENV_TIMEOUT, DEFAULT_TIMEOUT) if self.timeout is None else float(self.timeout)
        # A TTL of 0 turns the cache off (every search asks the provider).
        self.ttl = _env_seconds(ENV_CACHE_TTL, DEFAULT_CACHE_TTL, zero=True) if self.ttl is None else float(self.ttl)
        if not self.timeout > 0:
            raise RecommenderError(f"the web search timeout must be positive, not {self.timeout}")

    def clear(self) -> None:
        """Forget cached answers and any rate-limit pause."""
        with self._lock:
            self._cache.clear()
            self._cooldown_until = -math.inf

    def search(
        self, query: str, *, kind: str = "page", limit: int = DEFAULT_LIMIT, timeout: float | None = None
    ) -> list[Link]:
        """Up to `limit` links for `query`, best first; `WebSearchUnavailable` within the deadline otherwise.

        `timeout` overrides this searcher's deadline for one call.
        """
        kind_ = _kind(kind)
        if not 1 <= limit <= MAX_LIMIT:
            raise RecommenderError(f"the number of links must be between 1 and {MAX_LIMIT}, not {limit}")
        query = " ".join(str(query or "").split())
        if not query:
            raise RecommenderError("nothing to search the web for: the query is empty")
        key = (kind_, query.casefold())
        now = self.clock()
        with self._lock:
            entry = self._cache.get(key)
            if entry and entry.expires > now and (limit <= entry.asked or entry.exhausted):
                self._cache.move_to_end(key)
                return list(entry.links[:limit])
            if now < self._cooldown_until:
                wait = math.ceil(self._cooldown_until - now)
                raise WebSearchUnavailable(
                    f"{self.provider.name} is rate limiting this machine; try again in {wait} s", rate_limited=True
                )
        # Ask for a few more than wanted: duplicates and unusable URLs are dropped afterwards.
        asked = min(MAX_LIMIT, limit + max(4, limit // 2))
        try:
            raw = self._fetch_within_deadline(query, kind_, asked, timeout or self.timeout or DEFAULT_TIMEOUT)
        except WebSearchUnavailable as exc:
            if exc.rate_limited:
                with self._lock:
                    self._cooldown_until = self.clock() + RATE_LIMIT_COOLDOWN
            raise
        links = clean_links(raw, kind=kind_, limit=asked)
        if links:  # an empty answer may be a silent block: do not pin it for an hour
            with self._lock:
                self._cache[key] = _Entry(self.clock() + float(self.ttl or 0), asked, len(raw) < asked, tuple(links))
                self._cache.move_to_end(key)
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        return links[:limit]

    def _fetch_within_deadline(self, query: str, kind: Kind, limit: int, total: float) -> list[Link]:
        """Calls the provider in a worker thread, retrying transient failures while the deadline allows."""
        deadline = self.clock() + total
        attempt = 0
        while True:
            remaining = deadline - self.clock()
            try:
                call = functools.partial(self.provider.fetch, query, kind=kind, limit=limit, timeout=remaining)
                return _run_with_deadline(call, remaining, self.provider.name, total)
            except WebSearchUnavailable as exc:
                attempt += 1
                pause = self.backoff * 2 ** (attempt - 1)
                # Retry only what may pass at once, and only if a real attempt still fits in the deadline.
                if not exc.retryable or attempt > self.retries or self.clock() + pause + 1.0 > deadline:
                    raise
                self.sleep(pause)


def _run_with_deadline(call: Callable[[], Iterable[Link]], seconds: float, name: str, total: float) -> list[Link]:
    """`call()` in a daemon thread; stop waiting after `seconds` (the call may block, e.g. on a slow socket).

    A daemon thread rather than an executor: an abandoned call must not hold up the process's exit.
    """
    if seconds <= 0:
        raise WebSearchUnavailable(f"{name} did not answer within {total:g} s")
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = list(call())
        except BaseException as exc:  # handed to the waiting thread, whatever it is
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="recommender-websearch", daemon=True).start()
    if not done.wait(seconds):
        raise WebSearchUnavailable(f"{name} did not answer within {total:g} s")
    error = box.get("error")
    if isinstance(error, WebSearchUnavailable):
        raise error
    if error is not None:  # a provider bug must not break the rest of the page
        raise WebSearchUnavailable(f"{name} failed: {_first_line(error)}") from error
    return box["value"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


# --- providers --------------------------------------------------------------------------------------------------


class DuckDuckGoProvider:
    """DuckDuckGo through the `ddgs` package (imported on first use, so `import recommender` stays light).

    Safe search is "on". ddgs's DuckDuckGo engines honour it for images and videos; its text engine
    (html.duckduckgo.com) sends no safe-search flag, which is why `backend` can name other ddgs
    text engines that do ("brave", "mojeek") through $RECOMMENDER_WEB_BACKEND.
    """

    name = "DuckDuckGo"

    def __init__(self, *, region: str | None = None, backend: str | None = None, safesearch: str = "on") -> None:
        self.region = region or os.environ.get(ENV_REGION, "").strip() or "us-en"
        self.backend = backend or os.environ.get(ENV_BACKEND, "").strip() or "duckduckgo"
        self.safesearch = safesearch

    def fetch(self, query: str, *, kind: Kind, limit: int, timeout: float) -> list[Link]:
        try:
            from ddgs import DDGS
        except ImportError:
            raise WebSearchUnavailable("the ddgs package is not installed (pip install ddgs)") from None
        # Images and videos take two requests in turn (a token, then the results): split the time.
        per_request = max(0.5, timeout / (1 if kind == "page" else 2))
        method = {"page": "text", "image": "images", "video": "videos"}[kind]
        try:
            rows = getattr(DDGS(timeout=per_request), method)(  # type: ignore[arg-type]
                query, region=self.region, safesearch=self.safesearch, max_results=limit, backend=self.backend
            )
        except Exception as exc:
            if "no results found" in str(exc).lower():
                return []  # ddgs raises for an empty answer; for us it is just no links
            raise _ddgs_unavailable(exc) from None
        return [_link_from_ddgs(row, kind) for row in rows if isinstance(row, Mapping)]


def _link_from_ddgs(row: Mapping[str, Any], kind: Kind) -> Link:
    """A ddgs result dict as a Link: text {title, href}, images {url, image, thumbnail}, videos {content, images}."""
    title = str(row.get("title") or "")
    if kind == "page":
        return Link(title, str(row.get("href") or ""), "", None, "page")
    if kind == "image":
        return Link(
            title, str(row.get("url") or ""), "", row.get("thumbnail") or None, "image", image=row.get("image") or None
        )
    pictures = row.get("images") if isinstance(row.get("images"), Mapping) else {}
    thumbnail = pictures.get("medium") or pictures.get("small") or pictures.get("large") or None
    return Link(title, str(row.get("content") or row.get("embed_url") or ""), "", thumbnail, "video")


def _ddgs_unavailable(exc: BaseException) -> WebSearchUnavailable:
    """A ddgs failure as one line. ddgs wraps the HTTP client's error (primp) in one or two DDGSExceptions."""
    chain: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(chain) < 8:
        e = todo.pop()
        if e in chain:
            continue
        chain.append(e)
        todo += [a for a in e.args if isinstance(a, BaseException)]
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    text = " ".join(str(e) for e in chain).lower()
    if (
        "RatelimitException" in names
        or "ratelimit" in text
        or "rate limit" in text
        or " 429" in text
        or "could not extract vqd" in text
    ):
        return WebSearchUnavailable("DuckDuckGo is rate limiting this machine; try again later", rate_limited=True)
    if "TimeoutException" in names or "TimeoutError" in names or "timed out" in text:
        return WebSearchUnavailable("DuckDuckGo did not answer in time", retryable=True)
    if "DNSError" in names or "dns error" in text or "resolv" in text or "name or service not known" in text:
        return WebSearchUnavailable("no network (cannot resolve duckduckgo.com)")
    if any(s in text for s in ("connection reset", "connection closed", "broken pipe")):
        return WebSearchUnavailable("the connection to DuckDuckGo dropped", retryable=True)
    if "ConnectError" in names or "connect" in text or "unreachable" in text:
        return WebSearchUnavailable("no network (cannot connect to duckduckgo.com)")
    innermost = chain[-1] if chain else exc
    return WebSearchUnavailable(f"DuckDuckGo search failed ({_first_line(innermost)})")


class DisabledProvider:
    """Web search turned off ($RECOMMENDER_WEB_PROVIDER=off): every search says so at once."""

    name = "web search"

    def fetch(self, query: str, *, kind: Kind, limit: int, timeout: float) -> list[Link]:
        raise WebSearchUnavailable(f"web search is turned off ({ENV_PROVIDER}=off)")


#: Providers by name, for $RECOMMENDER_WEB_PROVIDER. `register_provider` adds to it.
PROVIDERS: dict[str, Callable[[], Provider]] = {"duckduckgo": DuckDuckGoProvider, "off": DisabledProvider}


def register_provider(name: str, factory: Callable[[], Provider]) -> None:
    """Make a provider selectable by name in $RECOMMENDER_WEB_PROVIDER (e.g. a paid search API)."""
    PROVIDERS[name.strip().lower()] = factory


def make_provider(name: str | None = None) -> Provider:
    """The provider called `name`, else the one $RECOMMENDER_WEB_PROVIDER names, else DuckDuckGo.

    Besides the registered names, `package.module:factory` imports a factory from code of your
    own (another search service; the app's browser tests plug in a fake this way).
    """
    chosen = (name or os.environ.get(ENV_PROVIDER, "") or DEFAULT_PROVIDER).strip()
    if ":" in chosen:
        return _import_factory(chosen)()
    try:
        factory = PROVIDERS[chosen.lower()]
    except KeyError:
        raise RecommenderError(
            f"unknown web search provider {chosen!r}: use one of {', '.join(PROVIDERS)} or package.module:factory"
        ) from None
    return factory()


def _import_factory(path: str) -> Callable[[], Provider]:
    import importlib

    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RecommenderError(f"web search provider {path!r} cannot be imported ({exc})") from None
    if not callable(factory):
        raise RecommenderError(f"web search provider {path!r} is not callable")
    return factory


def default_search(runtime: Runtime | None = None) -> WebSearch:
    """The runtime's `WebSearch` (one answer cache per process), built from the environment on first use."""
    return (runtime or default_runtime()).one("web", lambda: WebSearch(make_provider()))


def set_provider(provider: Provider | str | None, *, runtime: Runtime | None = None) -> None:
    """Route `search_media` and the CLI through `provider` (an object or a registered name), with a fresh cache.

    None goes back to the environment's choice. Tests use this to put a fake provider behind the
    real code paths; an app may use it to plug in another search service.
    """
    search = None if provider is None else WebSearch(make_provider(provider) if isinstance(provider, str) else provider)
    (runtime or default_runtime()).replace("web", search)


def search_media(
    name: str,
    *,
    kind: str = "page",
    limit: int = DEFAULT_LIMIT,
    domain: str | None = None,
    runtime: Runtime | None = None,
) -> list[Link]:
    """Links about a recognised item: `build_query(name, domain)` through the runtime's `WebSearch`.

    `kind` is "page", "image" or "video" (plurals accepted). Raises `WebSearchUnavailable` (one-line
    reason) within the deadline when the web cannot be searched; callers show it and carry on.
    """
    return default_search(runtime).search(build_query(name, domain), kind=kind, limit=limit)
