"""Write the data layout of the full-scale presets (one place for the published datasets).

The ColBERT-Zero data, as the authors' PyLate scripts (``examples/train/ColBERT-zero/``) load it:

- phase 1: the 29 splits of ``nomic-ai/nomic-embed-unsupervised-data`` (columns query, document),
  one source per split, drawn in proportion to size;
- phase 2: the 10 splits of ``nomic-ai/nomic-embed-supervised`` (query, document, negative: a list),
  11 negatives per query (the script's ``split_negatives`` keeps one more than its bound
  ``min(10, shortest list of the split)``), fewer only for a split whose lists are shorter;
- phase 3: ``lightonai/ms-marco-en-bge-gemma``: config ``train`` (query_id, document_ids, scores),
  texts joined by id from configs ``queries`` (query_id, text) and ``documents`` (document_id, text).

Split sizes: the unsupervised data card lists them (14 recorded below; the other 15 splits hold
2,243,498 rows together, total 238,998,494); supervised sizes are SPEC §3's rounded figures.

    python scripts/preset_data.py   # rewrites the [[phases.sources]] blocks of the presets in place
"""

from __future__ import annotations

import re
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "src" / "colzero" / "recipes"

UNSUPERVISED_SPLITS = [
    "reddit_title_body", "amazon_reviews", "paq", "s2orc_citation_titles", "s2orc_title_abstract",
    "s2orc_abstract_citation", "s2orc_abstract_body", "wikianswers", "wikipedia", "gooaq", "codesearch",
    "yahoo_title_answer", "agnews", "amazonqa", "yahoo_qa", "yahoo_title_question", "ccnews", "npr", "eli5",
    "cnn", "stackexchange_duplicate_questions", "stackexchange_title_body", "stackexchange_body_body",
    "sentence_compression", "wikihow", "altlex", "quora", "simplewiki", "squad",
]  # fmt: skip
UNSUPERVISED_ROWS = {  # num_examples of the data card
    "reddit_title_body": 66_204_599, "amazon_reviews": 39_357_860, "paq": 53_874_545,
    "s2orc_citation_titles": 7_722_225, "s2orc_title_abstract": 36_051_582, "s2orc_abstract_citation": 7_639_890,
    "s2orc_abstract_body": 6_550_431, "wikianswers": 10_087_503, "wikipedia": 6_198_049, "gooaq": 1_281_138,
    "codesearch": 864_023, "yahoo_title_answer": 276_726, "agnews": 420_288, "amazonqa": 226_137,
}  # fmt: skip
UNSUPERVISED_TOTAL = 238_998_494
SUPERVISED_ROWS = {  # SPEC §3 (rounded); 1,695,819 rows in all
    "msmarco_distillation_simlm_rescored_reranked_min15": 486_000, "nli_simcse_50negs_fixed": 276_000,
    "reddit_triples": 200_000, "medi_supernli_sampled": 178_000, "hotpotqa_hn_mine_shuffled": 170_000,
    "fever_hn_mine": 140_000, "medi_sts_stackexchange_dupe": 101_000, "nq_cocondensor_hn_mine_reranked_min15": 70_000,
    "medi_sts_flickr_sampled": 51_200, "medi_sts_wiki_rephrasal": 25_000,
}  # fmt: skip


def _list(values: list[str], indent: str = "  ") -> str:
    return "[\n" + "".join(f'{indent}"{v}",\n' for v in values) + "]"


def _rows(rows: dict[str, int]) -> str:
    return "".join(f"{k} = {v}\n" for k, v in rows.items())


def unsupervised_block() -> str:
    rest = UNSUPERVISED_TOTAL - sum(UNSUPERVISED_ROWS.values())
    return f"""[[phases.sources]]
name = "nomic-unsupervised"
# the 29 splits of the hub dataset, as PyLate's ColBERT-zero/unsupervised.py loads them: one source
# per split, every global batch from one split, splits drawn in proportion to their size
path = "nomic-ai/nomic-embed-unsupervised-data"
format = "hf"
splits = {_list(UNSUPERVISED_SPLITS)}
query = "query"
positive = "document"
origin = "Nomic-embed unsupervised pairs, 29 sources, {UNSUPERVISED_TOTAL:,} (query, document)"

[phases.sources.rows]
# num_examples from the data card; the other 15 splits hold {rest:,} rows together (read from the
# hub when online)
{_rows(UNSUPERVISED_ROWS)}"""


