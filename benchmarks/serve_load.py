"""``colzero serve`` under load, before, during and after changes to the served folder.

Builds (cached under --work) an index of a BEIR corpus (default: all 5,183 SciFact documents,
each row carrying ``group`` and ``own`` fields) with a BERT-tiny ColBERT
(``shared/models/splade-tiny-bert`` + a seeded random 128-d projection, document length 180),
the last ``--held-out`` documents kept aside for an add. Starts ``colzero serve`` as a
subprocess on 127.0.0.1 and a free port, then runs three phases of concurrent POST /search
requests from ``--clients`` threads (one keep-alive httpx client each; half unfiltered, half
filtered by ``group``, all asking for the ``own`` field):

- before: ``--requests`` requests against the first generation;
- during: while this process deletes ``--change`` documents, adds the held-out ones, deletes
  ``--change`` more (half of them just added) and rebuilds the folder from the whole corpus;
- after: ``--requests`` requests against the rebuilt generation.

Every answer is checked as the load test checks it: status 200; each hit's ``own`` field is its
own id; filtered hits match the filter; no hit is a document a change had deleted before the
request was sent (a ``violations`` column, which must read 0). Prints a table (throughput,
p50 / p99 latency, errors, violations, the generations answered) and writes
``benchmarks/results/serve_load-*.json``.

    python benchmarks/serve_load.py [--clients 8 --requests 800 --change 500]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _common import REPO, SHARED, print_table, write_result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, *args: str, output=None, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """``colzero serve INDEX ARGS`` on 127.0.0.1 and a free port, once ``/health`` answers:
    (the process, its base URL). ``output``: where its stdout and stderr go."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "colzero.cli.main", "serve", str(index), "--port", str(port), *args],
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"},
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"colzero serve {index} did not start (exit code {proc.poll()})")
        time.sleep(0.2)


