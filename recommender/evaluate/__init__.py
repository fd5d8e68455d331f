"""Retrieval evaluation on any catalog: query sets, leave-one-out, pairs top-k of 20, the another-universe decision.

`metrics` defines the numbers; `retrieval`, `pairs` and `universe` are the seeds' four protocols
over `vectors` (an index's, or pictures embedded now); `compare` runs a plan against one index or
several backbones (with cached indexes); `report` and `sheet` print and draw the results.
"""

from __future__ import annotations

from .compare import ModelSpec, Plan, cached_index, compare_models, evaluate_index, parse_models, time_embedding
from .metrics import (
    MAP_AT,
    RECALL_AT,
    average_precision,
    best_cut,
    decision_metrics,
    label_ranks,
    pair_ranks,
    recall_at,
)
from .pairs import PAIR_FOILS, Pairs, PairsEvaluation, evaluate_pairs, read_pairs
from .report import ModelRun, Report
from .retrieval import Evaluation, QueryResult, evaluate_leave_one_out, evaluate_queries, retrieve
from .sheet import contact_sheet
from .universe import UniverseEvaluation, evaluate_universe
from .vectors import Vectors, embed_catalog

__all__ = [
    "MAP_AT",
    "PAIR_FOILS",
    "RECALL_AT",
    "Evaluation",
    "ModelRun",
    "ModelSpec",
    "Pairs",
    "PairsEvaluation",
    "Plan",
    "QueryResult",
    "Report",
    "UniverseEvaluation",
    "Vectors",
    "average_precision",
    "best_cut",
    "cached_index",
    "compare_models",
    "contact_sheet",
    "decision_metrics",
    "embed_catalog",
    "evaluate_index",
    "evaluate_leave_one_out",
    "evaluate_pairs",
    "evaluate_queries",
    "evaluate_universe",
    "label_ranks",
    "pair_ranks",
    "parse_models",
    "read_pairs",
    "recall_at",
    "retrieve",
    "time_embedding",
]
