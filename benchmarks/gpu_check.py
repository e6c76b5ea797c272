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

Runs (``--runs``, default all four): every phase with each *encoder* (``padded``: transformers'
forward on padded batches, ``packing="off"``, today's path; ``packed``: colzero's packed encoder,
``packing="auto"``, :mod:`colzero.model.packed`) and each *length setting* (``full``: documents
fill their length, as above; ``real``: query and document lengths drawn from
``benchmarks/data/lengths.json``, the token counts of SciFact title/abstract pairs for phase 1 and of
MS MARCO-like passages for phases 2-3, written by ``benchmarks/length_histograms.py``). The
top-level ``phases`` and ``projection`` keys are those of the ``--primary`` run (``packed/full``);
``runs[NAME]`` holds every run's phases and projection. Per phase, beside the FLOP fractions above:

    real tokens = the positions the encoder must compute (attended tokens; FA-compat queries do not
                  compute their expansion positions), padded tokens = rows x batch width
    useful_real = 3 * (encoder forward of the real tokens) + 3 * S
    fraction_of_gemm_useful_real = useful_real / step time / GEMM rate
    encoder_fraction_of_gemm = passes * (encoder forward, padded shapes) / encoder time / GEMM rate
                               (passes = 4 under GradCache, else 3), and ``_real`` on real tokens

Loss paths: a run named ``.../today`` computes the loss as before the fused MaxSim backend (the
chunked backend under bf16 autocast, ``maxsim_backend="chunked", score_precision="autocast"``); the
others use the defaults (the fused Triton backend on CUDA, MaxSim accumulation and the InfoNCE / KL
in fp32). The default runs put today's whole path (``padded/full/today``: padded encoder, chunked
loss) and the new one (``packed/full``) in the same process on the same card; ``speedups`` holds
their step, encoder, loss and peak-memory ratios per phase and length setting. The runs of
``--profile-runs`` take one more (untimed) step per phase under ``torch.profiler`` and save the ten
operators / kernels with the most device time (``top_kernels``).

The *loss check* (``--loss-check``, first) runs :func:`maxsim_kernels.run`: the phase-1 loss on
cached embeddings (MaxSim + InfoNCE, forward and backward) along today's path, the fused backend
(after a sweep of its tile sizes) and the peers' kernels (flash-maxsim, late-interaction-kernels,
when installed), each with MaxSim's FLOP rate on the real positions over the GEMM rate, its peak
memory above the inputs and its error against the fp32 reference.

The JSON is written twice: ``gpu_check.json`` and ``<date>-<card>.json`` (with the card, torch,
transformers, the commit and every row), the name under which it is committed in
``benchmarks/results/gpu/``.

The *kernel check* (``--kernel-check``, on by default) runs the encoder forward and backward on one
batch of real-length phase-2 documents in every available way (padded sdpa; packed with the
varlen, flex and bucketed-sdpa kernels, bf16 autocast with the fp32 or the bf16 residual stream;
packed sdpa in fp32, which must equal the padded fp32 forward to float rounding) and reports each one's time and its error against the padded fp32 forward: the
maximum absolute vector difference, the smallest cosine, and the gradient's relative norm error.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR           # on a GPU (--budget 270 s)
    PYTHONPATH=src python3 benchmarks/gpu_check.py --tiny --out DIR    # CPU, tiny model, seconds

