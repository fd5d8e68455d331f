"""Reports of an evaluation: each backbone's results, as JSON, Markdown tables or a contact sheet."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..catalog import Skip
from .metrics import RECALL_AT, rounded
from .pairs import PairsEvaluation
from .retrieval import Evaluation
from .sheet import SheetRow, contact_sheet
from .universe import UniverseEvaluation

if TYPE_CHECKING:
    from .compare import Plan


@dataclass
class ModelRun:
    """Every protocol's result for one backbone (or why it could not run here)."""

    model: str
    status: str = "ok"
    index: str | None = None
    index_mb: float | None = None
    ms_per_image: float | None = None
    sets: dict[str, Evaluation] = field(default_factory=dict)
    pooled: Evaluation | None = None
    reverse: dict[str, Evaluation] = field(default_factory=dict)
    leave_one_out: Evaluation | None = None
    pairs: PairsEvaluation | None = None
    universe: UniverseEvaluation | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self, *, worst: int = 0) -> dict[str, Any]:
        """Every protocol's results as JSON; `worst` adds each one's `worst` list of that many queries."""
        out: dict[str, Any] = {"model": self.model, "status": self.status}
        if not self.ok:
            return out
        if self.pooled is not None:
            out |= self.pooled.to_dict(worst=worst)
            if len(self.sets) > 1:
                out["sets"] = {name: e.to_dict() for name, e in self.sets.items()}
        out |= {
            "index": self.index,
            "index_mb": rounded(self.index_mb, 3),
            "ms_per_image": rounded(self.ms_per_image, 2),
        }
        if self.reverse:
            out["reverse"] = {name: e.to_dict(worst=worst) for name, e in self.reverse.items()}
        if self.leave_one_out is not None:
            out["leave_one_out"] = self.leave_one_out.to_dict(worst=worst)
        if self.pairs is not None:
            out["pairs"] = self.pairs.to_dict(worst=worst)
        if self.universe is not None:
            out["universe"] = self.universe.to_dict(worst=worst)
        return out

    def skipped(self) -> list[Skip]:
        """Every picture some protocol of this run could not use, with why; each listed once."""
        found = (*self.sets.values(), *self.reverse.values(), self.leave_one_out, self.pairs, self.universe)
        return list(dict.fromkeys(s for e in found if e is not None for s in e.skipped))

    def sheet_rows(self, n: int) -> list[SheetRow]:
        rows: list[SheetRow] = []
        if self.pooled is not None:
            rows += self.pooled.sheet_rows(n, f"{self.model}: worst queries (query | top match | a correct item)")
        if self.leave_one_out is not None:
            rows += self.leave_one_out.sheet_rows(
                n, f"{self.model}: leave-one-out (query | top match | a correct item)"
            )
        if self.pairs is not None:
            rows += self.pairs.sheet_rows(n, f"{self.model}: pairs (left | best foil | true right)")
        if self.universe is not None:
            rows += self.universe.sheet_rows(n, f"{self.model}: another universe, worst decisions (query | top match)")
        return rows


@dataclass
class Report:
    """One run of `evaluate`: a `ModelRun` per backbone, printable as JSON, Markdown or a contact sheet."""

    gallery: str | None
    runs: list[ModelRun]
    plan: Plan

    def to_dict(self, *, worst: int = 0) -> dict[str, Any]:
        """One run's object, or the gallery and one object per model; `worst` adds the worst queries."""
        if len(self.runs) == 1:
            return self.runs[0].to_dict(worst=worst)
        return {"gallery": self.gallery, "models": [run.to_dict(worst=worst) for run in self.runs]}

    def to_markdown(self, *, worst: int = 0) -> str:
        return _markdown(self, worst)

    def to_text(self, *, worst: int = 0) -> str:
        """Plain lines for the simplest run (one index, one query set), else the Markdown tables."""
        run = self.runs[0]
        simple = (
            len(self.runs) == 1
            and len(run.sets) == 1
            and not (run.reverse or run.leave_one_out or run.pairs or run.universe)
        )
        if not simple or run.pooled is None:
            return self.to_markdown(worst=worst)
        e = run.pooled
        lines = [f"{e.queries} queries against {run.index!r} ({run.model})"]
        lines += [f"  {key:<10} {value:.3f}" for key, value in e.metrics().items()]
        ms = f"{run.ms_per_image:.1f} ms an image, " if run.ms_per_image is not None else ""
        lines.append(f"  {ms}{1000 * e.seconds_per_query:.1f} ms a query, index {run.index_mb or 0:.1f} MB")
        lines += (
            [f"{r.path}: {r.label}, named {r.predicted} ({r.score:.2f}), rank {r.rank or '-'}" for r in e.worst(worst)]
            if worst
            else []
        )
        return "\n".join(lines)

    def write_sheet(self, path: str | Path, *, worst: int = 10) -> list[Path]:
        """The worst queries of every protocol as a PNG contact sheet; one file per model when there are several."""
        path = Path(path)
        done = [run for run in self.runs if run.ok]
        written = []
        for run in done:
            target = path if len(done) == 1 else path.with_name(f"{path.stem}-{slug(run.model, 40)}{path.suffix}")
            written.append(contact_sheet(run.sheet_rows(worst), target))
        return written


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in [*row, *[""] * (len(header) - len(row))]) + " |" for row in rows]
    return "\n".join(lines)


