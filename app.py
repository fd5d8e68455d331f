"""The Gradio web app: layout and callbacks only; every answer comes from the `recommender` library."""

from __future__ import annotations

import argparse
import base64
import functools
import html
import logging
import os
import random
import re
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
from fastapi import HTTPException
from gradio.route_utils import MultiPartException
from gradio.utils import get_upload_folder
from PIL import Image
from starlette.middleware import Middleware

from recommender import RecommenderError, guard
from recommender.errors import BuildStopped, WebSearchUnavailable
from recommender.explain import HOVER_SCRIPT
from recommender.memory import keep_freed_buffers, limit_malloc_arenas
from recommender.recommend import Identification
from recommender.service import Service
from recommender.session import Feedback, Shown, Visit
from recommender.settings import build_before_serving, gradio_cache_seconds
from recommender.uploads import UPLOAD
from recommender.websearch import Link

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "assets" / "examples"
#: Layers an editor value may have (ours has none; Gradio would grow a list to any index a client names).
EDITOR_LAYERS = 4
#: The most look-alikes one answer shows or the API returns (a client may send any number).
MAX_K = 24
#: Seconds between two looks of an open page at the first build's progress.
WARMUP_POLL = 2.0
log = logging.getLogger("recommender.app")


def uploaded(path: str | None) -> str | None:
    """A path a client sent, if it is a file Gradio stored for an upload (its cache); otherwise refused.

    Gradio checks its upload folder only for file objects that carry `meta`; without it the path
    would reach the library as given (/etc/passwd, /dev/zero, any picture on the server). The same
    message answers every refused path, whether or not something is there.
    """
    if path is None:
        return None
    stored = guard.stored_file(path, get_upload_folder())
    if stored is None:
        raise gr.Error(guard.NOT_UPLOADED, print_exception=False)
    return str(stored)


def raw_uploads(image: gr.Image) -> gr.Image:
    """Make a gr.Image hand the raw upload (a stored upload's path, or bytes) to the library.

    Gradio's own preprocessing opens the file with Pillow and fails with a generic message on
    garbage; the library's loader says what is wrong instead. (Overriding on the instance, not
    in a subclass: Gradio writes a .pyi stub beside every component subclass. An event that returns
    an update for such a component, gr.update or gr.skip, makes Gradio rebuild it for that session
    from its constructor, without this override: no event does.)
    """

    def preprocess(payload: Any) -> str | bytes | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            try:
                return base64.b64decode(payload.url.split(",", 1)[1], validate=False)
            except (ValueError, IndexError):
                raise gr.Error("The picture could not be decoded (bad data URL).") from None
        return uploaded(payload.path)

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def raw_crops(editor: gr.ImageEditor) -> gr.ImageEditor:
    """Make a gr.ImageEditor hand only its composite, raw (bytes, or a stored upload's path), to the library.

    Gradio would decode the background, every layer and the composite with Pillow, unbounded,
    before the callback runs; the library's loader bounds decoding. The blobs the page sends
    (`accept_blobs`, kept in memory until the event that uses them) are limited to a few layers and
    the most recent few editors.
    """

    def preprocess(payload: Any) -> dict[str, Any] | None:
        if payload is None:
            return None
        blobs = editor.blob_storage.pop(payload.id, None) if payload.id is not None else None
        composite = blobs.composite if blobs is not None else payload.composite
        if composite is not None and not isinstance(composite, bytes):
            composite = uploaded(composite.path)
        return {"composite": composite}

    accept = editor.accept_blobs

    @functools.wraps(accept)
    def accept_blobs(data: Any) -> Any:
        index = data.data.get("index")
        if index not in (None, "", "null") and not (str(index).isdigit() and int(index) < EDITOR_LAYERS):
            raise HTTPException(status_code=400, detail=f"An editor has at most {EDITOR_LAYERS} layers.")
        return accept(data)

    accept_blobs._is_server_fn = True  # type: ignore[attr-defined]  # what Gradio's @server marks
    editor.preprocess = preprocess  # type: ignore[method-assign]
    editor.accept_blobs = accept_blobs  # type: ignore[method-assign]
    editor.blob_storage = guard.Recent(32)  # type: ignore[assignment]
    return editor