Needs only torch, transformers, tokenizers, safetensors, numpy, pyarrow (and colzero's source).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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
LENGTHS = HERE / "data" / "lengths.json"

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


@functools.cache
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


class LengthSampler:
    """Token counts per row drawn from ``benchmarks/data/lengths.json`` (one phase's query and
    document histograms), scaled to ``shape``'s lengths when they differ (``--tiny``)."""

    def __init__(self, shape: PhaseShape, path: Path = LENGTHS) -> None:
        entry = json.loads(path.read_text())["phases"][shape.name]
        self.tables = {}
        for role, full, own in (
            ("query", entry["query_length"], shape.query_length),
            ("document", entry["document_length"], shape.document_length),
        ):
            hist = entry[role]["histogram"]
            values = [max(3, min(own, round(int(k) * own / full))) for k in hist]
            self.tables[role] = (values, [int(v) for v in hist.values()])

    def draw(self, rng: random.Random, role: str) -> int:
        values, weights = self.tables[role]
        return rng.choices(values, weights)[0]


class _SyntheticSource:
    """An in-memory stand-in for a training source (``examples(rows)``, ``len``): deterministic
    random texts over the tokenizer's words, documents filling their length (``lengths=None``) or
    with token counts drawn by a :class:`LengthSampler`. Everything else on the data path is
    colzero's own: the same-source sampler, the DataLoader request plan, the worker-side reader
    and the Collator (the GPU machine has no ``datasets`` for Arrow tables)."""

    def __init__(
        self,
        shape: PhaseShape,
        n_words: int,
        n_examples: int,
        seed: int,
        lengths: LengthSampler | None = None,
    ) -> None:
        self.shape, self.n_words, self.n, self.seed, self.lengths = shape, n_words, n_examples, seed, lengths

    def __len__(self) -> int:
        return self.n

    def _text(self, rng: random.Random, n: int) -> str:
        return " ".join(f"w{rng.randrange(self.n_words)}" for _ in range(n))

    def examples(self, rows):
        from colzero.data.sources import ContrastiveExample, DistillationExample

        s, out = self.shape, []
        for index in rows:
            rng = random.Random(self.seed * 1_000_003 + int(index))
            if self.lengths is None:
                query = self._text(rng, rng.randint(3, max(3, s.query_length - 5)))
                docs = [self._text(rng, s.document_length) for _ in range(s.docs_per_query)]
            else:  # words = tokens - [CLS], marker, [SEP]
                query = self._text(rng, max(1, self.lengths.draw(rng, "query") - 3))
                docs = [self._text(rng, max(1, self.lengths.draw(rng, "document") - 3))
                        for _ in range(s.docs_per_query)]  # fmt: skip
            if s.loss == "distillation":
                out.append(DistillationExample(query, docs, [rng.gauss(0.0, 1.0) for _ in docs]))
            else:
                out.append(ContrastiveExample(query, docs[0], docs[1:]))
        return out


def synthetic_batches(
    model, shape: PhaseShape, n_batches: int, workers: int, seed: int = 0, lengths: str = "full"
) -> Iterator[Any]:
    """This rank's tokenised batches (``shape.queries`` examples each) from colzero's input
    pipeline (:func:`colzero.data.loader.input_pipeline`: sampler-owned order, ``workers``
    DataLoader processes that read, tokenise and collate, pinned memory on CUDA) over an
    in-memory synthetic source (``lengths``: ``"full"`` or ``"real"``, module docstring)."""
    from colzero.data.collate import Collator
    from colzero.data.loader import input_pipeline
    from colzero.data.sampler import SameSourceBatchSampler

    n_words = len(model.tokenizer) - len(SPECIALS) - 2
    sampler_of_lengths = LengthSampler(shape) if lengths == "real" else None
    source = _SyntheticSource(shape, n_words, n_batches * shape.queries, seed, sampler_of_lengths)
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


LOSS_PATHS = {  # name: (maxsim_backend, score_precision)
    "fused": ("auto", "fp32"),  # the defaults: fused MaxSim on CUDA, scores and loss in fp32
    "today": ("chunked", "autocast"),  # the path before the fused backend: chunked, under autocast
}


def build_loss(model, shape: PhaseShape, keep_graphs: int = 0, loss_path: str = "fused"):
    from colzero.losses import CachedContrastive, Contrastive, Distillation

    backend, precision = LOSS_PATHS[loss_path]
    common = {"maxsim_backend": backend, "score_precision": precision}
    if shape.loss == "cached_contrastive":
        return CachedContrastive(
            model,
            mini_batch_size=shape.mini_batch,
            temperature=shape.temperature,
            keep_graphs=keep_graphs,
            **common,
        )
    if shape.loss == "contrastive":
        return Contrastive(model, temperature=shape.temperature, **common)
    return Distillation(model, **common)


def top_kernels(prof, device: torch.device, n: int = 10) -> list[dict[str, Any]]:
    """The ``n`` operators / kernels with the most self time on the device (CPU: on the host)."""
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events) or 1.0
    return [
        {
            "name": e.key[:160],
            "self_ms": getattr(e, attr) / 1e3,
            "share": getattr(e, attr) / total,
            "calls": e.count,
        }
        for e in events[:n]
    ]