def _cost(run: ModelRun) -> list[Any]:
    return [
        None if run.index_mb is None else f"{run.index_mb:.2f}",
        None if run.ms_per_image is None else f"{run.ms_per_image:.1f}",
    ]


def _markdown(report: Report, worst: int) -> str:
    """Every section that has results, as Markdown: one table per protocol, models as rows."""
    page = _Page(report)
    out = page.heading()
    for section in (page.query_sets, page.reverse, page.leave_one_out, page.pairs, page.universe):
        out += section()
    if worst:
        out += page.worst(worst)
    return "\n\n".join(out) + "\n"


class _Page:
    """The Markdown sections of a report; each returns its lines (none when the protocol did not run)."""

    cost = ("MB", "ms/img")

    def __init__(self, report: Report) -> None:
        self.report, self.runs, self.plan, self.k = report, report.runs, report.plan, report.plan.map_at
        self.single = len(self.runs) == 1
        self.done = [run for run in self.runs if run.ok]
        self.metrics = [*(f"recall@{r}" for r in RECALL_AT), f"mAP@{self.k}"]

    def model_rows(self, pick: Callable[[ModelRun], list[Any]], width: int) -> list[list[Any]]:
        """One row per model: its name and cost, then `pick(run)`, or why it did not run."""
        return [
            [run.model, *_cost(run), *pick(run)] if run.ok else [run.model, run.status, *[""] * (width + 1)]
            for run in self.runs
        ]

    def heading(self) -> list[str]:
        if self.single:
            run = self.runs[0]
            size = f"{run.index_mb:.2f} MB" if run.index_mb is not None else "no index"
            ms = f"{run.ms_per_image:.1f} ms an image" if run.ms_per_image is not None else "embedding time unknown"
            return [f"## `{run.index or self.report.gallery}` ({run.model}): index {size}, {ms}"]
        return [
            f"## {len(self.runs)} backbones on `{self.report.gallery or self.plan.pairs}`",
            "MB: the gallery index on disk; ms/img: reading, decoding and embedding one picture here.",
        ]

    def query_sets(self) -> list[str]:
        pooled = [run for run in self.done if run.pooled]
        if not pooled:
            return []
        k, names = self.k, list(pooled[0].sets)
        out = [f"### Query sets vs `{self.report.gallery or self.done[0].index}`: naming recall and mAP@{k}"]
        if self.single:
            run = self.done[0]
            rows = [[name, e.queries, *e.metrics().values()] for name, e in run.sets.items()]
            if len(run.sets) > 1 and run.pooled:
                rows.append(["all", run.pooled.queries, *run.pooled.metrics().values()])
            out.append(_md_table(["query set", "queries", *self.metrics], rows))
        else:
            # "mean": every set weighs the same; "all": every query does (large sets dominate).
            mean = ["mean R@1"] if len(names) > 1 else []
            header = ["model", *self.cost, *(f"{n} R@1" for n in names), *mean, "all R@1", f"all mAP@{k}"]

            def sets_row(r: ModelRun) -> list[Any]:
                if r.pooled is None:
                    return []
                recalls = [r.sets[n].recall[1] for n in names]
                return [*recalls, *([float(np.mean(recalls))] if mean else []), r.pooled.recall[1], r.pooled.mean_ap]

            out.append(_md_table(header, self.model_rows(sets_row, len(names) + len(mean) + 2)))
        if any(run.pooled.group_by for run in pooled if run.pooled):
            out += _group_tables(self.runs, lambda r: r.pooled, f"Query sets by {self.plan.group_by}", k)
        return out

    def reverse(self) -> list[str]:
        runs = [run for run in self.done if run.reverse]
        if not runs:
            return []
        out = [
            "### Reverse: gallery items as queries against each query set (items whose label the set "
            "lacks are left out)"
        ]
        names = list(runs[0].reverse)
        if self.single:
            out.append(
                _md_table(
                    ["gallery", "queries", *self.metrics],
                    [[n, e.queries, *e.metrics().values()] for n, e in runs[0].reverse.items()],
                )
            )
        else:
            out.append(
                _md_table(
                    ["model", *self.cost, *(f"{n} R@1" for n in names)],
                    self.model_rows(lambda r: [r.reverse[n].recall[1] for n in names], len(names)),
                )
            )
        return out

    def leave_one_out(self) -> list[str]:
        found = [run.leave_one_out for run in self.done if run.leave_one_out]
        if not found:
            return []
        e0, group_by = found[0], self.plan.group_by
        title = (
            f"Leave-one-out{f' by {group_by}' if group_by else ''}: each item queries the rest "
            f"({e0.queries} queries; {e0.left_out} items alone in their label left out)"
        )
        if group_by:
            return _group_tables(self.runs, lambda r: r.leave_one_out, title, self.k)
        if self.single:
            return [f"### {title}", _md_table(["queries", *self.metrics], [[e0.queries, *e0.metrics().values()]])]
        return [
            f"### {title}",
            _md_table(
                ["model", *self.cost, *self.metrics],
                self.model_rows(
                    lambda r: list(r.leave_one_out.metrics().values()) if r.leave_one_out else [], len(self.metrics)
                ),
            ),
        ]

    def pairs(self) -> list[str]:
        found = [run.pairs for run in self.done if run.pairs]
        if not found:
            return []
        p0 = found[0]
        return [
            f"### Pairs: the true right picture among {p0.candidates} ({len(p0.results)} pairs, seed "
            f"{p0.seed}; chance top-1 {1 / p0.candidates:.3f}, top-2 {min(1, 2 / p0.candidates):.3f})",
            _md_table(
                ["model", *self.cost, "top-1", "top-2"],
                self.model_rows(lambda r: [r.pairs.top(1), r.pairs.top(2)] if r.pairs else [], 2),
            ),
        ]

    def universe(self) -> list[str]:
        found = [run.universe for run in self.done if run.universe]
        if not found:
            return []
        u0 = found[0]
        n_in = sum(d.inside for d in u0.decisions)
        out = [
            f"### Another universe: {n_in} pictures from the catalog's universe vs {len(u0.decisions) - n_in} "
            "from outside (positive: refused as another universe)"
        ]
        columns = ["threshold", "kept", "refused", "precision", "recall", "accuracy", "balanced_accuracy"]
        if self.single:
            out.append(
                _md_table(["rule", *columns], [[rule["rule"], *(rule[c] for c in columns)] for rule in u0.rules])
            )
        else:
            out.append(
                _md_table(
                    ["model", *self.cost, *columns, "best cut", "its balanced acc."],
                    self.model_rows(
                        lambda r: (
                            [
                                *(r.universe.rules[0][c] for c in columns),
                                r.universe.rules[-1]["threshold"],
                                r.universe.rules[-1]["balanced_accuracy"],
                            ]
                            if r.universe
                            else []
                        ),
                        len(columns) + 2,
                    ),
                )
            )
        return out

    def worst(self, worst: int) -> list[str]:
        out = []
        for run in self.done:
            rows = run.sheet_rows(worst)
            if rows:
                out.append(f"### Worst {worst}: {run.model}")
                out.append(
                    _md_table(
                        ["protocol", "picture", "top match", "correct"],
                        [
                            [
                                r.section.split(": ", 1)[-1].split(" (")[0],
                                *(f"{_short(p)} {c}".strip() for p, c in r.cells),
                            ]
                            for r in rows
                        ],
                    )
                )
        return out


