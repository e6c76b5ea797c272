"""The training loss's MaxSim on the GPU: today's path, the fused backend and the peers' kernels.

One rank of ColBERT-Zero's phase 1 (SPEC section 3): 2,048 queries x 39 positions scored against
16,384 gathered documents x 187 tokens, InfoNCE at tau 0.02, as ``CachedContrastive`` computes it
on the cached embeddings (``Contrastive.loss_from_embeddings``), forward and backward. Inputs:

- queries: ``real`` tokens each (``--query-real``: a range; the rest of the 39 positions are the
  query-expansion positions, zero vectors under ``flash_attention_compat`` as in the paper presets);
- documents: ``--doc-real`` tokens each (title/abstract pairs fill ~98% of 187), and ~4% of their
  tokens masked as punctuation (the skiplist), so document masks are not prefixes.

Rows (each timed as the median of ``--repeats`` forward + backward passes, CUDA events):

- ``today``: the chunked backend under bf16 autocast (``score_precision="autocast"``), the path
  before the fused backend (4.61 s per step on an H200 in the 2026-11-26 GPU check);
- ``chunked-fp32``: the chunked backend with the authors' fp32 scores (``--all`` only: slow);
- ``fused``: the fused backend, fp32 scores (the new default);
- ``flash-maxsim``, ``late-interaction-kernels``: the peers' autograd kernels on the same bf16
  vectors, when installed (``pip install --no-deps`` of their wheels), with the same InfoNCE.

Each row also times MaxSim alone (``maxsim_s``: forward + backward of the scores, no InfoNCE),
reports its FLOP rate on the *real* positions (real query tokens x unmasked document tokens,
``3 x 2 x dim`` FLOPs per pair: forward and two backward products) against the bf16 GEMM rate,
its peak memory above the inputs, and its error against the float32 chunked reference on a
subset (``--check-queries`` x ``--check-docs``, every mask kind present): score and gradient
errors relative to the largest reference value. A peer that ignores masks that are not prefixes
(flash-maxsim takes lengths) is marked so.

    PYTHONPATH=src python benchmarks/maxsim_kernels.py --out DIR          # a GPU, ~1 min
    TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/maxsim_kernels.py --tiny   # CPU, seconds

``benchmarks/gpu_check.py`` calls :func:`run` and stores its rows in its JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


@dataclass
class LossShape:
    queries: int = 2048
    query_length: int = 39
    query_real: tuple[int, int] = (15, 28)  # real tokens per query (uniform), the rest expansion
    documents: int = 16384
    document_length: int = 187
    doc_real: tuple[int, int] = (170, 187)
    skiplist_fraction: float = 0.04
    dim: int = 128
    temperature: float = 0.02


#: tile sizes :func:`sweep_tiles` tries beside the defaults (colzero.scoring.fused.Tiles fields)
SWEEP_FIELDS = [
    {"rows": 64, "docs": 16},
    {"rows": 128, "tokens": 32, "docs": 32},
    {"dd_tokens": 128, "dd_rows": 32},
    {"dq_rows": 128, "warps": 4},
]

TINY = LossShape(8, 8, (3, 6), 16, 20, (10, 20), 0.1, 16)


def make_inputs(shape: LossShape, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 unit vectors rounded through bf16 (as the model's bf16 forward gives them), masks."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = F.normalize(torch.randn(shape.queries, shape.query_length, shape.dim, generator=g), dim=-1)
    q_real = torch.randint(shape.query_real[0], shape.query_real[1] + 1, (shape.queries,), generator=g)
    q[torch.arange(shape.query_length)[None] >= q_real[:, None]] = 0.0  # compat expansion positions
    d = F.normalize(torch.randn(shape.documents, shape.document_length, shape.dim, generator=g), dim=-1)
    d_real = torch.randint(shape.doc_real[0], shape.doc_real[1] + 1, (shape.documents,), generator=g)
    dm = torch.arange(shape.document_length)[None] < d_real[:, None]
    dm &= torch.rand(shape.documents, shape.document_length, generator=g) >= shape.skiplist_fraction
    dm[:, 0] = True
    return {
        "q": q.to(torch.bfloat16).float().to(device),
        "qm": torch.ones(shape.queries, shape.query_length, dtype=torch.bool, device=device),
        "d": d.to(torch.bfloat16).float().to(device),
        "dm": dm.to(device),
        "q_real": q_real.to(device),
        "d_real": d_real.to(device),
    }


def real_pairs(x: dict[str, torch.Tensor]) -> float:
    """Real query tokens x unmasked document tokens (the FLOPs that can change a score)."""
    return float(x["q_real"].sum()) * float(x["dm"].sum()) if x["q"].shape[0] else 0.0


# ---------------------------------------------------------------------------- paths


def _colzero_scores(
    backend: str, precision: str, query_rows: int | None = None
) -> Callable[..., torch.Tensor]:
    from colzero.scoring.maxsim import maxsim_all_pairs

    def scores(q, qm, d, dm):
        return maxsim_all_pairs(q, d, dm, qm, backend=backend, precision=precision, query_rows=query_rows)

    return scores


def _flash_maxsim_scores() -> Callable[..., torch.Tensor]:
    from flash_maxsim import flash_maxsim_batched_train

    def scores(q, qm, d, dm):
        # lengths only: the skiplist's holes in the document masks are not seen (marked inexact)
        q_len = (q != 0).any(-1).sum(-1).to(torch.int32)
        d_len = dm.sum(-1).to(torch.int32)
        return flash_maxsim_batched_train(
            q.to(torch.bfloat16),
            d.to(torch.bfloat16),
            shared_docs=True,
            doc_lengths=d_len,
            query_lengths=q_len,
        )

    return scores


def _lik_scores() -> Callable[..., torch.Tensor]:
    from late_interaction_kernels import maxsim

    def scores(q, qm, d, dm):
        return maxsim(q.to(torch.bfloat16), d.to(torch.bfloat16), qm, dm)

    return scores


def paths(
    include_slow: bool, query_rows: int | None = None
) -> dict[str, tuple[Callable[..., torch.Tensor], str, str]]:
    """name -> (scores function, autocast on?, note); ``query_rows``: the fused backend's row bound
    (the real query tokens, as the losses pass the attended ones under FA-compat)."""
    out: dict[str, tuple[Callable[..., torch.Tensor], str, str]] = {
        "today": (_colzero_scores("chunked", "autocast"), "bf16", "chunked backend, bf16 similarities"),
    }
    if include_slow:
        out["chunked-fp32"] = (_colzero_scores("chunked", "fp32"), "bf16", "chunked backend, fp32 scores")
    out["fused"] = (
        _colzero_scores("fused", "fp32", query_rows),
        "bf16",
        "fused backend, fp32 scores (default)",
    )
    if importlib.util.find_spec("flash_maxsim") is not None:
        out["flash-maxsim"] = (_flash_maxsim_scores(), "off", "peer; document masks as lengths only")
    if importlib.util.find_spec("late_interaction_kernels") is not None:
        out["late-interaction-kernels"] = (_lik_scores(), "off", "peer; boolean masks")
    return out


def _autocast(device: torch.device, mode: str):
    if mode == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _infonce(scores: torch.Tensor, tau: float) -> torch.Tensor:
    # the queries' positives are the first documents (as on rank 0 of a gathered batch)
    labels = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores.float() / tau, labels)


# ---------------------------------------------------------------------------- measurement


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            if self.cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                fn()
                stop.record()
                torch.cuda.synchronize()
                out.append(start.elapsed_time(stop) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        return out


def _leaves(x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return x["q"].detach().clone().requires_grad_(), x["d"].detach().clone().requires_grad_()


def _errors(fn, mode, x, device, shape: LossShape, nq: int, nd: int) -> dict[str, float]:
    """Scores / gradients against the fp32 chunked reference on a subset (relative to max |ref|)."""
    sub = {k: v[:nq] if k in ("q", "qm", "q_real") else v[:nd] for k, v in x.items()}
    out = {}
    results = []
    for f, m in ((fn, mode), (_colzero_scores("chunked", "fp32"), "off")):
        q, d = _leaves(sub)
        with _autocast(device, m):
            s = f(q, sub["qm"], d, sub["dm"])
        w = torch.sin(torch.arange(s.numel(), device=device, dtype=torch.float32).view_as(s))
        (s.float() * w).sum().backward()
        results.append((s.detach().float(), q.grad.float(), d.grad.float()))
    for name, got, want in zip(("scores", "grad_q", "grad_d"), results[0], results[1], strict=True):
        scale = want.abs().max().clamp_min(1e-30)
        out[name] = float((got - want).abs().max() / scale)
    return out


def _sweep() -> list[Any]:
    from colzero.scoring.fused import Tiles

    return [dataclasses.replace(Tiles(), **fields) for fields in SWEEP_FIELDS]


def sweep_tiles(
    device: torch.device,
    x: dict[str, torch.Tensor],
    useful: float,
    repeats: int,
    query_rows: int | None = None,
) -> dict[str, Any]:
    """The fused MaxSim (forward + backward) under the default tiles and each of :data:`SWEEP_FIELDS`; the fastest."""
    from colzero.scoring.fused import Tiles, use_tiles

    timer = _Timer(device)
    fn = _colzero_scores("fused", "fp32", query_rows)
    results = []
    for tiles in [Tiles(), *_sweep()]:

        def step():
            q, d = _leaves(x)
            with _autocast(device, "bf16"):
                s = fn(q, x["qm"], d, x["dm"])
            s.backward(torch.ones_like(s))

        with use_tiles(tiles):
            try:
                seconds = statistics.median(timer(step, repeats))
                results.append(
                    {"tiles": asdict(tiles), "maxsim_s": seconds, "real_flop_per_s": useful / seconds}
                )
            except Exception as exc:  # e.g. out of shared memory for a large tile
                results.append({"tiles": asdict(tiles), "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(f"  tiles {results[-1]}", flush=True)
    timed = [r for r in results if "maxsim_s" in r]
    best = min(timed, key=lambda r: r["maxsim_s"]) if timed else None
    return {"results": results, "best": best}


def run(
    device: torch.device,
    gemm_flop_per_s: float,
    shape: LossShape,
    repeats: int = 3,
    include_slow: bool = False,
    check: tuple[int, int] = (64, 512),
    sweep: bool = False,
) -> dict[str, Any]:
    """Measure every path (module docstring); returns ``{"shape": ..., "rows": {name: {...}}}``.
    ``sweep``: first time the fused backend under :data:`SWEEP_FIELDS`' tile sizes and measure its rows
    with the fastest."""
    from colzero.scoring.fused import Tiles, use_tiles

    x = make_inputs(shape, device)
    timer = _Timer(device)
    pairs = real_pairs(x)
    useful = 3 * 2 * pairs * shape.dim
    real_rows = int(x["q_real"].sum())  # known on the host, as the losses know the attended query tokens
    tiles_sweep = sweep_tiles(device, x, useful, max(1, repeats - 1), real_rows) if sweep else None
    best_tiles = Tiles(**tiles_sweep["best"]["tiles"]) if tiles_sweep and tiles_sweep["best"] else None
    rows: dict[str, Any] = {}
    for name, (fn, mode, note) in paths(include_slow, real_rows).items():
        row: dict[str, Any] = {"note": note}
        chosen = best_tiles if name == "fused" else None

        def tiles(chosen=chosen):
            return contextlib.nullcontext() if chosen is None else use_tiles(chosen)

        try:

            def loss_step(fn=fn, mode=mode):
                q, d = _leaves(x)
                with _autocast(device, mode):
                    loss = _infonce(fn(q, x["qm"], d, x["dm"]), shape.temperature)
                loss.backward()

            def maxsim_step(fn=fn, mode=mode):
                q, d = _leaves(x)
                with _autocast(device, mode):
                    s = fn(q, x["qm"], d, x["dm"])
                s.backward(torch.ones_like(s))

            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            with tiles():
                loss_times = timer(loss_step, repeats)
                if device.type == "cuda":
                    row["peak_extra_gb"] = (torch.cuda.max_memory_allocated(device) - base) / 1e9
                maxsim_times = timer(maxsim_step, repeats)
            row["loss_s"] = statistics.median(loss_times)
            row["maxsim_s"] = statistics.median(maxsim_times)
            row["maxsim_real_flop_per_s"] = useful / row["maxsim_s"]
            row["maxsim_fraction_of_gemm"] = useful / row["maxsim_s"] / gemm_flop_per_s
            with tiles():
                row["errors_vs_fp32"] = _errors(fn, mode, x, device, shape, *check)
        except Exception as exc:  # a peer that fails is a row that says so
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        rows[name] = row
        print(f"  {name}: {json.dumps(row, default=str)}", flush=True)
    if "today" in rows and "fused" in rows and "loss_s" in rows["fused"] and "loss_s" in rows["today"]:
        rows["fused"]["speedup_vs_today"] = rows["today"]["loss_s"] / rows["fused"]["loss_s"]
    return {
        "shape": asdict(shape),
        "tiles_sweep": tiles_sweep,
        "real_pairs": pairs,
        "useful_flop": useful,
        "gemm_flop_per_s": gemm_flop_per_s,
        "rows": rows,
    }


def print_rows(result: dict[str, Any]) -> None:
    sys.path.insert(0, str(HERE))
    from _common import print_table

    table = []
    for name, r in result["rows"].items():
        if "error" in r:
            table.append([name, r["error"], "", "", "", "", "", ""])
            continue
        err = r["errors_vs_fp32"]
        table.append([
            name, f"{r['loss_s']:.4f}", f"{r['maxsim_s']:.4f}", f"{r['maxsim_real_flop_per_s'] / 1e12:.1f}",
            f"{100 * r['maxsim_fraction_of_gemm']:.1f}%", f"{r.get('peak_extra_gb', float('nan')):.2f}",
            f"{err['scores']:.1e} / {err['grad_q']:.1e} / {err['grad_d']:.1e}", r["note"],
        ])  # fmt: skip
    print_table(
        ["path", "loss s", "MaxSim s", "real TFLOP/s", "of GEMM", "peak +GB", "err scores/dQ/dD", "note"],
        table,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tiny", action="store_true", help="tiny shapes (CPU: the fused backend needs TRITON_INTERPRET=1)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--all", action="store_true", help="also the chunked backend with fp32 scores (slow)")
    ap.add_argument(
        "--sweep", action="store_true", help="time the fused backend's tile sizes first, keep the best"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from gpu_check import gemm_rate

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gemm = gemm_rate(device, 256 if args.tiny else 8192, torch.bfloat16, seconds=0.2 if args.tiny else 1.0)
    result = run(device, gemm, TINY if args.tiny else LossShape(), args.repeats, args.all,
                 check=(8, 16) if args.tiny else (64, 512), sweep=args.sweep)  # fmt: skip
    print_rows(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "maxsim_kernels.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
