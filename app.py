"""The Gradio web app: layout and callbacks only; every answer comes from the `recommender` library."""

from __future__ import annotations

import argparse
import base64
import functools
import html
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import HTTPException
from gradio.route_utils import MultiPartException
from gradio.utils import get_upload_folder
from PIL import Image
from starlette.middleware import Middleware

from recommender import RecommenderError, guard, load_image
from recommender.errors import BuildStopped, WebSearchUnavailable
from recommender.explain import HOVER_SCRIPT, SimilarityMatrix, catalog_heatmap, explain, map_figure
from recommender.memory import keep_freed_buffers, limit_malloc_arenas
from recommender.recommend import embed_query
from recommender.service import Service
from recommender.settings import gradio_cache_seconds
from recommender.uploads import UPLOAD
from recommender.websearch import search_media

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "assets" / "examples"
THUMBNAIL = 256
#: Layers an editor value may have (ours has none; Gradio would grow a list to any index a client names).
EDITOR_LAYERS = 4
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
    in a subclass: Gradio writes a .pyi stub beside every component subclass.)
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
                raise gr.Error("Pictures are uploaded, never fetched from a URL: download it, then upload the file.",
                               print_exception=False)
            return await move(url_or_file_path)

        return wrapper

    for block in demo.blocks.values():
        move = getattr(block, "async_move_resource_to_block_cache", None)
        if move is not None:
            block.async_move_resource_to_block_cache = refusing(move)  # type: ignore[method-assign]
    return demo


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

    def visitor(session: str | None, request: Any) -> guard.Client:
        return guard.Client(session or "", request.client.host if request is not None and request.client else "")

    def waiting() -> list[guard.Client]:
        return [visitor(e.session_hash, e.request) for q in queue.event_queue_per_concurrency_id.values()
                for e in q.queue]

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
            if not line.queue or (line.concurrency_limit is not None
                                  and line.current_concurrency >= line.concurrency_limit):
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


def title_of(match: dict[str, Any]) -> str:
    """A look-alike's name and score, as the selection line shows them."""
    return f"**{match['label']}** · {match['score']:.2f}"


def upload_name(image: str | bytes) -> str:
    """What to call an upload in messages: its own file name (Gradio keeps it), not the server's temp path."""
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
            raise gr.Error(f"Unexpected error ({type(exc).__name__}); the server keeps running.",
                           print_exception=False) from None

    return wrapper


def links_html(label: str | None, domain: str | None) -> str:
    """Related media for a recognised name as HTML: thumbnails the browser loads, links open in a new tab.

    The server never fetches the remote pages or pictures; a web that cannot be reached is one line.
    """
    if not label:
        return "<p class='links-note'>No name was recognised, so there is nothing to search the web for.</p>"
    try:
        images = search_media(label, kind="image", limit=6, domain=domain or "")
        pages = search_media(label, kind="page", limit=6, domain=domain or "")
    except WebSearchUnavailable as exc:
        return f"<p class='links-note' id='links-offline'>Related media unavailable: {html.escape(str(exc))}</p>"
    a = 'target="_blank" rel="noopener noreferrer"'
    thumbs = "".join(
        f'<a href="{html.escape(link.url)}" {a} title="{html.escape(link.title)}">'
        f'<img src="{html.escape(link.thumbnail or link.image or "")}" alt="{html.escape(link.title)}" '
        f'loading="lazy" referrerpolicy="no-referrer" style="height:72px;margin:2px;border-radius:4px"></a>'
        for link in images if link.thumbnail or link.image
    )
    items = "".join(
        f'<li><a href="{html.escape(link.url)}" {a}>{html.escape(link.title)}</a> '
        f'<small>{html.escape(link.source)}</small></li>' for link in pages
    )
    if not thumbs and not items:
        return f"<p class='links-note'>No related media found for {html.escape(label)}.</p>"
    return f"<div id='links'><div>{thumbs}</div><ul>{items}</ul></div>"