def refuse_url_inputs(demo: gr.Blocks) -> gr.Blocks:
    """Make every component refuse a file given as a URL instead of an upload.

    Gradio downloads such URLs on the server (any public host, with no size limit) before a
    callback sees them; this app fetches nothing that a user names, so pictures must be uploaded.
    """

    def refusing(move: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def wrapper(url_or_file_path: Any) -> Any:
            if "://" in str(url_or_file_path):
                raise gr.Error(
                    "Pictures are uploaded, never fetched from a URL: download it, then upload the file.",
                    print_exception=False,
                )
            return await move(url_or_file_path)

        return wrapper

    for block in demo.blocks.values():
        move = getattr(block, "async_move_resource_to_block_cache", None)
        if move is not None:
            block.async_move_resource_to_block_cache = refusing(move)  # type: ignore[method-assign]
    return demo


def visitor(session: str | None, request: Any) -> guard.Client:
    """Who sent an event, as the queue's policy counts visitors: its session and its network address."""
    return guard.Client(session or "", request.client.host if request is not None and request.client else "")


def _has_room(line: Any) -> bool:
    """Whether one of Gradio's event queues may start another event now (its concurrency limit)."""
    return line.concurrency_limit is None or line.current_concurrency < line.concurrency_limit


def share_work(demo: gr.Blocks, limits: guard.Limits) -> gr.Blocks:
    """Per-visitor caps and a fair order in Gradio's queue (the policy is `guard.Share`).

    Three methods of the queue are wrapped (gradio/queueing.py, 6.x): `push`, which every route
    that starts an event calls (queue/join, call/<api>), refuses a visitor over its caps with 429
    before the event exists; `get_events`, which the queue's loop calls for the next event to run,
    picks fairly instead of first come first served; `process_events`, which runs the picked
    event, tells the policy when it ends (done, failed or cancelled), for the time it took. Counts
    are read from the queue's own lists (each EventQueue.queue waiting, `active_jobs` running), so
    an event that ends or is cancelled before it runs stops counting with no bookkeeping here.
    """
    queue = demo._queue
    share = guard.Share(limits)
    push, get_events, process_events = queue.push, queue.get_events, queue.process_events

    def waiting() -> list[guard.Client]:
        return [
            visitor(e.session_hash, e.request) for q in queue.event_queue_per_concurrency_id.values() for e in q.queue
        ]

    def running() -> dict[str, guard.Client]:
        return {e._id: visitor(e.session_hash, e.request) for job in queue.active_jobs if job for e in job}

    async def admitted(body: Any, request: Any, username: str | None) -> Any:
        refusal = share.admit(visitor(body.session_hash, request), [*waiting(), *running().values()])
        if refusal:
            raise HTTPException(status_code=429, detail=refusal, headers={"Retry-After": "2"})
        return await push(body=body, request=request, username=username)

    def fair_next() -> Any:
        busy, asking = running(), waiting()
        ids = list(queue.event_queue_per_concurrency_id)
        random.shuffle(ids)  # as Gradio does, so that no event type goes first by its place
        for concurrency_id in ids:
            line = queue.event_queue_per_concurrency_id[concurrency_id]
            if not line.queue or not _has_room(line):
                continue
            if line.queue[0].fn.batch:  # none here; batches keep Gradio's own order
                return get_events()
            at = share.pick([visitor(e.session_hash, e.request) for e in line.queue], busy, asking=asking)
            if at is None:
                continue
            event = line.queue.pop(at)
            share.started(event._id, visitor(event.session_hash, event.request))
            return [event], False, concurrency_id
        return None

    async def timed(events: list[Any], *args: Any) -> None:
        try:
            await process_events(events, *args)
        finally:  # done, failed or cancelled
            for event in events:
                share.finished(event._id)

    queue.push = admitted  # type: ignore[method-assign]
    queue.get_events = fair_next  # type: ignore[method-assign]
    queue.process_events = timed  # type: ignore[method-assign]
    return demo


def upload_name(image: str | bytes | Image.Image) -> str:
    """What to call an upload in messages: its own file name (Gradio keeps it), not the server's temp path."""
    if isinstance(image, Image.Image):
        return "your crop"
    return Path(image).name if isinstance(image, str) else "upload"


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Library errors become a one-line gr.Error; anything else is logged and reported briefly."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except RecommenderError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"Unexpected error ({type(exc).__name__}); the server keeps running.", print_exception=False
            ) from None

    return wrapper


def service_of(request: gr.Request) -> Service:
    """The app's `Service`: kept on the Blocks that serves the request (`build_ui` puts it there)."""
    return request.request.app.get_blocks().service  # type: ignore[union-attr]


def links_html(label: str | None, found: tuple[list[Link], list[Link]] | str) -> str:
    """Related media as HTML: thumbnails the browser loads, links open in a new tab; or why there are none.

    `found` is (images, pages), or the one line saying why the web cannot be searched. The server
    never fetches the remote pages or pictures; every remote string is escaped.
    """
    if not label:
        return "<p class='links-note'>No name was recognised, so there is nothing to search the web for.</p>"
    if isinstance(found, str):
        return f"<p class='links-note' id='links-offline'>Related media unavailable: {html.escape(found)}</p>"
    images, pages = found
    a = 'target="_blank" rel="noopener noreferrer"'
    thumbs = "".join(
        f'<a href="{html.escape(link.url)}" {a} title="{html.escape(link.title)}">'
        f'<img src="{html.escape(link.thumbnail or link.image or "")}" alt="{html.escape(link.title)}" '
        f'loading="lazy" referrerpolicy="no-referrer" style="height:72px;margin:2px;border-radius:4px"></a>'
        for link in images
        if link.thumbnail or link.image
    )
    items = "".join(
        f'<li><a href="{html.escape(link.url)}" {a}>{html.escape(link.title)}</a> '
        f"<small>{html.escape(link.source)}</small></li>"
        for link in pages
    )
    if not thumbs and not items:
        return f"<p class='links-note'>No related media found for {html.escape(label)}.</p>"
    return f"<div id='links'><div>{thumbs}</div><ul>{items}</ul></div>"


