"""GPU check: one rank's training step of each ColBERT-Zero phase, on ModernBERT-base, in bf16.

Builds ModernBERT-base from ``transformers.ModernBertConfig()`` (its defaults are the base model:
22 layers, hidden 768, 12 heads, GeGLU 1152, vocabulary 50,368; random weights, nothing from the
hub) and an in-memory word-level tokenizer (``tokenizers`` + ``PreTrainedTokenizerFast`` with
[CLS]/[SEP]/[MASK]/[PAD]/[UNK]), wraps them in :class:`colzero.ColBERT` (128-d projection,
``flash_attention_compat=True``, ``--attn`` backend) and times, under bf16 autocast, one rank of
an 8-GPU run (SPEC §3):

- phase 1: 2,048 queries x 39 tokens and 2,048 documents x 187 tokens per rank, each query
  scored against 16,384 documents: :class:`colzero.losses.CachedContrastive` (GradCache,
  mini-batch 512, tau 0.02). The other 7 ranks' gathered documents are simulated by random unit
  vectors of the gathered shape that require grad (``simulated_gather``: the loss code runs as
  under DDP, only the all-gather collective is replaced), so the MaxSim FLOPs and memory are the
  real ones; communication is not included;
- phase 2: 8 queries, 1 positive + 10 hard negatives each (documents 519 tokens) per rank,
  documents gathered to 64 queries' worth: :class:`colzero.losses.Contrastive` (tau 0.2);
- phase 3: 8 queries x 32 candidates x 519 tokens per micro-step, 2 accumulation micro-steps:
  :class:`colzero.losses.Distillation`.

Each step: batches come from a ``torch.utils.data.DataLoader`` with workers over synthetic texts
tokenised by the model (:func:`synthetic_batches`, the one function to swap for colzero's input
pipeline); AdamW with grad-norm clipping 1.0. Reported per phase: median step time over
``--steps`` timed steps (after ``--warmup``), pairs or queries per second, peak GPU memory, and
the step split into *data* (waiting for the next batch + host-to-device copy), *encoder*
(ModernBERT + projection, forward and backward, GradCache's no-grad pass included), *loss*
(MaxSim + InfoNCE / KL, forward and backward) and *optimizer* (clip + AdamW). The split is
measured on the GPU timeline with CUDA events at the boundaries (``embed`` calls, a gradient
hook on each embedding, the forward / backward / optimizer calls), so GPU idle time is charged to
whatever the host was doing.

FLOPs per step (useful FLOPs, multiply-add = 2):

    encoder forward of a sequence of length L:  F(L) = 2 * P_lin * L + sum_layers 4 * d * C(L)
    P_lin = parameters of every linear layer (110.3M for ModernBERT-base + 0.1M projection),
    d = hidden size, C(L) = number of (query, key) pairs attended: L^2 for global layers, and
    sum_i |{j : |i - j| <= w/2}| for sliding-window layers (w = local_attention = 128).
    ~0.23 GFLOP per token at L = 187, as SPEC §3 says.
    MaxSim forward S = 2 * Nq * Lq * Nd * Ld * dim.
    useful per step = 3 * (encoder forward of every sequence) + 3 * S   (forward + backward)
    executed per step = 4 * encoder (GradCache re-runs the forward) or 3 * encoder (phases 2-3),
                        + 4 * S (MaxSim's backward recomputes the similarities).

The fraction reported is FLOP/s over the bf16 matrix-multiply rate measured in the same run
(``--gemm`` square bf16 GEMM, median of timed bursts). GPU-hours of the whole recipe are
projected from the measured per-GPU rates: phase 1 = 238,998,494 pairs, phase 2 = 1,695,819
rows, phase 3 = 5,000 steps x 128 queries, next to the paper's ~408 GH200-hours (SPEC §1). The
projection excludes communication, evaluation and checkpointing, and uses full-length synthetic
inputs (real documents are often shorter).

A zero-host-sync check runs the MaxSim forward and backward (all pairs and n-way, bf16 autocast)
and the InfoNCE on cached embeddings under ``torch.cuda.set_sync_debug_mode("error")``.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR           # on a GPU (~2-4 min on an H100)
    PYTHONPATH=src python3 benchmarks/gpu_check.py --tiny --out DIR    # CPU, tiny model, seconds

Needs only torch, transformers, tokenizers, safetensors, numpy, pyarrow (and colzero's source).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the DataLoader forks workers

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent

PAPER_GH200_HOURS = 408.0
RECIPE = {"phase1_pairs": 238_998_494, "phase2_rows": 1_695_819, "phase3_queries": 5_000 * 128}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class PhaseShape:
    """One rank's step. ``docs_per_query``: 1 positive (+ hard negatives) or the candidates."""

    name: str
    loss: str  # "cached_contrastive" | "contrastive" | "distillation"
    queries: int
    docs_per_query: int
    query_length: int
    document_length: int
    world: int = 1  # ranks whose documents are gathered (simulated)
    mini_batch: int = 0
    temperature: float = 0.02
    accumulation: int = 1