def similarity_picture(index: Any, features: str) -> SimilarityMatrix:
    """The catalog heatmap, drawn once per index version and feature count."""
    return _similarity_picture(index, features, index.version)


@functools.lru_cache(maxsize=16)
def _similarity_picture(index: Any, features: str, version: str) -> SimilarityMatrix:
    return catalog_heatmap(index, features=features)


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


@functools.lru_cache(maxsize=512)
def thumbnail(path: str) -> Image.Image:
    """A small copy of a catalog picture: served from Gradio's cache, never from the catalog's folder."""
    return load_image(path, max_side=THUMBNAIL)  # a huge catalog picture is decoded small, within the memory budget


def build_ui(service: Service) -> gr.Blocks:
    """The page: query and answer, look-alikes, the catalog, and the user's own catalogs."""
    examples = sorted(str(p) for p in EXAMPLES.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))

    @user_errors
    def answer(image: str | bytes | Image.Image | None, k: int, index_name: str | None, request: gr.Request, *,
               liked: list[str] | None = None, disliked: list[str] | None = None) -> tuple[Any, ...]:
        if image is None:
            raise gr.Error("Upload, paste or take a picture first.")
        liked, disliked = liked or [], disliked or []
        session = request.session_hash
        result = service.identify(image, index=index_name, session=session, k=int(k), name=upload_name(image),
                                  liked=liked, disliked=disliked)
        index = service.index(index_name, session=session)
        another = thumbnail(str(result.another_image)) if result.another_image else None
        gallery = [(thumbnail(str(m.path)), f"{m.label or m.item.id} · {m.score:.2f}") for m in result.matches]
        scores = {f"{m.rank}. {m.label or m.item.id}": max(0.0, m.score) for m in result.matches}
        headline = "### " + result.message
        detail = (f"Score {result.score:.3f}; pictures scoring at least {result.threshold:.2f} count as in the "
                  f"catalog (calibrated on **{index.name}**).")
        if result.named_with:
            detail += f" Named through **{result.named_with}** ({result.named_score:.2f})."
        if isinstance(image, Image.Image):
            detail += f" Searched the part you cropped ({image.width}×{image.height} px)."
        if liked or disliked:
            detail += f" Steered by your feedback: {len(liked)} more like, {len(disliked)} less like."
        state = {"query": image, "index": index_name or index.name, "label": result.label, "liked": liked,
                 "disliked": disliked,
                 "matches": [{"id": m.item.id, "path": str(m.path), "label": m.label or m.item.id, "score": m.score}
                             for m in result.matches]}
        return f"{headline}\n\n{detail}", another, gallery, scores, state

    # Files Gradio stored for requests (uploads, pictures it served) go once this old, looked for every tenth of it.
    cache_age = gradio_cache_seconds()
    with gr.Blocks(title="Look-alike: a visual recommender",
                   delete_cache=(max(1, min(600, cache_age // 10)), cache_age)) as demo:
        index_state = gr.State(None)  # the index this session searches; None = the default catalog
        result_state = gr.State({})
        gr.Markdown("# Look-alike\nDrop in a picture: see which catalog item it is, or what looks most like it.")
        status = gr.Markdown(service.status())
        if service.choice.notice:
            gr.Markdown(f"> **Offline mode.** {service.choice.notice}", elem_id="notice")
        with gr.Tab("Look-alikes"):
            with gr.Row():
                with gr.Column(scale=1):
                    query = raw_uploads(gr.Image(label="Your picture", sources=["upload", "clipboard", "webcam"],
                                                 type="filepath", height=320, elem_id="query"))
                    k = gr.Slider(1, 24, value=8, step=1, label="How many look-alikes")
                    search = gr.Button("Find look-alikes", variant="primary", elem_id="search")
                    with gr.Accordion("Search a part of the picture", open=False):
                        # Filled with the query after each answer; no uploads here, so it only holds good pictures.
                        editor = raw_crops(gr.ImageEditor(type="pil", sources=(), transforms=("crop",), brush=False,
                                                          eraser=False, layers=False, label="Crop, then search",
                                                          format="png", elem_id="crop"))  # lossless: same pixels
                        crop_search = gr.Button("Search this part", elem_id="crop-search")
                    if examples:
                        gr.Examples(examples=examples, inputs=query, label="Examples")
                with gr.Column(scale=2):
                    message = gr.Markdown(elem_id="answer")
                    with gr.Row():
                        another = gr.Image(label="Another picture of it", interactive=False, height=220,
                                           elem_id="another")
                        scores = gr.Label(label="Scores", num_top_classes=8, elem_id="scores")
                    gallery = gr.Gallery(label="Look-alikes (click one)", columns=4, height="auto",
                                         allow_preview=False, elem_id="gallery")
                    with gr.Row():
                        selected = gr.Markdown("Click a look-alike to see where it matches your picture.",
                                               elem_id="selected")
                    with gr.Row():
                        like = gr.Button("👍 More like this", elem_id="like", size="sm")
                        dislike = gr.Button("👎 Less like this", elem_id="dislike", size="sm")
                        reset = gr.Button("Reset feedback", elem_id="reset", size="sm")
                        more = gr.Button("Search with this one", elem_id="more", size="sm")
                    overlay = gr.Image(label="Where they match", interactive=False, elem_id="overlay")
                    gr.Markdown("#### Related on the web")
                    links = gr.HTML(elem_id="related")
        with gr.Tab("Catalog") as catalog_tab:
            gr.Markdown("How alike the catalog's items are: cosine similarities of a representative set, ordered "
                        "so that look-alikes form blocks. With fewer features (principal components of the whole "
                        "catalog) only the broadest traits count; with all of them, the full picture.")
            features = gr.Radio(["1", "5", "10", "all"], value="all", label="Features", elem_id="features")
            matrix_note = gr.Markdown(elem_id="matrix-note")
            matrix = gr.Image(label="Similarity matrix", interactive=False, elem_id="matrix")
            gr.Markdown("#### The catalog map\nEvery item placed by the catalog's two main axes of variation; "
                        "your last picture is the star. Hover a point to see it.")
            with gr.Row():
                color_by = gr.Dropdown(["label"], value="label", label="Colour by", elem_id="color-by")
                draw_map = gr.Button("Draw the map", elem_id="draw-map")
            catalog_plot = gr.Plot(label="Catalog map", elem_id="catalog-map")
        with gr.Tab("Your own catalog"):
            gr.Markdown("Search another index from the index folder, or upload a zip of pictures (class folders, "
                        "a flat folder, or a CSV with its pictures) to build one with the backbone in use.")
            with gr.Row():
                chooser = gr.Dropdown(choices=service.choices(), value=service.default.name, label="Index to search",
                                      allow_custom_value=False, elem_id="chooser")
                refresh = gr.Button("Refresh list")
            with gr.Row():
                upload = gr.File(label="Zip of pictures", file_types=[".zip"], elem_id="upload")
                new_name = gr.Textbox(label="Name of the new index", value="my-catalog", elem_id="new-name")
            build = gr.Button("Build index", elem_id="build")
            build_report = gr.Markdown(elem_id="build-report")

        def related(state: dict[str, Any], request: gr.Request) -> str:
            index = service.index(state.get("index"), session=request.session_hash) if state else None
            return links_html(state.get("label") if state else None, index.domain if index else None)

        def to_editor(state: dict[str, Any]) -> Image.Image | None:
            return load_image(state["query"], max_side=1024) if state.get("query") is not None else gr.skip()

        @user_errors
        def answer_part(value: dict[str, Any] | None, k: int, index_name: str | None,
                        request: gr.Request) -> tuple[Any, ...]:
            part = (value or {}).get("composite")
            if part is None:
                raise gr.Error("Search a picture first, then crop it here.")
            return answer(load_image(part, name="your crop"), k, index_name, request)

        @user_errors
        def pick(state: dict[str, Any], evt: gr.SelectData) -> tuple[Any, ...]:
            # Instant, so that 👍/👎 clicked right after apply to this item; the overlay follows.
            match = state["matches"][evt.index]
            return title_of(match), None, match

        @user_errors
        def where(state: dict[str, Any], match: dict[str, Any] | None, request: gr.Request) -> tuple[Any, ...]:
            if not match:
                return gr.skip(), None
            index = service.index(state["index"], session=request.session_hash)
            backbone = service.backbone_for(index)
            title = title_of(match)
            if backbone.spatial_part is None:
                return f"{title} (this backbone has no spatial features to show where)", None
            shown = explain(state["query"], match["id"], index, backbone=backbone)
            return f"{title}: warm colours mark the regions that match", shown.image

        @user_errors
        def search_with(match: dict[str, Any] | None, k: int, index_name: str | None,
                        request: gr.Request) -> tuple[Any, ...]:
            if not match:
                raise gr.Error("Click a look-alike first.")
            return (thumbnail(match["path"]), *answer(match["path"], k, index_name, request))

        def feedback(kind: str) -> Callable[..., tuple[Any, ...]]:
            @user_errors
            def steer(state: dict[str, Any], match: dict[str, Any] | None, k: int,
                      request: gr.Request) -> tuple[Any, ...]:
                if not state or state.get("query") is None:
                    raise gr.Error("Search a picture first.")
                liked, disliked = [], []
                if kind != "reset":
                    if not match:
                        raise gr.Error("Click a look-alike first.")
                    # An item is liked or disliked, never both: the latest click wins.
                    liked = [i for i in state.get("liked", []) if i != match["id"]]
                    disliked = [i for i in state.get("disliked", []) if i != match["id"]]
                    (liked if kind == "like" else disliked).append(match["id"])
                return answer(state["query"], k, state["index"], request, liked=liked, disliked=disliked)

            return steer

        outputs = [message, another, gallery, scores, result_state]
        chosen = gr.State(None)  # the look-alike clicked last
        searches = [
            (search.click, answer, [query, k, index_state], outputs),
            (query.upload, answer, [query, k, index_state], outputs),
            (crop_search.click, answer_part, [editor, k, index_state], outputs),
            (more.click, search_with, [chosen, k, index_state], [query, *outputs]),
            (like.click, feedback("like"), [result_state, chosen, k], outputs),
            (dislike.click, feedback("dislike"), [result_state, chosen, k], outputs),
            (reset.click, feedback("reset"), [result_state, chosen, k], outputs),
        ]
        for event, fn, inputs, outs in searches:
            # Links come after the answer, so the answer never waits for the web.
            done = event(fn, inputs=inputs, outputs=outs, api_visibility="private")
            done.success(related, inputs=result_state, outputs=links, api_visibility="private")
            if fn in (answer, search_with):
                done.success(to_editor, inputs=result_state, outputs=editor, api_visibility="private")
        gallery.select(pick, inputs=result_state, outputs=[selected, overlay, chosen], api_visibility="private",
                       show_progress="hidden").then(where, inputs=[result_state, chosen], outputs=[selected, overlay],
                                                    show_progress_on=overlay, api_visibility="private")

        @user_errors
        def draw_matrix(count: str, index_name: str | None, request: gr.Request) -> tuple[Any, ...]:
            index = service.index(index_name, session=request.session_hash)
            drawn = similarity_picture(index, count)
            return drawn.image, f"**{index.name}**: {len(drawn.labels)} items, similarities on {drawn.description}."

        @user_errors
        def plot_map(column: str, index_name: str | None, state: dict[str, Any], request: gr.Request) -> Any:
            index = service.index(index_name, session=request.session_hash)
            query = None
            if state and state.get("query") is not None and state.get("index") == (index_name or index.name):
                query = embed_query(state["query"], index, backbone=service.backbone_for(index))
            return map_figure(index, color_by=column or "label", query=query)

        def columns(index_name: str | None, request: gr.Request) -> Any:
            index = service.index(index_name, session=request.session_hash)
            names = ["label", *sorted({k for item in index.items[:1000] for k in item.metadata})]
            return gr.Dropdown(choices=names, value="view" if "view" in names else "label")

        catalog_tab.select(columns, inputs=index_state, outputs=color_by, api_visibility="private")
        draw_map.click(plot_map, inputs=[color_by, index_state, result_state], outputs=catalog_plot,
                       api_visibility="private")

        for event in (catalog_tab.select, features.change):
            event(draw_matrix, inputs=[features, index_state], outputs=[matrix, matrix_note],
                  api_visibility="private")

        @user_errors
        def choose(name: str, request: gr.Request) -> tuple[Any, ...]:
            # The reference itself, checked here: a session's upload is only found among its own.
            index = service.index(name, session=request.session_hash)
            return (None if index is service.default else name), service.status(index)

        def listing(request: gr.Request) -> Any:
            return gr.Dropdown(choices=service.choices(request.session_hash))

        chooser.change(choose, inputs=chooser, outputs=[index_state, status], api_visibility="private")
        refresh.click(listing, outputs=chooser, api_visibility="private")

        @user_errors
        def build_upload(archive: str | None, name: str, request: gr.Request,
                         progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
                         ) -> tuple[Any, ...]:
            if not archive:
                raise gr.Error("Choose a zip file first.")
            session = request.session_hash
            try:
                report = service.build_upload(archive, name, session=session, client_gone=client_gone())
            except BuildStopped as exc:
                log.info("a web build of %r stopped: %s", name, exc)
                raise
            lines = [f"Built **{report.name}**: {report.count} pictures ({report.embedded} embedded) in "
                     f"{report.seconds:.1f} s."]
            if report.skipped:
                lines.append(f"\n{len(report.skipped)} skipped:")
                lines += [f"- `{html.escape(s.where)}`: {html.escape(s.reason)}" for s in report.skipped[:20]]
                if len(report.skipped) > 20:
                    lines.append(f"- ... and {len(report.skipped) - 20} more")
            return "\n".join(lines), gr.Dropdown(choices=service.choices(session), value=UPLOAD + report.name)

        # Builds queue apart from searches (one at a time, whoever asks), so that a search never waits for one.
        build.click(build_upload, inputs=[upload, new_name], outputs=[build_report, chooser], api_visibility="private",
                    concurrency_id="build", concurrency_limit=1)

        def closed(request: gr.Request) -> None:
            service.close_session(request.session_hash)  # the page is gone: so are its uploads

        demo.unload(closed)

        # The named API: one picture in, the answer's text out (its first words name what it is).
        api_image = raw_uploads(gr.Image(type="filepath", visible=False))
        api_text = gr.Textbox(visible=False)

        @user_errors
        def identify_api(image: str | None) -> str:
            """Identify a picture against the default catalog; returns the answer as text."""
            if not image:
                raise gr.Error("No picture given.")
            return service.identify(image, name=upload_name(image)).message

        api_image.change(identify_api, inputs=api_image, outputs=api_text, api_name="identify")
    return refuse_url_inputs(demo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Start the look-alike web app.")
    parser.add_argument("--host", default=None, help="Address to listen on [env GRADIO_SERVER_NAME; 127.0.0.1].")
    parser.add_argument("--port", type=int, default=None, help="Port [env GRADIO_SERVER_PORT; 7860].")
    parser.add_argument("--share", action="store_true", help="Also serve through a public Gradio share link.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    limit_malloc_arenas()  # before the server's threads start
    keep_freed_buffers()  # CPU embedding a quarter faster: activations are not re-faulted at every layer
    service = Service()
    service.sweep_every(min(300.0, service.limits.ttl / 4))
    log.info("ready in %.1f s: %s", service.startup_seconds, service.status().replace("**", ""))
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
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=limits.upload_bytes,
                head=f"<script>{HOVER_SCRIPT.replace('ROOT', repr('#catalog-map'))}</script>",
                allowed_paths=[str(EXAMPLES)], show_error=True, state_session_capacity=limits.sessions,
                app_kwargs={"middleware": [edge]})


if __name__ == "__main__":
    main()