def markdown_text(text: str) -> str:
    """Any text (a label, an error naming a file) escaped to read as written in Markdown."""
    return re.sub(r"([\\`*_\[\]<>|~#])", r"\\\1", text)


def answer_text(result: Identification, visit: Visit, index_name: str, crop: Image.Image | None) -> str:
    """The answer as Markdown: the headline, then how it was decided."""
    detail = (
        f"Score {result.score:.3f}; pictures scoring at least {result.threshold:.2f} count as in the "
        f"catalog (calibrated on **{index_name}**)."
    )
    if result.named_with:
        detail += f" Named through **{result.named_with}** ({result.named_score:.2f})."
    if crop is not None:
        detail += f" Searched the part you cropped ({crop.width}×{crop.height} px)."
    if visit.steering:  # the look-alikes only: the headline answers the picture itself
        detail += f" {visit.steering}."
    # Escaped: a label is any text a catalog gives (`__init__`, `*new*`, `<b>`) and must read as written.
    message = markdown_text(result.message)
    return f"### {message}\n\n{detail}"


def scores_html(ranked: list[tuple[str, float]]) -> str:
    """The scores panel: each name once, its similarity as a number and a bar (cosine, not a probability)."""
    if not ranked:
        return ""
    rows = "".join(
        f"<li><span class='score-name'>{rank}. {html.escape(name)}</span>"
        f"<span class='score-bar'><span style='width:{max(0.0, min(1.0, score)) * 100:.0f}%'></span></span>"
        f"<span class='score-value'>{score:.2f}</span></li>"
        for rank, (name, score) in enumerate(ranked, start=1)
    )
    return f"<div class='scores-title'>Similarity to your picture</div><ol class='scores'>{rows}</ol>"


#: What the selection line says when no look-alike is selected (before any, and after every new ranking).
CHOOSE = "Click a look-alike to see where it matches your picture."
#: What the answer's place says before the first question.
WELCOME = (
    "#### Drop in a picture on the left (or click an example)\n\nYou will see which catalog item it is, "
    "or that it comes from another universe, its closest look-alikes with their similarity, and where "
    "they match."
)
#: The look-alikes' title, unsteered.
LOOK_ALIKES = "Look-alikes (click one)"
#: The second picture's title when the answer is in the catalog.
ANOTHER = "Another picture of it"
#: The gallery's captions get a strip of their own below each picture, instead of covering its corner.
PAGE_CSS = """
#gallery .thumbnail-item img { padding-bottom: 1.9em; box-sizing: border-box; }
#gallery .caption-label { left: 0; right: 0; bottom: 0; max-width: 100%; text-align: center; opacity: 1;
  border: 0; border-radius: 0; }
"""
#: The scores panel's own style (scoped to it by Gradio): bars in the theme's colours, so that dark mode reads too.
SCORES_CSS = """
ol.scores { list-style: none; margin: 0; padding: 0; }
ol.scores li { display: grid; grid-template-columns: minmax(0, 1fr) 35% 3em; gap: .5em; align-items: center; }
.score-name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.score-bar { height: .6em; background: var(--neutral-200); border-radius: 3px; overflow: hidden; }
.score-bar span { display: block; height: 100%; background: var(--color-accent); }
.score-value { text-align: right; font-variant-numeric: tabular-nums; }
.scores-title { font-size: var(--text-sm); color: var(--body-text-color-subdued); margin-bottom: .3em; }
"""


def selection(chosen: Shown | None) -> tuple[Any, ...]:
    """(selection line, overlay, chosen, 👍, 👎, search-with): what the page shows for `chosen` (None: nothing)."""
    ready = gr.Button(interactive=chosen is not None)
    return (chosen.title if chosen else CHOOSE), None, chosen, ready, ready, ready


# ===================================================================================== callbacks
# Each is an event handler; the visitor's state comes in as a `Visit`, anything a client sends is
# checked by the library (index references are looked up through the asking session).


def respond(visit: Visit, request: gr.Request, k: int) -> tuple[Any, ...]:
    """Ask `visit`'s question and lay the answer out, in the order of `wire_searches`' `outputs`.

    Every new ranking clears the selection (and disables what needs one), so that feedback can
    only name an item the visitor sees selected in the gallery as it is now.
    """
    service = service_of(request)
    query = visit.query
    assert query is not None
    k = max(1, min(MAX_K, int(k)))
    visit, result = service.ask(visit, session=request.session_hash, k=k, name=upload_name(query))
    index = service.index(visit.index, session=request.session_hash)
    # Named for what it is: from another universe, the picture is of the closest item, not "of it".
    another = gr.Image(
        service.thumbnail(result.another_image) if result.another_image else None,
        label=ANOTHER if result.in_catalog else "The closest item, for comparison",
    )
    pictures = [(service.thumbnail(m.path), f"{m.label or m.item.id} · {m.score:.2f}") for m in result.matches]
    gallery = gr.Gallery(pictures, label=f"{visit.steering} (click one)" if visit.steering else LOOK_ALIKES)
    crop = query if isinstance(query, Image.Image) else None
    message = answer_text(result, visit, index.name, crop)
    reset = gr.Button(interactive=visit.steering is not None)
    shown = gr.Column(visible=True)
    return message, another, gallery, scores_html(result.ranked()), visit, *selection(None), reset, shown


