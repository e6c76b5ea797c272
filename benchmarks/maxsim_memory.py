"""Memory of MaxSim scoring: the forward at a GradCache chunk's shape, and what the backward keeps.

1. Forward: ``--queries`` x 16,384 documents (39 x 187 tokens, dim 128) through
   :func:`colzero.scoring.maxsim.maxsim_all_pairs` with a similarity budget, in a fresh
   subprocess (peak = ru_maxrss of that process; the inputs themselves are reported separately);
   checks the peak stays under ``--limit-gb`` of scoring overhead above the inputs, and prints the
   size of the tensor PyLate's ColBERT scores would materialise (queries x documents x Lq x Ld).

2. Backward, before/after: for each of ``--backward-queries`` (x ``--backward-documents``
   documents, same token shapes, ``--backward-budget-mb`` similarity budget), the bytes autograd
   keeps for backward beyond the inputs' own storages (``saved_tensors_hooks`` accounting), for
   the previous implementation (plain autograd through ``torch.max(dim)`` per chunk, which keeps
   int64 argmax indices for every (query, position, document)) and for the current one (custom
   autograd function: saves only its inputs, recomputes each chunk in backward); plus the peak
   RSS of forward + backward of each, each in a fresh subprocess. The bytes the previous
   implementation would keep at the 8-GPU phase-1 shape (2,048 queries x 39 vs 16,384 documents
   per rank) and at the paper's single-GPU batch (16,384 x 16,384) are printed from its formula
   8 * Nq * Lq * Nd (the same formula the measured rows follow).

    python benchmarks/maxsim_memory.py [--queries 512] [--documents 16384] [--budget-gb 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

FORWARD_CHILD = r"""
import json, resource, sys, time
import torch
import torch.nn.functional as F
from colzero.scoring.maxsim import maxsim_all_pairs
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
q = F.normalize(torch.randn(cfg['queries'], cfg['lq'], cfg['dim']), dim=-1)
d = torch.randn(cfg['documents'], cfg['ld'], cfg['dim'])
d = F.normalize(d, dim=-1, out=d)
mask = torch.rand(cfg['documents'], cfg['ld']) < 0.8
base = rss_mb()
t = time.perf_counter()
scores = maxsim_all_pairs(q, d, mask, budget_bytes=int(cfg['budget_gb'] * 1024**3))
elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print('RESULT ' + json.dumps({'seconds': elapsed, 'peak_rss_mb': peak, 'inputs_rss_mb': base,
      'scores_shape': list(scores.shape), 'finite': bool(torch.isfinite(scores).all())}), flush=True)
"""

BACKWARD_CHILD = r"""
import json, resource, sys, time
import torch
import torch.nn.functional as F
sys.path.insert(0, sys.argv[2])
from maxsim_memory import legacy_all_pairs, saved_bytes
from colzero.scoring.maxsim import maxsim_all_pairs
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
q = F.normalize(torch.randn(cfg['nq'], cfg['lq'], cfg['dim']), dim=-1).requires_grad_()
d = F.normalize(torch.randn(cfg['nd'], cfg['ld'], cfg['dim']), dim=-1).requires_grad_()
dm = torch.rand(cfg['nd'], cfg['ld']) < 0.8
qm = torch.rand(cfg['nq'], cfg['lq']) < 0.9
fn = legacy_all_pairs if cfg['impl'] == 'legacy' else maxsim_all_pairs
budget = int(cfg['budget_mb'] * 1024**2)
base = rss_mb()
t = time.perf_counter()
scores, kept = saved_bytes(lambda: fn(q, d, dm, qm, budget_bytes=budget), q, d, dm, qm)
after_forward = rss_mb()
scores.logsumexp(dim=1).sum().backward()
elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print('RESULT ' + json.dumps({'seconds': elapsed, 'kept_bytes': kept, 'inputs_rss_mb': base,
      'after_forward_rss_mb': after_forward, 'peak_rss_mb': peak}), flush=True)
"""


def legacy_all_pairs(q, d, dm, qm, *, budget_bytes):
    """The previous implementation: plain autograd through ``torch.max(dim)`` per chunk."""
    from colzero.scoring.maxsim import all_pairs_chunks, budget_elements

    nq, lq, dim = q.shape
    nd, ld, _ = d.shape
    qc, dc = all_pairs_chunks(nq, nd, lq, ld, budget_elements(budget_bytes, q.dtype))
    rows = []
    for qs in range(0, nq, qc):
        flat_q = q[qs : qs + qc].reshape(-1, dim)
        cols = []
        for ds in range(0, nd, dc):
            chunk = d[ds : ds + dc]
            sim = (flat_q @ chunk.reshape(-1, dim).T).view(-1, lq, chunk.shape[0], ld)
            sim = sim.masked_fill_(~dm[ds : ds + dc].view(1, 1, -1, ld), torch.finfo(sim.dtype).min)
            best = sim.max(dim=-1).values.masked_fill(~qm[qs : qs + qc].unsqueeze(-1), 0)
            cols.append(best.sum(dim=-2, dtype=torch.float32))
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows)


def saved_bytes(fn, *inputs) -> tuple[torch.Tensor, int]:
    """``fn()`` and the bytes of the storages autograd keeps for its backward beyond ``inputs``'."""
    own = {t.untyped_storage().data_ptr() for t in inputs}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(kept.values())


