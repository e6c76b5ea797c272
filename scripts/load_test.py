"""Bounded load test of ``colzero serve`` on loopback.

Builds (once, cached under --work) an index of beir/scifact-mini (1,000 docs) with a BERT-tiny
ColBERT (``shared/models/splade-tiny-bert`` backbone + a seeded random 128-d projection, document
length 180), starts ``colzero serve`` as a subprocess on 127.0.0.1 and a free port, then sends
``--requests`` POST /search requests from ``--clients`` concurrent clients (threads, one httpx
client each) and reports errors and latency percentiles.

    python scripts/load_test.py [--requests 2000 --clients 8 --k 10]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COLZERO_SHARED", REPO.parent / "shared"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(work: Path) -> tuple[Path, list[str]]:
    data = SHARED / "data" / "beir" / "scifact-mini"
    with open(data / "queries.jsonl", encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line in f]
    idx = work / "index"
    if not (idx / "metadata.json").exists():
        import torch

        from colzero import ColBERT
        from colzero.index import Index

        torch.manual_seed(0)
        model = ColBERT.from_pretrained(SHARED / "models" / "splade-tiny-bert", document_length=180).eval()
        model_dir = model.save(work / "model")
        Index.build(model, data / "corpus.jsonl", idx, model_name=str(model_dir))
    return idx, queries


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--work", type=Path, default=Path("/tmp/colzero-loadtest"))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    idx, queries = prepare(args.work)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "colzero.cli.main",
            "serve",
            str(idx),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    import httpx

    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.5)
        per_client = [
            args.requests // args.clients + (i < args.requests % args.clients) for i in range(args.clients)
        ]

        def client(cid: int) -> tuple[list[float], int]:
            lat, errors = [], 0
            with httpx.Client(base_url=base, timeout=60) as c:
                for j in range(per_client[cid]):
                    q = queries[(cid * 7919 + j) % len(queries)]
                    t0 = time.perf_counter()
                    try:
                        r = c.post("/search", json={"query": q, "k": args.k})
                        ok = r.status_code == 200 and len(r.json()["results"][0]) == args.k
                    except httpx.HTTPError:
                        ok = False
                    lat.append(time.perf_counter() - t0)
                    errors += not ok
            return lat, errors

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            outs = list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - t0
        lat = sorted(x for times, _ in outs for x in times)
        errors = sum(e for _, e in outs)
        stats = httpx.get(base + "/health").json()["stats"]
        pct = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
        report = {
            "requests": len(lat),
            "clients": args.clients,
            "errors": errors,
            "wall_s": round(wall, 2),
            "requests_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(pct(0.50), 1),
            "p90_ms": round(pct(0.90), 1),
            "p99_ms": round(pct(0.99), 1),
            "max_ms": round(1000 * lat[-1], 1),
            "server_batches": stats["batches"],
            "mean_queries_per_batch": round(stats["queries"] / max(1, stats["batches"]), 2),
            "model": "splade-tiny-bert backbone (BERT-tiny) + random 128-d projection, seed 0",
            "index": "beir/scifact-mini, 1,000 docs, nbits=2",
        }
        print(json.dumps(report, indent=2))
        return 0 if errors == 0 else 1
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