def computed_lengths(model, part, role: str) -> list[int]:
    """Tokens per row the encoder must compute: the attended ones, and the query-expansion
    positions too where they are scored without FA-compat (``ColBERT.forward``)."""
    cfg = model.config
    if role == "query" and cfg.do_query_expansion and not cfg.flash_attention_compat:
        return [part.input_ids.shape[1]] * part.input_ids.shape[0]
    return part.attention_mask.sum(1).tolist()


def step_flops(model, shape: PhaseShape, batches: list[Any]) -> dict[str, float]:
    """Useful and executed FLOPs of one optimizer step from the batches' shapes (``encoder_forward``:
    padded shapes; ``encoder_forward_real``: the real tokens of :func:`computed_lengths`)."""
    encoder = 0.0
    encoder_real = 0.0
    tokens = {"padded": 0, "real": 0}
    maxsim = 0.0
    dim = model.config.embedding_dim
    n_linear = linear_parameters(model)
    cfg = model.backbone.config
    for batch in batches:
        parts = [batch.queries, batch.documents] if shape.loss == "distillation" else [
            batch.queries, batch.positives, batch.negatives]  # fmt: skip
        for i, part in enumerate(parts):
            if part is not None:
                n, length = part.input_ids.shape
                encoder += n * encoder_flops(cfg, n_linear, length)
                real = computed_lengths(model, part, "query" if i == 0 else "document")
                encoder_real += sum(encoder_flops(cfg, n_linear, int(x)) for x in real)
                tokens["padded"] += n * length
                tokens["real"] += int(sum(real))
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
        "encoder_forward_real": encoder_real,
        "encoder_passes": encoder_passes,
        "maxsim_forward": maxsim,
        "useful": 3 * encoder + 3 * maxsim,
        "useful_real": 3 * encoder_real + 3 * maxsim,
        "executed": encoder_passes * encoder + 4 * maxsim,
        "tokens_padded": tokens["padded"],
        "tokens_real": tokens["real"],
    }


def run_phase(
    model,
    shape: PhaseShape,
    args,
    device: torch.device,
    gemm: float,
    lengths: str = "full",
    keep_graphs: int = 0,
    loss_path: str = "fused",
    profile: bool = False,
) -> dict[str, Any]:
    """Warm-up + timed optimizer steps of one phase; returns the measurements. ``profile``: one more
    step under ``torch.profiler`` for the top kernels (not timed)."""
    model.config.query_length = shape.query_length
    model.config.document_length = shape.document_length
    loss_fn = build_loss(model, shape, keep_graphs, loss_path).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    n_steps = args.warmup + args.steps
    n_batches = (n_steps + int(profile)) * shape.accumulation
    batches = synthetic_batches(model, shape, n_batches, args.workers, lengths=lengths)
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
        kernels = None
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as profiler

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profiler(activities=activities) as prof:
                for _ in range(shape.accumulation):
                    batch = batch_to(next(batches), device)
                    with precision_context(device, args.precision):
                        loss = loss_fn(batch)
                    (loss / shape.accumulation).backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize()
            kernels = top_kernels(prof, device)
    step_s = statistics.median(s["total"] for s in steps)
    flops = {k: statistics.median(s["flops"][k] for s in steps) for k in steps[0]["flops"]}
    per_step = shape.queries * shape.accumulation
    encoder_s = statistics.median(s.get("encoder", 0.0) for s in steps)
    passes = flops["encoder_passes"]
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
        "fraction_of_gemm_useful_real": flops["useful_real"] / step_s / gemm,
        "encoder_fraction_of_gemm": passes * flops["encoder_forward"] / max(encoder_s, 1e-12) / gemm,
        "encoder_fraction_of_gemm_real": passes * flops["encoder_forward_real"] / max(encoder_s, 1e-12) / gemm,
        "real_token_fraction": flops["tokens_real"] / max(1, flops["tokens_padded"]),
        "losses": [float(x) for x in losses],
        "steps": steps,
    }  # fmt: skip
    if kernels is not None:
        out["top_kernels"] = kernels
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
    result: dict[str, Any] = {}
    per_query = nd // nq
    d_nway, dm_nway = (
        d[: nq * per_query].view(nq, per_query, ld, 128),
        dm[: nq * per_query].view(nq, per_query, ld),
    )
    checks: dict[str, Any] = {}
    for backend in ("fused", "chunked"):
        checks[f"maxsim_all_pairs[{backend}]"] = functools.partial(
            lambda b: maxsim_all_pairs(q, d, dm, qm, budget_bytes=64 * 2**20, backend=b).sum(), backend
        )
        checks[f"maxsim_nway[{backend}]"] = functools.partial(
            lambda b: maxsim_nway(q, d_nway, dm_nway, qm, backend=b).sum(), backend
        )
        loss_fn = Contrastive(torch.nn.Identity(), temperature=0.02, maxsim_backend=backend).to(device)
        checks[f"infonce_on_cached_embeddings[{backend}]"] = functools.partial(
            lambda fn: fn.loss_from_embeddings(q, qm, d[:nq], dm[:nq], d[nq:], dm[nq:]), loss_fn)  # fmt: skip
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