def unanswered(message: str, index_name: str | None) -> tuple[Any, ...]:
    """`respond`'s outputs for a picture that could not be answered: its one line, nothing stale beside it."""
    cleared = (gr.Image(None, label=ANOTHER), gr.Gallery([], label=LOOK_ALIKES), "")
    return (
        f"### Not answered\n\n{markdown_text(message)}",
        *cleared,
        Visit(index=index_name),
        *selection(None),
        gr.Button(interactive=False),
        gr.Column(visible=False),  # the message alone: no empty panels beside it
    )


@user_errors
def answer(
    image: str | bytes | None, k: int, index_name: str | None, visit: Visit, request: gr.Request
) -> tuple[Any, ...]:
    if image is None:
        raise gr.Error("Upload, paste or take a picture first.")
    try:
        return respond(visit.asking(image, index_name), request, k)
    except RecommenderError as exc:  # a broken picture, a limit: said once, in the answer's place
        return unanswered(str(exc), index_name)


@user_errors
def answer_part(
    value: dict[str, Any] | None, k: int, index_name: str | None, visit: Visit, request: gr.Request
) -> tuple[Any, ...]:
    part = (value or {}).get("composite")
    if part is None:
        raise gr.Error("Search a picture first, then crop it here.")
    crop = service_of(request).picture(part, name="your crop", max_side=None)
    return respond(visit.asking(crop, index_name), request, k)


@user_errors
def search_with(
    chosen: Shown | None, k: int, index_name: str | None, visit: Visit, request: gr.Request
) -> tuple[Any, ...]:
    if chosen is None:
        raise gr.Error("Click a look-alike first.")
    return (service_of(request).thumbnail(chosen.path), *respond(visit.asking(chosen.path, index_name), request, k))


def steer(kind: Feedback) -> Callable[..., tuple[Any, ...]]:
    """The handler of a feedback button: the same question again, steered (`Visit.steered`)."""

    @user_errors
    def steer(visit: Visit, chosen: Shown | None, k: int, request: gr.Request) -> tuple[Any, ...]:
        if not visit.asked:
            raise gr.Error("Search a picture first.")
        if kind != "reset" and chosen is None:
            raise gr.Error("Click a look-alike first.")
        return respond(visit.steered(kind, chosen.id if chosen else None), request, k)

    return steer


@user_errors
def pick(visit: Visit, evt: gr.SelectData) -> tuple[Any, ...]:
    # Instant, so that 👍/👎 clicked right after apply to this item; the overlay follows.
    return selection(visit.shown(evt.index))


@user_errors
def where(visit: Visit, chosen: Shown | None, request: gr.Request) -> tuple[Any, ...]:
    if chosen is None:
        return gr.skip(), None
    shown = service_of(request).explain_match(visit, chosen.id, session=request.session_hash)
    if shown is None:
        return f"{chosen.title} (this backbone has no spatial features to show where)", None
    return f"{chosen.title}: warm colours mark the regions that match", shown


def related(visit: Visit, request: gr.Request) -> str:
    if not visit.asked:
        return ""
    if not visit.label:
        return links_html(None, "")
    try:
        found: tuple[list[Link], list[Link]] | str = service_of(request).related(
            visit.label, visit.index, session=request.session_hash
        )
    except WebSearchUnavailable as exc:
        found = str(exc)
    return links_html(visit.label, found)


def to_editor(visit: Visit, request: gr.Request) -> Image.Image | None:
    # None, never gr.skip(): an update makes Gradio rebuild the editor for this session from its
    # constructor, without raw_crops' bounded preprocessing.
    if visit.query is None:
        return None
    return service_of(request).picture(visit.query, max_side=1024)


@user_errors
def draw_matrix(count: str, index_name: str | None, request: gr.Request) -> tuple[Any, ...]:
    service = service_of(request)
    drawn = service.similarity(index_name, session=request.session_hash, features=count)
    name = service.index(index_name, session=request.session_hash).name
    return drawn.image, f"**{name}**: {len(drawn.labels)} items, similarities on {drawn.description}."


@user_errors
def plot_map(column: str, index_name: str | None, visit: Visit, request: gr.Request) -> Any:
    return service_of(request).catalog_figure(index_name, session=request.session_hash, color_by=column, visit=visit)


