"""The command line: parses flags, calls the library, prints results; errors become one line and exit 1."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import settings
from .backbones import FITS, POOLINGS, PRECISIONS, registered_backbones
from .errors import RecommenderError
from .memory import keep_freed_buffers
from .version import __version__

# Items listed individually before a build report summarises the rest.
_SHOW_SKIPS = 5


class _Group(click.Group):
    """Turns library errors into `Error: <one line>` and exit status 1, unless --debug asks for the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except RecommenderError as exc:
            if _debug(ctx):
                raise
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:
            sys.stderr.close()  # output piped into `head`: nothing left to say
            raise click.exceptions.Exit(1) from None
        except Exception as exc:
            if _debug(ctx):
                raise
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''} "
                "(run with --debug for the traceback)"
            ) from None


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.obj or {}).get("debug"))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--index-dir",
    type=click.Path(file_okay=False),
    default=None,
    help=f"Folder of built indexes [env {settings.ENV_INDEX_DIR}; default: index/ in the repository].",
)
@click.option(
    "--max-decode-mb",
    type=float,
    default=None,
    metavar="MB",
    help="Memory all pictures being decoded at once may hold; a picture that needs more is refused "
    f"[env {settings.ENV_MAX_DECODE_MB}; default: {settings.DEFAULT_MAX_DECODE_MB}].",
)
@click.option("--debug", is_flag=True, envvar="RECOMMENDER_DEBUG", help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="recommender")
@click.pass_context
def cli(ctx: click.Context, index_dir: str | None, max_decode_mb: float | None, debug: bool) -> None:
    """Index catalogs of pictures and find the items that look most alike."""
    keep_freed_buffers()  # a quarter faster CPU embedding (see memory.py); a MALLOC_* the user set wins
    ctx.obj = {"debug": debug, "index_dir": settings.index_dir(index_dir)}
    if max_decode_mb is not None:
        from .images import set_max_decode_mb

        set_max_decode_mb(max_decode_mb)


def _index_option(func: Any) -> Any:
    return click.option(
        "--index",
        "index_name",
        default=None,
        metavar="NAME",
        help=f"Index to use [env {settings.ENV_INDEX}; default: {settings.DEFAULT_INDEX}].",
    )(func)