# ---------------------------------------------------------------------------- encoder kernels


KERNEL_WAYS = [  # (name, packing, precision, residual)
    ("padded sdpa bf16", "off", "bf16", "fp32"),
    ("packed varlen bf16", "varlen", "bf16", "fp32"),
    ("packed varlen bf16 bf16-residual", "varlen", "bf16", "autocast"),
    ("packed flex bf16", "flex", "bf16", "fp32"),
    ("packed sdpa bf16", "sdpa", "bf16", "fp32"),
    ("packed sdpa bf16 bf16-residual", "sdpa", "bf16", "autocast"),
    ("packed sdpa fp32", "sdpa", "fp32", "fp32"),
]


def kernel_availability(device: torch.device) -> dict[str, Any]:
    """What this torch offers the packed encoder, and what ``packing="auto"`` picks here for a
    bf16 global layer and a bf16 sliding-window layer (half-width 64) of full-length documents."""
    from colzero.model import attention

    common = {"query_only": False, "contiguous": True, "dropout": 0.0}
    return {
        "varlen_attn": attention.varlen_function() is not None,
        "varlen_attn_window": attention.varlen_has_window(),
        "flex_attention": attention.flex_available(),
        "auto_global_layer": attention.choose_kernel("auto", device, torch.bfloat16, window=None, **common),
        "auto_sliding_layer": attention.choose_kernel("auto", device, torch.bfloat16, window=64, **common),
    }


