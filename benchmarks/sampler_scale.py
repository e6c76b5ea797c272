"""The same-source sampler at the paper's phase-1 size: 238,998,494 rows in 29 sources.

For each implementation (``new`` = keyed Feistel bijections, ``old`` = the stored-permutation sampler
this repository had before, reproduced below), global batch size (16,384 and 64) and mode (sources
in proportion to size, or weighted), a fresh subprocess measures

- plan time: constructing the sampler and producing its first batch (median of ``--repeats``; the old
  one is run once per case since it takes ~10-20 s),
- time per subsequent batch (median of 3 bursts),
- peak traced bytes (``tracemalloc``, which tracks numpy's allocations) over construct + first batch +
  the burst, and the process's peak RSS above its RSS after imports (``VmHWM - VmRSS``),
- for the new weighted sampler, the time to resume at the epoch's last step (the draw counts before it
  are recounted in bounded chunks).

Bars (issue 10): plan <= 2 s and <= 200 MB per rank. The old sampler needs ~2-3 GB at full scale; pass
``--old-scale 0.1`` to run it on sizes / 10 where memory is short (the table says which scale it used),
or ``--skip-old``.

    python benchmarks/sampler_scale.py [--world-size 1] [--repeats 3] [--old-scale 1.0] [--skip-old]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# SPEC §3: the 11 big phase-1 splits as the data card rounds them; the 18 small ones get made-up sizes
# that share the remaining 3,038,494 rows (only their total is known), so the sum is exact.
PAPER_SIZES = [
    *[66_200_000, 53_900_000, 39_400_000, 36_100_000, 10_100_000, 7_700_000, 7_600_000, 6_600_000],
    *[6_200_000, 1_300_000, 860_000],
    *[589_000, 440_000, 330_000, 280_000, 230_000, 200_000, 180_000, 140_000, 120_000],
    *[100_000, 90_000, 80_000, 70_000, 60_000, 50_000, 40_000, 20_000, 19_494],
]

CHILD = r'''
import json, statistics, sys, time, tracemalloc
import numpy as np

cfg = json.loads(sys.argv[1])


class LegacySampler:
    """The pre-issue-10 sampler (stored permutations), reduced to what the benchmark calls."""

    def __init__(self, sizes, batch_size, *, weights=None, seed=42, rank=0, world_size=1):
        self.sizes, self.batch_size, self.seed = [int(n) for n in sizes], batch_size, seed
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.rank, self.world_size, self.epoch, self.step = rank, world_size, 0, 0

    def __len__(self):
        return sum(n // self.batch_size for n in self.sizes)

    def plan(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        B = self.batch_size
        if self.weights is None:
            chunks = []
            for n in self.sizes:
                perm = rng.permutation(n)
                chunks.append([perm[i : i + B] for i in range((n // B) * B)[::B]])
            order = np.concatenate([np.full(len(c), s, dtype=np.int64) for s, c in enumerate(chunks)])
            rng.shuffle(order)
            taken = [0] * len(self.sizes)
            out = []
            for s in order:
                out.append((int(s), chunks[s][taken[s]]))
                taken[s] += 1
            return out
        p = self.weights / self.weights.sum()
        draws = rng.choice(len(self.sizes), size=len(self), p=p)
        perms = [rng.permutation(n) for n in self.sizes]
        pos = [0] * len(self.sizes)
        out = []
        for s in draws:
            s = int(s)
            if pos[s] + B > self.sizes[s]:
                perms[s] = rng.permutation(self.sizes[s])
                pos[s] = 0
            out.append((s, perms[s][pos[s] : pos[s] + B]))
            pos[s] += B
        return out

    def local_slice(self, rows):
        per = self.batch_size // self.world_size
        return rows[self.rank * per : (self.rank + 1) * per]

    def iter_epoch(self):
        plan = self.plan(self.epoch)
        while self.step < len(plan):
            source, rows = plan[self.step]
            self.step += 1
            yield source, self.local_slice(rows)


def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])


if cfg["impl"] == "new":
    from colzero.data.sampler import SameSourceBatchSampler as Sampler
else:
    Sampler = LegacySampler
sizes = cfg["sizes"]
weights = [float(n) ** 0.5 for n in sizes] if cfg["weighted"] else None
kwargs = dict(weights=weights, seed=42, rank=0, world_size=cfg["world_size"])
burst = cfg["burst"]


def plan_and_first():
    start = time.perf_counter()
    s = Sampler(sizes, cfg["batch"], **kwargs)
    it = s.iter_epoch()
    next(it)
    return time.perf_counter() - start, s, it


base_kb = status_kb("VmRSS")
plan_s, bursts = [], []
for _ in range(cfg["repeats"]):
    t, s, it = plan_and_first()
    plan_s.append(t)
    del s, it
t, s, it = plan_and_first()
for _ in range(3):
    start = time.perf_counter()
    for _ in range(burst):
        next(it)
    bursts.append((time.perf_counter() - start) / burst)
n_batches = len(s)
del s, it
rss_mb = (status_kb("VmHWM") - base_kb) / 1024

tracemalloc.start()
_, s, it = plan_and_first()
for _ in range(burst):
    next(it)
traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
tracemalloc.stop()
del s, it

resume_s = None
if cfg["impl"] == "new" and cfg["weighted"]:
    start = time.perf_counter()
    s = Sampler(sizes, cfg["batch"], **kwargs)
    s.load_state_dict({"epoch": 0, "step": len(s) - 1})
    next(s.iter_epoch())
    resume_s = time.perf_counter() - start

print(json.dumps({
    "plan_s": statistics.median(plan_s), "plan_s_all": plan_s, "per_batch_ms": 1e3 * statistics.median(bursts),
    "traced_peak_mb": traced_mb, "rss_delta_mb": rss_mb, "batches_per_epoch": n_batches,
    "resume_last_step_s": resume_s,
}))
'''


def run_case(impl: str, batch: int, weighted: bool, args: argparse.Namespace) -> dict:
    scale = 1.0 if impl == "new" else args.old_scale
    sizes = [max(batch, int(n * scale)) for n in PAPER_SIZES]
    cfg = {
        "impl": impl,
        "batch": batch,
        "weighted": weighted,
        "sizes": sizes,
        "world_size": args.world_size,
        "repeats": args.repeats if impl == "new" else 1,
        "burst": 200 if batch >= 4096 else 20_000,
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"{impl} batch {batch} weighted={weighted} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "impl": impl,
        "batch": batch,
        "mode": "weighted" if weighted else "by size",
        "rows": sum(sizes),
        "scale": scale,
        **out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=1, help="ranks; the measured one is rank 0")
    parser.add_argument("--repeats", type=int, default=3, help="plan-time repeats of the new sampler")
    parser.add_argument(
        "--old-scale", type=float, default=1.0, help="fraction of the paper sizes for the old one"
    )
    parser.add_argument("--skip-old", action="store_true")
    args = parser.parse_args()
    assert sum(PAPER_SIZES) == 238_998_494 and len(PAPER_SIZES) == 29

    from _common import print_table, write_result

    results = []
    for batch in (16_384, 64):
        for weighted in (False, True):
            for impl in ("new",) if args.skip_old else ("new", "old"):
                r = run_case(impl, batch, weighted, args)
                results.append(r)
                print(
                    f"{impl} batch {batch} {r['mode']}: plan {r['plan_s']:.3f} s, "
                    f"{r['traced_peak_mb']:.1f} MiB traced",
                    flush=True,
                )
    headers = ["impl", "batch", "mode", "rows", "plan s", "ms/batch", "traced MiB", "RSS+ MiB", "resume s"]
    rows = [
        [
            r["impl"],
            r["batch"],
            r["mode"],
            f"{r['rows']:,}",
            r["plan_s"],
            r["per_batch_ms"],
            r["traced_peak_mb"],
            r["rss_delta_mb"],
            "" if r["resume_last_step_s"] is None else r["resume_last_step_s"],
        ]
        for r in results
    ]
    print_table(headers, rows)
    ratios = []
    for r in results:
        if r["impl"] != "old":
            continue
        new = next(
            x for x in results if x["impl"] == "new" and (x["batch"], x["mode"]) == (r["batch"], r["mode"])
        )
        ratios.append(
            {
                "batch": r["batch"],
                "mode": r["mode"],
                "old_scale": r["scale"],
                "plan_time_old_over_new": r["plan_s"] / new["plan_s"],
                "traced_old_over_new": r["traced_peak_mb"] / new["traced_peak_mb"],
            }
        )
        print(
            f"batch {r['batch']} {r['mode']}: old/new plan time {ratios[-1]['plan_time_old_over_new']:.0f}x, "
            f"traced bytes {ratios[-1]['traced_old_over_new']:.0f}x (old at scale {r['scale']})"
        )
    bars = [
        {
            "batch": r["batch"],
            "mode": r["mode"],
            "plan_le_2s": r["plan_s"] <= 2.0,
            "memory_le_200MB": max(r["traced_peak_mb"], r["rss_delta_mb"]) <= 200 / 1.048576,
        }
        for r in results
        if r["impl"] == "new"
    ]
    print("bars (new):", json.dumps(bars))
    path = write_result(
        "sampler_scale",
        {
            "sizes": PAPER_SIZES,
            "world_size": args.world_size,
            "results": results,
            "ratios": ratios,
            "bars": bars,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
