"""IR metrics through ``ranx`` with BEIR / pytrec_eval semantics.

- nDCG uses linear gains (``rel / log2(rank + 1)``, ranx's ``ndcg``, = pytrec_eval ``ndcg_cut``);
  graded relevance counts as is; grades <= 0 are non-relevant (ranx ``rel_lvl=1``).
- Every query of the qrels is scored (a query with no retrieved document scores 0); run entries
  for queries without qrels are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

#: the reported metrics: nDCG@10 is the main number
DEFAULT_METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@100", "map@100")
MAIN_METRIC = "ndcg@10"


@overload
def compute_metrics(
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    metrics: Sequence[str] = ...,
    *,
    per_query: Literal[False] = False,
) -> dict[str, float]: ...
@overload
def compute_metrics(
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    metrics: Sequence[str] = ...,
    *,
    per_query: Literal[True],
) -> dict[str, dict[str, float]]: ...
def compute_metrics(
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    per_query: bool = False,
) -> dict[str, float] | dict[str, dict[str, float]]:
    """Mean of each metric over the qrels' queries (fractions in [0, 1]); with ``per_query``,
    metric -> query id -> value.

    >>> qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    >>> run = {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d1": 2.0, "d2": 1.0}}
    >>> {m: round(v, 4) for m, v in compute_metrics(qrels, run, ["ndcg@10", "mrr@10"]).items()}
    {'ndcg@10': 0.8155, 'mrr@10': 0.75}
    """
    import numpy as np
    from ranx import Qrels, Run, evaluate

    if not qrels:
        raise ValueError("qrels are empty")
    q = {qid: {d: int(s) for d, s in docs.items()} for qid, docs in qrels.items() if docs}
    r = {qid: dict(run.get(qid) or {}) for qid in q}
    # ranx cannot hold an empty ranking: give such queries a single unjudged placeholder
    for docs in r.values():
        if not docs:
            docs["\x00no-result"] = float("-inf")
    r = {qid: {d: (s if np.isfinite(s) else -1e30) for d, s in docs.items()} for qid, docs in r.items()}
    qrels_obj = Qrels.from_dict(q)
    run_obj = Run.from_dict(r)
    scores = evaluate(qrels_obj, run_obj, list(metrics), return_mean=not per_query, make_comparable=True)
    if not isinstance(scores, dict):  # one metric: ranx returns its mean, or its per-query array
        scores = {metrics[0]: scores}
    if per_query:
        qids = list(qrels_obj.keys())
        return {m: {qid: float(v) for qid, v in zip(qids, scores[m], strict=True)} for m in metrics}
    return {m: float(scores[m]) for m in metrics}
