"""The trainer end to end on a GPU: ``run_phase`` for each loss on CUDA (bf16 autocast, DataLoader
workers with pinned memory, checkpoints), a kill and a resume, and a bit-identical replay check.

A tiny BERT built from its config (no hub) and synthetic JSONL data; needs ``datasets`` for the
Arrow tables. Prints one line per case and writes ``gpu_trainer_check.json`` to ``--out``.

    PYTHONPATH=src python benchmarks/gpu_trainer_check.py --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

WORDS = [
    "the",
    "a",
    "of",
    "colbert",
    "late",
    "interaction",
    "retrieval",
    "model",
    "query",
    "document",
    "token",
    "score",
    "vector",
    "fox",
    "dog",
]


def tiny_model(folder: Path) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from colzero.model.colbert import ColBERT
    from colzero.model.config import ColBERTConfig

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip
    from tokenizers import processors

    fast._tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    cfg = BertConfig(vocab_size=len(vocab) + 4, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128)  # fmt: skip
    torch.manual_seed(0)
    model = ColBERT(
        BertModel(cfg), fast, ColBERTConfig(embedding_dim=32, query_length=12, document_length=32)
    )
    return str(model.save(folder / "start"))


def data(folder: Path) -> dict[str, str]:
    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    rows = [{"q": text(4), "p": text(20), "n": [text(18), text(15)]} for _ in range(256)]
    kd = [
        {"q": text(4), "docs": [text(20) for _ in range(4)], "s": [rng.gauss(0, 1) for _ in range(4)]}
        for _ in range(128)
    ]
    out = {}
    for name, table in (("pairs", rows), ("kd", kd)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in table))
        out[name] = str(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    from colzero.training.config import DataSource, LossConfig, OptimConfig, PhaseConfig
    from colzero.training.trainer import run_phase

    precision = "bf16" if torch.cuda.is_available() else "fp32"  # on a CPU: a smoke run of the script
    root = Path(tempfile.mkdtemp())
    start, files = tiny_model(root), data(root)
    pairs = DataSource("pairs", files["pairs"], query="q", positive="p", negatives="n")
    cases = {
        "contrastive": (pairs, LossConfig(kind="contrastive", temperature=0.05, n_negatives=2)),
        "cached_contrastive": (
            pairs,
            LossConfig(kind="cached_contrastive", temperature=0.02, mini_batch_size=8),
        ),
        "distillation": (
            DataSource("kd", files["kd"], query="q", candidate_ids="docs", teacher_scores="s"),
            LossConfig(kind="distillation", n_candidates=4),
        ),
    }
    results = {}
    for name, (source, loss) in cases.items():

        def cfg(out: str, name=name, source=source, loss=loss) -> PhaseConfig:
            return PhaseConfig(
                name=name, model=start, output_dir=str(root / out), sources=[source], loss=loss,
                batch_size=32, max_steps=args.steps, save_every=5, precision=precision, num_workers=2,
                optim=OptimConfig(learning_rate=1e-3), data_cache=str(root / "cache"),
            )  # fmt: skip

        t0 = time.perf_counter()
        full = run_phase(cfg(f"{name}-full"), show_progress=False)
        wall = time.perf_counter() - t0

        class Killed(Exception):
            pass

        def kill(step, metrics):
            if step == 7:
                raise Killed

        with contextlib.suppress(Killed):
            run_phase(cfg(f"{name}-cut"), show_progress=False, step_callback=kill)
        resumed = run_phase(cfg(f"{name}-cut"), show_progress=False)
        from safetensors.torch import load_file

        a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        cost = json.loads((full.parent / "cost.json").read_text())
        results[name] = {
            "steps": cost["steps"], "wall_s": round(wall, 2), "data_wait_s": round(cost["data_wait_s"], 3),
            "peak_cuda_mb": cost.get("peak_cuda_mb"), "device": cost["device"], "precision": cost["precision"],
            "max_abs_diff_full_vs_killed_and_resumed": diff,
        }  # fmt: skip
        print(name, results[name], flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_trainer_check.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