FULL = [
    PhaseShape("phase1", "cached_contrastive", 2048, 1, 39, 187, world=8, mini_batch=512, temperature=0.02),
    PhaseShape("phase2", "contrastive", 8, 11, 39, 519, world=8, temperature=0.2),
    PhaseShape("phase3", "distillation", 8, 32, 39, 519, accumulation=2),
]
TINY = [
    PhaseShape("phase1", "cached_contrastive", 16, 1, 8, 12, world=4, mini_batch=8, temperature=0.02),
    PhaseShape("phase2", "contrastive", 2, 3, 8, 16, world=4, temperature=0.2),
    PhaseShape("phase3", "distillation", 2, 4, 8, 16, accumulation=2),
]


# ---------------------------------------------------------------------------- model


def build_tokenizer(n_words: int):
    """Word-level tokenizer over the words w0..w{n_words-1}: every word is one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [f"w{i}" for i in range(n_words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=8192,
        model_input_names=["input_ids", "attention_mask"],  # as ModernBERT's tokenizer
    )


def build_model(tiny: bool, device: torch.device, attn: str | None):
    """ColBERT on a randomly initialised ModernBERT (base size unless ``tiny``), on ``device``."""
    from transformers import AutoModel, ModernBertConfig

    from colzero import ColBERT, ColBERTConfig

    ids = {"pad_token_id": 0, "cls_token_id": 2, "sep_token_id": 3, "bos_token_id": 2, "eos_token_id": 3}
    if tiny:
        tok = build_tokenizer(500)
        config = ModernBertConfig(
            vocab_size=len(tok) + 2,  # + the [Q] / [D] markers ColBERT adds
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=48,
            local_attention=8,
            max_position_embeddings=1024,
            **ids,
        )
    else:
        config = ModernBertConfig(**ids)  # defaults = ModernBERT-base
        tok = build_tokenizer(config.vocab_size - len(SPECIALS) - 2)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: seconds instead of minutes on a CPU
        backbone = AutoModel.from_config(config)
        settings = ColBERTConfig(
            query_length=39,
            document_length=187,
            embedding_dim=128,
            flash_attention_compat=True,
            attn_implementation=attn,
        )
        model = ColBERT(backbone, tok, settings)
    return model.to(device).train()


def linear_parameters(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def attended_pairs(length: int, window: int | None) -> int:
    """(query, key) pairs of one attention layer: all pairs, or a sliding window of ``window``."""
    if window is None or window >= 2 * length:
        return length * length
    half = window // 2
    return sum(min(i + half, length - 1) - max(i - half, 0) + 1 for i in range(length))


def encoder_flops(cfg, n_linear: int, length: int) -> float:
    """Forward FLOPs of one sequence of ``length`` tokens through a backbone with config ``cfg``
    and ``n_linear`` linear-layer parameters (module docstring)."""
    d = int(cfg.hidden_size)
    types = getattr(cfg, "layer_types", None) or [
        "full_attention"
        if i % int(getattr(cfg, "global_attn_every_n_layers", 1)) == 0
        else "sliding_attention"
        for i in range(int(cfg.num_hidden_layers))
    ]
    window = int(getattr(cfg, "local_attention", 0)) or None
    attention = sum(4 * d * attended_pairs(length, None if t == "full_attention" else window) for t in types)
    return 2.0 * n_linear * length + attention


# ---------------------------------------------------------------------------- data


class _SyntheticSource:
    """An in-memory stand-in for a training source (``examples(rows)``, ``len``): deterministic
    random texts over the tokenizer's words, documents filling their length. Everything else on
    the data path is colzero's own: the same-source sampler, the DataLoader request plan, the
    worker-side reader and the Collator (the GPU machine has no ``datasets`` for Arrow tables)."""

    def __init__(self, shape: PhaseShape, n_words: int, n_examples: int, seed: int) -> None:
        self.shape, self.n_words, self.n, self.seed = shape, n_words, n_examples, seed

    def __len__(self) -> int:
        return self.n

    def _text(self, rng: random.Random, n: int) -> str:
        return " ".join(f"w{rng.randrange(self.n_words)}" for _ in range(n))

    def examples(self, rows):
        from colzero.data.sources import ContrastiveExample, DistillationExample

        s, out = self.shape, []
        for index in rows:
            rng = random.Random(self.seed * 1_000_003 + int(index))
            query = self._text(rng, rng.randint(3, max(3, s.query_length - 5)))
            docs = [self._text(rng, s.document_length) for _ in range(s.docs_per_query)]
            if s.loss == "distillation":
                out.append(DistillationExample(query, docs, [rng.gauss(0.0, 1.0) for _ in docs]))
            else:
                out.append(ContrastiveExample(query, docs[0], docs[1:]))
        return out


def synthetic_batches(model, shape: PhaseShape, n_batches: int, workers: int, seed: int = 0) -> Iterator[Any]:
    """This rank's tokenised batches (``shape.queries`` examples each) from colzero's input
    pipeline (:func:`colzero.data.loader.input_pipeline`: sampler-owned order, ``workers``
    DataLoader processes that read, tokenise and collate, pinned memory on CUDA) over an
    in-memory synthetic source."""
    from colzero.data.collate import Collator
    from colzero.data.loader import input_pipeline
    from colzero.data.sampler import SameSourceBatchSampler

    n_words = len(model.tokenizer) - len(SPECIALS) - 2
    source = _SyntheticSource(shape, n_words, n_batches * shape.queries, seed)
    sampler = SameSourceBatchSampler([len(source)], shape.queries, seed=seed)
    loader = input_pipeline(
        [source],
        sampler,
        Collator(model),
        count=n_batches,
        num_workers=workers,
        prefetch_factor=2,
        pin_memory=True,
    )
    return (batch for _, batch in loader)


# ---------------------------------------------------------------------------- timing


class Marks:
    """Timestamps on the GPU timeline (CUDA events) or the host clock (CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.items: list[tuple[str, Any]] = []

    def mark(self, label: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.items.append((label, event))
        else:
            self.items.append((label, time.perf_counter()))

    def split(self) -> dict[str, float]:
        """Seconds per category between the first and the last mark (see module docstring)."""
        if len(self.items) < 2:
            return {}
        if self.cuda:
            torch.cuda.synchronize()
            first = self.items[0][1]
            times = [0.0] + [first.elapsed_time(e) / 1000 for _, e in self.items[1:]]
        else:
            times = [t - self.items[0][1] for _, t in self.items]
        out: dict[str, float] = defaultdict(float)
        state, phase = "other", None
        for (label, _), start, end in zip(self.items, times, times[1:], strict=False):
            if label == "data_start":
                state = "data"
            elif label in ("data_end", "bwd_end", "opt_end"):
                state, phase = "other", (None if label == "bwd_end" else phase)
            elif label == "fwd_start":
                state, phase = "loss", "fwd"
            elif label == "embed_start":
                state = "encoder"
            elif label == "embed_end":
                state = "loss" if phase == "fwd" else "encoder"
            elif label == "fwd_end":
                state, phase = "loss", "bwd"
            elif label == "grad_hook" and phase == "bwd":
                state = "encoder"
            elif label == "opt_start":
                state = "optimizer"
            out[state] += end - start
        out["total"] = times[-1]
        return dict(out)


@contextlib.contextmanager
def instrumented_embed(marks: Marks) -> Iterator[None]:
    """Mark every ``embed`` call of the losses, and the moment each embedding's gradient arrives
    (the loss backward is done with it; the encoder backward starts)."""
    from colzero.losses import cached, contrastive, distillation, scores

    original = scores.embed

    def timed(model, batch, role):
        marks.mark("embed_start")
        vectors, mask = original(model, batch, role)
        marks.mark("embed_end")
        if vectors.requires_grad:
            vectors.register_hook(lambda grad: marks.mark("grad_hook"))
        return vectors, mask

    with contextlib.ExitStack() as stack:
        for module in (cached, contrastive, distillation):
            stack.enter_context(mock.patch.object(module, "embed", timed))
        yield


@contextlib.contextmanager
def simulated_gather(world: int, length: int) -> Iterator[None]:
    """Run the contrastive losses as rank 0 of ``world`` ranks: ``gather_documents`` appends the
    other ranks' documents as random unit vectors of the gathered shape (requiring grad, as the
    real gathered tensor does), padded to ``length`` tokens like the real all-gather."""
    from colzero.losses import contrastive

    others: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def gather(vectors: torch.Tensor, mask: torch.Tensor | None):
        rows, n_len, dim = vectors.shape
        full = max(length, n_len)
        key = (rows, full, dim, vectors.dtype, vectors.device)
        if key not in others:
            g = torch.Generator(device=vectors.device).manual_seed(rows)
            other = torch.randn((world - 1) * rows, full, dim, generator=g, device=vectors.device)
            other = F.normalize(other, dim=-1).to(vectors.dtype).detach().requires_grad_()
            other_mask = torch.ones(other.shape[:2], dtype=torch.bool, device=vectors.device)
            others[key] = (other, other_mask)
        other, other_mask = others[key]
        local = F.pad(vectors, (0, 0, 0, full - n_len))
        local_mask = torch.zeros((rows, full), dtype=torch.bool, device=mask.device)
        local_mask[:, :n_len] = mask
        return torch.cat([local, other]), torch.cat([local_mask, other_mask]), 0

    with (
        mock.patch.object(contrastive, "world", return_value=(0, world)),
        mock.patch.object(contrastive, "gather_documents", gather),
    ):
        yield


def precision_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def gemm_rate(device: torch.device, n: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Median FLOP/s of an (n x n) @ (n x n) matmul in ``dtype`` over short timed bursts."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    start = time.perf_counter()
    a @ b
    sync()
    per_call = max(time.perf_counter() - start, 1e-6)
    reps = max(1, int(seconds / 5 / per_call))
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        rates.append(2.0 * n**3 * reps / (time.perf_counter() - start))
    return statistics.median(rates)


# ---------------------------------------------------------------------------- steps


def build_loss(model, shape: PhaseShape):
    from colzero.losses import CachedContrastive, Contrastive, Distillation

    if shape.loss == "cached_contrastive":
        return CachedContrastive(model, mini_batch_size=shape.mini_batch, temperature=shape.temperature)
    if shape.loss == "contrastive":
        return Contrastive(model, temperature=shape.temperature)
    return Distillation(model)


def step_flops(model, shape: PhaseShape, batches: list[Any]) -> dict[str, float]:
    """Useful and executed FLOPs of one optimizer step from the batches' real shapes."""
    encoder = 0.0
    maxsim = 0.0
    dim = model.config.embedding_dim
    n_linear = linear_parameters(model)
    for batch in batches:
        parts = [batch.queries, batch.documents] if shape.loss == "distillation" else [
            batch.queries, batch.positives, batch.negatives]  # fmt: skip
        for part in parts:
            if part is not None:
                n, length = part.input_ids.shape
                encoder += n * encoder_flops(model.backbone.config, n_linear, length)
        nq, lq = batch.queries.input_ids.shape
        if shape.loss == "distillation":
            ld = batch.documents.input_ids.shape[1]
            maxsim += 2.0 * nq * lq * shape.docs_per_query * ld * dim
        else:
            for docs in (batch.positives, batch.negatives):
                if docs is not None:
                    nd, ld = docs.input_ids.shape
                    maxsim += 2.0 * nq * lq * nd * shape.world * max(ld, shape.document_length) * dim
    encoder_passes = 4 if shape.loss == "cached_contrastive" else 3
    return {
        "encoder_forward": encoder,
        "maxsim_forward": maxsim,
        "useful": 3 * encoder + 3 * maxsim,
        "executed": encoder_passes * encoder + 4 * maxsim,
    }


def run_phase(model, shape: PhaseShape, args, device: torch.device, gemm: float) -> dict[str, Any]:
    """Warm-up + timed optimizer steps of one phase; returns the measurements."""
    model.config.query_length = shape.query_length
    model.config.document_length = shape.document_length
    loss_fn = build_loss(model, shape).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    n_steps = args.warmup + args.steps
    batches = synthetic_batches(model, shape, n_steps * shape.accumulation, args.workers)
    from colzero.data.collate import batch_to

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    gather = (
        simulated_gather(shape.world, shape.document_length) if shape.world > 1 else contextlib.nullcontext()
    )
    steps, losses = [], []
    with gather:
        for step in range(n_steps):
            marks = Marks(device)
            used = []
            start = time.perf_counter()
            with instrumented_embed(marks):
                for _ in range(shape.accumulation):
                    marks.mark("data_start")
                    batch = batch_to(next(batches), device)
                    marks.mark("data_end")
                    used.append(batch)
                    marks.mark("fwd_start")
                    with precision_context(device, args.precision):
                        loss = loss_fn(batch)
                    marks.mark("fwd_end")
                    (loss / shape.accumulation).backward()
                    marks.mark("bwd_end")
                    losses.append(loss.detach())
                marks.mark("opt_start")
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                marks.mark("opt_end")
            split = marks.split()
            wall = time.perf_counter() - start
            if step >= args.warmup:
                steps.append({"wall_s": wall, **split, "flops": step_flops(model, shape, used)})
            print(f"  {shape.name} step {step + 1}/{n_steps}: {wall:.2f} s", flush=True)
    step_s = statistics.median(s["total"] for s in steps)
    flops = steps[0]["flops"]
    per_step = shape.queries * shape.accumulation
    out: dict[str, Any] = {
        "shape": asdict(shape),
        "step_s": step_s,
        "wall_step_s": statistics.median(s["wall_s"] for s in steps),
        "split_s": {k: statistics.median(s.get(k, 0.0) for s in steps) for k in ("data", "encoder", "loss", "optimizer", "other")},
        "queries_per_s": per_step / step_s,
        "pairs_per_s": per_step * shape.docs_per_query / step_s,
        "flops_per_step": flops,
        "useful_flop_per_s": flops["useful"] / step_s,
        "executed_flop_per_s": flops["executed"] / step_s,
        "fraction_of_gemm_useful": flops["useful"] / step_s / gemm,
        "fraction_of_gemm_executed": flops["executed"] / step_s / gemm,
        "losses": [float(x) for x in losses],
        "steps": steps,
    }  # fmt: skip
    if cuda:
        out["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        out["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
    else:
        import resource

        out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    del optimizer, loss_fn, batches
    return out


def sync_check(device: torch.device, tiny: bool) -> dict[str, Any]:
    """MaxSim forward/backward and the InfoNCE on cached embeddings under sync debug mode "error"."""
    if device.type != "cuda":
        return {"status": "skipped (needs CUDA)"}
    from colzero.losses import Contrastive
    from colzero.scoring.maxsim import maxsim_all_pairs, maxsim_nway

    nq, nd, lq, ld = (8, 16, 8, 12) if tiny else (256, 2048, 39, 187)
    g = torch.Generator(device=device).manual_seed(0)
    q = F.normalize(torch.randn(nq, lq, 128, device=device, generator=g), dim=-1).requires_grad_()
    d = F.normalize(torch.randn(nd, ld, 128, device=device, generator=g), dim=-1).requires_grad_()
    dm = torch.rand(nd, ld, device=device, generator=g) > 0.1
    qm = torch.ones(nq, lq, dtype=torch.bool, device=device)
    loss_fn = Contrastive(torch.nn.Identity(), temperature=0.02).to(device)  # as in training
    result: dict[str, Any] = {}
    checks = {
        "maxsim_all_pairs": lambda: maxsim_all_pairs(q, d, dm, qm, budget_bytes=64 * 2**20).sum(),
        "maxsim_nway": lambda: maxsim_nway(
            q, d[: nq * (nd // nq)].view(nq, nd // nq, ld, 128), dm[: nq * (nd // nq)].view(nq, nd // nq, ld), qm
        ).sum(),
        "infonce_on_cached_embeddings": lambda: loss_fn.loss_from_embeddings(q, qm, d[:nq], dm[:nq], d[nq:], dm[nq:]),
    }  # fmt: skip
    for fn in checks.values():  # warm-up: lazy initialisation may synchronise once
        with torch.autocast("cuda", dtype=torch.bfloat16):
            value = fn()
        torch.autograd.grad(value, (q, d))
    torch.cuda.synchronize()
    for name, fn in checks.items():
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                value = fn()
            torch.autograd.grad(value, (q, d))
            result[name] = "no host sync"
        except RuntimeError as exc:
            result[name] = f"SYNC: {str(exc).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
    result["status"] = "ok" if all(v == "no host sync" for v in result.values()) else "failed"
    return result


# ---------------------------------------------------------------------------- report


def project_hours(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rates = {
        "phase1": ("pairs_per_s", RECIPE["phase1_pairs"]),
        "phase2": ("queries_per_s", RECIPE["phase2_rows"]),
        "phase3": ("queries_per_s", RECIPE["phase3_queries"]),
    }
    hours = {}
    for name, (key, total) in rates.items():
        if name in phases and key in phases[name]:
            hours[name] = total / phases[name][key] / 3600
    out: dict[str, Any] = {"gpu_hours": hours, "paper_gh200_hours": PAPER_GH200_HOURS}
    if len(hours) == 3:
        out["total_gpu_hours"] = sum(hours.values())
    return out


def print_report(result: dict[str, Any]) -> None:
    sys.path.insert(0, str(HERE))
    from _common import print_table

    rows = []
    for name, r in result["phases"].items():
        if "error" in r:
            rows.append([name, r["error"], "", "", "", "", "", "", "", "", ""])
            continue
        split = r["split_s"]
        memory = r.get("peak_allocated_gb", r.get("peak_rss_gb", float("nan")))
        rate = f"{r['pairs_per_s']:,.1f} pairs/s" if name == "phase1" else f"{r['queries_per_s']:,.2f} q/s"
        rows.append([
            name, f"{r['step_s']:.3f}", rate, f"{memory:.2f}",
            f"{split['data']:.3f}", f"{split['encoder']:.3f}", f"{split['loss']:.3f}", f"{split['optimizer']:.3f}",
            f"{r['flops_per_step']['executed'] / 1e9:,.4g}",
            f"{100 * r['fraction_of_gemm_executed']:.1f}%", f"{100 * r['fraction_of_gemm_useful']:.1f}%",
        ])  # fmt: skip
    mem = "peak GPU GB" if result["device"]["type"] == "cuda" else "peak RSS GB"
    print(flush=True)
    print_table(
        ["phase", "step s", "per GPU", mem, "data s", "encoder s", "loss s", "optim s", "GFLOP/step (exec)",
         "exec/GEMM", "useful/GEMM"],
        rows,
    )  # fmt: skip
    gemm = result["gemm_flop_per_s"]
    print(f"bf16 GEMM rate measured in this run: {gemm / 1e12:.2f} TFLOP/s ({result['gemm_n']}^3)")
    print(f"encoder forward at L=187: {result['encoder_gflop_per_token_187']:.3g} GFLOP/token (SPEC: ~0.23)")
    proj = result["projection"]
    parts = ", ".join(f"{k} {v:,.1f}" for k, v in proj["gpu_hours"].items())
    total = proj.get("total_gpu_hours")
    total_text = f"total {total:,.1f} GPU-hours" if total is not None else "incomplete"
    print(f"projected GPU-hours of the recipe on this GPU: {parts}; {total_text} "
          f"(paper: ~{PAPER_GH200_HOURS:.0f} GH200-hours)")  # fmt: skip
    print(f"host-sync check: {result['sync_check']}", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny ModernBERT and tiny shapes (CPU, seconds)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 on CUDA, colzero's CPU rule elsewhere")  # fmt: skip
    ap.add_argument("--attn", default="sdpa", help="attention backend (eager | sdpa | flash_attention_2)")
    ap.add_argument("--phases", default="phase1,phase2,phase3")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per phase")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 4; --tiny 1)")
    ap.add_argument("--gemm", type=int, default=None, help="GEMM probe size (default 8192; --tiny 256)")
    ap.add_argument("--out", default=None, help="folder for gpu_check.json (default benchmarks/results)")
    args = ap.parse_args(argv)
    from colzero.model.precision import resolve_precision

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # tiny ops: threads only add synchronisation (and contention)
    if args.precision == "auto":
        args.precision = "bf16" if device.type == "cuda" else resolve_precision("auto", device)
    args.workers = args.workers if args.workers is not None else (1 if args.tiny else 4)
    gemm_n = args.gemm or (256 if args.tiny else 8192)
    shapes = [s for s in (TINY if args.tiny else FULL) if s.name in args.phases.split(",")]

    print(f"device {device}, precision {args.precision}, attention {args.attn}, tiny={args.tiny}", flush=True)
    gemm = gemm_rate(device, gemm_n, torch.bfloat16, seconds=0.2 if args.tiny else 1.0)
    print(f"bf16 GEMM {gemm_n}^3: {gemm / 1e12:.3f} TFLOP/s", flush=True)
    start = time.perf_counter()
    model = build_model(args.tiny, device, args.attn)
    print(f"model built in {time.perf_counter() - start:.1f} s: "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{linear_parameters(model):,} in linear layers", flush=True)  # fmt: skip
    result: dict[str, Any] = {
        "args": vars(args),
        "device": {"type": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "torch": torch.__version__,
        "gemm_n": gemm_n,
        "gemm_flop_per_s": gemm,
        "encoder_gflop_per_token_187": encoder_flops(model.backbone.config, linear_parameters(model), 187) / 187 / 1e9,
        "phases": {},
    }  # fmt: skip
    for shape in shapes:
        print(f"{shape.name}: {asdict(shape)}", flush=True)
        try:
            result["phases"][shape.name] = run_phase(model, shape, args, device, gemm)
        except torch.cuda.OutOfMemoryError as exc:
            result["phases"][shape.name] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
        finally:
            model.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result["projection"] = project_hours(result["phases"])
    result["sync_check"] = sync_check(device, args.tiny)
    result["elapsed_s"] = time.perf_counter() - start
    print_report(result)
    out_dir = Path(args.out) if args.out else HERE / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_check.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("path:", path, flush=True)
    return result


if __name__ == "__main__":
    main()