def _group_tables(runs: list[ModelRun], pick: Callable[[ModelRun], Evaluation | None], title: str, k: int) -> list[str]:
    done = [r for r in runs if r.ok and pick(r) is not None]
    if not done:
        return []
    first = pick(done[0])
    assert first is not None
    if len(runs) == 1:
        rows = [
            [
                g["group"],
                g["items"],
                f"{100 * g['share']:.1f}%" if g["share"] is not None else None,
                g["queries"],
                g["recall@1"],
                g[f"mAP@{k}"],
            ]
            for g in first.groups()
        ]
        rows.append(["all", sum(first.distribution.values()), "100%", first.queries, first.recall[1], first.mean_ap])
        return [f"### {title}", _md_table(["group", "items", "share", "queries", "recall@1", f"mAP@{k}"], rows)]
    groups = [g["group"] for g in first.groups()][:12]  # the largest; every group is in --json
    shares = {g["group"]: g for g in first.groups()}
    header = ["model", "MB", "ms/img", "all R@1", f"all mAP@{k}", *(f"{g} mAP@{k}" for g in groups)]
    rows = [
        [
            "items (share)",
            "",
            "",
            "",
            sum(first.distribution.values()),
            *(f"{shares[g]['items']} ({100 * (shares[g]['share'] or 0):.0f}%)" for g in groups),
        ]
    ]
    for run in runs:
        e = pick(run) if run.ok else None
        if e is None:
            rows.append([run.model, run.status])
            continue
        mine = {g["group"]: g for g in e.groups()}
        rows.append(
            [run.model, *_cost(run), e.recall[1], e.mean_ap, *(mine.get(g, {}).get(f"mAP@{k}") for g in groups)]
        )
    more = f" ({len(shares) - len(groups)} more groups in --json)" if len(shares) > len(groups) else ""
    return [f"### {title}{more}", _md_table(header, rows)]


def _short(path: Path | None) -> str:
    return "" if path is None else "/".join(Path(path).parts[-2:])


def slug(text: str, size: int = 24) -> str:
    """A file-name-safe short form of a name (lower case, letters, digits, '.', '_' and '-')."""
    slugged = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:size].strip("-._")
    return slugged or "x"
