"""Does feedback help? A simulated user corrects held-out Pokémon pictures that were named wrong at first.

    python scripts/build_pokemon_catalog.py --heldout-only       # held-out sprites (not shipped)
    python benchmarks/feedback.py [--model offline] [--kinds back,back-shiny,forms,artwork-forms]

For each held-out picture whose best label is wrong, the user marks one right result among the
top k (the best-ranked item of the true label, if it is there) as "more like this" and the wrong
top result as "less like this". The second ranking (Rocchio, `recommend.refine`) is then scored:
how often is its best label (its top look-alike's) now the right one? Several weight settings are
compared in one run; the first row is doing nothing (the naive baseline).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import table  # noqa: E402

from recommender.backbones import load_backbone  # noqa: E402
from recommender.build import embed_items  # noqa: E402
from recommender.catalog import read_catalog  # noqa: E402
from recommender.recommend import FEEDBACK_WEIGHTS, refine  # noqa: E402
from recommender.service import DEFAULT_CATALOG, ensure_index  # noqa: E402

WEIGHTS = [(1.0, 0.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.75, 0.25), (1.0, 1.0, 0.5), (1.0, 1.5, 0.5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="offline")
    parser.add_argument("--heldout", type=Path, default=ROOT / ".cache" / "pokemon-heldout")
    parser.add_argument("--kinds", default="back,back-shiny,forms,artwork-forms")
    parser.add_argument("-k", type=int, default=10, help="results the user looks at")
    args = parser.parse_args()

    backbone = load_backbone(args.model)
    index, _ = ensure_index(f"pokemon-{args.model}", DEFAULT_CATALOG, backbone, domain="Pokémon")
    rows = []
    for kind in args.kinds.split(","):
        folder = args.heldout / kind
        if not folder.is_dir():
            sys.exit(f"{folder} is missing: run python scripts/build_pokemon_catalog.py --heldout-only")
        catalog = read_catalog(folder)
        started = time.perf_counter()
        embedded = embed_items(catalog.items, catalog.root, backbone, progress=False)
        seconds = time.perf_counter() - started
        labels = [item.label for item in embedded.items]
        scores = index.scores(embedded.vectors)  # (Q, N)
        names = index.label_names
        best = index.label_scores(scores).argmax(axis=1)  # (Q,) label positions
        wrong = [q for q in range(len(labels)) if names[best[q]] != labels[q]]
        fixed = {w: 0 for w in WEIGHTS}
        reachable = 0  # wrong at first, but a right item was among the top k to click on
        for q in wrong:
            order = np.argsort(-scores[q])[: args.k]
            right = [i for i in order if index.items[i].label == labels[q]]
            liked = [index.items[right[0]].id] if right else []
            reachable += bool(right)
            disliked = [index.items[order[0]].id]
            for w in WEIGHTS:
                vector = refine(embedded.vectors[q], index, liked=liked, disliked=disliked, weights=w)
                again = index.scores(vector)[0]
                again[index.position(disliked[0])] = -np.inf
                named = names[int(index.label_scores(again[None, :])[0].argmax())]
                fixed[w] += named == labels[q]
        for w in WEIGHTS:
            note = " (only drop the disliked)" if w == (1.0, 0.0, 0.0) else ""
            note += " (default)" if w == FEEDBACK_WEIGHTS else ""
            rows.append(
                {
                    "held-out kind": kind,
                    "queries": len(labels),
                    "wrong at first": len(wrong),
                    f"right among top {args.k}": reachable,
                    "weights (query, liked, disliked)": ", ".join(f"{x:g}" for x in w) + note,
                    "named right after one round": f"{fixed[w]}/{len(wrong)} ({fixed[w] / max(1, len(wrong)):.0%})",
                }
            )
        print(f"{kind}: {len(labels)} pictures embedded in {seconds:.1f} s", file=sys.stderr)
    print(
        f"backbone {backbone.name}; the user likes the best-ranked right item among the top {args.k} (if any) "
        "and dislikes the wrong top result\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
