"""The catalog map: every item placed in 2-D (PCA), cached beside the index, drawn with plotly or matplotlib."""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RecommenderError
from ..files import write_cache, write_output
from ..images import load_image
from ..index import Index
from ..runtime import Runtime
from .pca import principal_components

# Groups up to this many get their own colour and a legend entry; more share a cycling palette.
_LEGEND_LIMIT = 24
_THUMBNAIL = 56
# Shows the hovered point's thumbnail (plotly customdata) in a floating box; used by the HTML export and
# the app. `ROOT` is the element holding the plot.
HOVER_SCRIPT = """
(function attach(root) {
  const box = document.createElement('img');
  box.style.cssText = 'position:fixed;pointer-events:none;display:none;z-index:1000;max-width:96px;'
    + 'background:white;border:1px solid #ccc;border-radius:4px;padding:2px';
  document.body.appendChild(box);
  setInterval(() => {
    document.querySelectorAll(root + ' .js-plotly-plot').forEach(plot => {
      if (plot.dataset.thumbs || !plot.on) return;
      plot.dataset.thumbs = '1';
      plot.on('plotly_hover', e => {
        const src = e.points[0].customdata;
        if (!src || typeof src !== 'string' || !src.startsWith('data:image/')) return;
        box.src = src; box.style.display = 'block';
        box.style.left = (e.event.clientX + 12) + 'px'; box.style.top = (e.event.clientY + 12) + 'px';
      });
      plot.on('plotly_unhover', () => { box.style.display = 'none'; });
    });
  }, 500);
})(ROOT);
"""


@dataclass(frozen=True)
class CatalogMap:
    """Items' positions on the catalog's first two principal axes, and how to place a query there."""

    coords: np.ndarray = field(repr=False)  # (N, 2) float32
    mean: np.ndarray = field(repr=False)  # (D,) float32
    axes: np.ndarray = field(repr=False)  # (2, D) float32
    explained: float  # share of the catalog's variance the two axes hold

    def project(self, vector: np.ndarray) -> np.ndarray:
        """(2,) position of a (D,) vector (a query embedded with the index's backbone)."""
        return ((np.asarray(vector, dtype=np.float32) - self.mean) @ self.axes.T).astype(np.float32)


def catalog_map(index: Index, *, runtime: Runtime | None = None) -> CatalogMap:
    """The map of an index: read from beside it when computed before, else computed once and stored."""
    path = index.derived_file("map", ".npz")
    try:
        with np.load(path, allow_pickle=False) as data:
            found = CatalogMap(
                coords=data["coords"], mean=data["mean"], axes=data["axes"], explained=float(data["explained"])
            )
        if found.coords.shape == (len(index), 2) and found.mean.shape == (index.dim,):
            return found
    except (OSError, KeyError, ValueError):
        pass  # not there yet, or unreadable: compute it again
    pca = principal_components(index, runtime=runtime)
    axes = np.zeros((2, index.dim), dtype=np.float32)
    axes[: len(pca.components[:2])] = pca.components[:2]  # a catalog with one axis of variance gets y = 0
    coords = np.zeros((len(index), 2), dtype=np.float32)
    for start in range(0, len(index), 1 << 16):  # (B, D) blocks: memory stays small for big indexes
        block = np.asarray(index.embeddings[start : start + (1 << 16)], dtype=np.float32)
        coords[start : start + len(block)] = (block - pca.mean) @ axes.T
    explained = float(pca.variance[:2].sum() / pca.variance.sum())
    result = CatalogMap(coords=coords, mean=pca.mean, axes=axes, explained=explained)
    buffer = io.BytesIO()
    np.savez(buffer, coords=coords, mean=pca.mean, axes=axes, explained=np.float32(explained))
    write_cache(path, buffer.getvalue())  # a read-only index folder: the map is computed again next time
    return result


def _groups(index: Index, color_by: str) -> list[str]:
    if color_by == "label":
        return [item.label or "(no label)" for item in index.items]
    columns = {k for item in index.items[:1000] for k in item.metadata}
    if color_by not in columns:
        available = ", ".join(["label", *sorted(columns)])
        raise RecommenderError(f"cannot colour by {color_by!r}: index {index.name!r} has {available}")
    return [item.metadata.get(color_by) or "(none)" for item in index.items]


