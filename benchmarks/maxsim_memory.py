"""Memory of scoring one GradCache-sized chunk: 512 queries x 16,384 documents (39 x 187 tokens,
dim 128) through :func:`colzero.scoring.maxsim.maxsim_all_pairs` with a similarity budget.

Runs the scoring in a fresh subprocess (peak = ru_maxrss of that process; the inputs themselves
are 512*39*128*4 + 16384*187*128*4 bytes ~ 1.6 GB fp32 and are reported separately), checks the
peak stays under ``--limit-gb`` (default 2 GB of scoring overhead above the inputs), and prints the
size of the tensor PyLate's ColBERT scores would materialise for the same shapes
(queries x documents x Lq x Ld) without allocating it.

    python benchmarks/maxsim_memory.py [--queries 512] [--documents 16384] [--budget-gb 0.5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
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
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from _common import print_table, write_result

    cfg = vars(args)
    env = {"OMP_NUM_THREADS": str(args.threads), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    r = json.loads(lines[0][7:])
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
          f"{r['pylate_bf16_gb']:.0f} GB bf16 (not allocated)")  # fmt: skip
    print("path:", write_result("maxsim_memory", {"args": cfg, "result": r}))


if __name__ == "__main__":
    main()