def columns(index_name: str | None, request: gr.Request) -> Any:
    names = service_of(request).columns(index_name, session=request.session_hash)
    return gr.Dropdown(choices=names, value="view" if "view" in names else "label")


@user_errors
def choose(name: str, request: gr.Request) -> tuple[Any, ...]:
    # The reference itself, checked here: a session's upload is only found among its own.
    service = service_of(request)
    index = service.index(name, session=request.session_hash)
    # By name, not `service.default`: that is not there while it is being built, and other indexes are.
    return (None if name == service.default_name else name), service.status(index)


def examples_for(index_state: str | None) -> Any:
    return gr.Dataset(visible=index_state is None)


def listing(request: gr.Request) -> Any:
    return gr.Dropdown(choices=service_of(request).choices(request.session_hash))


@user_errors
def build_upload(
    archive: str | None,
    name: str,
    request: gr.Request,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
) -> tuple[Any, ...]:
    if not archive:
        raise gr.Error("Choose a zip file first.")
    service, session = service_of(request), request.session_hash
    try:
        report = service.build_upload(archive, name, session=session, client_gone=client_gone())
    except BuildStopped as exc:
        log.info("a web build of %r stopped: %s", name, exc)
        raise
    lines = [
        f"Built **{report.name}**: {report.count} pictures ({report.embedded} embedded) in {report.seconds:.1f} s."
    ]
    if report.skipped:
        lines.append(f"\n{html.escape(report.skipped_summary())}:")
        lines += [f"- `{html.escape(s.where)}`: {html.escape(s.reason)}" for s in report.skipped[:20]]
        if len(report.skipped) > 20:
            lines.append(f"- ... and {len(report.skipped) - 20} more")
    return "\n".join(lines), gr.Dropdown(choices=service.choices(session), value=UPLOAD + report.name)


@user_errors
def adapt_upload(
    reference: str | None,
    request: gr.Request,
    progress: gr.Progress = gr.Progress(),  # noqa: B008
) -> tuple[Any, ...]:
    service, session = service_of(request), request.session_hash
    report = service.adapt_upload(
        reference,
        session=session,
        progress=lambda done, what: progress(done, desc=what),
        client_gone=client_gone(),
    )
    text = (
        f"Adapted **{html.escape(report.source)}** to its {report.pictures} pictures as **{html.escape(report.name)}** "
        f"in {report.embed_seconds + report.train_seconds:.0f} s; it is now the index searched."
    )
    return text, gr.Dropdown(choices=service.choices(session), value=UPLOAD + report.name)


def closed(request: gr.Request) -> None:
    service_of(request).close_session(request.session_hash)  # the page is gone: so are its uploads


@user_errors
def identify_api(image: str | None, request: gr.Request) -> str:
    """Identify a picture against the default catalog; returns the answer as text."""
    if not image:
        raise gr.Error("No picture given.")
    return service_of(request).identify(image, name=upload_name(image)).message


@user_errors
def identify_json(image: str | None, request: gr.Request) -> dict[str, Any]:
    """Which item of the default catalog the picture is: label, score, decision, another picture, look-alikes."""
    if not image:
        raise gr.Error("No picture given.")
    return service_of(request).answer(image, session=request.session_hash, name=upload_name(image))


@user_errors
def search_json(image: str | None, k: int, index: str | None, request: gr.Request) -> list[dict[str, Any]]:
    """The k catalog items that look most like the picture, in `index` (empty: the default catalog)."""
    if not image:
        raise gr.Error("No picture given.")
    service = service_of(request)
    count = max(1, min(MAX_K, int(k or 8)))
    return service.search(image, index=index or None, session=request.session_hash, k=count, name=upload_name(image))


# ===================================================================================== layout


class Page(SimpleNamespace):
    """The page's components by name, as the layout builders make them and the wiring connects them."""

    def add(self, **components: Any) -> None:
        self.__dict__.update(components)


def query_column(page: Page, examples: list[str]) -> None:
    """The question: the picture, how many look-alikes, the search button, a crop, examples."""
    query = raw_uploads(
        gr.Image(
            label="Your picture",
            sources=["upload", "clipboard", "webcam"],
            type="filepath",
            height=320,
            elem_id="query",
        )
    )
    k = gr.Slider(1, MAX_K, value=8, step=1, label="How many look-alikes")
    search = gr.Button("Find look-alikes", variant="primary", elem_id="search")
    with gr.Accordion("Search a part of the picture", open=False):
        # Filled with the query after each answer; no uploads here, so it only holds good pictures.
        editor = raw_crops(
            gr.ImageEditor(
                type="pil",
                sources=(),
                transforms=("crop",),
                brush=False,
                eraser=False,
                layers=False,
                label="Crop, then search",
                format="png",
                elem_id="crop",
            )
        )  # lossless: same pixels
        crop_search = gr.Button("Search this part", elem_id="crop-search")
    # Clicking an example loads it into the query; `wire_searches` then searches it, as an upload does.
    shown = (
        gr.Examples(examples=examples, inputs=query, label="Examples", cache_examples=False, elem_id="examples")
        if examples
        else None
    )
    page.add(query=query, k=k, search=search, editor=editor, crop_search=crop_search, examples=shown)