def run_child(code: str, cfg: dict, threads: int, *extra: str) -> dict:
    # this checkout's colzero first, whatever is installed
    path = os.pathsep.join(p for p in (str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg), *extra], capture_output=True, text=True, env=env
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[0][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--queries",
        type=int,
        default=8,
        help="512 is the real chunk (64x the default compute, ~12 min on 2 AVX2 cores); memory per similarity chunk is the same",
    )
    ap.add_argument("--documents", type=int, default=16384)
    ap.add_argument("--lq", type=int, default=39)
    ap.add_argument("--ld", type=int, default=187)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--budget-gb", type=float, default=0.5, help="maxsim similarity chunk budget")
    ap.add_argument("--limit-gb", type=float, default=2.0, help="allowed scoring memory above the inputs")
    ap.add_argument("--backward-queries", type=int, nargs="*", default=[4, 16, 64])
    ap.add_argument("--backward-documents", type=int, default=256)
    ap.add_argument("--backward-budget-mb", type=float, default=64.0)
    ap.add_argument("--skip-forward", action="store_true", help="only the backward before/after part")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from _common import print_table, write_result

    cfg = vars(args)
    result: dict = {"args": cfg}
    if not args.skip_forward:
        r = run_child(FORWARD_CHILD, cfg, args.threads)
        overhead = r["peak_rss_mb"] - r["inputs_rss_mb"]
        full = args.queries * args.documents * args.lq * args.ld
        r.update(scoring_overhead_mb=overhead, within_limit=overhead <= args.limit_gb * 1024,
                 pylate_fp32_gb=full * 4 / 1e9, pylate_bf16_gb=full * 2 / 1e9)  # fmt: skip
        print_table(
            ["shape", "budget GB", "seconds", "inputs MB", "peak RSS MB", "scoring overhead MB", f"<= {args.limit_gb} GB"],
            [[f"{args.queries}x{args.documents}x{args.lq}x{args.ld}x{args.dim}", args.budget_gb, f"{r['seconds']:.1f}",
              f"{r['inputs_rss_mb']:.0f}", f"{r['peak_rss_mb']:.0f}", f"{overhead:.0f}", r["within_limit"]]],
        )  # fmt: skip
        print(f"PyLate-style full similarity tensor for this chunk: {r['pylate_fp32_gb']:.0f} GB fp32 / "
              f"{r['pylate_bf16_gb']:.0f} GB bf16 (not allocated)", flush=True)  # fmt: skip
        result["forward"] = r

    rows, backward = [], []
    for nq in args.backward_queries:
        for impl in ("legacy", "current"):
            bcfg = dict(nq=nq, nd=args.backward_documents, lq=args.lq, ld=args.ld, dim=args.dim,
                        budget_mb=args.backward_budget_mb, impl=impl)  # fmt: skip
            r = run_child(BACKWARD_CHILD, bcfg, args.threads, str(HERE))
            r.update(bcfg)
            r["formula_bytes"] = 8 * nq * args.lq * args.backward_documents if impl == "legacy" else 0
            backward.append(r)
            rows.append([impl, f"{nq}x{args.backward_documents}", f"{r['kept_bytes']:,}", f"{r['formula_bytes']:,}",
                         f"{r['peak_rss_mb'] - r['inputs_rss_mb']:.0f}", f"{r['seconds']:.1f}"])  # fmt: skip
    budget_bytes = int(args.backward_budget_mb * 1024**2)
    print(f"\nbytes kept for backward beyond the inputs (similarity chunk budget {budget_bytes:,} bytes):")
    print_table(
        [
            "implementation",
            "queries x documents",
            "kept bytes",
            "8*Nq*Lq*Nd",
            "fwd+bwd peak above inputs MB",
            "s",
        ],
        rows,
    )
    result["backward"] = backward
    shapes = {
        "phase-1 per rank of 8 (2048 x 16384)": (2048, 16384),
        "paper batch on 1 GPU (16384 x 16384)": (16384, 16384),
    }
    result["legacy_kept_gb_at_scale"] = {k: 8 * a * args.lq * b / 1e9 for k, (a, b) in shapes.items()}
    for name, gb in result["legacy_kept_gb_at_scale"].items():
        print(
            f"previous implementation would keep {gb:.1f} GB of argmax indices at {name}; current: 0 beyond inputs"
        )
    print("path:", write_result("maxsim_memory", result))


if __name__ == "__main__":
    main()