def kernel_check(
    model, device: torch.device, tiny: bool, ways: list[str] | None, repeats: int = 3
) -> dict[str, Any]:
    """Encoder forward + backward (model + projection) on one batch of real-length phase-2
    documents, every way of :data:`KERNEL_WAYS` that runs here: median seconds and the error
    against the padded fp32 forward (module docstring). A way that cannot run records its error."""
    shape = (TINY if tiny else FULL)[1]
    rows = 8 if tiny else 32
    rng = random.Random(1)
    sampler = LengthSampler(shape)
    n_words = len(model.tokenizer) - len(SPECIALS) - 2
    texts = [" ".join(f"w{rng.randrange(n_words)}" for _ in range(max(1, sampler.draw(rng, "document") - 3)))
             for _ in range(rows)]  # fmt: skip
    texts[0] = " ".join(f"w{rng.randrange(n_words)}" for _ in range(shape.document_length))  # one full row
    saved = (model.config.document_length, model.config.packing, model.config.residual_precision)
    model.config.document_length = shape.document_length
    batch = model.tokenize(texts, "document").to(device)
    keep = batch.attention_mask.bool()
    weights = torch.randn(int(keep.sum()), model.config.embedding_dim, device=device,
                          generator=torch.Generator(device=device).manual_seed(0))  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def once(packing: str, precision: str, residual: str) -> torch.Tensor:
        model.config.packing, model.config.residual_precision = packing, residual
        model.zero_grad(set_to_none=True)
        with precision_context(device, precision):
            vectors = model(**batch.model_inputs(), role="document")
        (vectors[keep].float() * weights).sum().backward()
        return vectors.detach().float()

    def grads() -> torch.Tensor:
        return torch.cat([p.grad.float().flatten() for p in params if p.grad is not None])

    out: dict[str, Any] = {
        "rows": rows,
        "padded_tokens": int(batch.input_ids.numel()),
        "real_tokens": int(keep.sum()),
        "availability": kernel_availability(device),
        "ways": {},
    }
    try:
        model.train()
        ref = once("off", "fp32", "fp32")
        ref_grad = grads()
        for name, packing, precision, residual in KERNEL_WAYS:
            if ways is not None and name not in ways:
                continue
            try:
                once(packing, precision, residual)  # warm-up (flex compiles here)
                times = []
                for _ in range(repeats):
                    sync()
                    start = time.perf_counter()
                    vectors = once(packing, precision, residual)
                    sync()
                    times.append(time.perf_counter() - start)
                g = grads()
                cos = F.cosine_similarity(vectors[keep], ref[keep], dim=-1)
                out["ways"][name] = {
                    "seconds": statistics.median(times),
                    "max_abs_err": float((vectors[keep] - ref[keep]).abs().max()),
                    "min_cos": float(cos.min()),
                    "grad_rel_err": float((g - ref_grad).norm() / ref_grad.norm()),
                }
            except Exception as exc:  # a kernel this torch / device cannot run
                out["ways"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            print(f"  kernel check {name}: {out['ways'][name]}", flush=True)
    finally:
        model.config.document_length, model.config.packing, model.config.residual_precision = saved
        model.zero_grad(set_to_none=True)
    return out


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

    mem = "peak GPU GB" if result["device"]["type"] == "cuda" else "peak RSS GB"
    gemm = result["gemm_flop_per_s"]
    for run_name, run in result["runs"].items():
        rows = []
        for name, r in run["phases"].items():
            if "error" in r:
                rows.append([name, r["error"]] + [""] * 12)
                continue
            split = r["split_s"]
            memory = r.get("peak_allocated_gb", r.get("peak_rss_gb", float("nan")))
            rate = (
                f"{r['pairs_per_s']:,.1f} pairs/s" if name == "phase1" else f"{r['queries_per_s']:,.2f} q/s"
            )
            rows.append([
                name, f"{r['step_s']:.3f}", rate, f"{memory:.2f}",
                f"{split['data']:.3f}", f"{split['encoder']:.3f}", f"{split['loss']:.3f}", f"{split['optimizer']:.3f}",
                f"{100 * r['real_token_fraction']:.0f}%",
                f"{100 * r['fraction_of_gemm_executed']:.1f}%", f"{100 * r['fraction_of_gemm_useful']:.1f}%",
                f"{100 * r['fraction_of_gemm_useful_real']:.1f}%",
                f"{100 * r['encoder_fraction_of_gemm']:.1f}%", f"{100 * r['encoder_fraction_of_gemm_real']:.1f}%",
            ])  # fmt: skip
        print(
            f"\n{run_name} ({run['encoder']} encoder, packing={run['packing']}, {run['lengths']} lengths)",
            flush=True,
        )
        print_table(
            ["phase", "step s", "per GPU", mem, "data s", "encoder s", "loss s", "optim s", "real tok",
             "exec/GEMM", "useful/GEMM", "useful/GEMM real", "enc/GEMM", "enc/GEMM real"],
            rows,
        )  # fmt: skip
    print(f"bf16 GEMM rate measured in this run: {gemm / 1e12:.2f} TFLOP/s ({result['gemm_n']}^3)")
    print(f"encoder forward at L=187: {result['encoder_gflop_per_token_187']:.3g} GFLOP/token (SPEC: ~0.23)")
    for run_name, run in result["runs"].items():
        proj = run["projection"]
        parts = ", ".join(f"{k} {v:,.1f}" for k, v in proj["gpu_hours"].items())
        total = proj.get("total_gpu_hours")
        total_text = f"total {total:,.1f} GPU-hours" if total is not None else "incomplete"
        print(f"projected GPU-hours of the recipe on this GPU, {run_name}: {parts}; {total_text} "
              f"(paper: ~{PAPER_GH200_HOURS:.0f} GH200-hours)")  # fmt: skip
    check = result.get("kernel_check")
    if check:
        print(f"\nencoder kernels on {check['rows']} real-length phase-2 documents ({check['real_tokens']} of "
              f"{check['padded_tokens']} tokens real), forward + backward, error vs padded fp32; "
              f"available: {check['availability']}")  # fmt: skip
        rows = []
        for name, w in check["ways"].items():
            if "error" in w:
                rows.append([name, w["error"], "", "", ""])
            else:
                rows.append([name, f"{w['seconds'] * 1e3:.1f}", f"{w['max_abs_err']:.2e}", f"{w['min_cos']:.6f}",
                             f"{w['grad_rel_err']:.2e}"])  # fmt: skip
        print_table(["way", "ms", "max |v - v_fp32|", "min cos", "grad rel err"], rows)
    for run_name, run in result["runs"].items():
        for phase, r in run["phases"].items():
            for i, k in enumerate(r.get("top_kernels", [])[:5]):
                head = (
                    f"top kernels {run_name} {phase}:"
                    if i == 0
                    else " " * len(f"top kernels {run_name} {phase}:")
                )
                print(f"{head} {k['self_ms']:9.2f} ms {100 * k['share']:5.1f}%  {k['name'][:90]}", flush=True)
    for name, value in result.get("speedups", {}).items():
        print(f"{name}: {value:.2f}x", flush=True)
    print(f"host-sync check: {result['sync_check']}", flush=True)


def loss_check(device: torch.device, gemm: float, tiny: bool, sweep: bool) -> dict[str, Any]:
    """:func:`maxsim_kernels.run`: the phase-1 loss on cached embeddings along every path (today's
    chunked bf16 autocast, the fused backend, flash-maxsim, late-interaction-kernels)."""
    sys.path.insert(0, str(HERE))
    import maxsim_kernels

    shape = maxsim_kernels.TINY if tiny else maxsim_kernels.LossShape()
    check = (8, 16) if tiny else (64, 512)
    try:
        result = maxsim_kernels.run(
            device, gemm, shape, repeats=3, check=check, sweep=sweep and device.type == "cuda"
        )
    except Exception as exc:  # the rest of the check still runs
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    maxsim_kernels.print_rows(result)
    return result


def speedups(runs: dict[str, Any]) -> dict[str, float]:
    """Step-time ratios of today's path (padded encoder, chunked loss) to the new one, per phase and
    length setting, and of the loss and encoder parts of phase 1."""
    out: dict[str, float] = {}
    for lengths in ("full", "real"):
        old, new = runs.get(f"padded/{lengths}/today"), runs.get(f"packed/{lengths}")
        if not old or not new:
            continue
        for phase, r in new["phases"].items():
            o = old["phases"].get(phase, {})
            if "step_s" in r and "step_s" in o:
                out[f"{phase} {lengths}: step, today / new"] = o["step_s"] / r["step_s"]
                for part in ("encoder", "loss"):
                    if r["split_s"].get(part) and o["split_s"].get(part):
                        out[f"{phase} {lengths}: {part}, today / new"] = (
                            o["split_s"][part] / r["split_s"][part]
                        )
            if "peak_allocated_gb" in r and "peak_allocated_gb" in o:
                out[f"{phase} {lengths}: peak memory, new / today"] = (
                    r["peak_allocated_gb"] / o["peak_allocated_gb"]
                )
    return out


def git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record_name(result: dict[str, Any]) -> str:
    """``<date>-<card>.json``, the name under which a GPU run is committed in ``benchmarks/results/gpu/``."""
    card = result["device"]["name"]
    short = next((w for w in card.replace("-", " ").split() if any(c.isdigit() for c in w)), card)
    return f"{result['date']}-{''.join(c for c in short if c.isalnum()) or 'device'}.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny ModernBERT and tiny shapes (CPU, seconds)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 on CUDA, colzero's CPU rule elsewhere")  # fmt: skip
    ap.add_argument("--attn", default="sdpa", help="attention backend (eager | sdpa | flash_attention_2)")
    ap.add_argument("--phases", default="phase1,phase2,phase3")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per phase and run")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 4; --tiny 1)")
    ap.add_argument("--gemm", type=int, default=None, help="GEMM probe size (default 8192; --tiny 256)")
    ap.add_argument("--out", default=None, help="folder for gpu_check.json (default benchmarks/results)")
    ap.add_argument(
        "--runs",
        default="padded/full/today,packed/full,packed/real,padded/real/today,packed/full/keep2",
        help="ENCODER/LENGTHS[/keepK][/today] (encoder: padded | packed | packed:KERNEL; lengths: full | real; "
        "keepK: GradCache keeps K chunks' graphs, phase 1 only; today: the loss path before the fused "
        "MaxSim, chunked under autocast; else the default fused backend with fp32 scores)",
    )
    ap.add_argument(
        "--profile-runs",
        default="padded/full/today,packed/full",
        help="runs whose phases get one more step under torch.profiler (top 10 kernels saved)",
    )
    ap.add_argument(
        "--loss-check",
        choices=["sweep", "plain", "none"],
        default="sweep",
        help="benchmarks/maxsim_kernels.py's phase-1 loss rows (today, fused, the peers) "
        "first; 'sweep' also times the fused tile sizes (GPU only)",
    )
    ap.add_argument(
        "--commit",
        default=os.environ.get("COLZERO_COMMIT"),
        help="the commit measured (default: $COLZERO_COMMIT or git rev-parse HEAD)",
    )
    ap.add_argument("--primary", default="packed/full", help="the run reported under the top-level keys")
    ap.add_argument("--budget", type=float, default=270.0,
                    help="seconds after which the remaining phases are skipped (recorded as skipped); "
                         "the runs go in --runs order, most important first")  # fmt: skip
    ap.add_argument(
        "--residual",
        choices=["fp32", "autocast"],
        default="fp32",
        help="the packed encoder's residual stream under autocast",
    )
    ap.add_argument("--kernel-check", default="all",
                    help="'all', 'none', or comma-separated names of KERNEL_WAYS to time and compare")  # fmt: skip
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
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": args.commit or git_commit(),
        "args": vars(args),
        "device": {"type": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "gemm_n": gemm_n,
        "gemm_flop_per_s": gemm,
        "encoder_gflop_per_token_187": encoder_flops(model.backbone.config, linear_parameters(model), 187) / 187 / 1e9,
        "lengths_file": json.loads(LENGTHS.read_text())["tokenizer"],
        "kernels": kernel_availability(device),
        "runs": {},
    }  # fmt: skip
    if args.loss_check != "none":
        print("loss check (benchmarks/maxsim_kernels.py)", flush=True)
        result["loss_check"] = loss_check(device, gemm, args.tiny, sweep=args.loss_check == "sweep")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.kernel_check != "none":
        print("kernel check", flush=True)
        ways = None if args.kernel_check == "all" else args.kernel_check.split(",")
        result["kernel_check"] = kernel_check(model, device, args.tiny, ways)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for run_name in args.runs.split(","):
        encoder, lengths, *extra = run_name.split("/")
        keep = next((int(e.removeprefix("keep")) for e in extra if e.startswith("keep")), 0)
        loss_path = "today" if "today" in extra else "fused"
        packing = "off" if encoder == "padded" else (encoder.split(":")[1] if ":" in encoder else "auto")
        model.config.packing, model.config.residual_precision = packing, args.residual
        run: dict[str, Any] = {"encoder": encoder.split(":")[0], "packing": packing, "lengths": lengths,
                               "residual_precision": args.residual, "keep_graphs": keep,
                               "loss_path": loss_path, "maxsim_backend": LOSS_PATHS[loss_path][0],
                               "score_precision": LOSS_PATHS[loss_path][1],
                               "packed_runner": model.packed_architecture()[0], "phases": {}}  # fmt: skip
        profile = run_name in args.profile_runs.split(",")
        for shape in shapes:
            if keep and shape.loss != "cached_contrastive":
                continue
            if time.perf_counter() - start > args.budget:
                run["phases"][shape.name] = {"error": f"skipped: past the {args.budget:.0f} s budget"}
                continue
            print(f"{run_name} {shape.name}: {asdict(shape)}", flush=True)
            try:
                run["phases"][shape.name] = run_phase(
                    model, shape, args, device, gemm, lengths, keep, loss_path, profile
                )
            except torch.cuda.OutOfMemoryError as exc:
                run["phases"][shape.name] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
            except Exception as exc:  # a failing run (e.g. a kernel that does not compile) spares the rest
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                run["phases"][shape.name] = {"error": error}
            finally:
                model.zero_grad(set_to_none=True)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        run["projection"] = project_hours(run["phases"])
        result["runs"][run_name] = run
    primary = args.primary if args.primary in result["runs"] else next(iter(result["runs"]))
    result["primary"] = primary
    result["phases"] = result["runs"][primary]["phases"]  # the keys of earlier versions
    result["projection"] = result["runs"][primary]["projection"]
    result["projections"] = {
        name: run["projection"].get("total_gpu_hours") for name, run in result["runs"].items()
    }
    result["speedups"] = speedups(result["runs"])
    result["sync_check"] = sync_check(device, args.tiny)
    result["elapsed_s"] = time.perf_counter() - start
    print_report(result)
    out_dir = Path(args.out) if args.out else HERE / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_check.json"
    text = json.dumps(result, indent=2, default=str) + "\n"
    path.write_text(text)
    record = out_dir / record_name(result)
    record.write_text(text)  # to commit as benchmarks/results/gpu/<date>-<card>.json
    print("path:", path, "| record:", record, flush=True)
    return result


if __name__ == "__main__":
    main()