def answer_column(page: Page) -> None:
    """The answer: the message, another picture of it, scores, look-alikes, feedback, the overlay, links."""
    message = gr.Markdown(WELCOME, elem_id="answer")
    # Hidden until the first answer: no empty panels with placeholder icons before it (`respond`).
    with gr.Column(visible=False, elem_id="results") as results:
        answer_panels(page)
    page.add(message=message, results=results)


def answer_panels(page: Page) -> None:
    """What an answer shows below its message: another picture, scores, look-alikes, feedback, the overlay, links."""
    with gr.Row():
        another = gr.Image(label=ANOTHER, interactive=False, height=220, elem_id="another")
        scores = gr.HTML(label="Scores", elem_id="scores", css_template=SCORES_CSS, js_on_load=None)
    gallery = gr.Gallery(
        label=LOOK_ALIKES, columns=4, height="auto", allow_preview=False, object_fit="contain", elem_id="gallery"
    )
    with gr.Row():
        selected = gr.Markdown(CHOOSE, elem_id="selected")
    with gr.Row():  # off until there is something to act on (`selection`, `respond`)
        like = gr.Button("👍 More like this", elem_id="like", size="sm", interactive=False)
        dislike = gr.Button("👎 Less like this", elem_id="dislike", size="sm", interactive=False)
        reset = gr.Button("Reset feedback", elem_id="reset", size="sm", interactive=False)
        more = gr.Button("Search with this one", elem_id="more", size="sm", interactive=False)
    overlay = gr.Image(label="Where they match", interactive=False, elem_id="overlay")
    gr.Markdown("#### Related on the web")
    links = gr.HTML(elem_id="related")
    page.add(
        another=another,
        scores=scores,
        gallery=gallery,
        selected=selected,
        like=like,
        dislike=dislike,
        reset=reset,
        more=more,
        overlay=overlay,
        links=links,
    )


def catalog_tab(page: Page) -> None:
    """The catalog: its similarity matrix on a chosen number of features, and its map."""
    with gr.Tab("Catalog") as tab:
        gr.Markdown(
            "How alike the catalog's items are: cosine similarities of a representative set, ordered "
            "so that look-alikes form blocks. With fewer features (principal components of the whole "
            "catalog) only the broadest traits count; with all of them, the full picture. With 1 feature, "
            "only the one trait the catalog's pictures differ most in counts: any two are then alike (+1) "
            "or opposite (−1). Red is alike, white unrelated, blue opposite, on every setting."
        )
        features = gr.Radio(["1", "5", "10", "all"], value="all", label="Features", elem_id="features")
        matrix_note = gr.Markdown(elem_id="matrix-note")
        matrix = gr.Image(label="Similarity matrix", interactive=False, elem_id="matrix")
        gr.Markdown(
            "#### The catalog map\nEvery item placed by the catalog's two main axes of variation; "
            "your last picture is the star. Hover a point to see it."
        )
        with gr.Row():
            color_by = gr.Dropdown(["label"], value="label", label="Colour by", elem_id="color-by")
            draw_map = gr.Button("Draw the map", elem_id="draw-map")
        catalog_plot = gr.Plot(label="Catalog map", elem_id="catalog-map")
    page.add(
        catalog_tab=tab,
        features=features,
        matrix_note=matrix_note,
        matrix=matrix,
        color_by=color_by,
        draw_map=draw_map,
        catalog_plot=catalog_plot,
    )


def own_catalog_tab(page: Page, service: Service) -> None:
    """Another index to search, or a zip of pictures to build one from."""
    with gr.Tab("Your own catalog"):
        gr.Markdown(
            "Search another index from the index folder, or upload a zip of pictures (class folders, "
            "a flat folder, or a CSV with its pictures) to build one with the backbone in use."
        )
        with gr.Row():
            chooser = gr.Dropdown(
                choices=service.choices(),
                value=service.default_name,
                label="Index to search",
                allow_custom_value=False,
                elem_id="chooser",
            )
            refresh = gr.Button("Refresh list")
        with gr.Row():
            upload = gr.File(label="Zip of pictures", file_types=[".zip"], elem_id="upload")
            new_name = gr.Textbox(label="Name of the new index", value="my-catalog", elem_id="new-name")
        with gr.Row():
            build = gr.Button("Build index", elem_id="build")
            adapt = gr.Button("Adapt the chosen index to its pictures", elem_id="adapt")
        gr.Markdown(
            "Adapting learns, from the catalog's own pictures only, how its items differ from queries "
            "(recoloured, mirrored, cropped, other styles): a new index beside the plain one, about twice "
            "the build's time."
        )
        build_report = gr.Markdown(elem_id="build-report")
    page.add(
        chooser=chooser,
        refresh=refresh,
        upload=upload,
        new_name=new_name,
        build=build,
        adapt=adapt,
        build_report=build_report,
    )