def _remember_index_dir(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:  # after the verb it wins over the one given before it
        ctx.ensure_object(dict)["index_dir"] = settings.index_dir(value)


def _index_dir_option(func: Any) -> Any:
    """--index-dir after any verb too (`recommender search q.jpg --index-dir DIR`), not only before it."""
    return click.option(
        "--index-dir",
        type=click.Path(file_okay=False),
        default=None,
        expose_value=False,
        callback=_remember_index_dir,
        help=f"Folder of built indexes [env {settings.ENV_INDEX_DIR}].",
    )(func)


def _json_option(what: str) -> Any:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def _quiet_option(func: Any) -> Any:
    return click.option(
        "--quiet", "-q", is_flag=True, help="No progress bar (a build of the default index shows one)."
    )(func)


def _deprecated(new: str) -> Any:
    """A callback for an old flag name kept as a hidden alias: it still works, with a note on stderr."""

    def warn(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.COMMANDLINE:
            click.echo(f"note: {param.opts[0]} is deprecated here; use {new}", err=True)
        return value

    return warn


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _check_picture(image: str) -> bytes:
    """The query's bytes once its header is sound: a bad file is refused before any model loads."""
    from .images import check_image

    return check_image(image)


@cli.command("index")
@click.argument("source", type=click.Path(exists=False))
@click.option("--name", required=True, help="Name of the index (a folder under the index folder).")
@click.option(
    "--model",
    default=None,
    metavar="M",
    help=f"Backbone: {', '.join(registered_backbones())}, A+B for a hybrid, a hub id or a local folder "
    f"[env {settings.ENV_MODEL}; default: {settings.DEFAULT_MODEL}].",
)
@click.option(
    "--revision",
    default=None,
    metavar="REV",
    help=f"Hub commit, branch or tag of the weights; the index records the commit [env {settings.ENV_MODEL_REVISION}].",
)
@click.option("--weights", default=None, metavar="W", help="Hybrid weights, e.g. 0.7,0.3.")
@click.option("--pooling", type=click.Choice(POOLINGS), default="cls", show_default=True, help="Global descriptor.")
@click.option("--image-size", type=int, default=224, show_default=True, help="Input size (multiple of patch).")
@click.option(
    "--fit",
    type=click.Choice(FITS),
    default="pad",
    show_default=True,
    help="pad: whole picture on a white square; crop: centre square.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Index only the first N items.")
@click.option(
    "--image-column", default=None, metavar="C", help="CSV or dataset column with the pictures [default: found]."
)
@click.option(
    "--label-column", default=None, metavar="C", help="CSV or dataset column with the labels [default: found]."
)
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default="float16",
    show_default=True,
    help="Storage precision of the embeddings.",
)
@click.option(
    "--domain",
    default=None,
    metavar="WORD",
    help='What the items are, for answers and web searches (e.g. "Pokémon", "watch").',
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help=f"auto: bf16 where it is native and agrees with fp32; fp32: exact [env {settings.ENV_PRECISION}].",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Pictures per model call.")
@click.option(
    "--store",
    default=None,
    metavar="STORE",
    help="Where the vectors go: local (files, exact search), milvus-lite (a database in the index "
    "folder), milvus-lite:PATH.db, or milvus://HOST:PORT; add ?index=IVF_FLAT for IVF instead of "
    f"HNSW [env {settings.ENV_STORE}; default: local].",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Embed on Ray Data: alone, a local Ray (or the cluster in RAY_ADDRESS); with an address, "
    "that cluster (e.g. ray://HEAD:10001). Put it after SOURCE.",
)
@click.option(
    "--actors",
    type=click.IntRange(min=1),
    default=None,
    help="Model replicas with --ray [default: one per GPU, else one per 4 CPUs].",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_json_option("a summary of what was written")
@_index_dir_option
@click.pass_context
def index_cmd(
    ctx: click.Context,
    source: str,
    name: str,
    model: str | None,
    revision: str | None,
    weights: str | None,
    pooling: str,
    image_size: int,
    fit: str,
    limit: int | None,
    image_column: str | None,
    label_column: str | None,
    dtype: str,
    domain: str | None,
    precision: str | None,
    batch_size: int | None,
    store: str | None,
    ray_address: str | None,
    actors: int | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Index the pictures in SOURCE: class folders, a flat folder, a CSV, or a Hugging Face dataset.

    A dataset is hf://datasets/OWNER/NAME[:split] or a local folder of one (save_to_disk output,
    an imagefolder with metadata.csv or metadata.jsonl, parquet files); `pip install
    'recommender[hf]'`. An interrupted build picks up where it stopped when run again with the same
    backbone.
    """
    from .backbones import load_backbone
    from .build import BuildConfig, RayExecutor, build_index
    from .index import StoreConfig

    config = StoreConfig.parse(settings.store(store))  # a bad --store fails before the model loads
    if actors is not None and ray_address is None:
        raise click.BadParameter("only applies with --ray", param_hint="--actors")
    backbone = load_backbone(
        model,
        weights=weights,
        pooling=pooling,
        image_size=image_size,
        fit=fit,
        precision=precision,
        revision=settings.model_revision(revision),
    )
    executor = RayExecutor(ray_address or None, actors=actors) if ray_address is not None else None
    report = build_index(
        source,
        name=name,
        backbone=backbone,
        config=BuildConfig(
            limit=limit,
            image_column=image_column,
            label_column=label_column,
            index_dir=ctx.obj["index_dir"],
            dtype=dtype,
            domain=domain,
            batch_size=batch_size,
            progress=not quiet,
            store=config,
            executor=executor,
        ),
    )
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        _echo_json(report.to_dict())
        return
    for skip in report.skipped[:_SHOW_SKIPS]:
        click.echo(f"skipped {skip}", err=True)
    if len(report.skipped) > _SHOW_SKIPS:
        every = f" (every one in {report.skipped_file})" if report.skipped_file else ""
        click.echo(f"... and {len(report.skipped) - _SHOW_SKIPS} more skipped{every}", err=True)
    copies = f", {report.copies} the same picture as another label's" if report.copies else ""
    speed = f" ({report.images_per_second:.1f} images/s)" if report.embedded else ""
    resumed = f" ({report.resumed} from an interrupted build)" if report.resumed else ""
    where = "" if report.store == "local" else f", vectors in {report.store}"
    click.echo(
        f"indexed {report.count} pictures into {report.folder}{where}: {report.embedded} embedded{copies}, "
        f"{report.reused} unchanged{resumed}, {report.removed} removed, {report.skipped_summary()}, in "
        f"{report.seconds:.1f} s{speed}"
    )


def _usage(rules: list[tuple[Any, str]]) -> None:
    """Flags that do not go together: the first rule that holds is a usage error (exit status 2)."""
    for broken, message in rules:
        if broken:
            raise click.UsageError(message)


def _open_index(ctx: click.Context, name: str | None, *, quiet: bool = False) -> Any:
    """The index asked for; the default Pokémon index is built on first use instead of being missing."""
    from .index import Index
    from .service import default_index

    chosen = settings.index_name(name)
    if chosen == settings.DEFAULT_INDEX:
        return default_index(
            index_dir=ctx.obj["index_dir"],
            progress=not quiet,
            notify=lambda text: click.echo(f"note: {text}", err=True),
        )
    return Index.load(chosen, index_dir=ctx.obj["index_dir"])


def _parse_where(values: tuple[str, ...]) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected key=value, got {value!r}", param_hint="--where")
        where.setdefault(key.strip(), []).append(wanted.strip())
    return where


@cli.command("search")
@click.argument("image", type=click.Path(exists=False))
@_index_option
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="How many matches to show.")
@click.option(
    "--where",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only items whose label or metadata KEY equals VALUE (repeat: same key OR, keys AND).",
)
@click.option("--like", multiple=True, metavar="ID", help="An item id to move the results toward (repeatable).")
@click.option("--dislike", multiple=True, metavar="ID", help="An item id to move away from and leave out.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of matches.")
@_quiet_option
@_index_dir_option
@click.pass_context
def search_cmd(
    ctx: click.Context,
    image: str,
    index_name: str | None,
    k: int,
    where: tuple[str, ...],
    like: tuple[str, ...],
    dislike: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """Find the catalog items that look most like IMAGE."""
    from .recommend import look_alikes

    filters = _parse_where(where)
    picture = _check_picture(image)
    index = _open_index(ctx, index_name, quiet=quiet)
    matches = look_alikes(picture, index, k=k, where=filters, liked=like, disliked=dislike, name=image)
    if as_json:
        _echo_json([m.to_dict() for m in matches])
        return
    if not matches:
        click.echo("no matches (the filters leave no item)")
        return
    width = max(len("label"), *(len(m.label or "-") for m in matches))
    click.echo(f"{'rank':>4}  {'score':>6}  {'label':<{width}}  path")
    for m in matches:
        click.echo(f"{m.rank:>4}  {m.score:6.3f}  {(m.label or '-'):<{width}}  {m.path}")


@cli.command("identify")
@click.argument("image", type=click.Path(exists=False))
@_index_option
@click.option(
    "--name-with",
    "reference",
    default=None,
    metavar="REFERENCE",
    help="Name the closest picture through this labeled index (for unlabeled catalogs).",
)
@click.option(
    "-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="How many labels and matches to show."
)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as a JSON object.")
@_quiet_option
@_index_dir_option
@click.pass_context
def identify_cmd(
    ctx: click.Context, image: str, index_name: str | None, reference: str | None, k: int, as_json: bool, quiet: bool
) -> None:
    """Say which catalog item IMAGE is, or that it comes from another universe."""
    from .catalog import quoted
    from .recommend import identify

    picture = _check_picture(image)
    index = _open_index(ctx, index_name, quiet=quiet)
    ref = _open_index(ctx, reference, quiet=quiet) if reference else None
    answer = identify(picture, index, k=k, reference=ref, name=image, top_labels=k)
    if as_json:
        _echo_json(answer.to_dict())
        return
    click.echo(answer.message)
    if answer.another_image:
        click.echo(f"another picture of {quoted(answer.label or '')}: {answer.another_image}")
    click.echo(f"(in the catalog when the best score is at least {answer.threshold:.2f}, calibrated on this index)")
    if answer.labels:
        click.echo("best labels: " + ", ".join(f"{quoted(ls.label)} {ls.score:.3f}" for ls in answer.labels))


@cli.command("evaluate")
@_index_option
@click.option(
    "--catalog",
    "catalog",
    default=None,
    metavar="SOURCE",
    help="Gallery built from this catalog (folder or CSV) with --model/--models, instead of --index; "
    "indexes are cached under the cache folder.",
)
@click.option("--model", default=None, metavar="M", help="Backbone for --catalog [default: as for `index`].")
@click.option(
    "--models",
    default=None,
    metavar="A,B,...",
    help="Compare backbones in one table, e.g. colour-histogram,efficientnet-lite0,offline; hybrid weights "
    "inline: efficientnet-lite0@0.9+colour-histogram@0.1.",
)
@click.option(
    "--weights", default=None, metavar="W", help="Weights of hybrids named without inline weights, e.g. 0.9,0.1."
)
@click.option("--image-column", default=None, metavar="C", help="CSV column with image paths (--catalog).")
@click.option("--label-column", default=None, metavar="C", help="CSV column with labels (--catalog).")
@click.option(
    "--queries",
    multiple=True,
    metavar="FOLDER",
    help="Query set: class sub-folders named by label (or a labeled CSV); repeat for several sets.",
)
@click.option(
    "--query-index",
    default=None,
    metavar="NAME",
    help="A built index of labeled pictures as the query set (same backbone as the gallery).",
)
@click.option("--reverse", is_flag=True, help="Also the swapped direction: gallery items query each query set.")
@click.option("--leave-one-out", is_flag=True, help="Each gallery item queries the rest of the gallery.")
@click.option(
    "--group-by",
    default=None,
    metavar="COLUMN",
    help="Per-group table beside the class distribution: label or a metadata column.",
)
@click.option(
    "--pairs",
    default=None,
    metavar="CSV",
    help="Look-alike pairs (columns left,right): the true right among 19 random foils.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the foils drawn for --pairs.")
@click.option(
    "--outside",
    multiple=True,
    metavar="FOLDER",
    help="Pictures from another universe, to judge the in-catalog decision (repeatable).",
)
@click.option(
    "--inside",
    multiple=True,
    metavar="FOLDER",
    help="Pictures of catalog items for that decision (repeatable) [default: the --queries folders].",
)
@click.option("--map-at", type=click.IntRange(min=1), default=5, show_default=True, help="k of mAP@k.")
@click.option(
    "--worst",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="List the N worst queries of each protocol (10 with --sheet).",
)
@click.option("--sheet", default=None, metavar="FILE.png", help="Contact sheet of the worst queries (a PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as a JSON object.")
@click.option("--markdown", is_flag=True, help="Print Markdown tables.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_index_dir_option
@click.pass_context
def evaluate_cmd(
    ctx: click.Context,
    index_name: str | None,
    catalog: str | None,
    model: str | None,
    models: str | None,
    weights: str | None,
    image_column: str | None,
    label_column: str | None,
    queries: tuple[str, ...],
    query_index: str | None,
    reverse: bool,
    leave_one_out: bool,
    group_by: str | None,
    pairs: str | None,
    seed: int,
    outside: tuple[str, ...],
    inside: tuple[str, ...],
    map_at: int,
    worst: int | None,
    sheet: str | None,
    as_json: bool,
    markdown: bool,
    quiet: bool,
) -> None:
    """How good retrieval is: query sets, leave-one-out, pairs top-k of 20, the another-universe decision.

    See docs/evaluation.md for the protocols, the metrics and a worked comparison on Pokémon.
    """
    from pathlib import Path

    from . import evaluate as ev
    from .index import Index

    building = bool(catalog or models)
    _usage(
        [
            (as_json and markdown, "--json and --markdown are exclusive"),
            (
                building and index_name,
                "--index evaluates a built index; --catalog/--models build one per model: pick one",
            ),
            (model and models, "--model names one backbone, --models several: pick one"),
            (
                (model or models or image_column or label_column) and not building,
                "--model, --image-column and --label-column apply to --catalog SOURCE",
            ),
            (weights and not building, "--weights applies to --models hybrids; an index already has its weights"),
        ]
    )
    index_dir = ctx.obj["index_dir"]
    plan = ev.Plan(
        queries=[Path(q) for q in queries],
        reverse=reverse,
        leave_one_out=leave_one_out,
        group_by=group_by,
        pairs=Path(pairs) if pairs else None,
        seed=seed,
        inside=[Path(p) for p in inside],
        outside=[Path(p) for p in outside],
        map_at=map_at,
        query_index=Index.load(query_index, index_dir=index_dir) if query_index else None,
    )
    try:  # which protocols go together is the plan's to say; on the command line, a usage error
        plan.check(has_gallery=(building and catalog is not None) or not building)
    except RecommenderError as exc:
        raise click.UsageError(str(exc)) from None
    if building:
        specs = ev.parse_models(models or settings.model_name(model), weights)
        report = ev.compare_models(
            catalog,
            specs,
            plan,
            image_column=image_column,
            label_column=label_column,
            progress=not quiet,
            strict=not models,
        )
    else:
        report = ev.evaluate_index(_open_index(ctx, index_name, quiet=quiet), plan, progress=not quiet)
    shown = worst if worst is not None else (10 if sheet else 0)
    if sheet:
        for path in report.write_sheet(sheet, worst=shown):
            click.echo(f"contact sheet: {path}", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(worst=worst or 0), indent=2, ensure_ascii=False))
    else:
        click.echo(report.to_markdown(worst=worst or 0) if markdown else report.to_text(worst=worst or 0))
    run = next((r for r in report.runs if r.ok), None)  # the same pictures for every model: warn once
    if run is not None:
        if run.pooled is not None and run.pooled.unknown_labels:
            click.echo(f"labels not in the gallery: {', '.join(run.pooled.unknown_labels[:10])}", err=True)
        skipped = run.skipped()
        for skip in skipped[:_SHOW_SKIPS]:
            click.echo(f"skipped {skip}", err=True)
        if len(skipped) > _SHOW_SKIPS:
            click.echo(f'... and {len(skipped) - _SHOW_SKIPS} more skipped (each under "skipped" in --json)', err=True)


@cli.command("map")
@_index_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="map.html (interactive) or map.png.")
@click.option(
    "--color-by",
    default="label",
    show_default=True,
    metavar="COLUMN",
    help="Colour points by label or any metadata column.",
)
@click.option(
    "--query", "query_image", type=click.Path(exists=False), default=None, help="Place this picture on the map."
)
@_json_option("a summary of what was written")
@_quiet_option
@_index_dir_option
@click.pass_context
def map_cmd(
    ctx: click.Context,
    index_name: str | None,
    out: str,
    color_by: str,
    query_image: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Draw the whole catalog in 2-D (principal axes), optionally with a query placed on it."""
    from .explain import write_map
    from .recommend import embed_query

    picture = _check_picture(query_image) if query_image else None
    index = _open_index(ctx, index_name, quiet=quiet)
    query = embed_query(picture, index, name=query_image) if picture is not None else None
    written = write_map(index, out, color_by=color_by, query=query)
    if as_json:
        _echo_json(
            {"out": str(written), "index": index.name, "items": len(index), "color_by": color_by, "query": query_image}
        )
        return
    click.echo(f"wrote {written}")


@cli.command("adapt")
@_index_option
@click.option("--epochs", type=click.IntRange(1, 1000), default=None, help="Passes over the views [default: 30].")
@click.option("--views", type=click.IntRange(1, 32), default=None, help="Augmented views of each picture [default: 2].")
@click.option("--out", default=None, metavar="NAME", help="Name of the adapted index [default: NAME-adapted].")
@_index_dir_option
@click.pass_context
def adapt_cmd(
    ctx: click.Context, index_name: str | None, epochs: int | None, views: int | None, out: str | None
) -> None:
    """Adapt an index to its own catalog: a light head learnt from augmented views of its pictures."""
    from .adapt import DEFAULT_EPOCHS, DEFAULT_VIEWS, adapt_index

    report = adapt_index(
        settings.index_name(index_name),
        out=out,
        epochs=epochs or DEFAULT_EPOCHS,
        views=views or DEFAULT_VIEWS,
        index_dir=ctx.obj["index_dir"],
        progress=lambda done, what: click.echo(f"  {done:4.0%} {what}", err=True) if done >= 1 else None,
    )
    click.echo(report.summary())


@cli.command("info")
@_index_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--verify", is_flag=True, help="Check every file's checksum, however large.")
@_index_dir_option
@click.pass_context
def info_cmd(ctx: click.Context, index_name: str | None, as_json: bool, verify: bool) -> None:
    """What an index holds: backbone, size, labels, where it came from, where its vectors live."""
    from .index import Index

    index = Index.load(settings.index_name(index_name), index_dir=ctx.obj["index_dir"], verify=verify or None)
    m = index.manifest
    labels = sorted({item.label for item in index.items if item.label is not None})
    columns = sorted({k for item in index.items for k in item.metadata})
    if as_json:
        click.echo(
            json.dumps(
                {
                    **m.to_json(),
                    "folder": str(index.folder),
                    "size_bytes": index.size_bytes,
                    "label_names": labels,
                    "metadata_columns": columns,
                    "skipped": [{"where": s.where, "reason": s.reason, "label": s.label} for s in index.skipped],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    shown = ", ".join(labels[:8]) + (f", ... ({len(labels)} in all)" if len(labels) > 8 else "")
    rows = [
        ("index", f"{index.name}  ({index.folder})"),
        ("items", f"{len(index)}  ({m.dtype}, {index.size_bytes / 1e6:.1f} MB on disk)"),
        ("backbone", f"{m.backbone_name}  {_spec_text(m.backbone.to_json())}"),
        ("weights", m.weights + "".join(f"  ({pin.repo} at revision {pin.revision})" for pin in m.hub)),
        ("dim", str(m.dim)),
        ("vectors", m.store.describe()),
        ("labels", shown if labels else "none (unlabeled)"),
        ("metadata", ", ".join(columns) or "none"),
        ("source", f"{m.catalog.source}  ({m.catalog.kind})"),
        ("built", f"{m.created} by recommender {m.library_version} (format {m.format_version})"),
        ("last build", ", ".join(f"{k} {v}" for k, v in m.stats.to_json().items())),
    ]
    if index.skipped:
        rows.append(("skipped", f"{len(index.skipped)} pictures, each with why: {index.folder / str(m.files.skipped)}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


@cli.command("links")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(["pages", "images", "videos"]),
    default="pages",
    show_default=True,
    help="What to look for on the web.",
)
@click.option("-k", "k", type=click.IntRange(1, 50), default=8, show_default=True, help="How many links to show.")
@click.option(
    "--domain",
    default=None,
    metavar="TEXT",
    help="Word added to NAME in the query; '' for none [env RECOMMENDER_WEB_DOMAIN; default: Pokémon].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Total deadline of the search [env RECOMMENDER_WEB_TIMEOUT; default: 4].",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of links.")
@_index_dir_option
def links_cmd(name: str, kind: str, k: int, domain: str | None, timeout: float | None, as_json: bool) -> None:
    """Related pages, images or videos on the web for NAME (e.g. a recognised Pokémon)."""
    from .websearch import build_query, default_search

    query = build_query(name, domain)
    links = default_search().search(query, kind=kind, limit=k, timeout=timeout)
    if as_json:
        click.echo(json.dumps([link.to_dict() for link in links], indent=2, ensure_ascii=False))
        return
    if not links:
        click.echo(f"no links found for {query!r}")
        return
    width = max(len(link.source) for link in links)
    for n, link in enumerate(links, 1):
        click.echo(f"{n:>3}  {link.source:<{width}}  {link.title}")
        click.echo(f"     {'':<{width}}  {link.url}")


def _spec_text(spec: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in spec.items() if k != "model")


@cli.command("heatmap")
@_index_option
@click.option(
    "--features",
    default="all",
    show_default=True,
    metavar="K",
    help="Cosines on the first K principal components of the catalog (1, 5, 10, ...) or 'all' dimensions.",
)
@click.option("--labels", default=None, metavar="A,B,C", help="Show items of these labels (comma-separated).")
@click.option(
    "--query",
    "query",
    default=None,
    type=click.Path(exists=False),
    metavar="IMAGE",
    help="Show this picture and its nearest items instead.",
)
@click.option(
    "--max-items", type=click.IntRange(min=1), default=None, metavar="N", help="At most N items drawn [default: 40]."
)
@click.option(  # `--limit` means "the first N items of the catalog" (index); here it was --max-items
    "--limit", "old_limit", type=click.IntRange(min=1), default=None, hidden=True, callback=_deprecated("--max-items")
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@_json_option("a summary of what was written")
@_quiet_option
@_index_dir_option
@click.pass_context
def heatmap_cmd(
    ctx: click.Context,
    index_name: str | None,
    features: str,
    labels: str | None,
    query: str | None,
    max_items: int | None,
    old_limit: int | None,
    out: str,
    as_json: bool,
    quiet: bool,
) -> None:
    """Draw the cosine-similarity matrix of catalog items, clustered so look-alikes form blocks."""
    from .explain import DEFAULT_LIMIT, catalog_heatmap

    picture = _check_picture(query) if query else None
    index = _open_index(ctx, index_name, quiet=quiet)
    chosen = [name.strip() for name in labels.split(",") if name.strip()] if labels else None
    most = max_items or old_limit or DEFAULT_LIMIT
    sim = catalog_heatmap(index, features=features, labels=chosen, query=picture, limit=most, out=out)
    if as_json:
        _echo_json(
            {
                "out": str(out),
                "index": index.name,
                "items": len(sim.labels),
                "labels": sim.labels,
                "ids": sim.ids,
                "features": sim.features,
                "explained": sim.explained,
                "description": sim.description,
            }
        )
        return
    click.echo(f"wrote {out}: {len(sim.labels)} items of {index.name!r}, {sim.description}")


@cli.command("explain")
@click.argument("image", type=click.Path(exists=False))
@_index_option
@click.option(
    "--rank", type=click.IntRange(min=1), default=1, show_default=True, help="Which match to explain (1 = the best)."
)
@click.option(
    "--lines",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Mutually closest patch pairs to draw as lines [default: 8].",
)
@click.option(  # `--pairs` names a CSV of look-alike pairs (evaluate); here it was --lines
    "--pairs", "old_pairs", type=click.IntRange(min=0), default=None, hidden=True, callback=_deprecated("--lines")
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@_json_option("a summary of what was written")
@_quiet_option
@_index_dir_option
@click.pass_context
def explain_cmd(
    ctx: click.Context,
    image: str,
    index_name: str | None,
    rank: int,
    lines: int | None,
    old_pairs: int | None,
    out: str,
    as_json: bool,
    quiet: bool,
) -> None:
    """Show where IMAGE and one of its matches look alike: query | match, side by side with overlays."""
    from .explain import explain
    from .images import DECODE_MAX_SIDE, load_image
    from .recommend import look_alikes

    pairs = lines if lines is not None else old_pairs if old_pairs is not None else 8
    # Read once for both the search and the overlays, no larger than either uses it; before the model loads.
    picture = load_image(_check_picture(image), name=image, max_side=DECODE_MAX_SIDE)
    index = _open_index(ctx, index_name, quiet=quiet)
    backbone = index.backbone()
    matches = look_alikes(picture, index, k=rank, backbone=backbone)
    if len(matches) < rank:
        raise RecommenderError(
            f"index {index.name!r} has only {len(matches)} items; choose --rank {len(matches)} or lower"
        )
    match = matches[rank - 1]
    explain(picture, match, index, backbone=backbone, pairs=pairs, out=out)
    if as_json:
        _echo_json({"out": str(out), "index": index.name, "query": image, "lines": pairs, "match": match.to_dict()})
        return
    click.echo(f"wrote {out}: query vs #{match.rank} {match.label or match.id} (cosine {match.score:.3f})")


def main(prog_name: str = "recommender") -> None:
    """The `recommender` command (`python -m recommender` passes its own name for the usage lines)."""
    cli(prog_name=prog_name)