def read_corpus(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [
        {
            "_id": r["_id"],
            "title": r.get("title", ""),
            "text": r.get("text", ""),
            "group": i % 10,
            "own": r["_id"],
        }
        for i, r in enumerate(rows)
    ]


def prepare(work: Path, corpus: list[dict], held_out: int):
    import torch

    from colzero import ColBERT, load_model
    from colzero.index import Index

    model_dir = work / "model"
    if not (model_dir / "modules.json").exists():
        torch.manual_seed(0)
        ColBERT.from_pretrained(SHARED / "models" / "splade-tiny-bert", document_length=180).save(model_dir)
    model = load_model(str(model_dir)).eval()
    path = work / "index"
    t0 = time.perf_counter()
    Index.build(model, corpus[:-held_out], path, model_name=str(model_dir))
    return model, path, time.perf_counter() - t0


class Load:
    """Client threads sending searches and checking every answer against the changes made."""

    def __init__(self, base: str, queries: list[str], clients: int, k: int) -> None:
        self.base, self.queries, self.clients, self.k = base, queries, clients, k
        #: (done at, ids deleted or kept, a rebuild?, the generation it made)
        self.changes: list[tuple[float, set[str], bool, int]] = []
        self.lock = threading.Lock()
        self.violations: list[dict] = []  # what every answer that broke a rule got wrong

    def run(self, stop) -> dict:
        """Requests until ``stop(n, client)``; every answer is checked once the phase is over (when
        every change it may come from is known)."""
        records: list[
            tuple[float, float, int, dict | None, dict]
        ] = []  # sent, latency, status, filter, answer

        def client(cid: int) -> None:
            import httpx

            rng = np.random.default_rng(cid)
            with httpx.Client(base_url=self.base, timeout=120) as c:
                n = 0
                while not stop(n, cid):
                    n += 1
                    q = self.queries[int(rng.integers(len(self.queries)))]
                    flt = {"group": int(rng.integers(10))} if n % 2 else None
                    body = {"query": q, "k": self.k, "filter": flt, "fields": ["own", "group"]}
                    sent = time.monotonic()
                    try:
                        r = c.post("/search", json=body)
                        status, payload = r.status_code, r.json()
                    except httpx.HTTPError:
                        status, payload = 0, {}
                    with self.lock:
                        records.append((sent, time.monotonic() - sent, status, flt, payload))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        lat = np.array([r[1] for r in records]) * 1000
        answered = [r for r in records if r[2] == 200]
        gens = [r[4]["generation"] for r in answered]
        return {
            "requests": len(records),
            "wall_s": round(wall, 2),
            "requests_per_s": round(len(records) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1),
            "errors": len(records) - len(answered),
            "violations": sum(self.check(sent, flt, payload) for sent, _, _, flt, payload in answered),
            "generations": sorted(set(gens)),
        }

    def check(self, sent: float, flt: dict | None, payload: dict) -> int:
        """The rule violations of one answer: it must come from a generation at least as new as
        every change done before the request was sent, and hold what that generation holds."""
        generation = payload["generation"]
        forbidden: set[str] = set()  # deleted in the answered generation
        keep: set[str] | None = None  # what the last rebuild up to that generation holds
        bad = []
        for done, ids, rebuild, made in self.changes:
            if done < sent and made > generation:
                bad.append(
                    f"answered from generation {generation}, older than {made}, done before it was sent"
                )
            if made <= generation and rebuild:
                keep, forbidden = ids, set()
            elif made <= generation:
                forbidden |= ids
        for h in payload["results"][0]:
            if h["fields"]["own"] != h["id"]:
                bad.append(f"hit {h['id']} carries the fields of {h['fields']['own']}")
            if flt is not None and h["fields"]["group"] != flt["group"]:
                bad.append(
                    f"hit {h['id']} has group {h['fields']['group']}, the filter asked for {flt['group']}"
                )
            if h["id"] in forbidden or (keep is not None and h["id"] not in keep):
                bad.append(f"hit {h['id']} is not in generation {generation}")
        if bad:
            with self.lock:
                self.violations.append({"sent": sent, "generation": generation, "problems": bad})
        return len(bad)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=SHARED / "data" / "beir" / "scifact")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=800, help="requests in the before and after phases")
    p.add_argument("--change", type=int, default=500, help="documents per delete; also the held-out add")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--work", type=Path, default=Path("/tmp/colzero-serve-bench"))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    import httpx

    from colzero.index import Index

    corpus = read_corpus(args.corpus / "corpus.jsonl")
    with open(args.corpus / "queries.jsonl", encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line in f if line.strip()]
    model, path, build_s = prepare(args.work, corpus, args.change)
    server, base = start_server(path, "--max-k", "100")
    try:
        load = Load(base, queries, args.clients, args.k)
        per_client = -(-args.requests // args.clients)
        phases, changes = {}, []
        phases["before"] = load.run(lambda n, cid: n >= per_client)

        done = threading.Event()

        def writer() -> None:
            try:
                idx = Index.load(path, model)
                ids = [r["_id"] for r in corpus]
                steps = [
                    ("delete", lambda: idx.delete(ids[: args.change]), set(ids[: args.change]), False),
                    ("add", lambda: idx.add(corpus[-args.change :]), set(), False),
                    (
                        "delete",
                        lambda: idx.delete(
                            ids[args.change : args.change + args.change // 2] + ids[-args.change // 2 :]
                        ),
                        set(ids[args.change : args.change + args.change // 2] + ids[-args.change // 2 :]),
                        False,
                    ),
                    (
                        "rebuild",
                        lambda: Index.build(model, [r | {"source": "new"} for r in corpus], path),
                        set(ids),
                        True,
                    ),
                ]
                for kind, fn, changed, rebuild in steps:
                    t0 = time.perf_counter()
                    fn()
                    made = Index.load(path).generation if rebuild else idx.generation
                    load.changes.append((time.monotonic(), changed, rebuild, made))
                    changes.append({"change": kind, "seconds": round(time.perf_counter() - t0, 2)})
            finally:
                done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        phases["during"] = load.run(lambda n, cid: done.is_set())
        thread.join()
        phases["after"] = load.run(lambda n, cid: n >= per_client)
        health = httpx.get(base + "/health").json()
        rss_kb = next(
            int(line.split()[1])
            for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
    finally:
        server.terminate()
        server.wait(30)
    rows = [
        [
            name,
            r["requests"],
            r["wall_s"],
            r["requests_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            r["max_ms"],
            r["errors"],
            r["violations"],
            str(r["generations"]),
        ]
        for name, r in phases.items()
    ]
    print(
        f"\n{len(corpus) - args.change:,} documents served ({args.change:,} held out for the add), index built in {build_s:.1f} s"
    )
    print_table(
        [
            "phase",
            "requests",
            "wall s",
            "req/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "errors",
            "violations",
            "generations",
        ],
        rows,
    )
    print(
        "changes during the 'during' phase: " + ", ".join(f"{c['change']} {c['seconds']} s" for c in changes)
    )
    out = write_result(
        "serve_load",
        {
            "corpus": str(args.corpus),
            "documents": len(corpus) - args.change,
            "clients": args.clients,
            "k": args.k,
            "model": "splade-tiny-bert backbone (BERT-tiny) + random 128-d projection, seed 0, document length 180",
            "build_s": round(build_s, 1),
            "phases": phases,
            "changes": changes,
            "server_rss_mb_after": round(rss_kb / 1024, 1),
            "health_after": health,
            "changes_done_at": [round(c[0], 3) for c in load.changes],
            "violations": load.violations[:50],
        },
    )
    print(f"wrote {out}")
    return 0 if all(r["errors"] == 0 and r["violations"] == 0 for r in phases.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