def _thumbnail_uri(index: Index, i: int) -> str:
    try:
        img = load_image(index.path_of(index.items[i]), max_side=512)
    except RecommenderError:
        return ""
    img.thumbnail((_THUMBNAIL, _THUMBNAIL))
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def map_figure(
    index: Index,
    *,
    color_by: str = "label",
    query: np.ndarray | None = None,
    query_name: str = "your picture",
    thumbnails: bool = True,
    runtime: Runtime | None = None,
) -> Any:
    """An interactive plotly scatter of the catalog map, points coloured by label or a metadata column.

    Coordinates go in as plain lists: the plotly.js bundled with Gradio may predate plotly.py's
    base64 typed-array encoding of numpy arrays.

    Hovering a point names it (and, with `thumbnails`, carries a small picture for `HOVER_SCRIPT`
    to show); a query vector is placed on the map as a star.
    """
    import plotly.graph_objects as go

    cmap = catalog_map(index, runtime=runtime)
    groups = _groups(index, color_by)
    names = sorted(set(groups))
    hover = [f"{item.label or item.id}<br>{item.id}" for item in index.items]
    pictures = [_thumbnail_uri(index, i) for i in range(len(index))] if thumbnails else None
    fig = go.Figure()
    if len(names) <= _LEGEND_LIMIT:
        for name in names:
            rows = [i for i, g in enumerate(groups) if g == name]
            fig.add_trace(
                go.Scattergl(
                    x=cmap.coords[rows, 0].tolist(),
                    y=cmap.coords[rows, 1].tolist(),
                    mode="markers",
                    name=name,
                    marker={"size": 7, "opacity": 0.8},
                    text=[hover[i] for i in rows],
                    hoverinfo="text",
                    customdata=[pictures[i] for i in rows] if pictures else None,
                )
            )
    else:
        code = {name: i for i, name in enumerate(names)}
        fig.add_trace(
            go.Scattergl(
                x=cmap.coords[:, 0].tolist(),
                y=cmap.coords[:, 1].tolist(),
                mode="markers",
                name=color_by,
                showlegend=False,
                marker={"size": 6, "opacity": 0.75, "color": [code[g] for g in groups], "colorscale": "Turbo"},
                text=hover,
                hoverinfo="text",
                customdata=pictures,
            )
        )
    if query is not None:
        x, y = cmap.project(query)
        fig.add_trace(
            go.Scatter(
                x=[float(x)],
                y=[float(y)],
                mode="markers+text",
                name=query_name,
                text=[query_name],
                textposition="top center",
                hoverinfo="name",
                marker={"symbol": "star", "size": 20, "color": "black", "line": {"color": "white", "width": 1.5}},
            )
        )
    fig.update_layout(
        title=f"{index.name}: {len(index)} items on the first two principal axes "
        f"({cmap.explained:.0%} of the variance), coloured by {color_by}",
        xaxis_title="first principal axis",
        yaxis_title="second principal axis",
        height=620,
        margin={"l": 40, "r": 20, "t": 60, "b": 40},
        template="plotly_white",
        hovermode="closest",
    )
    return fig


def write_map(
    index: Index, out: str | os.PathLike, *, color_by: str = "label", query: np.ndarray | None = None
) -> Path:
    """Write the map as a self-contained HTML page (works offline, thumbnails on hover) or as a PNG."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".html", ".htm"):
        fig = map_figure(index, color_by=color_by, query=query)
        fig.write_html(
            path,
            include_plotlyjs=True,
            full_html=True,
            div_id="catalog-map",
            post_script=HOVER_SCRIPT.replace("ROOT", json.dumps("body")),
        )
        return path
    if path.suffix.lower() != ".png":
        raise RecommenderError(f"{path.name}: write the map as .html (interactive) or .png")
    _draw_png(index, path, color_by=color_by, query=query)
    return path


def _draw_png(index: Index, path: Path, *, color_by: str, query: np.ndarray | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = catalog_map(index)
    groups = _groups(index, color_by)
    names = sorted(set(groups))
    code = np.array([names.index(g) for g in groups])
    fig, ax = plt.subplots(figsize=(9, 7), dpi=110)
    try:
        scatter = ax.scatter(
            cmap.coords[:, 0], cmap.coords[:, 1], c=code, s=9, alpha=0.75, cmap="tab20" if len(names) <= 20 else "turbo"
        )
        if len(names) <= 20:
            handles = [
                plt.Line2D([], [], marker="o", linestyle="", color=scatter.cmap(scatter.norm(i)), label=n)
                for i, n in enumerate(names)
            ]
            ax.legend(handles=handles, fontsize=7, loc="best", frameon=False)
        if query is not None:
            x, y = cmap.project(query)
            ax.scatter([x], [y], marker="*", s=320, c="black", edgecolors="white", linewidths=1.2, zorder=5)
            ax.annotate("your picture", (x, y), textcoords="offset points", xytext=(8, 8), fontsize=9)
        ax.set_title(
            f"{index.name}: {len(index)} items, first two principal axes ({cmap.explained:.0%} of the "
            f"variance), coloured by {color_by}",
            fontsize=10,
        )
        ax.set_xlabel("first principal axis")
        ax.set_ylabel("second principal axis")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    write_output(buffer.getvalue(), path)