def wire_searches(page: Page) -> None:
    """Every way of asking (search, upload, crop, more like this, feedback), each followed by links."""
    p = page
    chosen = [p.selected, p.overlay, p.chosen, p.like, p.dislike, p.more]  # `selection`'s
    outputs = [p.message, p.another, p.gallery, p.scores, p.visit, *chosen, p.reset, p.results]  # `respond`'s
    # The overlay of a look-alike being drawn is dropped by any new ranking (it would show a stale selection).
    shown = p.gallery.select(pick, inputs=p.visit, outputs=chosen, api_visibility="private", show_progress="hidden")
    drawn = shown.then(
        where,
        inputs=[p.visit, p.chosen],
        outputs=[p.selected, p.overlay],
        show_progress_on=p.overlay,
        api_visibility="private",
    )
    asked = [p.query, p.k, p.index_state, p.visit]
    searches = [
        (p.search.click, answer, asked, outputs),
        (p.query.upload, answer, asked, outputs),
        *([(p.examples.load_input_event.then, answer, asked, outputs)] if p.examples else []),
        (p.crop_search.click, answer_part, [p.editor, p.k, p.index_state, p.visit], outputs),
        (p.more.click, search_with, [p.chosen, p.k, p.index_state, p.visit], [p.query, *outputs]),
        (p.like.click, steer("like"), [p.visit, p.chosen, p.k], outputs),
        (p.dislike.click, steer("dislike"), [p.visit, p.chosen, p.k], outputs),
        (p.reset.click, steer("reset"), [p.visit, p.chosen, p.k], outputs),
    ]
    for event, fn, inputs, outs in searches:
        # Links come after the answer, so the answer never waits for the web.
        done = event(fn, inputs=inputs, outputs=outs, api_visibility="private", cancels=[drawn])
        done.success(related, inputs=p.visit, outputs=p.links, api_visibility="private")
        if fn in (answer, search_with):
            done.success(to_editor, inputs=p.visit, outputs=p.editor, api_visibility="private")


def wire_catalogs(page: Page) -> None:
    """The catalog tab's figures, the chooser, and web builds."""
    p = page
    p.catalog_tab.select(columns, inputs=p.index_state, outputs=p.color_by, api_visibility="private")
    p.draw_map.click(
        plot_map, inputs=[p.color_by, p.index_state, p.visit], outputs=p.catalog_plot, api_visibility="private"
    )
    for event in (p.catalog_tab.select, p.features.change):
        event(
            draw_matrix, inputs=[p.features, p.index_state], outputs=[p.matrix, p.matrix_note], api_visibility="private"
        )
    chosen = p.chooser.change(choose, inputs=p.chooser, outputs=[p.index_state, p.status], api_visibility="private")
    if p.examples:  # pictures of the default catalog: shown only while it is the one searched
        chosen.success(examples_for, inputs=p.index_state, outputs=p.examples.dataset, api_visibility="private")
    p.refresh.click(listing, outputs=p.chooser, api_visibility="private")
    # Builds queue apart from searches (one at a time, whoever asks), so that a search never waits for one.
    # The progress bar goes on the report, never over the chooser the visitor may be reading.
    for event, fn, inputs in (
        (p.build.click, build_upload, [p.upload, p.new_name]),
        (p.adapt.click, adapt_upload, [p.chooser]),
    ):
        event(
            fn,
            inputs=inputs,
            outputs=[p.build_report, p.chooser],
            show_progress_on=p.build_report,
            api_visibility="private",
            concurrency_id="build",
            concurrency_limit=1,
        )


def named_api() -> None:
    """The named API (hidden from the page): `identify` and `search` answer JSON; `identify_text` as before.

    `identify_text` is the first API's text answer, kept for scripts written against it (its
    first words name what the picture is).
    """
    image = raw_uploads(gr.Image(type="filepath", visible=False))
    k = gr.Number(value=8, precision=0, minimum=1, maximum=MAX_K, label="k (API)", visible=False)
    index = gr.Textbox(value="", label="Index name (API)", visible=False)
    answer, matches, text = gr.JSON(visible=False), gr.JSON(visible=False), gr.Textbox(visible=False)
    image.change(identify_json, inputs=image, outputs=answer, api_name="identify")
    image.change(search_json, inputs=[image, k, index], outputs=matches, api_name="search")
    image.change(identify_api, inputs=image, outputs=text, api_name="identify_text")


def watch_warmup(demo: gr.Blocks, page: Page, service: Service) -> None:
    """While the default index is being built, the status line follows its progress; then the timer stops.

    The layout is made once, during the build: a page opened later reads the status at load
    (and stops its timer at once).
    """
    timer = gr.Timer(WARMUP_POLL)

    def tick() -> tuple[str, gr.Timer]:
        return service.status(), gr.Timer(active=service.building)  # stops when done, or failed

    for event in (demo.load, timer.tick):
        # Its own queue, unlimited: a tick reads two numbers and never waits behind a search.
        event(
            tick,
            outputs=[page.status, timer],
            api_visibility="private",
            show_progress="hidden",
            concurrency_id="warmup",
            concurrency_limit=None,
        )


