"""The command line: parses flags, calls the library, prints results; errors become one line and exit 1."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import __version__, settings
from .backbones import BACKBONES, FITS, POOLINGS, PRECISIONS
from .errors import RecommenderError

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
@click.option("--index-dir", type=click.Path(file_okay=False), default=None,
              help=f"Folder of built indexes [env {settings.ENV_INDEX_DIR}; default: index/ in the repository].")
@click.option("--debug", is_flag=True, envvar="RECOMMENDER_DEBUG", help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="recommender")
@click.pass_context
def cli(ctx: click.Context, index_dir: str | None, debug: bool) -> None:
    """Index catalogs of pictures and find the items that look most alike."""
    ctx.obj = {"debug": debug, "index_dir": settings.index_dir(index_dir)}


def _index_option(func: Any) -> Any:
    return click.option(
        "--index", "index_name", default=None, metavar="NAME",
        help=f"Index to use [env {settings.ENV_INDEX}; default: {settings.DEFAULT_INDEX}].",
    )(func)


@cli.command("index")
@click.argument("source", type=click.Path(exists=False))
@click.option("--name", required=True, help="Name of the index (a folder under the index folder).")
@click.option("--model", default=None, metavar="M",
              help=f"Backbone: {', '.join(BACKBONES)}, A+B for a hybrid, a hub id or a local folder "
                   f"[env {settings.ENV_MODEL}; default: {settings.DEFAULT_MODEL}].")
@click.option("--weights", default=None, metavar="W", help="Hybrid weights, e.g. 0.7,0.3.")
@click.option("--pooling", type=click.Choice(POOLINGS), default="cls", show_default=True,
              help="DINOv2 global descriptor.")
@click.option("--image-size", type=int, default=224, show_default=True, help="Model input size (multiple of 14).")
@click.option("--fit", type=click.Choice(FITS), default="pad", show_default=True,
              help="pad: whole picture on a white square; crop: centre square.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Index only the first N items.")
@click.option("--image-column", default=None, metavar="C", help="CSV column with image paths.")
@click.option("--label-column", default=None, metavar="C", help="CSV column with labels.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Storage precision of the embeddings.")
@click.option("--domain", default=None, metavar="WORD",
              help='What the items are, for answers and web searches (e.g. "Pokémon", "watch").')
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help=f"auto: bf16 where it is native and agrees with fp32; fp32: exact [env {settings.ENV_PRECISION}].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Pictures per model call.")
@click.option("--store", default=None, metavar="STORE",
              help="Where the vectors go: local (files, exact search), milvus-lite (a database in the index "
                   "folder), milvus-lite:PATH.db, or milvus://HOST:PORT; add ?index=IVF_FLAT for IVF instead of "
                   f"HNSW [env {settings.ENV_STORE}; default: local].")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Embed on Ray Data: alone, a local Ray (or the cluster in RAY_ADDRESS); with an address, "
                   "that cluster (e.g. ray://HEAD:10001). Put it after SOURCE.")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="Model replicas with --ray [default: one per GPU, else one per 4 CPUs].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
def index_cmd(ctx: click.Context, source: str, name: str, model: str | None, weights: str | None, pooling: str,
              image_size: int, fit: str, limit: int | None, image_column: str | None, label_column: str | None,
              dtype: str, domain: str | None, precision: str | None, batch_size: int | None, store: str | None,
              ray_address: str | None, actors: int | None, quiet: bool) -> None:
    """Index the pictures in SOURCE: a folder of class folders, a flat folder, or a CSV.

    An interrupted build picks up where it stopped when run again with the same backbone.
    """
    from .backbones import load_backbone
    from .build import build_index
    from .store import StoreConfig

    config = StoreConfig.parse(settings.store(store))  # a bad --store fails before the model loads
    if actors is not None and ray_address is None:
        raise click.BadParameter("only applies with --ray", param_hint="--actors")
    backbone = load_backbone(model, weights=weights, pooling=pooling, image_size=image_size, fit=fit,
                             precision=precision)
    report = build_index(
        source, name=name, backbone=backbone, limit=limit, image_column=image_column, label_column=label_column,
        index_dir=ctx.obj["index_dir"], dtype=dtype, domain=domain, batch_size=batch_size, progress=not quiet,
        store=config, ray=False if ray_address is None else (ray_address or True), actors=actors,
    )
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for skip in report.skipped[:_SHOW_SKIPS]:
        click.echo(f"skipped {skip}", err=True)
    if len(report.skipped) > _SHOW_SKIPS:
        click.echo(f"... and {len(report.skipped) - _SHOW_SKIPS} more skipped", err=True)
    speed = f" ({report.images_per_second:.1f} images/s)" if report.embedded else ""
    resumed = f" ({report.resumed} from an interrupted build)" if report.resumed else ""
    where = "" if report.store == "local" else f", vectors in {report.store}"
    click.echo(
        f"indexed {report.count} pictures into {report.folder}{where}: {report.embedded} embedded, {report.reused} "
        f"unchanged{resumed}, {report.removed} removed, {len(report.skipped)} skipped, in {report.seconds:.1f} s"
        f"{speed}"
    )


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
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Number of matches.")
@click.option("--where", multiple=True, metavar="KEY=VALUE",
              help="Only items whose label or metadata KEY equals VALUE (repeat: same key OR, keys AND).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of matches.")
@click.pass_context
def search_cmd(ctx: click.Context, image: str, index_name: str | None, k: int, where: tuple[str, ...],
               as_json: bool) -> None:
    """Find the catalog items that look most like IMAGE."""
    from .index import Index
    from .recommend import look_alikes

    filters = _parse_where(where)
    index = Index.load(settings.index_name(index_name), index_dir=ctx.obj["index_dir"])
    matches = look_alikes(image, index, k=k, where=filters)
    if as_json:
        click.echo(json.dumps([m.to_dict() for m in matches], indent=2, ensure_ascii=False))
        return
    if not matches:
        click.echo("no matches (the filters leave no item)")
        return
    width = max(len(m.label or "-") for m in matches)
    for m in matches:
        click.echo(f"{m.rank:>3}  {m.score:6.3f}  {(m.label or '-'):<{width}}  {m.path}")


@cli.command("identify")
@click.argument("image", type=click.Path(exists=False))
@_index_option
@click.option("--name-with", "reference", default=None, metavar="REFERENCE",
              help="Name the closest picture through this labeled index (for unlabeled catalogs).")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Matches to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as a JSON object.")
@click.pass_context
def identify_cmd(ctx: click.Context, image: str, index_name: str | None, reference: str | None, k: int,
                 as_json: bool) -> None:
    """Say which catalog item IMAGE is, or that it comes from another universe."""
    from .index import Index
    from .recommend import identify

    index = Index.load(settings.index_name(index_name), index_dir=ctx.obj["index_dir"])
    ref = Index.load(reference, index_dir=ctx.obj["index_dir"]) if reference else None
    answer = identify(image, index, k=k, reference=ref)
    if as_json:
        click.echo(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    click.echo(answer.message)
    if answer.another_image:
        click.echo(f"another picture of {answer.label}: {answer.another_image}")
    click.echo(f"(in the catalog when the best score is at least {answer.threshold:.2f}, calibrated on this index)")
    if answer.labels:
        click.echo("best labels: " + ", ".join(f"{ls.label} {ls.score:.3f}" for ls in answer.labels))


@cli.command("evaluate")
@_index_option
@click.option("--queries", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of class sub-folders named by label.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as a JSON object.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
def evaluate_cmd(ctx: click.Context, index_name: str | None, queries: str, as_json: bool, quiet: bool) -> None:
    """How well an index names held-out pictures: recall@1/5/10 and mAP@5."""
    from .evaluate import evaluate_queries
    from .index import Index

    index = Index.load(settings.index_name(index_name), index_dir=ctx.obj["index_dir"])
    result = evaluate_queries(index, queries, progress=not quiet)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    metrics = result.to_dict()
    click.echo(f"{result.queries} queries against {index.name!r} ({index.manifest['backbone_name']})")
    for key in ("recall@1", "recall@5", "recall@10", "mAP@5"):
        click.echo(f"  {key:<10} {metrics[key]:.3f}")
    click.echo(f"  {metrics['ms_per_query']:.1f} ms a query, index {metrics['index_mb']:.1f} MB")
    if "ann_recall@10" in metrics:
        click.echo(f"  ANN recall@10 against exact search: {metrics['ann_recall@10']:.3f} ({index.store.kind} store)")
    if result.unknown_labels:
        click.echo(f"labels not in the index: {', '.join(result.unknown_labels[:10])}", err=True)
    for skip in result.skipped[:_SHOW_SKIPS]:
        click.echo(f"skipped {skip}", err=True)


@cli.command("info")
@_index_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--verify", is_flag=True, help="Check every file's checksum, however large.")
@click.pass_context
def info_cmd(ctx: click.Context, index_name: str | None, as_json: bool, verify: bool) -> None:
    """What an index holds: backbone, size, labels, where it came from, where its vectors live."""
    from .index import Index
    from .store import describe_location

    index = Index.load(settings.index_name(index_name), index_dir=ctx.obj["index_dir"], verify=verify or None)
    m = index.manifest
    labels = sorted({item.label for item in index.items if item.label is not None})
    columns = sorted({k for item in index.items for k in item.metadata})
    if as_json:
        click.echo(json.dumps({**m, "folder": str(index.folder), "size_bytes": index.size_bytes,
                               "label_names": labels, "metadata_columns": columns}, indent=2, ensure_ascii=False))
        return
    shown = ", ".join(labels[:8]) + (f", ... ({len(labels)} in all)" if len(labels) > 8 else "")
    rows = [
        ("index", f"{index.name}  ({index.folder})"),
        ("items", f"{len(index)}  ({m['dtype']}, {index.size_bytes / 1e6:.1f} MB on disk)"),
        ("backbone", f"{m['backbone_name']}  {_spec_text(m['backbone'])}"),
        ("weights", m["weights"]),
        ("dim", str(m["dim"])),
        ("vectors", describe_location(m.get("store"))),
        ("labels", shown if labels else "none (unlabeled)"),
        ("metadata", ", ".join(columns) or "none"),
        ("source", f"{m['catalog'].get('source')}  ({m['catalog'].get('kind')})"),
        ("built", f"{m['created']} by recommender {m['library_version']} (format {m['format_version']})"),
    ]
    if m.get("stats"):
        rows.append(("last build", ", ".join(f"{k} {v}" for k, v in m["stats"].items())))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


@cli.command("links")
@click.argument("name")
@click.option("--kind", type=click.Choice(["pages", "images", "videos"]), default="pages", show_default=True,
              help="What to look for on the web.")
@click.option("-k", "k", type=click.IntRange(1, 50), default=8, show_default=True, help="Number of links.")
@click.option("--domain", default=None, metavar="TEXT",
              help="Word added to NAME in the query; '' for none [env RECOMMENDER_WEB_DOMAIN; default: Pokémon].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Total deadline of the search [env RECOMMENDER_WEB_TIMEOUT; default: 4].")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of links.")
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


def main() -> None:
    cli(prog_name="python -m recommender")