def supervised_block() -> str:
    return f"""[[phases.sources]]
name = "nomic-supervised"
# the 10 splits of the hub dataset, as PyLate's ColBERT-zero/supervised.py loads them; each split
# trains with 11 hard negatives per query where the split has them: that script's split_negatives
# assigns negative_i BEFORE it tests `i >= max_negatives` (bound min(10, shortest list)), so it
# keeps one more than its bound of 10 (off by one). A split whose shortest list has fewer than 11
# uses that many here (the script would keep shortest + 1 for the longer rows of such a split)
path = "nomic-ai/nomic-embed-supervised"
format = "hf"
splits = {_list(list(SUPERVISED_ROWS))}
query = "query"
positive = "document"
negatives = "negative"
max_negatives = 11
fewer_negatives = "shortest"
origin = "Nomic-embed supervised, 10 sources, 1,695,819 rows with mined hard negatives (11 used per query, the released script's off-by-one)"

[phases.sources.rows]
# SPEC §3 (rounded)
{_rows(SUPERVISED_ROWS)}"""


def distillation_block() -> str:
    return """[[phases.sources]]
name = "msmarco-bge-gemma"
# as PyLate's ColBERT-zero/distillation.py: configs "train", "queries" and "documents" of the hub
# dataset, texts joined by id (document_ids / scores may be stored as list strings: parsed)
path = "lightonai/ms-marco-en-bge-gemma"
format = "hf"
config = "train"
split = "train"
query_id = "query_id"
queries = "hf://lightonai/ms-marco-en-bge-gemma/queries"
documents = "hf://lightonai/ms-marco-en-bge-gemma/documents"
candidate_ids = "document_ids"
teacher_scores = "scores"
origin = "MS MARCO: 640,000 queries x 32 candidate ids with Gemma-reranker teacher scores"
rows = 640000
"""


BLOCKS = {
    "unsupervised": unsupervised_block,
    "supervised": supervised_block,
    "distillation": distillation_block,
}


def rewrite(text: str) -> str:
    """Replace the sources of every phase by the published layout of its stage."""
    parts = re.split(r"(?m)^(?=\[\[phases\]\]\n)", text)
    out = [parts[0]]
    for part in parts[1:]:
        stage = re.search(r'(?m)^stage = "(\w+)"', part).group(1)
        head, sep, _ = part.partition("[[phases.sources]]")
        if not sep:
            out.append(part)
            continue
        if not re.search(r"(?m)^save_every = ", head):
            head = re.sub(
                r'(?m)^(stage = "\w+"\n)', r"\1save_every = 500\nkeep_checkpoints = 2\n", head, count=1
            )
        out.append(head + BLOCKS[stage]() + "\n")
    return "".join(out).rstrip("\n") + "\n"


ATTENTION = """# the paper trained with FlashAttention, where query-expansion positions come out as zero vectors:
# flash_attention_compat makes every backend (sdpa here; flash_attention_2 where installed) do the same
flash_attention_compat = true
attn_implementation = "sdpa"
"""


def paper_attention(text: str) -> str:
    """ColBERT presets reproduce the paper's attention setup (see ATTENTION)."""
    if 'type = "colbert"' not in text or "flash_attention_compat" in text:
        return text
    return text.replace("[model.settings]\n", "[model.settings]\n" + ATTENTION, 1)


def main() -> None:
    for path in sorted(RECIPES.glob("*.toml")):
        if path.stem == "quickstart":
            continue
        text = path.read_text(encoding="utf-8")
        new = paper_attention(rewrite(text))
        if new != text:
            path.write_text(new, encoding="utf-8")
            print("rewrote", path.name)


if __name__ == "__main__":
    main()