def build_ui(service: Service) -> gr.Blocks:
    """The page: query and answer, look-alikes, the catalog, and the user's own catalogs."""
    examples = sorted(str(p) for p in EXAMPLES.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    page = Page()
    # Files Gradio stored for requests (uploads, pictures it served) go once this old, looked for every tenth of it.
    cache_age = gradio_cache_seconds()
    with gr.Blocks(
        title="Look-alike: a visual recommender", delete_cache=(max(1, min(600, cache_age // 10)), cache_age)
    ) as demo:
        page.add(
            index_state=gr.State(None),  # the index this session searches; None = the default catalog
            visit=gr.State(Visit()),  # the question, its answer and the feedback (`session.Visit`)
            chosen=gr.State(None),
        )  # the look-alike clicked last (`session.Shown`)
        gr.Markdown("# Look-alike\nDrop in a picture: see which catalog item it is, or what looks most like it.")
        building = service.building  # read before the status: a build that ends in between is still watched
        page.add(status=gr.Markdown(service.status(), elem_id="status"))
        if building:
            watch_warmup(demo, page, service)
        if service.choice.notice:
            gr.Markdown(f"> {service.choice.notice}", elem_id="notice")
        with gr.Tab("Look-alikes"), gr.Row():
            with gr.Column(scale=1):
                query_column(page, examples)
            with gr.Column(scale=2):
                answer_column(page)
        catalog_tab(page)
        own_catalog_tab(page, service)
        wire_searches(page)
        wire_catalogs(page)
        demo.unload(closed)
        named_api()
    demo.service = service  # type: ignore[attr-defined]  # what `service_of` finds for every request
    return refuse_url_inputs(demo)


def client_gone() -> Callable[[], bool]:
    """For the event running in this thread: a check of whether its client has gone away.

    Gradio never interrupts a running function: when the client's event stream closes
    (`routes.queue_data_helper` -> `Queue.clean_events`) it only marks the event `alive = False`,
    and `/cancel` ends the task awaiting it, which drops the event from `event_ids_to_events`. A
    long build asks this between pictures. The event's id is in `gradio.context.LocalContext`,
    set in the worker thread by `utils.get_function_with_locals` (as for `gr.Progress`).
    """
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:  # called outside an event: nobody to lose
        return lambda: False

    def gone() -> bool:
        event = queue.event_ids_to_events.get(event_id)
        return event is None or not event.alive

    return gone


def announce_ready(service: Service) -> None:
    """Say in the terminal when the default index can be searched (tests and benchmarks wait for this line)."""
    if service.wait_ready():
        log.info("ready in %.1f s: %s", service.startup_seconds, service.status().replace("**", ""))
    else:
        log.error("not ready: %s", service.warmup.line())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Start the look-alike web app.")
    parser.add_argument("--host", default=None, help="Address to listen on [env GRADIO_SERVER_NAME; 127.0.0.1].")
    parser.add_argument("--port", type=int, default=None, help="Port [env GRADIO_SERVER_PORT; 7860].")
    parser.add_argument("--share", action="store_true", help="Also serve through a public Gradio share link.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    limit_malloc_arenas()  # before the server's threads start
    keep_freed_buffers()  # CPU embedding a quarter faster: activations are not re-faulted at every layer
    # The page is served at once; the default index (its first build: a minute or more) is built behind it.
    service = Service(background=not build_before_serving())
    service.sweep_every(min(300.0, service.limits.ttl / 4))
    if not service.ready:
        log.info("serving the page now; %s", service.warmup.line())
    threading.Thread(target=announce_ready, args=(service,), name="recommender-announce", daemon=True).start()
    workers = max(1, (os.cpu_count() or 2) // 2)
    limits = guard.Limits.from_env(workers=workers)
    trusted = guard.forwarded_allow_ips(os.environ)
    if trusted:  # read by uvicorn when launch() starts it
        os.environ["FORWARDED_ALLOW_IPS"] = trusted
    # Gradio recomputes a pandas summary of up to 10,000 past events after every event, for its
    # /monitoring page (unused here): 30-50 ms of CPU each, more than an answer costs.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    demo = build_ui(service)
    # api_open=False: no event runs outside the queue (Gradio opens /run/<api> off Spaces).
    demo.queue(default_concurrency_limit=workers, max_size=limits.queue_size, api_open=False)
    share_work(demo, limits)
    edge = Middleware(guard.EdgeGuard, limits=limits, refuse=MultiPartException)  # type: ignore[arg-type]
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=limits.upload_bytes,
        head=f"<script>{HOVER_SCRIPT.replace('ROOT', repr('#catalog-map'))}</script>",
        css=PAGE_CSS,
        allowed_paths=[str(EXAMPLES)],
        show_error=True,
        state_session_capacity=limits.sessions,
        app_kwargs={"middleware": [edge]},
    )


if __name__ == "__main__":
    main()
